/* kw_omp_wait.h: how the OpenMP threads of this process wait at a barrier, as libgomp read it from the environment
 * (GOMP_SPINCOUNT, OMP_WAIT_POLICY). libgomp's default, about 300,000 spins before sleeping, starves partner threads
 * when the cores are shared (docs/BENCHMARKS.md "OpenMP waiting under CPU contention"); the shipped systemd units and
 * SLURM scripts set GOMP_SPINCOUNT=10000 (docs/DEPLOY.md). The daemons log this at start and put it in /health. */
#ifndef KW_OMP_WAIT_H
#define KW_OMP_WAIT_H

/* A description of the waiting, e.g. "GOMP_SPINCOUNT=10000", "OMP_WAIT_POLICY=passive", or "libgomp default
 * (GOMP_SPINCOUNT 300000)". A static string (borrowed), built on the first call from the environment. */
const char *kw_omp_wait_origin(void);

#endif

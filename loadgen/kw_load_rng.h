/* kw_load_rng.h: the seeded random numbers of kvload: xoshiro256** seeded through splitmix64, uniform, bounded
 * integers, normal and gamma variates, shuffles, and the arrival times of an open-loop run.
 *
 * Every random choice kvload makes (item order, arrival gaps, bootstrap resamples) draws from one of these generators
 * with a seed written in the run's summary, so a run is reproducible from its record. The stream of integers is the
 * same on every machine; the real-valued variates use libm's log, sqrt, pow and exp, whose last bit may differ
 * between C libraries.
 *
 * Not cryptographic, and not thread-safe: one generator per user.
 */
#ifndef KW_LOAD_RNG_H
#define KW_LOAD_RNG_H

#include <stddef.h>
#include <stdint.h>

typedef struct kw_load_rng {
    uint64_t s[4];
} kw_load_rng;

/* Seeds the four words with splitmix64 from seed (any value, 0 included). */
void kw_load_rng_seed(kw_load_rng *r, uint64_t seed);

/* A seed for a named purpose derived from a master seed (splitmix64 of the seed mixed with an FNV-1a hash of the
 * name), so that the arrival, shuffle and bootstrap streams of one run are independent but all follow from --seed. */
uint64_t kw_load_rng_derive(uint64_t seed, const char *name);

uint64_t kw_load_rng_next(kw_load_rng *r);

/* Uniform in [0, 1), 53 random bits. */
double kw_load_rng_uniform(kw_load_rng *r);

/* Uniform integer in [0, n) without modulo bias (Lemire's method); n == 0 gives 0. */
uint64_t kw_load_rng_below(kw_load_rng *r, uint64_t n);

/* Standard normal (Marsaglia's polar method; the second variate of each pair is dropped, so that every call consumes
 * the stream the same way). */
double kw_load_rng_normal(kw_load_rng *r);

/* Gamma(shape, scale), shape > 0 and scale > 0 (Marsaglia and Tsang 2000; shape < 1 through
 * Gamma(shape + 1) * U^(1/shape)). Mean shape * scale, variance shape * scale^2. */
double kw_load_rng_gamma(kw_load_rng *r, double shape, double scale);

/* Fisher-Yates shuffle of a[0..n). */
void kw_load_rng_shuffle(kw_load_rng *r, size_t *a, size_t n);

/* One inter-arrival gap in seconds of an open-loop run at rate requests/s: Gamma(burstiness, 1 / (rate *
 * burstiness)), whose mean is 1 / rate and whose coefficient of variation is 1 / sqrt(burstiness) (burstiness 1 is
 * a Poisson process; smaller is burstier), as vLLM's `bench serve` draws them. rate must be finite and > 0. */
double kw_load_arrival_gap(kw_load_rng *r, double rate, double burstiness);

/* The send times of n requests of an open-loop run, in seconds from the start: the cumulative sums of n gaps (the
 * first request waits one gap too), then scaled so that the last one is at n / rate, as vLLM does to keep the
 * offered load the same whatever the seed. rate == INFINITY gives all zeros. offsets has n entries.
 * @return 0, or KW_E_INVALID_ARG for a rate <= 0 or NaN or a burstiness <= 0. */
int kw_load_arrivals_make(size_t n, double rate, double burstiness, uint64_t seed, double *offsets);

#endif /* KW_LOAD_RNG_H */

/* kw_isa.h: the SIMD level cap set by KW_CPU_ISA=scalar|avx2|avx512 in the environment. Every run-time ISA dispatch
 * (the CPU backend's kernels, wire/'s codec row kernels) takes the best level the CPU supports and lowers it to this
 * cap, so tests and CI can run the AVX2 and scalar paths on an AVX-512 machine. The cap never raises a level. */
#ifndef KW_ISA_H
#define KW_ISA_H

/* Ordered: a higher level is a superset of the lower ones. */
enum kw_isa_level { KW_ISA_LEVEL_SCALAR = 0, KW_ISA_LEVEL_AVX2 = 1, KW_ISA_LEVEL_AVX512 = 2 };

/* The level KW_CPU_ISA names; KW_ISA_LEVEL_AVX512 (no cap) when it is unset, empty or none of the three names (that
 * last case is warned about once per process). Reads the environment on every call, so a test may change it. */
enum kw_isa_level kw_isa_env_cap(void);

#endif

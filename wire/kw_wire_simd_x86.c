/* kw_wire_simd_x86.c: AVX2 and AVX-512 row kernels (placeholder until the vector paths land). */
#include "wire/kw_wire_internal.h"

const kw__wire_kernels *kw__wire_kernels_avx2(void) {
    return NULL;
}
const kw__wire_kernels *kw__wire_kernels_avx512(void) {
    return NULL;
}

/* kw_wire_hash_avx512.c: XXH3-64 compiled for AVX512 (this file alone gets the ISA flag, see wire/CMakeLists.txt);
 * kw__wire_hash_bytes calls it only when the CPU has AVX512 and KW_CPU_ISA allows it. The hash value is the same on
 * every path. */
#include "wire/kw_wire_internal.h"

#if defined(KW_WIRE_HASH_AVX512)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#pragma GCC diagnostic ignored "-Wshadow"
#define XXH_INLINE_ALL
#include <xxhash.h>
#pragma GCC diagnostic pop

uint64_t kw__wire_hash_bytes_avx512(const void *data, size_t size) {
    return XXH3_64bits(data, size);
}
int kw__wire_hash_has_avx512(void) {
    return 1;
}
#else
uint64_t kw__wire_hash_bytes_avx512(const void *data, size_t size) {
    return kw__wire_hash_bytes_sse2(data, size);
}
int kw__wire_hash_has_avx512(void) {
    return 0;
}
#endif

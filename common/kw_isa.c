/* kw_isa.c: KW_CPU_ISA parsing for the ISA dispatchers (kw_isa.h). */
#include "common/kw_isa.h"

#include <stdlib.h>
#include <string.h>

#include "common/kw_log.h"

enum kw_isa_level kw_isa_env_cap(void) {
    static int warned; /* a bad value is reported once, not at every dispatch */
    const char *env = getenv("KW_CPU_ISA");
    if (env == NULL || *env == '\0') return KW_ISA_LEVEL_AVX512;
    if (strcmp(env, "scalar") == 0) return KW_ISA_LEVEL_SCALAR;
    if (strcmp(env, "avx2") == 0) return KW_ISA_LEVEL_AVX2;
    if (strcmp(env, "avx512") == 0) return KW_ISA_LEVEL_AVX512;
    if (!__atomic_exchange_n(&warned, 1, __ATOMIC_RELAXED))
        KW_LOG_WARN("KW_CPU_ISA=%s is not scalar, avx2 or avx512; ignored", env);
    return KW_ISA_LEVEL_AVX512;
}

/* kw_cpu_backend.c: the CPU backend's function table, memory, ISA choice and support whitelist. The op kernels
 * live in kw_cpu_matmul.c, kw_cpu_attention.c and kw_cpu_ops.c. Memory is host memory, so uploads and downloads
 * are memcpy and every op has finished when it returns (synchronize only reports deferred errors). */
#include "kernels/cpu/kw_cpu.h"

#if KW_CPU_X86
#include <cpuid.h>
#endif
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/kw_hugepage.h"
#include "common/kw_isa.h"
#include "common/kw_log.h"
#include "common/kw_size.h"
#include "common/kw_status.h"

const char *kw__cpu_isa_name(enum kw_cpu_isa isa) {
    switch (isa) {
    case KW_CPU_ISA_AVX512:
        return "avx512";
    case KW_CPU_ISA_AVX2:
        return "avx2";
    case KW_CPU_ISA_SCALAR:
        return "scalar";
    }
    return "?";
}

#if KW_CPU_X86
/* F16C from CPUID leaf 1 (ECX bit 29): clang 14's __builtin_cpu_supports does not know "f16c". */
static int kw_cpu_has_f16c(void) {
    unsigned eax, ebx, ecx, edx;
    return __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C) != 0;
}
#endif

/* The best flavour the CPU supports. */
static enum kw_cpu_isa kw_cpu_hardware_isa(void) {
    enum kw_cpu_isa isa = KW_CPU_ISA_SCALAR;
#if KW_CPU_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && kw_cpu_has_f16c()) isa = KW_CPU_ISA_AVX2;
    if (isa == KW_CPU_ISA_AVX2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        isa = KW_CPU_ISA_AVX512;
#endif
    return isa;
}

int kw_backend_cpu_isas(const char *names[3]) {
    const enum kw_cpu_isa best = kw_cpu_hardware_isa();
    int n = 0;
    for (int isa = KW_CPU_ISA_SCALAR; isa <= (int)best; ++isa)
        names[n++] = kw__cpu_isa_name((enum kw_cpu_isa)isa);
    return n;
}

/* The hardware's best flavour, lowered by KW_CPU_ISA (kw_isa.h: the same cap as wire/'s codec kernels). */
static enum kw_cpu_isa kw_cpu_detect_isa(void) {
    _Static_assert((int)KW_CPU_ISA_SCALAR == (int)KW_ISA_LEVEL_SCALAR &&
                       (int)KW_CPU_ISA_AVX2 == (int)KW_ISA_LEVEL_AVX2 &&
                       (int)KW_CPU_ISA_AVX512 == (int)KW_ISA_LEVEL_AVX512,
                   "kw_cpu_isa follows kw_isa_level");
    const enum kw_cpu_isa isa = kw_cpu_hardware_isa();
    const int cap = (int)kw_isa_env_cap();
    return cap < (int)isa ? (enum kw_cpu_isa)cap : isa; /* only ever lower: the hardware decides the ceiling */
}

int kw__cpu_scratch(kw_cpu_backend *cpu, size_t n, float **out) {
    if (n > cpu->scratch_floats) {
        size_t bytes;
        KW_RETURN_IF(kw_size_mul(n, sizeof(float), &bytes) < 0 || kw_size_align_up(bytes, 64, &bytes) < 0,
                     KW_E_OVERFLOW, "cpu scratch of %zu floats overflows", n);
        float *p = kw_hugepage_alloc(bytes);
        KW_RETURN_IF(p == NULL, KW_E_NOMEM, "cpu scratch: cannot allocate %zu bytes", bytes);
        kw_hugepage_free(cpu->scratch);
        cpu->scratch = p;
        cpu->scratch_floats = n;
    }
    *out = cpu->scratch;
    return 0;
}

/* One task of kw__cpu_parallel_for: range `task` of the cut. */
typedef struct kw_cpu_range_job {
    kw_cpu_range_fn fn;
    void *ctx;
    int64_t n, parts;
} kw_cpu_range_job;

static void kw_cpu_range_task(void *arg, int64_t task, int worker) {
    const kw_cpu_range_job *job = arg;
    int64_t begin, end;
    kw_cpu_pool_range(job->n, job->parts, task, &begin, &end);
    job->fn(job->ctx, begin, end, worker);
}

void kw__cpu_parallel_for(kw_cpu_backend *cpu, int nt, int64_t n, kw_cpu_range_fn fn, void *ctx) {
    if (n <= 0) return;
    kw_cpu_range_job job = {fn, ctx, n, nt < n ? (nt > 1 ? nt : 1) : n};
    kw_cpu_pool_run(cpu->pool, nt, job.parts, kw_cpu_range_task, &job);
}

static void kw_cpu_destroy(kw_backend *backend) {
    kw_cpu_backend *cpu = kw__cpu(backend);
    kw_cpu_pool_free(cpu->pool);
    kw_hugepage_free(cpu->scratch);
    for (int i = 0; i < KW_CPU_ROPE_MEMOS; ++i)
        free(cpu->rope[i].rows_tab);
    free(cpu);
}

/* The whitelist: exactly the (op, dtype) pairs the kernels in this folder implement. */
static int kw_cpu_supports(const kw_backend *backend, enum kw_op op, enum kw_dtype dtype) {
    (void)backend;
    const int is_float = dtype == KW_DTYPE_F32 || dtype == KW_DTYPE_BF16 || dtype == KW_DTYPE_F16;
    switch (op) {
    case KW_OP_GET_ROWS:
    case KW_OP_MATMUL:
    case KW_OP_RMS_NORM:
        return is_float;
    case KW_OP_ATTENTION:
    case KW_OP_KV_STORE:
    case KW_OP_KV_LOAD:
        return dtype == KW_DTYPE_F32 || dtype == KW_DTYPE_BF16;
    case KW_OP_ROPE:
    case KW_OP_GLU:
    case KW_OP_UNARY:
    case KW_OP_ADD:
    case KW_OP_SCALE:
    case KW_OP_SOFTMAX:
    case KW_OP_ARGMAX:
    case KW_OP_HEAD_SCALE_ADD:
        return dtype == KW_DTYPE_F32;
    case KW_OP_COPY:
        return is_float || dtype == KW_DTYPE_I32 || dtype == KW_DTYPE_U8;
    case KW_OP_COUNT:
        break;
    }
    return 0;
}

static int kw_cpu_synchronize(kw_backend *backend) {
    (void)backend;
    return 0;
}

/* size bytes rounded up to 64 from allocate (kw_hugepage.h: on huge pages when large), released by kw_cpu_free. */
static int kw_cpu_alloc_from(void *(*allocate)(size_t), size_t size, void **data) {
    size_t bytes;
    KW_RETURN_IF(kw_size_align_up(size, 64, &bytes) < 0, KW_E_OVERFLOW, "cpu alloc of %zu bytes overflows", size);
    void *p = allocate(bytes);
    KW_RETURN_IF(p == NULL, KW_E_NOMEM, "cpu alloc: cannot allocate %zu bytes", bytes);
    *data = p;
    return 0;
}

static int kw_cpu_alloc(kw_backend *backend, size_t size, void **data) {
    (void)backend;
    return kw_cpu_alloc_from(kw_hugepage_alloc, size, data);
}

/* Packed weights below KW_HUGEPAGE_MIN share 2 MiB-aligned slabs on huge pages (kw_hugepage_alloc_weight). */
static int kw_cpu_alloc_weight(kw_backend *backend, size_t size, void **data) {
    (void)backend;
    return kw_cpu_alloc_from(kw_hugepage_alloc_weight, size, data);
}

static void kw_cpu_free(kw_backend *backend, void *data) {
    (void)backend;
    kw_hugepage_free(data);
}

static int kw_cpu_copy_bytes(kw_backend *backend, void *dst, const void *src, size_t size) {
    (void)backend;
    memcpy(dst, src, size);
    return 0;
}

static int kw_cpu_memset_zero(kw_backend *backend, void *dst, size_t size) {
    (void)backend;
    memset(dst, 0, size);
    return 0;
}

static int kw_cpu_create_stream(kw_backend *parent, kw_backend **out);

static const struct kw_backend_i kw_cpu_iface = {
    .name = "cpu",
    .kind = KW_BACKEND_CPU,
    .host_memory = 1,
    .destroy = kw_cpu_destroy,
    .supports = kw_cpu_supports,
    .synchronize = kw_cpu_synchronize,
    .alloc = kw_cpu_alloc,
    .alloc_weight = kw_cpu_alloc_weight,
    .free = kw_cpu_free,
    .upload = kw_cpu_copy_bytes,
    .download = kw_cpu_copy_bytes,
    .memset_zero = kw_cpu_memset_zero,
    .pack_weight = kw__cpu_pack_weight,
    .pack_quantized = kw__cpu_pack_quantized,
    .pack_bf16_pairs = kw__cpu_pack_bf16_pairs,
    .int8_activations = 1,
    .superblocks = 1,
    .create_stream = kw_cpu_create_stream,
    .get_rows = kw__cpu_get_rows,
    .matmul = kw__cpu_matmul,
    .matmul_shared = kw__cpu_matmul_shared,
    .rms_norm = kw__cpu_rms_norm,
    .rope = kw__cpu_rope,
    .rope_table = kw__cpu_rope_table,
    .attention = kw__cpu_attention,
    .kv_store = kw__cpu_kv_store,
    .kv_load = kw__cpu_kv_load,
    .kvq_store = kw__cpu_kvq_store,
    .kvq_load = kw__cpu_kvq_load,
    .kvq_truncate = kw__cpu_kvq_truncate,
    .attention_kvq = kw__cpu_attention_kvq,
    .glu = kw__cpu_glu,
    .unary = kw__cpu_unary,
    .add = kw__cpu_add,
    .scale = kw__cpu_scale,
    .softmax = kw__cpu_softmax,
    .argmax = kw__cpu_argmax,
    .copy = kw__cpu_copy,
    .head_scale_add = kw__cpu_head_scale_add,
};

/* A stream context: the parent's thread count and ISA, its own scratch and its own thread pool, so two contexts
 * driven by two threads compute at once over the same read-only weights (the kernels keep no mutable global state:
 * kw_cpu_attention.c's table is built once). */
static int kw_cpu_create_stream(kw_backend *parent, kw_backend **out) {
    const kw_cpu_backend *p = kw__cpu(parent);
    kw_cpu_backend *cpu = calloc(1, sizeof *cpu);
    KW_RETURN_IF(cpu == NULL, KW_E_NOMEM, "kw_backend_create_stream: out of memory");
    const int rc = kw_cpu_pool_create(p->n_threads, kw_cpu_pool_spin_us(p->pool), &cpu->pool);
    if (rc < 0) {
        free(cpu);
        return rc;
    }
    kw__backend_init(&cpu->base, &kw_cpu_iface);
    cpu->n_threads = p->n_threads;
    cpu->isa = p->isa;
    *out = &cpu->base;
    return 0;
}

const char *kw_backend_cpu_isa(const kw_backend *backend) {
    if (backend == NULL || kw_backend_kind(backend) != KW_BACKEND_CPU) return NULL;
    return kw__cpu_isa_name(kw__cpu((kw_backend *)(uintptr_t)backend)->isa);
}

int kw_backend_cpu_layout_fast(const kw_backend *backend, enum kw_layout layout) {
    if (!kw_backend_supports_layout(backend, layout) || kw_backend_kind(backend) != KW_BACKEND_CPU) return 0;
    if (layout != KW_LAYOUT_QPANELS_S6_G16_SB) return 1;
    return kw__cpu((kw_backend *)(uintptr_t)backend)->isa == KW_CPU_ISA_AVX512 && kw__cpu_has_vbmi();
}

/* Online cores, 1..1024. */
static int kw_cpu_online_cores(void) {
    const long online = sysconf(_SC_NPROCESSORS_ONLN);
    return online > 0 ? (int)(online < 1024 ? online : 1024) : 1;
}

int kw_backend_threads_per_worker(int n_threads, int n_workers) {
    if (n_threads > 0) return n_threads;
    const int per = kw_cpu_online_cores() / (n_workers > 1 ? n_workers : 1);
    return per > 1 ? per : 1;
}

const char *kw_backend_cpu_wait(void) {
    return kw_cpu_pool_wait_origin();
}

int kw_backend_cpu_threads(const kw_backend *backend) {
    if (backend == NULL || kw_backend_kind(backend) != KW_BACKEND_CPU) return 0;
    return kw__cpu((kw_backend *)(uintptr_t)backend)->n_threads;
}

int kw_backend_create_cpu(int n_threads, kw_backend **out) {
    KW_RETURN_IF(out == NULL, KW_E_INVALID_ARG, "kw_backend_create_cpu: NULL out");
    KW_RETURN_IF(n_threads < 0 || n_threads > 1024, KW_E_INVALID_ARG, "kw_backend_create_cpu: %d threads", n_threads);
    if (n_threads == 0) n_threads = kw_cpu_online_cores();
    kw_cpu_backend *cpu = calloc(1, sizeof *cpu);
    KW_RETURN_IF(cpu == NULL, KW_E_NOMEM, "kw_backend_create_cpu: out of memory");
    const int rc = kw_cpu_pool_create(n_threads, -1, &cpu->pool);
    if (rc < 0) {
        free(cpu);
        return rc;
    }
    kw__backend_init(&cpu->base, &kw_cpu_iface);
    cpu->n_threads = n_threads;
    cpu->isa = kw_cpu_detect_isa();
    KW_LOG_DEBUG("cpu backend: %d threads (pool: %s), %s kernels", n_threads, kw_cpu_pool_wait_origin(),
                 kw__cpu_isa_name(cpu->isa));
    *out = &cpu->base;
    return 0;
}

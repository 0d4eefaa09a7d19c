/* bench_kernels.c: `kvwire bench kernels`: CPU backend matmul speed against baselines measured in the same run.
 *
 * Decode (M = 1) matmul streams every weight once, so its ceiling is memory bandwidth. The baseline is a read of a
 * buffer far larger than the last-level cache (an AVX2 sum, so the read is not compute-bound) and memcpy, both on
 * the same number of threads as the matmul. To keep the weights out of cache too, each shape is allocated in
 * enough copies to exceed 512 MiB and the timed loop cycles through them, as a decode step cycles through layers.
 * Reported: GB/s of weights streamed and the ratio to the read baseline.
 *
 * Prefill (M = 128) is compute-bound: reported in GFLOP/s (2 M N K per call) with, as baseline, OpenBLAS sgemm on
 * the same shape with f32 weights (the bf16 path widens W and then runs sgemm, so this is its ceiling); a third row,
 * bf16a, runs the bf16 weights with bf16 activations (KW_LAYOUT_PANELS_BF16_PAIRS: vdpbf16ps on AVX-512 BF16).
 *
 * Options: --threads N (default: 1 and 2), --reps N (default 5 passes), --quick (fewer shapes, smaller buffers),
 * --quantized (instead: the kept-quantized layouts, exact f32 rebuild against int8 activations and against the
 * super-block layouts, A B A B), --bf16-pair (instead: decode of bf16 weights, exact against bf16 activations, call by
 * call A B A B), --attention (instead: the attention op on bf16 caches, prefill against OpenBLAS sgemm of the same
 * products, decode against the read bandwidth).
 */
#include "kw_benches.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_half.h"
#include "common/kw_status.h"
#include "bench/bench_bandwidth.h"
#include "common/kw_time.h"
#include "kernels/kw_backend.h"
#include "tools/kw_cli.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

/* OpenBLAS is linked into kvwire for this baseline only; rather than its include path, the two entry points the
 * baseline needs are declared here with the CBLAS ABI (enums are ints: RowMajor 101, NoTrans 111, Trans 112). */
void cblas_sgemm(int order, int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a, int lda,
                 const float *b, int ldb, float beta, float *c, int ldc);
void openblas_set_num_threads(int num_threads);
#define KW_CBLAS_ROW_MAJOR 101
#define KW_CBLAS_NO_TRANS  111
#define KW_CBLAS_TRANS     112

const char kw_bench_kernels_summary[] = "CPU matmul: bf16 GEMV GB/s vs memory bandwidth, prefill GFLOP/s vs sgemm";

/* ------------------------------------------------------------------------------------------------------------
 * Baselines
 */

#if defined(__x86_64__)
__attribute__((target("avx2"))) static double kw_sum_avx2(const float *p, size_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_add_ps(a0, _mm256_loadu_ps(p + i));
        a1 = _mm256_add_ps(a1, _mm256_loadu_ps(p + i + 8));
        a2 = _mm256_add_ps(a2, _mm256_loadu_ps(p + i + 16));
        a3 = _mm256_add_ps(a3, _mm256_loadu_ps(p + i + 24));
    }
    float t[8];
    _mm256_storeu_ps(t, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    double s = 0.0;
    for (int k = 0; k < 8; ++k)
        s += t[k];
    for (; i < n; ++i)
        s += p[i];
    return s;
}
#endif

static double kw_sum_plain(const float *p, size_t n) {
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx2")) return kw_sum_avx2(p, n);
#endif
    double s = 0.0;
    for (size_t i = 0; i < n; ++i)
        s += p[i];
    return s;
}

/* Best-of-reps read bandwidth of a buffer of n floats split across threads, in GB/s. */
static double kw_read_bw(const float *buf, size_t n, int threads, int reps, double *sink) {
    double best = 0.0;
    for (int r = 0; r < reps; ++r) {
        double total = 0.0;
        const uint64_t t0 = kw_time_now_ns();
#pragma omp parallel num_threads(threads) reduction(+ : total)
        {
            const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
            const size_t a = n * (size_t)tid / (size_t)nth, b = n * (size_t)(tid + 1) / (size_t)nth;
            total += kw_sum_plain(buf + a, b - a);
        }
        const double s = kw_time_seconds(t0, kw_time_now_ns());
        *sink += total;
        const double gbs = (double)n * sizeof(float) / s / 1e9;
        best = gbs > best ? gbs : best;
    }
    return best;
}

/* memcpy of half the buffer onto the other half; counts bytes read + written. */
static double kw_memcpy_bw(float *buf, size_t n, int threads, int reps) {
    double best = 0.0;
    const size_t half = n / 2;
    for (int r = 0; r < reps; ++r) {
        const uint64_t t0 = kw_time_now_ns();
#pragma omp parallel num_threads(threads)
        {
            const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
            const size_t a = half * (size_t)tid / (size_t)nth, b = half * (size_t)(tid + 1) / (size_t)nth;
            memcpy(buf + half + a, buf + a, (b - a) * sizeof(float));
        }
        const double s = kw_time_seconds(t0, kw_time_now_ns());
        const double gbs = 2.0 * (double)half * sizeof(float) / s / 1e9;
        best = gbs > best ? gbs : best;
    }
    return best;
}

/* ------------------------------------------------------------------------------------------------------------
 * Matmul timing
 */

struct kw_shape {
    const char *name;
    int64_t N, K;
};

static const struct kw_shape kw_decode_shapes[] = {
    {"q_proj 1024->2048", 2048, 1024},  {"kv_proj 1024->1024", 1024, 1024}, {"o_proj 2048->1024", 1024, 2048},
    {"gate/up 1024->3072", 3072, 1024}, {"down 3072->1024", 1024, 3072},    {"lm_head 1024->151936", 151936, 1024},
};

static void kw_fill_random(void *p, enum kw_dtype dtype, size_t n, uint32_t seed) {
    uint32_t s = seed * 2654435761u + 1u;
    for (size_t i = 0; i < n; ++i) {
        s = s * 1664525u + 1013904223u;
        const float v = (float)((int32_t)(s >> 8) - (1 << 23)) / (float)(1 << 23);
        if (dtype == KW_DTYPE_F32)
            ((float *)p)[i] = v;
        else
            ((uint16_t *)p)[i] = kw_f32_to_bf16(v);
    }
}

/* Times M x (N, K) matmuls cycling over copies of W totalling at least min_bytes. Returns seconds per call. */
static int kw_time_matmul(kw_backend *b, int64_t M, int64_t N, int64_t K, enum kw_dtype dtype, int bf16_act,
                          size_t min_bytes, int reps, double *sec_per_call, size_t *w_bytes) {
    int rc = 0;
    const size_t wb = (size_t)(N * K) * kw_dtype_size(dtype);
    int copies = (int)((min_bytes + wb - 1) / wb);
    copies = copies < 1 ? 1 : copies > 256 ? 256 : copies;
    kw_tensor *ws = calloc((size_t)copies, sizeof *ws);
    kw_tensor x = {0}, y = {0};
    if (!ws) return KW_E_NOMEM;
    for (int c = 0; c < copies; ++c) {
        KW_CHECK(kw_tensor_alloc(b, &ws[c], dtype, 2, (int64_t[]){N, K}));
        /* the backend is the CPU: tensor memory is host memory, filled in place to avoid a second copy */
        kw_fill_random(ws[c].data, dtype, (size_t)(N * K), (uint32_t)c + 1);
        /* packed as the model packs its weights at load (kw_tensor_pack_weight; with bf16 activations,
         * kw_tensor_pack_weight_bf16_pairs) */
        kw_tensor packed;
        if (bf16_act)
            KW_CHECK(kw_tensor_pack_weight_bf16_pairs(b, &ws[c], &packed));
        else
            KW_CHECK(kw_tensor_pack_weight(b, &ws[c], &packed));
        kw_tensor_free(&ws[c]);
        ws[c] = packed;
    }
    KW_CHECK(kw_tensor_alloc(b, &x, KW_DTYPE_F32, 2, (int64_t[]){M, K}));
    KW_CHECK(kw_tensor_alloc(b, &y, KW_DTYPE_F32, 2, (int64_t[]){M, N}));
    kw_fill_random(x.data, KW_DTYPE_F32, (size_t)(M * K), 99);
    KW_CHECK(kw_op_matmul(b, &y, &x, &ws[0], NULL)); /* warm-up (page faults, thread team) */
    double best = 1e30;
    for (int r = 0; r < reps; ++r) {
        const uint64_t t0 = kw_time_now_ns();
        for (int c = 0; c < copies; ++c)
            KW_CHECK(kw_op_matmul(b, &y, &x, &ws[c], NULL));
        KW_CHECK(kw_backend_synchronize(b));
        const double s = kw_time_seconds(t0, kw_time_now_ns()) / copies;
        best = s < best ? s : best;
    }
    *sec_per_call = best;
    *w_bytes = wb;
out:
    for (int c = 0; c < copies; ++c)
        kw_tensor_free(&ws[c]);
    free(ws);
    kw_tensor_free(&x);
    kw_tensor_free(&y);
    return rc;
}

/* Times two packed forms of the same weights against each other on x into y: ws[2c] (A) and ws[2c + 1] (B) for c <
 * copies, call by call A B A B with the order swapped every other call, after a warm-up call of each (page faults,
 * thread team). The mean seconds per call of each over reps passes go in sec[2]. Alternating single calls gives both
 * the same machine: on a shared one, separate timings drift apart by more than the layouts differ. */
static int kw_time_ab_calls(kw_backend *b, kw_tensor *y, const kw_tensor *x, const kw_tensor *ws, int copies, int reps,
                            double sec[2]) {
    for (int h = 0; h < 2; ++h)
        KW_FORWARD(kw_op_matmul(b, y, x, &ws[h], NULL));
    double total[2] = {0.0, 0.0};
    for (int r = 0; r < reps; ++r)
        for (int c = 0; c < copies; ++c)
            for (int i = 0; i < 2; ++i) {
                const int h = (r + c) & 1 ? 1 - i : i;
                const uint64_t t0 = kw_time_now_ns();
                KW_FORWARD(kw_op_matmul(b, y, x, &ws[2 * c + h], NULL));
                KW_FORWARD(kw_backend_synchronize(b));
                total[h] += kw_time_seconds(t0, kw_time_now_ns());
            }
    for (int h = 0; h < 2; ++h)
        sec[h] = total[h] / ((double)(reps > 0 ? reps : 1) * copies);
    return 0;
}

/* Decode (M = 1) of the same bf16 weights in both CPU layouts (kw_time_ab_calls): the exact panels
 * (kw_tensor_pack_weight) in sec[0], bf16 activations (PANELS_BF16_PAIRS) in sec[1], the mean seconds per call over
 * reps passes through copies totalling at least min_bytes per layout. */
static int kw_time_bf16_pair(kw_backend *b, int64_t N, int64_t K, size_t min_bytes, int reps, double sec[2]) {
    int rc = 0;
    const size_t wb = (size_t)(N * K) * sizeof(uint16_t);
    int copies = (int)((min_bytes + wb - 1) / wb);
    copies = copies < 1 ? 1 : copies > 256 ? 256 : copies;
    kw_tensor *ws = calloc((size_t)(2 * copies), sizeof *ws); /* [2c]: exact panels, [2c + 1]: pairs */
    kw_tensor x = {0}, y = {0}, w = {0};
    KW_RETURN_IF(!ws, KW_E_NOMEM, "bench kernels: out of memory");
    for (int c = 0; c < copies; ++c) {
        KW_CHECK(kw_tensor_alloc(b, &w, KW_DTYPE_BF16, 2, (int64_t[]){N, K}));
        kw_fill_random(w.data, KW_DTYPE_BF16, (size_t)(N * K), (uint32_t)c + 1);
        KW_CHECK(kw_tensor_pack_weight(b, &w, &ws[2 * c]));
        KW_CHECK(kw_tensor_pack_weight_bf16_pairs(b, &w, &ws[2 * c + 1]));
        kw_tensor_free(&w);
    }
    KW_CHECK(kw_tensor_alloc(b, &x, KW_DTYPE_F32, 2, (int64_t[]){1, K}));
    KW_CHECK(kw_tensor_alloc(b, &y, KW_DTYPE_F32, 2, (int64_t[]){1, N}));
    kw_fill_random(x.data, KW_DTYPE_F32, (size_t)K, 99);
    KW_CHECK(kw_time_ab_calls(b, &y, &x, ws, copies, reps, sec));
out:
    for (int c = 0; c < 2 * copies; ++c)
        kw_tensor_free(&ws[c]);
    free(ws);
    kw_tensor_free(&w);
    kw_tensor_free(&x);
    kw_tensor_free(&y);
    return rc;
}

/* The decode shapes of --bf16-pair: the Qwen3-0.6B ones, lm_heads of 49152 rows (the vocabulary of the peer
 * comparison's models) and SmolLM2-135M's, whose 9- and 3-panel matrices leave a panel over on two threads. */
static const struct kw_shape kw_pair_shapes[] = {
    {"q_proj 1024->2048", 2048, 1024},  {"kv_proj 1024->1024", 1024, 1024},      {"o_proj 2048->1024", 1024, 2048},
    {"gate/up 1024->3072", 3072, 1024}, {"down 3072->1024", 1024, 3072},         {"lm_head 1024->49152", 49152, 1024},
    {"smol q/o 576->576", 576, 576},    {"smol kv 576->192", 192, 576},          {"smol gate/up 576->1536", 1536, 576},
    {"smol down 1536->576", 576, 1536}, {"smol lm_head 576->49152", 49152, 576}, {"even 576->640", 640, 576},
};

/* The sgemm baseline for prefill: x (M, K) times an f32 W (N, K)^T, OpenBLAS with `threads` threads. */
static double kw_time_sgemm(int64_t M, int64_t N, int64_t K, int threads, int reps) {
    float *x = malloc((size_t)(M * K) * sizeof(float)), *w = malloc((size_t)(N * K) * sizeof(float));
    float *y = malloc((size_t)(M * N) * sizeof(float));
    double best = 1e30;
    if (x && w && y) {
        kw_fill_random(x, KW_DTYPE_F32, (size_t)(M * K), 7);
        kw_fill_random(w, KW_DTYPE_F32, (size_t)(N * K), 8);
        openblas_set_num_threads(threads);
        for (int r = 0; r <= reps; ++r) {
            const uint64_t t0 = kw_time_now_ns();
            cblas_sgemm(KW_CBLAS_ROW_MAJOR, KW_CBLAS_NO_TRANS, KW_CBLAS_TRANS, (int)M, (int)N, (int)K, 1.0f, x, (int)K,
                        w, (int)K, 0.0f, y, (int)N);
            const double s = kw_time_seconds(t0, kw_time_now_ns());
            if (r > 0) best = s < best ? s : best; /* first run is warm-up */
        }
        openblas_set_num_threads(1);
    }
    free(x), free(w), free(y);
    return best;
}

/* Times an exact quantized layout a against its int8-activation or super-block twin b (the same codes, scales and
 * offsets, each packed in copies totalling at least min_bytes), call by call (kw_time_ab_calls). Mean seconds per call
 * of each in sec[2], b's weight bytes in *w_bytes. The scales and offsets are int multiples of an f16 d and m per 256
 * k, as Q4_K's and Q6_K's, so that the super-block layouts take them. */
static int kw_time_qpair(kw_backend *b, int64_t M, int64_t N, int64_t K, const enum kw_layout lay[2], size_t min_bytes,
                         int reps, double sec[2], size_t *w_bytes) {
    int rc = 0;
    kw_quant_layout ql, twin;
    kw_layout_quant(lay[0], &ql);
    kw_layout_quant(lay[1], &twin); /* the codes: in both layouts' ranges (S6_G16_SB: 6 bits) */
    ql.code_min = ql.code_min > twin.code_min ? ql.code_min : twin.code_min;
    ql.code_max = ql.code_max < twin.code_max ? ql.code_max : twin.code_max;
    const int64_t groups = N * (K / ql.group);
    int8_t *codes = malloc((size_t)(N * K));
    float *scales = malloc((size_t)groups * sizeof(float)), *offsets = malloc((size_t)groups * sizeof(float));
    const int64_t sbs = N * (K / KW_QUANT_SUPERBLOCK), per = KW_QUANT_SUPERBLOCK / ql.group;
    float *sb = malloc((size_t)(2 * sbs) * sizeof(float));
    const size_t wb = (size_t)groups * (size_t)(ql.group * ql.code_bits / 8 + 4 * (1 + ql.has_offset));
    int copies = (int)((min_bytes + wb - 1) / wb);
    copies = copies < 1 ? 1 : copies > 256 ? 256 : copies;
    kw_tensor *ws = calloc((size_t)(2 * copies), sizeof *ws);
    kw_tensor x = {0}, y = {0};
    if (!codes || !scales || !offsets || !ws || !sb || K % KW_QUANT_SUPERBLOCK != 0) {
        rc = KW_E_NOMEM;
        goto out;
    }
    uint32_t r = 12345u;
    for (int64_t i = 0; i < N * K; ++i) {
        r = r * 1664525u + 1013904223u;
        codes[i] = (int8_t)(ql.code_min + (int)((r >> 8) % (uint32_t)(ql.code_max - ql.code_min + 1)));
    }
    kw_fill_random(sb, KW_DTYPE_F32, (size_t)(2 * sbs), 3);
    for (int64_t i = 0; i < 2 * sbs; ++i) /* f16 values, as the files' d and dmin */
        sb[i] = kw_round_f16(sb[i]);
    for (int64_t g = 0; g < groups; ++g) { /* s in 0..63 with offsets (Q4_K), else -128..127 (Q6_K); o in 0..63 */
        r = r * 1664525u + 1013904223u;
        const int sub = ql.has_offset ? (int)(r >> 26) : (int)(r >> 24) - 128;
        scales[g] = sb[g / per] * (float)sub;
        if (ql.f16_scales || twin.f16_scales) scales[g] = kw_round_f16(scales[g]); /* S8_X8 keeps f16 scales */
        offsets[g] = sb[sbs + g / per] * (float)((r >> 10) % 64);
    }
    for (int c = 0; c < 2 * copies; ++c) {
        const kw_quant_rows q = {lay[c % 2], N, K, codes, scales, ql.has_offset ? offsets : NULL, sb, sb + sbs};
        KW_CHECK(kw_tensor_pack_quantized(b, &q, &ws[c]));
    }
    KW_CHECK(kw_tensor_alloc(b, &x, KW_DTYPE_F32, 2, (int64_t[]){M, K}));
    KW_CHECK(kw_tensor_alloc(b, &y, KW_DTYPE_F32, 2, (int64_t[]){M, N}));
    kw_fill_random(x.data, KW_DTYPE_F32, (size_t)(M * K), 99);
    KW_CHECK(kw_time_ab_calls(b, &y, &x, ws, copies, reps, sec));
    *w_bytes = kw_tensor_nbytes(&ws[1]);
out:
    for (int c = 0; ws && c < 2 * copies; ++c)
        kw_tensor_free(&ws[c]);
    free(ws), free(codes), free(scales), free(offsets), free(sb);
    kw_tensor_free(&x);
    kw_tensor_free(&y);
    return rc;
}

/* Rows of kw_bench_quantized: each of two pairs of layouts (exact, twin), decode (out of cache) and prefill M = 128. */
static void kw_bench_qpairs(kw_backend *b, const enum kw_layout pairs[2][2], const char *const names[2],
                            size_t min_w_bytes, int reps) {
    for (size_t s = 3; s < 5; ++s)
        for (int p = 0; p < 2 && pairs[p][0] != KW_LAYOUT_ROWS; ++p) /* KW_LAYOUT_ROWS: no second pair */
            for (int64_t M = 1; M <= 128; M *= 128) {
                double sec[2];
                size_t wb = 0;
                if (kw_time_qpair(b, M, kw_decode_shapes[s].N, kw_decode_shapes[s].K, pairs[p],
                                  M == 1 ? min_w_bytes : 0, reps, sec, &wb) != 0) {
                    fprintf(stderr, "bench kernels: %s\n", kw_error_detail());
                    continue;
                }
                printf("%-22s %-14s %6lld %11.1f %11.1f %7.2fx %9.2f\n", kw_decode_shapes[s].name, names[p],
                       (long long)M, sec[0] * 1e6, sec[1] * 1e6, sec[0] / sec[1], (double)wb / sec[1] / 1e9);
            }
}

/* --quantized: kept-quantized weights (Q4_K's U4, Q6_K's S8_G16) rebuilt in f32 against the int8-activation layouts
 * (x8), then against the super-block layouts (sb: the same bits in fewer bytes), then Q6_K's plain and super-block
 * int8 codes against its 6-bit codes (s6: QPANELS_S6_G16_SB, the same bits), then the int8-activation layouts against
 * their super-block forms (x8sb: the same bits), Q6_K's against its 6-bit one (x8s6), and Q8_0's exact S8 against
 * its int8-activation S8_X8 (x8q8). */
static void kw_bench_quantized(kw_backend *b, int threads, size_t min_w_bytes, int reps) {
    static const enum kw_layout pairs[12][2] = {{KW_LAYOUT_QPANELS_U4, KW_LAYOUT_QPANELS_U4_X8},
                                                {KW_LAYOUT_QPANELS_S8_G16, KW_LAYOUT_QPANELS_S8_G16_X8},
                                                {KW_LAYOUT_QPANELS_U4, KW_LAYOUT_QPANELS_U4_SB},
                                                {KW_LAYOUT_QPANELS_S8_G16, KW_LAYOUT_QPANELS_S8_G16_SB},
                                                {KW_LAYOUT_QPANELS_S8_G16, KW_LAYOUT_QPANELS_S6_G16_SB},
                                                {KW_LAYOUT_QPANELS_S8_G16_SB, KW_LAYOUT_QPANELS_S6_G16_SB},
                                                {KW_LAYOUT_QPANELS_U4_X8, KW_LAYOUT_QPANELS_U4_SB_X8},
                                                {KW_LAYOUT_QPANELS_S8_G16_X8, KW_LAYOUT_QPANELS_S8_G16_SB_X8},
                                                {KW_LAYOUT_QPANELS_S8_G16_X8, KW_LAYOUT_QPANELS_S6_G16_SB_X8},
                                                {KW_LAYOUT_QPANELS_S8_G16_SB_X8, KW_LAYOUT_QPANELS_S6_G16_SB_X8},
                                                {KW_LAYOUT_QPANELS_S8, KW_LAYOUT_QPANELS_S8_X8},
                                                {KW_LAYOUT_ROWS, KW_LAYOUT_ROWS}};
    static const char *const names[6][2] = {{"U4 (Q4_K)", "S8_G16 (Q6_K)"}, {"U4 (Q4_K)", "S8_G16 (Q6_K)"},
                                            {"S8_G16 (Q6_K)", "S8_G16_SB"}, {"U4_X8 (Q4_K)", "S8_G16_X8"},
                                            {"S8_G16_X8", "S8_G16_SB_X8"},  {"S8 (Q8_0)", ""}};
    static const char *const what[6] = {
        "f32 weights rebuilt (exact) vs int8 activations (x8)",
        "f32 weights rebuilt (exact) vs the super-block layouts (sb: the same bits, "
        "fewer bytes)",
        "f32 weights rebuilt (exact) vs Q6_K's 6-bit super-block layout (s6: the same "
        "bits, fewer bytes)",
        "int8 activations (x8) vs their super-block layouts (x8sb: the same bits, "
        "fewer bytes)",
        "int8 activations (x8) vs Q6_K's 6-bit super-block layout (x8s6: the same bits, "
        "fewer bytes)",
        "f32 weights rebuilt (exact) vs Q8_0 with int8 activations and f16 scales (x8q8: "
        "S8_X8, 1.0625 bytes per weight)"};
    static const char *const tag[6] = {"x8", "sb", "s6", "x8sb", "x8s6", "x8q8"};
    static const char *const base[6] = {"exact", "exact", "exact", "x8", "x8", "exact"};
    for (int part = 0; part < 6; ++part) {
        const char *t = tag[part];
        printf("== %d thread%s: kept quantized, %s\n", threads, threads > 1 ? "s" : "", what[part]);
        printf("%-22s %-14s %6s %8s us %8s us %3s gain %4s GB/s\n", "shape", "layout", "M", base[part], t, t, t);
        kw_bench_qpairs(b, pairs + 2 * part, names[part], min_w_bytes, reps);
    }
}

/* ------------------------------------------------------------------------------------------------------------
 * --attention
 */

struct kw_attn_shape {
    const char *name;
    int64_t Hq, Hkv, D;
};

static const struct kw_attn_shape kw_attn_shapes[] = {
    {"Qwen3-0.6B", 16, 8, 128}, {"SmolLM2-135M", 9, 3, 64}, {"Llama-3.2-1B", 32, 8, 64}, {"Gemma-3-270M", 4, 1, 256}};

/* Best-of-reps seconds of one attention call on b: T queries at positions q_pos0 .. q_pos0 + T - 1 over caches[i]
 * (n_caches (k, v) pairs, cycled through one call each, as a decode step goes through the layers). */
static int kw_time_attention(kw_backend *b, const struct kw_attn_shape *sh, int64_t T, int64_t q_pos0,
                             kw_tensor (*caches)[2], int n_caches, int reps, double *sec) {
    int rc = 0;
    kw_tensor q = {0}, o = {0};
    KW_CHECK(kw_tensor_alloc(b, &q, KW_DTYPE_F32, 3, (int64_t[]){T, sh->Hq, sh->D}));
    KW_CHECK(kw_tensor_alloc(b, &o, KW_DTYPE_F32, 3, (int64_t[]){T, sh->Hq, sh->D}));
    kw_fill_random(q.data, KW_DTYPE_F32, (size_t)(T * sh->Hq * sh->D), 5);
    const kw_attention_params ap = {.q_pos0 = q_pos0, .n_kv = q_pos0 + T, .scale = 1.0f / sqrtf((float)sh->D)};
    double best = 1e30;
    for (int r = 0; r <= reps; ++r) { /* the first pass warms up */
        const uint64_t t0 = kw_time_now_ns();
        for (int c = 0; c < n_caches; ++c)
            KW_CHECK(kw_op_attention(b, &o, &q, &caches[c][0], &caches[c][1], &ap));
        KW_CHECK(kw_backend_synchronize(b));
        const double s = kw_time_seconds(t0, kw_time_now_ns()) / n_caches;
        if (r > 0) best = s < best ? s : best;
    }
    *sec = best;
out:
    kw_tensor_free(&q), kw_tensor_free(&o);
    return rc;
}

/* The attention op on bf16 caches of four models' shapes. Prefill: 512 queries at positions 0..511 (causal) on one
 * cache, ms per call and GFLOP/s (4 Hq D T (T + 1) / 2: q . k and the weighted sum of v for every visible pair),
 * against OpenBLAS sgemm doing the same products densely in f32 per query head (Q K^T and P V, T x T, timed here and
 * halved for the causal triangle). Decode: one query at position 511 against copies of a layer's caches totalling at
 * least min_bytes, cycled through as a decode step goes through the layers (each call's K and V come from memory),
 * us per call and GB/s of K and V read against read_bw. Returns 0, or the status of the first shape that failed (its
 * row is left out, the others still run). */
static int kw_bench_attention(kw_backend *b, int threads, size_t min_bytes, int reps, double read_bw) {
    const int64_t T = 512;
    int first_rc = 0;
    printf("== %d thread%s: attention on a bf16 cache, %lld tokens\n", threads, threads > 1 ? "s" : "", (long long)T);
    printf("%-14s %10s %12s %9s %10s %14s %9s %11s\n", "shape", "Hq/Hkv/D", "prefill ms", "GFLOP/s", "vs sgemm",
           "decode us/call", "GB/s", "vs read bw");
    for (size_t s = 0; s < sizeof kw_attn_shapes / sizeof kw_attn_shapes[0]; ++s) {
        const struct kw_attn_shape *sh = &kw_attn_shapes[s];
        const size_t layer_bytes = (size_t)(2 * sh->Hkv * T * sh->D) * 2;
        int copies = (int)((min_bytes + layer_bytes - 1) / layer_bytes);
        copies = copies < 1 ? 1 : copies > 4096 ? 4096 : copies;
        kw_tensor(*caches)[2] = calloc((size_t)copies, sizeof *caches);
        int made = 0, rc = caches ? 0 : kw_error_set(KW_E_NOMEM, "attention caches: %d copies", copies);
        for (; rc == 0 && made < copies; ++made)
            for (int kv = 0; kv < 2 && rc == 0; ++kv) {
                rc = kw_tensor_alloc(b, &caches[made][kv], KW_DTYPE_BF16, 3, (int64_t[]){sh->Hkv, T, sh->D});
                if (rc == 0)
                    kw_fill_random(caches[made][kv].data, KW_DTYPE_BF16, (size_t)(sh->Hkv * T * sh->D),
                                   (uint32_t)(2 * made + kv + 11));
            }
        double pre = 0.0, dec = 0.0;
        if (rc == 0) rc = kw_time_attention(b, sh, T, 0, caches, 1, reps, &pre);
        if (rc == 0) rc = kw_time_attention(b, sh, 1, T - 1, caches, made, reps, &dec);
        const double dense = rc != 0 ? 0.0
                                     : (double)sh->Hq * (kw_time_sgemm(T, T, sh->D, threads, reps) +
                                                         kw_time_sgemm(T, sh->D, T, threads, reps));
        if (rc == 0 && dense >= 1e29) /* kw_time_sgemm could not allocate its matrices */
            rc = kw_error_set(KW_E_NOMEM, "the sgemm baseline's matrices (%lld x %lld)", (long long)T, (long long)T);
        if (rc != 0) {
            fprintf(stderr, "bench kernels: %s: %s\n", sh->name, kw_error_detail());
            first_rc = first_rc != 0 ? first_rc : rc;
        } else {
            const double pairs = (double)T * (double)(T + 1) / 2.0;
            const double flops = 4.0 * (double)sh->Hq * (double)sh->D * pairs;
            const double gbs = (double)layer_bytes / dec / 1e9;
            char dims[32];
            snprintf(dims, sizeof dims, "%lld/%lld/%lld", (long long)sh->Hq, (long long)sh->Hkv, (long long)sh->D);
            printf("%-14s %10s %12.3f %9.1f %9.0f%% %14.1f %9.2f %10.0f%%\n", sh->name, dims, pre * 1e3,
                   flops / pre / 1e9, 100.0 * dense * pairs / ((double)T * (double)T) / pre, dec * 1e6, gbs,
                   100.0 * gbs / read_bw);
        }
        for (int c = 0; caches && c < made; ++c)
            kw_tensor_free(&caches[c][0]), kw_tensor_free(&caches[c][1]);
        free(caches);
    }
    return first_rc;
}

static void kw_bench_kernels_usage(FILE *f) {
    fprintf(f,
            "usage: kvwire bench kernels [--threads N] [--reps N] [--quick] [--quantized] [--bf16-pair] [--attention]\n"
            "  --quantized  only the kept-quantized layouts: exact against int8 activations and against the\n"
            "               super-block layouts, A B A B\n"
            "  --bf16-pair  only decode of bf16 weights, exact against bf16 activations, call by call A B A B\n"
            "  --attention  only attention on bf16 caches of four models' shapes: a 512-token prefill against\n"
            "               OpenBLAS sgemm of the same products, decode at 512 tokens against the read bandwidth\n");
}

int kw_bench_kernels(int argc, char **argv) {
    int thread_list[2] = {1, 2}, n_thread_list = 2, quick = 0, quantized = 0, bf16_pair = 0, attention = 0;
    int64_t threads_opt = -1, reps_opt = 5;
    const kw_cli_option opts[] = {
        KW_CLI_INT("--threads", &threads_opt, 0, 1024),
        KW_CLI_INT("--reps", &reps_opt, 0, 1000),
        KW_CLI_FLAG("--quick", &quick),
        KW_CLI_FLAG("--quantized", &quantized),
        KW_CLI_FLAG("--bf16-pair", &bf16_pair),
        KW_CLI_FLAG("--attention", &attention),
    };
    const int st = KW_CLI_PARSE("kvwire bench kernels", argc, argv, opts, kw_bench_kernels_usage);
    if (st != KW_CLI_RUN) return st;
    if (quantized + bf16_pair + attention > 1) {
        fprintf(stderr,
                "kvwire bench kernels: --quantized, --bf16-pair and --attention each run only their own part; give "
                "one\n");
        kw_bench_kernels_usage(stderr);
        return 2;
    }
    if (threads_opt >= 0) { /* one thread count instead of 1 and 2 */
        thread_list[0] = (int)threads_opt;
        n_thread_list = 1;
    }
    const int reps = reps_opt < 1 ? 1 : (int)reps_opt;
    const size_t big_bytes = quick || quantized || attention ? ((size_t)128 << 20) : ((size_t)1 << 30);
    const size_t min_w_bytes = quick ? ((size_t)64 << 20) : ((size_t)512 << 20);
    const size_t n = big_bytes / sizeof(float);
    float *buf = malloc(big_bytes);
    if (!buf) {
        fprintf(stderr, "bench kernels: cannot allocate %zu bytes\n", big_bytes);
        return 1;
    }
    kw_fill_random(buf, KW_DTYPE_F32, n, 1);
    double sink = 0.0;

    for (int ti = 0; ti < n_thread_list; ++ti) {
        const int threads = thread_list[ti];
        kw_backend *b = NULL;
        if (kw_backend_create_cpu(threads, &b) != 0) {
            fprintf(stderr, "bench kernels: %s\n", kw_error_detail());
            free(buf);
            return 1;
        }
        if (quantized) {
            kw_bench_quantized(b, threads, min_w_bytes, reps);
            kw_backend_destroy(b);
            continue;
        }
        if (attention) {
            const int rc = kw_bench_attention(b, threads, min_w_bytes, reps, kw_read_bw(buf, n, threads, reps, &sink));
            kw_backend_destroy(b);
            if (rc != 0) {
                free(buf);
                return 1;
            }
            continue;
        }
        if (bf16_pair) {
            printf("== %d thread%s: decode M=1, bf16 weights, exact (bf16) and bf16 activations (bf16a), A B A B\n",
                   threads, threads > 1 ? "s" : "");
            printf("%-24s %8s %12s %12s %10s %10s %10s\n", "shape", "panels", "bf16 us", "bf16a us", "bf16 GB/s",
                   "bf16a GB/s", "bf16/bf16a");
            for (size_t s = 0; s < sizeof kw_pair_shapes / sizeof kw_pair_shapes[0]; ++s) {
                const int64_t N = kw_pair_shapes[s].N, K = kw_pair_shapes[s].K;
                double sec[2] = {0.0, 0.0};
                if (kw_time_bf16_pair(b, N, K, min_w_bytes, reps, sec) != 0) {
                    fprintf(stderr, "bench kernels: %s\n", kw_error_detail());
                    continue;
                }
                const double gb = (double)(N * K) * 2.0 / 1e9;
                printf("%-24s %8lld %12.1f %12.1f %10.2f %10.2f %10.3f\n", kw_pair_shapes[s].name,
                       (long long)((N + KW_PANEL_ROWS - 1) / KW_PANEL_ROWS), sec[0] * 1e6, sec[1] * 1e6, gb / sec[0],
                       gb / sec[1], sec[0] / sec[1]);
            }
            kw_backend_destroy(b);
            continue;
        }
        /* the bound: the best read pattern (bench_bandwidth.c), or the float sum below if it reads faster */
        printf("== %d thread%s: read patterns\n", threads, threads > 1 ? "s" : "");
        const double pattern_bw = kw_bench_read_bandwidth(threads, big_bytes, reps, stdout);
        const double sum_bw = kw_read_bw(buf, n, threads, reps, &sink);
        const double read_bw = pattern_bw > sum_bw ? pattern_bw : sum_bw;
        const double copy_bw = kw_memcpy_bw(buf, n, threads, reps);
        printf(
            "== %d thread%s: baseline read %.2f GB/s (the best of the patterns and a float sum over %zu MiB), memcpy "
            "%.2f GB/s (read+write)\n",
            threads, threads > 1 ? "s" : "", read_bw, big_bytes >> 20, copy_bw);
        printf("%-24s %6s %12s %10s %12s\n", "decode M=1", "dtype", "us/call", "GB/s", "vs read bw");
        for (size_t s = 0; s < sizeof kw_decode_shapes / sizeof kw_decode_shapes[0]; ++s) {
            if (quick && s != 3 && s != 4) continue;
            for (int d = 0; d < 3; ++d) { /* bf16, f32, bf16 weights with bf16 activations (bf16a) */
                const enum kw_dtype dtype = d == 1 ? KW_DTYPE_F32 : KW_DTYPE_BF16;
                if (dtype == KW_DTYPE_F32 && s != 3) continue; /* one f32 shape for comparison */
                double sec = 0.0;
                size_t wb = 0;
                if (kw_time_matmul(b, 1, kw_decode_shapes[s].N, kw_decode_shapes[s].K, dtype, d == 2, min_w_bytes, reps,
                                   &sec, &wb) != 0) {
                    fprintf(stderr, "bench kernels: %s\n", kw_error_detail());
                    continue;
                }
                const double gbs = (double)wb / sec / 1e9;
                printf("%-24s %6s %12.1f %10.2f %11.0f%%\n", kw_decode_shapes[s].name,
                       d == 2 ? "bf16a" : kw_dtype_name(dtype), sec * 1e6, gbs, 100.0 * gbs / read_bw);
            }
        }
        printf("%-24s %6s %12s %10s %12s\n", "prefill M=128", "dtype", "ms/call", "GFLOP/s", "vs sgemm f32");
        for (size_t s = 0; s < 5; ++s) {
            if (quick && s != 3) continue;
            const int64_t M = 128, N = kw_decode_shapes[s].N, K = kw_decode_shapes[s].K;
            const double flops = 2.0 * (double)M * (double)N * (double)K;
            const double base = kw_time_sgemm(M, N, K, threads, reps);
            for (int d = 0; d < 3; ++d) { /* bf16, f32, bf16 weights with bf16 activations (bf16a) */
                const enum kw_dtype dtype = d == 1 ? KW_DTYPE_F32 : KW_DTYPE_BF16;
                double sec = 0.0;
                size_t wb = 0;
                if (kw_time_matmul(b, M, N, K, dtype, d == 2, 0, reps, &sec, &wb) != 0) {
                    fprintf(stderr, "bench kernels: %s\n", kw_error_detail());
                    continue;
                }
                printf("%-24s %6s %12.3f %10.1f %11.0f%%   (sgemm f32 %.1f GFLOP/s)\n", kw_decode_shapes[s].name,
                       d == 2 ? "bf16a" : kw_dtype_name(dtype), sec * 1e3, flops / sec / 1e9, 100.0 * base / sec,
                       flops / base / 1e9);
            }
        }
        kw_backend_destroy(b);
    }
    free(buf);
    if (sink == 12345.678) printf(" "); /* keeps the baseline sums alive */
    return 0;
}

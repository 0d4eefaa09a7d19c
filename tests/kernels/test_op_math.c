/* test_op_math.c: kernels/kw_op_math.h on the CPU, the rules the CPU and CUDA backends share (the GPU compiles the
 * same lines), against the kw_ref oracles or written-out expectations:
 *  - f32/bf16/f16 loads and stores bit-identical to kw_ref_load / kw_ref_store (specials, ties, subnormals);
 *  - the RoPE angle and rotation bit-identical to kw_ref_rope; RMSNorm's scale and the activations against
 *    double-precision formulas;
 *  - the attention span plus mask equal to the causal / window / n_kv visibility rule, row by row;
 *  - argmax's candidate order: the CUDA kernel's reduction (strided per-thread scans, xor butterflies within a
 *    warp, a serial merge of warp results) replayed on the CPU gives kw_ref_argmax on ties, NaN, +-Inf and +-0;
 *  - get_rows' device error key (order, round trip, never 0) and the CUDA grid arithmetic;
 *  - the cublasGemmEx arguments of the CUDA matmul (row-major y = x W^T through column-major cuBLAS, whole and in
 *    widened panels) run through a column-major reference GEMM.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_half.h"
#include "kernels/kw_backend_impl.h"
#include "kernels/kw_op_math.h"
#include "kernels/ref/kw_ref.h"

#define U_F32 (1.0 / 16777216.0)

static uint64_t rng_state = 0x243F6A8885A308D3ULL;

static uint64_t kw_next(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1DULL;
}

/* uniform in [-1, 1) */
static float kw_uniform(void) {
    return (float)((double)(kw_next() >> 11) * 0x1.0p-52 - 1.0);
}

static uint32_t kw_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* ------------------------------------------------------------------------------------------------------------
 * Elements
 */

static void test_load_store_match_ref(void **state) {
    (void)state;
    const float specials[] = {0.0f,
                              -0.0f,
                              1.0f + 1.0f / 256.0f,
                              1.0078125f + 1.0f / 256.0f,
                              NAN,
                              -NAN,
                              INFINITY,
                              -INFINITY,
                              1e-40f,
                              -6e-8f,
                              3e-5f,
                              65504.0f,
                              65519.0f,
                              65520.0f,
                              -3.0e38f,
                              1.0f + 1.0f / 2048.0f,
                              1e-45f,
                              3.4e38f,
                              -1e-30f,
                              0.333333343f};
    enum { N = 1000 };
    float src[N];
    for (int i = 0; i < N; ++i)
        src[i] = i < (int)(sizeof specials / sizeof specials[0]) ? specials[i]
                                                                 : kw_uniform() * powf(2.0f, (float)(i % 60 - 30));
    const enum kw_dtype dtypes[] = {KW_DTYPE_F32, KW_DTYPE_BF16, KW_DTYPE_F16};
    for (size_t k = 0; k < 3; ++k) {
        const enum kw_dtype dt = dtypes[k];
        uint8_t got[N * 4], want[N * 4];
        for (int i = 0; i < N; ++i) {
            kw_opm_store(got, dt, i, src[i]);
            kw_ref_store(want, dt, i, src[i]);
        }
        assert_memory_equal(got, want, (size_t)N * kw_dtype_size(dt));
        for (int i = 0; i < N; ++i)
            assert_int_equal(kw_bits(kw_opm_load(got, dt, i)), kw_bits(kw_ref_load(want, dt, i)));
    }
    /* every bf16 and f16 bit pattern widens exactly as the oracle does */
    for (uint32_t h = 0; h < 65536; ++h) {
        const uint16_t v = (uint16_t)h;
        assert_int_equal(kw_bits(kw_opm_load(&v, KW_DTYPE_BF16, 0)), kw_bits(kw_ref_load(&v, KW_DTYPE_BF16, 0)));
        assert_int_equal(kw_bits(kw_opm_load(&v, KW_DTYPE_F16, 0)), kw_bits(kw_ref_load(&v, KW_DTYPE_F16, 0)));
    }
}

/* The activations against the oracle (double, rounded once): within 2 ulp of the library function plus the
 * roundings of each formula (the bounds of kw_backend_cases.c's kw_act_tol), NaN exactly where the oracle has NaN. */
static void test_act_matches_ref(void **state) {
    (void)state;
    const enum kw_act acts[] = {KW_ACT_SILU, KW_ACT_GELU_ERF, KW_ACT_GELU_TANH, KW_ACT_SIGMOID, KW_ACT_IDENTITY};
    for (size_t a = 0; a < sizeof acts / sizeof acts[0]; ++a) {
        for (int i = -2000; i <= 2000; ++i) {
            const float xs[] = {(float)i * 0.01f, (float)i * 0.07f, (float)i * 1e-6f};
            for (size_t k = 0; k < 3; ++k) {
                const float x = xs[k];
                const float got = kw_opm_act(x, acts[a]), want = kw_ref_act(x, acts[a]);
                const double tol = acts[a] == KW_ACT_IDENTITY ? 0.0
                                   : acts[a] == KW_ACT_SILU || acts[a] == KW_ACT_SIGMOID
                                       ? 14.0 * U_F32 * fabs(want)
                                       : (7.0 * fabs(x) + 6.0 * fabs(want)) * U_F32;
                /* below x = -88.7 exp(-x) overflows fp32 and x / (1 + exp(-x)) is -0, as in torch's fp32 SiLU,
                 * where the exact value is a tiny normal (-2.6e-37 at the threshold) */
                const double overflow = acts[a] == KW_ACT_SILU && x < -88.0f ? fabs(want) : 0.0;
                if (!(fabs((double)got - (double)want) <= tol + overflow + 1e-37))
                    fail_msg("act %d at x = %.9g: got %.9g want %.9g", (int)acts[a], (double)x, (double)got,
                             (double)want);
            }
        }
        const float specials[] = {NAN, INFINITY, -INFINITY, 100.0f, -100.0f, 0.0f, -0.0f};
        for (size_t k = 0; k < sizeof specials / sizeof specials[0]; ++k) {
            const float got = kw_opm_act(specials[k], acts[a]), want = kw_ref_act(specials[k], acts[a]);
            if (isnan(want)) {
                assert_true(isnan(got));
            } else if (isinf(want)) {
                assert_true(got == want);
            } else {
                assert_false(isnan(got));
                assert_true(fabs((double)got - (double)want) <= 16.0 * U_F32 * fabs(want) + 1e-37);
            }
        }
    }
}

static void test_rms_scale(void **state) {
    (void)state;
    for (int i = 0; i < 2000; ++i) {
        const float ss = fabsf(kw_uniform()) * powf(10.0f, (float)(i % 12 - 6));
        const int64_t D = 1 + (int64_t)(kw_next() % 4096);
        const float eps = i % 2 ? 1e-6f : 1e-5f;
        const double want = 1.0 / sqrt((double)(float)((double)ss / (double)D) + (double)eps);
        /* mean, + eps, sqrt and the reciprocal: four roundings, sqrt halving one */
        assert_true(fabs((double)kw_opm_rms_scale(ss, D, eps) - want) <= 4.0 * U_F32 * want);
    }
}

/* The shared angle and rotation, with cos/sin taken as the CPU backend and the oracle take them, give the oracle's
 * bits exactly (partial rotary_dim, every scaling). */
static void test_rope_rotate_matches_ref(void **state) {
    (void)state;
    const int64_t D = 20;
    for (int scaling = 0; scaling < 3; ++scaling) {
        const kw_rope_params params = {.theta = 10000.0,
                                       .rotary_dim = 16,
                                       .scaling = (enum kw_rope_scaling)scaling,
                                       .factor = 8.0,
                                       .low_freq_factor = 1.0,
                                       .high_freq_factor = 4.0,
                                       .original_max_position = 8192.0};
        float inv_freq[KW_ROPE_MAX_DIM / 2];
        kw__rope_inv_freq(&params, inv_freq);
        for (int32_t pos = 0; pos < 70000; pos += 997) {
            float x[20], want[20];
            for (int64_t d = 0; d < D; ++d)
                x[d] = want[d] = 3.0f * kw_uniform();
            kw_ref_rope(want, &pos, 1, 1, D, &params);
            for (int64_t i = 0; i < 8; ++i) {
                const float angle = kw_opm_rope_angle(pos, inv_freq[i]);
                kw_opm_rope_rotate(&x[i], &x[i + 8], (float)cos((double)angle), (float)sin((double)angle));
            }
            for (int64_t d = 0; d < D; ++d)
                assert_int_equal(kw_bits(x[d]), kw_bits(want[d]));
        }
    }
}

/* ------------------------------------------------------------------------------------------------------------
 * Indexing
 */

static void test_split3_and_kv_offset(void **state) {
    (void)state;
    const int64_t T = 5, H = 3, D = 7;
    for (int64_t i = 0; i < T * H * D; ++i) {
        int64_t t, h, d;
        kw_opm_split3(i, H, D, &t, &h, &d);
        assert_true(t >= 0 && t < T && h >= 0 && h < H && d >= 0 && d < D);
        assert_int_equal((t * H + h) * D + d, i);
    }
    /* the cache layout of kw_ref_kv_store: (H, cap, D), row pos0 + t of head h */
    assert_int_equal(kw_opm_kv_offset(2, 3, 16, 5, 64), ((2 * 16) + 5 + 3) * 64);
    /* past 2^31 elements (32 kv heads x 1M rows x D 512): no 32-bit wrap anywhere */
    assert_int_equal(kw_opm_kv_offset(31, 0, (int64_t)1 << 20, ((int64_t)1 << 20) - 1, 512),
                     (int64_t)17179868672); /* (31 * 2^20 + 2^20 - 1) * 512 */
    int64_t t, h, d;
    kw_opm_split3((int64_t)151936 * 1024 * 64 + 12345, 64, 1024, &t, &h, &d);
    assert_int_equal(t, 151936);
    assert_int_equal(h, 12);
    assert_int_equal(d, 57);
}

/* [lo, hi] minus the mask is exactly the set the oracle's rule admits: j <= p, j < n_kv, j > p - window (window > 0),
 * mask[j] != 0. */
static void test_attn_span_is_the_visibility_rule(void **state) {
    (void)state;
    uint8_t mask[64];
    for (int j = 0; j < 64; ++j)
        mask[j] = (uint8_t)(kw_next() % 3 != 0);
    for (int use_mask = 0; use_mask < 2; ++use_mask)
        for (int64_t p = 0; p < 40; ++p)
            for (int64_t n_kv = p + 1; n_kv <= p + 4; ++n_kv)
                for (int64_t window = 0; window <= 45; ++window) {
                    int64_t lo, hi;
                    kw_opm_attn_span(p, n_kv, window, &lo, &hi);
                    const uint8_t *m = use_mask ? mask : NULL;
                    for (int64_t j = 0; j < 64; ++j) {
                        const int rule = j <= p && j < n_kv && !(window > 0 && j <= p - window) && !(m && m[j] == 0);
                        const int span = j >= lo && j <= hi && !kw_opm_attn_masked(m, j);
                        if (rule != span)
                            fail_msg("p %lld n_kv %lld window %lld row %lld: rule %d, span [%lld, %lld] %d",
                                     (long long)p, (long long)n_kv, (long long)window, (long long)j, rule,
                                     (long long)lo, (long long)hi, span);
                    }
                }
}

/* ------------------------------------------------------------------------------------------------------------
 * argmax
 */

/* The CUDA argmax kernel's reduction, replayed: thread tid of a block of B scans tid, tid + B, ...; each warp
 * merges with xor partners 16, 8, 4, 2, 1 (every lane reads its partner's value from before the step); thread 0
 * then merges the warp results 1 .. B/32 - 1 into warp 0's. Returns the row's index (0 for "nothing"). */
static int32_t kw_argmax_as_cuda(const float *x, int64_t N, int flags, int B) {
    float v[1024];
    int64_t idx[1024];
    for (int tid = 0; tid < B; ++tid) {
        v[tid] = 0.0f;
        idx[tid] = -1;
        for (int64_t i = tid; i < N; i += B) {
            const float c = kw_opm_argmax_value(x[i], flags);
            if (kw_opm_argmax_wins(c, i, v[tid], idx[tid])) v[tid] = c, idx[tid] = i;
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        float pv[1024];
        int64_t pi[1024];
        memcpy(pv, v, sizeof(float) * (size_t)B);
        memcpy(pi, idx, sizeof(int64_t) * (size_t)B);
        for (int tid = 0; tid < B; ++tid) {
            const int partner = tid ^ o;
            if (kw_opm_argmax_wins(pv[partner], pi[partner], v[tid], idx[tid]))
                v[tid] = pv[partner], idx[tid] = pi[partner];
        }
    }
    for (int w = 1; w < B / 32; ++w)
        if (kw_opm_argmax_wins(v[32 * w], idx[32 * w], v[0], idx[0])) v[0] = v[32 * w], idx[0] = idx[32 * w];
    return idx[0] < 0 ? 0 : (int32_t)idx[0];
}

static void test_argmax_reduction_matches_ref(void **state) {
    (void)state;
    enum { NMAX = 3000 };
    static float x[NMAX];
    const int64_t sizes[] = {1, 2, 31, 33, 255, 256, 257, 1000, NMAX};
    const int blocks[] = {32, 64, 256, 1024};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; ++s) {
        const int64_t N = sizes[s];
        for (int kind = 0; kind < 7; ++kind) {
            for (int64_t i = 0; i < N; ++i)
                x[i] = 10.0f * kw_uniform();
            if (kind == 1) /* exact ties, scattered */
                for (int k = 0; k < 5; ++k)
                    x[(int64_t)(kw_next() % (uint64_t)N)] = 20.0f;
            if (kind == 2) /* NaN everywhere but a few values, one +Inf */
                for (int64_t i = 0; i < N; ++i)
                    if (i % 5) x[i] = NAN;
            if (kind == 2 && N > 3) x[N - 2] = INFINITY;
            if (kind == 3)
                for (int64_t i = 0; i < N; ++i)
                    x[i] = NAN;
            if (kind == 4)
                for (int64_t i = 0; i < N; ++i)
                    x[i] = -INFINITY;
            if (kind == 5) /* +0 and -0 tie; the first wins */
                for (int64_t i = 0; i < N; ++i)
                    x[i] = (i % 3 == 1) ? -0.0f : (i % 3 == 2 ? 0.0f : -1.0f);
            if (kind == 6) /* equal only after bf16 rounding */
                for (int64_t i = 0; i < N; ++i)
                    x[i] = (i % 7 == 3) ? 100.25f : (i % 11 == 5 ? 100.0f : -5.0f);
            for (int flags = 0; flags < 2; ++flags) {
                int32_t want;
                kw_ref_argmax(&want, x, 1, N, flags);
                for (size_t b = 0; b < sizeof blocks / sizeof blocks[0]; ++b) {
                    const int32_t got = kw_argmax_as_cuda(x, N, flags, blocks[b]);
                    if (got != want)
                        fail_msg("N %lld kind %d flags %d block %d: %d, oracle %d", (long long)N, kind, flags,
                                 blocks[b], got, want);
                }
            }
        }
    }
}

/* ------------------------------------------------------------------------------------------------------------
 * get_rows error key, launch geometry
 */

static void test_bad_id_key(void **state) {
    (void)state;
    const int64_t rows[] = {0, 1, 2, 1000, INT32_MAX};
    const int32_t ids[] = {INT32_MIN, -1, 0, 151936, INT32_MAX};
    for (size_t r = 0; r < 5; ++r)
        for (size_t i = 0; i < 5; ++i) {
            const uint64_t key = kw_opm_bad_id_key(rows[r], ids[i]);
            assert_true(key != 0); /* a zeroed record means "no error" */
            assert_int_equal(kw_opm_bad_id_row(key), rows[r]);
            assert_int_equal(kw_opm_bad_id_id(key), ids[i]);
            if (r > 0) /* a lower row has a larger key, whatever the ids: atomicMax keeps the first bad row */
                for (size_t j = 0; j < 5; ++j)
                    assert_true(kw_opm_bad_id_key(rows[r - 1], ids[j]) > key);
        }
}

static void test_grid_blocks(void **state) {
    (void)state;
    assert_int_equal(kw_opm_grid_blocks(1, 256), 1);
    assert_int_equal(kw_opm_grid_blocks(256, 256), 1);
    assert_int_equal(kw_opm_grid_blocks(257, 256), 2);
    assert_int_equal(kw_opm_grid_blocks((int64_t)151936 * 1024, 256), 607744);
    /* beyond the cap a grid-stride loop covers the rest; the grid stays a valid gridDim.x */
    assert_int_equal(kw_opm_grid_blocks((int64_t)1 << 40, 256), (unsigned)KW_OPM_MAX_BLOCKS);
    assert_true(KW_OPM_MAX_BLOCKS <= INT32_MAX);
}

static void test_attn_dims_per_lane(void **state) {
    (void)state;
    assert_int_equal(kw_opm_attn_dims_per_lane(0), 0);
    assert_int_equal(kw_opm_attn_dims_per_lane(KW_ATTENTION_MAX_HEAD_DIM + 1), 0);
    for (int64_t D = 1; D <= KW_ATTENTION_MAX_HEAD_DIM; ++D) {
        const int n = kw_opm_attn_dims_per_lane(D);
        assert_true(n == 1 || n == 2 || n == 4 || n == 8 || n == 16);
        assert_true(32 * n >= D);          /* every dimension has a lane */
        assert_true(n == 1 || 16 * n < D); /* and no smaller width would do */
    }
    assert_int_equal(kw_opm_attn_dims_per_lane(128), 4);
    assert_int_equal(kw_opm_attn_dims_per_lane(512), 16);
}

/* cuBLAS's definition, column-major: C[i + j ldc] = sum_p op(A)(i, p) op(B)(p, j), op(A)(i, p) = A[p + i lda] when
 * transposed, else A[i + p lda]; likewise B. Also checks the leading-dimension rules cuBLAS enforces and that every
 * write stays inside the c_len elements from c on. Sums in double, in p order. */
static void kw_colmajor_gemm(const kw_opm_gemm *g, const float *a, const float *b, float *c, int64_t c_len) {
    assert_true(g->lda >= (g->trans_a ? g->k : g->m) && g->ldb >= (g->trans_b ? g->n : g->k) && g->ldc >= g->m);
    for (int64_t i = 0; i < g->m; ++i)
        for (int64_t j = 0; j < g->n; ++j) {
            double s = 0.0;
            for (int64_t p = 0; p < g->k; ++p) {
                const float av = g->trans_a ? a[p + i * g->lda] : a[i + p * g->lda];
                const float bv = g->trans_b ? b[j + p * g->ldb] : b[p + j * g->ldb];
                s += (double)av * (double)bv;
            }
            assert_true(i + j * g->ldc < c_len);
            c[i + j * g->ldc] = (float)s;
        }
}

/* The cuBLAS arguments of the CUDA matmul, whole and in panels of every height, give y = x W^T exactly (same
 * double sums in the same order) and write each element of y once. */
static void test_gemm_args_give_x_wt(void **state) {
    (void)state;
    enum { M = 5, N = 7, K = 3 };
    float x[M * K], w[N * K], want[M * N], y[M * N];
    for (int i = 0; i < M * K; ++i)
        x[i] = kw_uniform();
    for (int i = 0; i < N * K; ++i)
        w[i] = kw_uniform();
    for (int m = 0; m < M; ++m)
        for (int n = 0; n < N; ++n) {
            double s = 0.0;
            for (int k = 0; k < K; ++k)
                s += (double)x[m * K + k] * (double)w[n * K + k];
            want[m * N + n] = (float)s;
        }
    for (int64_t max_floats = 1; max_floats <= (N + 1) * K; ++max_floats) {
        const int64_t nb = kw_opm_panel_rows(N, K, max_floats);
        assert_true(nb >= 1 && nb <= N && (nb == 1 || nb * K <= max_floats));
        for (int i = 0; i < M * N; ++i)
            y[i] = NAN;
        for (int64_t n0 = 0; n0 < N; n0 += nb) {
            const int64_t rows = N - n0 < nb ? N - n0 : nb;
            const kw_opm_gemm g = kw_opm_gemm_rows(M, N, K, n0, rows);
            kw_colmajor_gemm(&g, w + g.a_offset, x, y + g.c_offset, M * N - g.c_offset);
        }
        assert_memory_equal(y, want, sizeof want);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_load_store_match_ref),
        cmocka_unit_test(test_act_matches_ref),
        cmocka_unit_test(test_rms_scale),
        cmocka_unit_test(test_rope_rotate_matches_ref),
        cmocka_unit_test(test_split3_and_kv_offset),
        cmocka_unit_test(test_attn_span_is_the_visibility_rule),
        cmocka_unit_test(test_argmax_reduction_matches_ref),
        cmocka_unit_test(test_bad_id_key),
        cmocka_unit_test(test_grid_blocks),
        cmocka_unit_test(test_attn_dims_per_lane),
        cmocka_unit_test(test_gemm_args_give_x_wt),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

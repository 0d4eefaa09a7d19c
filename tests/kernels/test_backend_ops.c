/* test_backend_ops.c: every CPU backend flavour against the kw_ref oracles, plus the generic layer's argument
 * checks, deferred errors and the RoPE frequencies against values computed by transformers.
 *
 * The case table and the derived tolerances are in kw_backend_cases.c. The CPU backend is run in each ISA flavour
 * this machine has (KW_CPU_ISA lowers the choice) and with 1 and 2 threads, so the scalar fallback and the AVX2
 * path are tested even on an AVX-512 host.
 *
 * `test_kernels_backend_ops --perf [reps]` times the same cases instead (no assertions).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_half.h"
#include "common/kw_status.h"
#include "kernels/kw_backend.h"
#include "kernels/kw_backend_impl.h"
#include "kernels/cpu/kw_cpu.h"
#include "kernels/kw_op_math.h"
#include "kernels/ref/kw_ref.h"
#include "kw_backend_cases.h"

/* Creates a CPU backend with the given ISA ceiling ("" = the best available). */
static kw_backend *kw_make_cpu(const char *isa, int threads) {
    if (isa[0])
        setenv("KW_CPU_ISA", isa, 1);
    else
        unsetenv("KW_CPU_ISA");
    kw_backend *b = NULL;
    assert_int_equal(kw_backend_create_cpu(threads, &b), 0);
    unsetenv("KW_CPU_ISA");
    return b;
}

static void kw_run_all_cases(const char *isa, int threads) {
    kw_backend *b = kw_make_cpu(isa, threads);
    size_t failed = 0, run = 0;
    char desc[160];
    for (size_t i = 0; i < kw_n_cases; ++i) {
        const enum kw_case_result r = kw_case_run(b, &kw_cases[i], 0, NULL);
        if (r == KW_CASE_UNSUPPORTED) {
            fprintf(stderr, "not supported on cpu: %s\n", kw_case_describe(&kw_cases[i], desc, sizeof desc));
            continue;
        }
        ++run;
        if (r == KW_CASE_FAIL) {
            fprintf(stderr, "FAIL cpu(%s, %d threads): %s\n", isa[0] ? isa : "best", threads,
                    kw_case_describe(&kw_cases[i], desc, sizeof desc));
            ++failed;
        }
    }
    kw_backend_destroy(b);
    assert_int_equal(failed, 0);
    assert_int_equal(run, kw_n_cases); /* the CPU backend supports every case in the table */
}

static void test_cases_cpu_best_2_threads(void **state) {
    (void)state;
    kw_run_all_cases("", 2);
}

static void test_cases_cpu_best_1_thread(void **state) {
    (void)state;
    kw_run_all_cases("", 1);
}

static void test_cases_cpu_avx2(void **state) {
    (void)state;
    kw_run_all_cases("avx2", 2);
}

static void test_cases_cpu_scalar(void **state) {
    (void)state;
    kw_run_all_cases("scalar", 2);
}

/* ------------------------------------------------------------------------------------------------------------
 * Deferred errors: a token id out of range is found while the op runs and reported by the next synchronize.
 */

static void test_get_rows_bad_id_reported_at_synchronize(void **state) {
    (void)state;
    kw_backend *b = kw_make_cpu("", 2);
    const float table[3 * 2] = {1, 2, 3, 4, 5, 6};
    const int32_t ids[4] = {2, 3, -1, 0};
    float out[4 * 2];
    memset(out, 0x55, sizeof out);
    kw_tensor tt, ti, to;
    assert_int_equal(kw_tensor_from_host(b, &tt, KW_DTYPE_F32, 2, (int64_t[]){3, 2}, table), 0);
    assert_int_equal(kw_tensor_from_host(b, &ti, KW_DTYPE_I32, 1, (int64_t[]){4}, ids), 0);
    assert_int_equal(kw_tensor_alloc(b, &to, KW_DTYPE_F32, 2, (int64_t[]){4, 2}), 0);
    assert_int_equal(kw_op_get_rows(b, &to, &tt, &ti), 0); /* enqueued fine */
    assert_int_equal(kw_backend_download(b, out, &to, 0, sizeof out), 0);
    assert_int_equal(kw_backend_synchronize(b), KW_E_TOKEN_ID);
    assert_non_null(strstr(kw_error_detail(), "id 3"));
    const float want[8] = {5, 6, 0, 0, 0, 0, 1, 2}; /* bad rows zeroed, good rows written */
    assert_memory_equal(out, want, sizeof want);
    assert_int_equal(kw_backend_synchronize(b), 0); /* reported once */
    kw_tensor_free(&to);
    kw_tensor_free(&tt); /* aliases: no-op for the data */
    kw_tensor_free(&ti);
    kw_backend_destroy(b);
}

/* The same contract as the CUDA runner checks it: first bad row of the first call, the exact message, once. */
static void test_get_rows_bad_ids_first_row_of_first_call(void **state) {
    (void)state;
    kw_backend *b = kw_make_cpu("", 2);
    assert_true(kw_case_bad_ids(b));
    kw_backend_destroy(b);
}

/* ------------------------------------------------------------------------------------------------------------
 * The generic layer's argument checks: each bad call is refused up front with the documented status.
 */

static void test_shape_rejections(void **state) {
    (void)state;
    kw_backend *b = kw_make_cpu("", 1), *b2 = kw_make_cpu("", 1);
    kw_tensor x, w, w16, y, bad_y, ids, q, kc, vc, kc16, out3, pos, other, u8;
    assert_int_equal(kw_tensor_alloc(b, &x, KW_DTYPE_F32, 2, (int64_t[]){3, 8}), 0);
    assert_int_equal(kw_tensor_alloc(b, &w, KW_DTYPE_BF16, 2, (int64_t[]){5, 8}), 0);
    assert_int_equal(kw_tensor_alloc(b, &w16, KW_DTYPE_BF16, 2, (int64_t[]){5, 9}), 0);
    assert_int_equal(kw_tensor_alloc(b, &y, KW_DTYPE_F32, 2, (int64_t[]){3, 5}), 0);
    assert_int_equal(kw_tensor_alloc(b, &bad_y, KW_DTYPE_F32, 2, (int64_t[]){3, 6}), 0);
    assert_int_equal(kw_tensor_alloc(b, &ids, KW_DTYPE_I32, 1, (int64_t[]){3}), 0);
    assert_int_equal(kw_tensor_alloc(b, &q, KW_DTYPE_F32, 3, (int64_t[]){2, 6, 8}), 0);
    assert_int_equal(kw_tensor_alloc(b, &out3, KW_DTYPE_F32, 3, (int64_t[]){2, 6, 8}), 0);
    assert_int_equal(kw_tensor_alloc(b, &kc, KW_DTYPE_F32, 3, (int64_t[]){4, 10, 8}), 0);
    assert_int_equal(kw_tensor_alloc(b, &vc, KW_DTYPE_F32, 3, (int64_t[]){4, 10, 8}), 0);
    assert_int_equal(kw_tensor_alloc(b, &kc16, KW_DTYPE_F16, 3, (int64_t[]){3, 10, 8}), 0);
    assert_int_equal(kw_tensor_alloc(b, &pos, KW_DTYPE_I32, 1, (int64_t[]){2}), 0);
    assert_int_equal(kw_tensor_alloc(b, &u8, KW_DTYPE_U8, 1, (int64_t[]){4}), 0);
    assert_int_equal(kw_tensor_alloc(b2, &other, KW_DTYPE_F32, 2, (int64_t[]){3, 8}), 0);
    /* defined contents where ops read indices */
    assert_int_equal(kw_backend_memset_zero(b, &ids), 0);
    assert_int_equal(kw_backend_memset_zero(b, &pos), 0);

    /* matmul */
    assert_int_equal(kw_op_matmul(b, &y, &x, &w, NULL), 0);
    assert_int_equal(kw_op_matmul(b, &y, &x, &w16, NULL), KW_E_SHAPE); /* K 8 vs 9 */
    assert_non_null(strstr(kw_error_detail(), "disagree on K"));
    assert_int_equal(kw_op_matmul(b, &bad_y, &x, &w, NULL), KW_E_SHAPE);       /* N 6 vs 5 */
    assert_int_equal(kw_op_matmul(b, &y, &w, &w, NULL), KW_E_SHAPE);           /* x must be f32 */
    assert_int_equal(kw_op_matmul(b, &y, &x, &w, &x), KW_E_SHAPE);             /* bias of 24 values */
    assert_int_equal(kw_op_matmul(b, &y, &other, &w, NULL), KW_E_INVALID_ARG); /* another backend's tensor */
    assert_int_equal(kw_op_matmul(b, &y, NULL, &w, NULL), KW_E_INVALID_ARG);
    assert_int_equal(kw_op_matmul(NULL, &y, &x, &w, NULL), KW_E_INVALID_ARG);
    /* get_rows: out rows must match ids, table must be 2-D float */
    assert_int_equal(kw_op_get_rows(b, &x, &w, &ids), 0);
    assert_int_equal(kw_op_get_rows(b, &y, &w, &ids), KW_E_SHAPE);
    assert_int_equal(kw_op_get_rows(b, &x, &w, &x), KW_E_SHAPE); /* ids must be i32 */
    /* rms_norm */
    kw_tensor w8;
    assert_int_equal(kw_tensor_view_reshape(&x, 1, (int64_t[]){24}, &w8), 0);
    assert_int_equal(kw_op_rms_norm(b, &x, &x, &w8, 1e-6f, 0), KW_E_SHAPE); /* weight of 24 for D = 8 */
    assert_int_equal(kw_tensor_view_rows(&x, 0, 1, &w8), 0);
    assert_int_equal(kw_tensor_view_reshape(&w8, 1, (int64_t[]){8}, &w8), 0);
    assert_int_equal(kw_op_rms_norm(b, &x, &x, &w8, 1e-6f, 0), 0);
    assert_int_equal(kw_op_rms_norm(b, &x, &x, &w8, -1.0f, 0), KW_E_INVALID_ARG);
    assert_int_equal(kw_op_rms_norm(b, &x, &x, &w8, 1e-6f, 7), KW_E_INVALID_ARG);
    /* rope */
    kw_rope_params rp = {.theta = 10000.0, .rotary_dim = 8, .scaling = KW_ROPE_SCALING_NONE};
    assert_int_equal(kw_op_rope(b, &q, &pos, &rp), 0);
    rp.rotary_dim = 7;
    assert_int_equal(kw_op_rope(b, &q, &pos, &rp), KW_E_SHAPE);
    rp.rotary_dim = 10;
    assert_int_equal(kw_op_rope(b, &q, &pos, &rp), KW_E_SHAPE); /* more than head_dim */
    rp.rotary_dim = 8;
    rp.scaling = KW_ROPE_SCALING_LLAMA3;
    rp.factor = 8.0, rp.low_freq_factor = 4.0, rp.high_freq_factor = 1.0, rp.original_max_position = 8192.0;
    assert_int_equal(kw_op_rope(b, &q, &pos, &rp), KW_E_INVALID_ARG); /* high <= low */
    rp.scaling = KW_ROPE_SCALING_NONE;
    assert_int_equal(kw_op_rope(b, &x, &pos, &rp), KW_E_SHAPE); /* x not (T, H, D) */
    assert_int_equal(kw_op_rope(b, &q, &ids, &rp), KW_E_SHAPE); /* 3 positions for T = 2 */
    /* attention */
    kw_attention_params ap = {.q_pos0 = 0, .n_kv = 2, .scale = 0.35f};
    assert_int_equal(kw_op_attention(b, &out3, &q, &kc, &vc, &ap), KW_E_SHAPE); /* 6 q heads, 4 kv heads */
    assert_non_null(strstr(kw_error_detail(), "multiple"));
    kw_tensor q4, o4;
    assert_int_equal(kw_tensor_view_reshape(&q, 3, (int64_t[]){2, 4, 12}, &q4), 0);
    assert_int_equal(kw_tensor_view_reshape(&q, 3, (int64_t[]){2, 4, 12}, &o4), 0);
    assert_int_equal(kw_op_attention(b, &o4, &q4, &kc, &vc, &ap), KW_E_SHAPE);              /* head dim 12 vs 8 */
    assert_int_equal(kw_tensor_view_reshape(&q, 3, (int64_t[]){1, 4, 8}, &q4), KW_E_SHAPE); /* 32 != 96 */
    kw_tensor qa, oa;
    assert_int_equal(kw_tensor_alloc(b, &qa, KW_DTYPE_F32, 3, (int64_t[]){2, 8, 8}), 0);
    assert_int_equal(kw_tensor_alloc(b, &oa, KW_DTYPE_F32, 3, (int64_t[]){2, 8, 8}), 0);
    assert_int_equal(kw_op_attention(b, &oa, &qa, &kc, &vc, &ap), 0);
    ap.n_kv = 11;
    assert_int_equal(kw_op_attention(b, &oa, &qa, &kc, &vc, &ap), KW_E_SHAPE); /* n_kv > cap */
    ap.n_kv = 5, ap.q_pos0 = 4;
    assert_int_equal(kw_op_attention(b, &oa, &qa, &kc, &vc, &ap), KW_E_SHAPE); /* q_pos0 + T > n_kv */
    ap.q_pos0 = -1;
    assert_int_equal(kw_op_attention(b, &oa, &qa, &kc, &vc, &ap), KW_E_SHAPE);
    ap.q_pos0 = 0, ap.kv_mask = &u8;
    assert_int_equal(kw_op_attention(b, &oa, &qa, &kc, &vc, &ap), KW_E_SHAPE); /* mask shorter than n_kv */
    ap.kv_mask = &ids;
    assert_int_equal(kw_op_attention(b, &oa, &qa, &kc, &vc, &ap), KW_E_SHAPE); /* mask not u8 */
    ap.kv_mask = NULL, ap.sliding_window = -1;
    assert_int_equal(kw_op_attention(b, &oa, &qa, &kc, &vc, &ap), KW_E_INVALID_ARG);
    ap.sliding_window = 0;
    assert_int_equal(kw_op_attention(b, &oa, &qa, &kc, &kc16, &ap), KW_E_SHAPE); /* k and v differ */
    /* a whitelist: an f16 cache is not something the CPU backend runs */
    kw_tensor kh, vh;
    assert_int_equal(kw_tensor_alloc(b, &kh, KW_DTYPE_F16, 3, (int64_t[]){4, 10, 8}), 0);
    assert_int_equal(kw_tensor_alloc(b, &vh, KW_DTYPE_F16, 3, (int64_t[]){4, 10, 8}), 0);
    assert_int_equal(kw_op_attention(b, &oa, &qa, &kh, &vh, &ap), KW_E_OP_UNSUPPORTED);
    assert_int_equal(kw_backend_supports(b, KW_OP_ATTENTION, KW_DTYPE_F16), 0);
    assert_int_equal(kw_backend_supports(b, KW_OP_ATTENTION, KW_DTYPE_BF16), 1);
    assert_int_equal(kw_backend_supports(b, KW_OP_COUNT, KW_DTYPE_F32), 0);
    assert_int_equal(kw_backend_supports(b, KW_OP_MATMUL, KW_DTYPE_COUNT), 0);
    assert_int_equal(kw_backend_supports(b, KW_OP_MATMUL, KW_DTYPE_I32), 0);
    /* kv_store / kv_load */
    kw_tensor rows;
    assert_int_equal(kw_tensor_alloc(b, &rows, KW_DTYPE_F32, 3, (int64_t[]){3, 4, 8}), 0);
    assert_int_equal(kw_op_kv_store(b, &kc, &rows, 7), 0);
    assert_int_equal(kw_op_kv_store(b, &kc, &rows, 8), KW_E_SHAPE); /* past cap */
    assert_int_equal(kw_op_kv_store(b, &kc, &rows, -1), KW_E_SHAPE);
    assert_int_equal(kw_op_kv_load(b, &rows, &kc, 8), KW_E_SHAPE);
    assert_int_equal(kw_op_kv_store(b, &kc16, &rows, 0), KW_E_SHAPE); /* 3 heads vs 4 */
    /* elementwise */
    assert_int_equal(kw_op_add(b, &y, &x, &x), KW_E_SHAPE);
    assert_int_equal(kw_op_glu(b, &x, &x, &y, KW_ACT_SILU), KW_E_SHAPE);
    assert_int_equal(kw_op_unary(b, &x, &x, (enum kw_act)99), KW_E_INVALID_ARG);
    assert_int_equal(kw_op_scale(b, &x, &ids, 2.0f), KW_E_SHAPE);
    assert_int_equal(kw_op_softmax(b, &x, &x), 0);
    assert_int_equal(kw_op_argmax(b, &ids, &x, 0), 0);
    assert_int_equal(kw_op_argmax(b, &pos, &x, 0), KW_E_SHAPE); /* 2 indices for 3 rows */
    assert_int_equal(kw_op_argmax(b, &ids, &x, 4), KW_E_INVALID_ARG);
    assert_int_equal(kw_op_copy(b, &ids, &x), KW_E_SHAPE); /* f32 -> i32 is no conversion we do */
    assert_int_equal(kw_op_copy(b, &w, &y), KW_E_SHAPE);   /* 40 vs 15 elements */
    /* memory */
    kw_tensor t;
    assert_int_equal(kw_tensor_alloc(b, &t, KW_DTYPE_F32, 2, (int64_t[]){0, 3}), KW_E_SHAPE);
    assert_int_equal(kw_tensor_alloc(b, &t, KW_DTYPE_F32, 5, (int64_t[]){1, 1, 1, 1, 1}), KW_E_SHAPE);
    assert_int_equal(kw_tensor_alloc(b, &t, (enum kw_dtype)9, 1, (int64_t[]){1}), KW_E_INVALID_ARG);
    assert_int_equal(kw_tensor_alloc(b, &t, KW_DTYPE_F32, 3, (int64_t[]){INT64_MAX / 2, 4, 4}), KW_E_OVERFLOW);
    float buf[32] = {0};
    assert_int_equal(kw_backend_upload(b, &x, 0, buf, 24 * 4), 0);
    assert_int_equal(kw_backend_upload(b, &x, 4, buf, 24 * 4), KW_E_SHAPE);
    assert_int_equal(kw_backend_upload(b, &x, SIZE_MAX, buf, 2), KW_E_SHAPE);
    assert_int_equal(kw_backend_download(b, buf, &x, 90, 8), KW_E_SHAPE);
    assert_int_equal(kw_tensor_view_rows(&x, 2, 2, &t), KW_E_SHAPE);
    assert_int_equal(kw_tensor_view_rows(&x, -1, 1, &t), KW_E_SHAPE);
    assert_int_equal(kw_tensor_view_rows(&x, 1, 2, &t), 0);
    assert_int_equal(t.ne[0], 2);
    assert_int_equal(t.owns_data, 0);
    assert_ptr_equal(t.data, (char *)x.data + 8 * 4);
    kw_tensor_free(&t); /* a view: frees nothing */
    kw_tensor_free(NULL);
    assert_int_equal(kw_backend_synchronize(b), 0);

    kw_tensor *all[] = {&x,  &w,    &w16, &y,  &bad_y, &ids, &q,  &out3, &kc,
                        &vc, &kc16, &pos, &u8, &qa,    &oa,  &kh, &vh,   &rows};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; ++i)
        kw_tensor_free(all[i]);
    kw_tensor_free(&other);
    kw_backend_destroy(b);
    kw_backend_destroy(b2);
    kw_backend_destroy(NULL);
}

static void test_names_and_sizes(void **state) {
    (void)state;
    assert_int_equal(kw_dtype_size(KW_DTYPE_F32), 4);
    assert_int_equal(kw_dtype_size(KW_DTYPE_BF16), 2);
    assert_int_equal(kw_dtype_size(KW_DTYPE_U8), 1);
    assert_int_equal(kw_dtype_size((enum kw_dtype)77), 0);
    assert_string_equal(kw_dtype_name(KW_DTYPE_F16), "f16");
    assert_string_equal(kw_dtype_name((enum kw_dtype) - 1), "?");
    for (int op = 0; op < KW_OP_COUNT; ++op)
        assert_string_not_equal(kw_op_name((enum kw_op)op), "?");
    assert_string_equal(kw_op_name(KW_OP_ATTENTION), "attention");
    assert_string_equal(kw_op_name(KW_OP_COUNT), "?");
    kw_backend *b = kw_make_cpu("", 0);
    assert_int_equal(kw_backend_kind(b), KW_BACKEND_CPU);
    assert_string_equal(kw_backend_name(b), "cpu");
    kw_backend_destroy(b);
    kw_backend *c = (kw_backend *)0x1;
    const int rc = kw_backend_create_cuda(0, &c);
    assert_true(rc == KW_E_UNSUPPORTED || rc == KW_E_NO_DEVICE || rc == 0);
    if (rc == 0)
        kw_backend_destroy(c);
    else
        assert_null(c);
}

/* ------------------------------------------------------------------------------------------------------------
 * RoPE frequencies, bit for bit against transformers' ROPE_INIT_FUNCTIONS (tools/gen_kernels_fixtures.py wrote
 * tests/data/kernels/rope_inv_freq.txt: one line per config, "name theta dim scaling factor low high orig" and the
 * fp32 bit patterns). "Bit for bit" up to torch's powf, which is not correctly rounded (see kw__rope_inv_freq).
 */

static void test_rope_inv_freq_matches_transformers(void **state) {
    (void)state;
    FILE *f = fopen(KW_TEST_DATA_DIR "/kernels/rope_inv_freq.txt", "r");
    assert_non_null(f);
    char name[64];
    int configs = 0;
    double theta, factor, low, high, orig;
    int dim, scaling;
    while (fscanf(f, "%63s %lf %d %d %lf %lf %lf %lf", name, &theta, &dim, &scaling, &factor, &low, &high, &orig) ==
           8) {
        const kw_rope_params p = {theta, dim, (enum kw_rope_scaling)scaling, factor, low, high, orig};
        float got[KW_ROPE_MAX_DIM / 2];
        kw__rope_inv_freq(&p, got);
        /* torch's CPU pow is Sleef's powf (1.0 ulp); ours is correctly rounded: allow one ulp, on few entries */
        int off_by_one = 0;
        for (int i = 0; i < dim / 2; ++i) {
            unsigned bits;
            assert_int_equal(fscanf(f, "%x", &bits), 1);
            const long diff = (long)kw_f32_bits(got[i]) - (long)bits;
            if (diff != 0)
                fprintf(stderr, "%s inv_freq[%d]: %.9g (0x%08x), transformers %.9g (0x%08x)\n", name, i, (double)got[i],
                        kw_f32_bits(got[i]), (double)kw_f32_from_bits(bits), bits);
            assert_true(diff >= -1 && diff <= 1);
            off_by_one += diff != 0;
        }
        assert_true(off_by_one <= 2);
        ++configs;
    }
    fclose(f);
    assert_true(configs >= 4);
}

/* The CPU rope keeps each parameter set's frequencies, a decode position's table and the tables of the last
 * several-token call (kw_cpu_rope_memo, two sets): single-token calls at repeated and new positions, three sets taking
 * turns (so one is dropped and computed again), then several-token calls at repeated positions, the same count of
 * other positions, the same positions under each set in turn (a dropped set's tables must not serve the set that
 * takes its place), more and fewer tokens, each bit for bit kw_ref_rope. */
static void test_cpu_rope_decode_steps(void **state) {
    (void)state;
    kw_backend *b = kw_make_cpu("", 1);
    const kw_rope_params sets[3] = {
        {10000.0, 16, KW_ROPE_SCALING_NONE, 1, 1, 4, 8192},
        {1000000.0, 16, KW_ROPE_SCALING_NONE, 1, 1, 4, 8192},
        {500000.0, 16, KW_ROPE_SCALING_LLAMA3, 32, 1, 4, 8192},
    };
    const struct {
        int set;
        int32_t pos[3];
        int64_t T;
    } steps[] = {{0, {5}, 1},       {0, {5}, 1},        {1, {5}, 1},       {0, {9}, 1},       {2, {9}, 1},
                 {1, {9}, 1},       {0, {9}, 1},        {0, {5}, 1},       {2, {70000}, 1},   {0, {3, 4}, 2},
                 {0, {4}, 1},       {1, {1, 40000}, 2}, {0, {3, 4}, 2},    {0, {4, 3}, 2},    {1, {4, 3}, 2},
                 {2, {4, 3}, 2},    {0, {4, 3}, 2},     {1, {4, 3}, 2},    {0, {7, 8, 9}, 3}, {0, {7, 8}, 2},
                 {0, {7, 8, 9}, 3}, {0, {7, 8, 10}, 3}, {0, {7, 8, 10}, 3}};
    const int64_t H = 3, D = 16;
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; ++i) {
        const int64_t T = steps[i].T;
        float x[3 * 3 * 16], want[3 * 3 * 16];
        for (int64_t e = 0; e < T * H * D; ++e)
            x[e] = want[e] = (float)((e * 37 + (int64_t)i * 11) % 23) / 7.0f - 1.5f;
        kw_tensor tx, tp;
        assert_int_equal(kw_tensor_from_host(b, &tx, KW_DTYPE_F32, 3, (int64_t[]){T, H, D}, x), 0);
        assert_int_equal(kw_tensor_from_host(b, &tp, KW_DTYPE_I32, 1, (int64_t[]){T}, steps[i].pos), 0);
        assert_int_equal(kw_op_rope(b, &tx, &tp, &sets[steps[i].set]), 0);
        assert_int_equal(kw_backend_synchronize(b), 0);
        kw_ref_rope(want, steps[i].pos, T, H, D, &sets[steps[i].set]);
        if (memcmp(x, want, (size_t)(T * H * D) * sizeof(float)) != 0) fprintf(stderr, "rope step %zu differs\n", i);
        assert_memory_equal(x, want, (size_t)(T * H * D) * sizeof(float));
        kw_tensor_free(&tx);
        kw_tensor_free(&tp);
    }
    kw_backend_destroy(b);
}

/* ------------------------------------------------------------------------------------------------------------
 * The CPU backend's vector exp (used by attention) against the correctly rounded exp: a sweep over every 61st fp32
 * bit pattern of [-104, 89] (about 35 million inputs, both signs, subnormal results included) plus the edges. The
 * attention tolerance in kw_backend_cases.c assumes at most 2 ulp.
 */

static double kw_ulp_error(float got, double exact) {
    if (exact == 0.0) return got == 0.0f ? 0.0 : INFINITY;
    const float fe = (float)exact;
    if (isinf(fe)) return isinf(got) ? 0.0 : INFINITY;
    int e;
    frexp(exact, &e);
    /* one ulp of a float with the exact value's exponent (subnormals: the fixed 2^-149 spacing) */
    const double ulp = ldexp(1.0, (e - 24) < -149 ? -149 : e - 24);
    return fabs((double)got - exact) / ulp;
}

static void test_cpu_exp_within_2_ulp(void **state) {
    (void)state;
    enum { CHUNK = 4096 };
    static float x[CHUNK], y[CHUNK];
    kw_backend *be = kw_make_cpu("", 1); /* the best ISA this machine has */
    const enum kw_cpu_isa isa = kw__cpu(be)->isa;
    kw_backend_destroy(be);
    double worst = 0.0;
    float worst_x = 0.0f;
    int n = 0;
    const uint32_t ranges[2][2] = {{0x00000000u, 0x42b20000u}, {0x80000000u, 0xc2d00000u}}; /* [0, 89], [-0, -104] */
    for (int r = 0; r < 2; ++r) {
        for (uint64_t b = ranges[r][0]; b <= ranges[r][1]; b += 61) {
            x[n++] = kw_f32_from_bits((uint32_t)b);
            if (n == CHUNK || b + 61 > ranges[r][1]) {
                kw__cpu_exp_f32(isa, y, x, n);
                for (int i = 0; i < n; ++i) {
                    const double err = kw_ulp_error(y[i], exp((double)x[i]));
                    if (err > worst) worst = err, worst_x = x[i];
                }
                n = 0;
            }
        }
    }
    const float edges[] = {88.72283f, 88.7229f, 100.0f, -87.33654f, -103.97f, -104.0f, -200.0f, INFINITY, -INFINITY};
    kw__cpu_exp_f32(isa, y, edges, 9);
    assert_true(isinf(y[1]) && isinf(y[2]) && isinf(y[7]));
    assert_true(y[5] == 0.0f && y[6] == 0.0f && y[8] == 0.0f);
    for (int i = 0; i < 9; ++i)
        if (isfinite(edges[i])) assert_true(kw_ulp_error(y[i], exp((double)edges[i])) <= 2.0);
    const float nan_in = NAN;
    kw__cpu_exp_f32(isa, y, &nan_in, 1);
    assert_true(isnan(y[0]));
    fprintf(stderr, "cpu exp (%s): worst error %.3f ulp at x = %.9g\n", kw__cpu_isa_name(isa), worst, (double)worst_x);
    assert_true(worst <= 2.0);
}

/* ------------------------------------------------------------------------------------------------------------
 * The CPU backend's vector erf (the exact-erf GELU) against double erf, on every ISA with a vector path: a sweep over
 * every 127th fp32 bit pattern of the whole finite range of both signs (about 34 million inputs per ISA, subnormals
 * included; erf is 1 from 3.92 on, so the steps there check the saturation) plus every pattern of [0.25, 0.2505] and
 * of the first interval boundaries. The bound asserted is 1.5 ulp (measured: 1.05; the fit with fp32 coefficients is
 * within 0.11 ulp in exact arithmetic, fp32 evaluation adds the rest); kw_backend_cases.c allows a library's 2 ulp.
 * The GELU built on it must equal the scalar path (kw_opm_act with libm's erff) bit for bit on every special
 * input: +-0, +-Inf, NaN, and every |x| >= 5.7 (where erf rounds to +-1 and GELU is x or -0); so must the sigmoid
 * (AVX-512: on the vector exp) at +-Inf, NaN and |x| > 200.
 */

/* The most values kw_for_patterns hands its callback at once (the callbacks' output buffers hold this many). */
#define KW_PATTERN_CHUNK 4096

/* Calls fn on the fp32 values of the bit patterns first, first + step, ... <= last, each ORed with or_bits, in chunks
 * of at most KW_PATTERN_CHUNK values. */
typedef void (*kw_pattern_chunk_fn)(void *ctx, const float *x, int n);
static void kw_for_patterns(uint32_t first, uint32_t last, uint32_t step, uint32_t or_bits, kw_pattern_chunk_fn fn,
                            void *ctx) {
    static float x[KW_PATTERN_CHUNK];
    int n = 0;
    for (uint64_t b = first; b <= last; b += step) {
        x[n++] = kw_f32_from_bits((uint32_t)b | or_bits);
        if (n == KW_PATTERN_CHUNK || b + step > last) {
            fn(ctx, x, n);
            n = 0;
        }
    }
}

/* A sweep's state: the ISA, the worst error (or error / bound) and where it fell. */
typedef struct kw_sweep {
    enum kw_cpu_isa isa;
    double worst;
    float worst_x;
} kw_sweep;

static void kw_erf_chunk(void *ctx, const float *x, int n) {
    kw_sweep *sw = ctx;
    static float y[KW_PATTERN_CHUNK];
    kw__cpu_erf_f32(sw->isa, y, x, n);
    for (int i = 0; i < n; ++i) {
        const double err = kw_ulp_error(y[i], erf((double)x[i]));
        if (err > sw->worst) sw->worst = err, sw->worst_x = x[i];
    }
}

/* GELU (erf) exactly as kw_opm_act's scalar form */
static void kw_gelu_erf_same_chunk(void *ctx, const float *x, int n) {
    const kw_sweep *sw = ctx;
    static float y[KW_PATTERN_CHUNK];
    kw__cpu_gelu_erf_f32(sw->isa, y, x, n);
    for (int i = 0; i < n; ++i)
        assert_true(kw_f32_bits(y[i]) == kw_f32_bits(kw_opm_act(x[i], KW_ACT_GELU_ERF)));
}

static void kw_erf_sweep_isa(const char *isa_name) {
    kw_backend *be = kw_make_cpu(isa_name, 1);
    const enum kw_cpu_isa isa = kw__cpu(be)->isa;
    kw_backend_destroy(be);
    if (isa == KW_CPU_ISA_SCALAR) return; /* no vector erf on this machine: erff itself */
    kw_sweep sw = {isa, 0.0, 0.0f};
    kw_for_patterns(0x00000000u, 0x7f7fffffu, 127, 0u, kw_erf_chunk, &sw); /* all finite: positive, */
    kw_for_patterns(0x80000000u, 0xff7fffffu, 127, 0u, kw_erf_chunk, &sw); /* then negative */
    kw_for_patterns(0x3e800000u, 0x3e810000u, 1, 0u, kw_erf_chunk, &sw);   /* around 0.25, the first boundary */
    kw_for_patterns(0x407a0000u, 0x40810000u, 1, 0u, kw_erf_chunk, &sw);   /* 3.90 .. 4.03: saturation */
    const double worst = sw.worst;
    const float worst_x = sw.worst_x;
    fprintf(stderr, "cpu erf (%s): worst error %.3f ulp at x = %.9g\n", kw__cpu_isa_name(isa), worst, (double)worst_x);
    assert_true(worst <= 1.5);

    /* specials: erf(+-0) = +-0, erf(+-Inf) = +-1, NaN stays NaN; GELU bit-identical to the scalar path there */
    const float specials[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN,     -NAN,     5.7f,   -5.7f,
                              6.0f, -6.0f, 1e10f,    -1e10f,    FLT_MAX, -FLT_MAX, 1e-45f, -1e-45f};
    enum { NS = sizeof specials / sizeof specials[0] };
    float e[NS], g[NS];
    kw__cpu_erf_f32(isa, e, specials, NS);
    assert_true(kw_f32_bits(e[0]) == 0u && kw_f32_bits(e[1]) == 0x80000000u);
    assert_true(e[2] == 1.0f && e[3] == -1.0f && isnan(e[4]) && isnan(e[5]));
    kw__cpu_gelu_erf_f32(isa, g, specials, NS);
    for (int i = 0; i < NS; ++i) {
        const float ref = kw_opm_act(specials[i], KW_ACT_GELU_ERF);
        if (isnan(ref))
            assert_true(isnan(g[i]));
        else
            assert_true(kw_f32_bits(g[i]) == kw_f32_bits(ref));
    }
    /* the sigmoid on the vector exp: 0 and 1 at the infinities, NaN stays NaN, as the scalar path */
    kw__cpu_sigmoid_f32(isa, g, specials, NS);
    for (int i = 0; i < NS; ++i) {
        const float ref = kw_opm_act(specials[i], KW_ACT_SIGMOID);
        if (isnan(ref))
            assert_true(isnan(g[i]));
        else if (isinf(specials[i]) || fabsf(specials[i]) > 200.0f)
            assert_true(kw_f32_bits(g[i]) == kw_f32_bits(ref));
    }
    /* every |x| >= 5.7 in steps of 4099 patterns: GELU is exactly x or -0, as on the scalar path */
    kw_for_patterns(0x40b66666u, 0x7f7fffffu, 4099, 0u, kw_gelu_erf_same_chunk, &sw);
    kw_for_patterns(0x40b66666u, 0x7f7fffffu, 4099, 0x80000000u, kw_gelu_erf_same_chunk, &sw);
}

static void test_cpu_erf_within_1_5_ulp(void **state) {
    (void)state;
    kw_erf_sweep_isa("avx2");
    kw_erf_sweep_isa("");
}

/* ------------------------------------------------------------------------------------------------------------
 * The CPU backend's tanh GELU, x / (1 + exp(-v)), v = 2u, on the vector exp, against the same function in double (u
 * from the float constants widened, so that only the arithmetic is measured), on every ISA: every 1021st fp32 bit
 * pattern of the finite range of both signs and every pattern of [-4, -3.5] and [0.5, 0.51] (about 6.5 million
 * inputs). The error bound, per input (kw_cpu_math.c, eps = 2^-24): the five roundings of u, a relative error of at
 * most 5 eps in v, reach y = x sigmoid(v) as 5 eps |x| |v sigmoid'(v)|; exp's 2 ulp, the sum and the division add
 * 6 eps |y|; doubled, plus 2^-122 absolute for the tail below x = -10.06, where exp(-v) overflows and the result is -0
 * against an exact value of at most 3e-38 (and subnormal results). The specials equal kw_opm_act's torch form bit for
 * bit where both are exact: +-0, +Inf, NaN (and -Inf gives NaN, as -Inf * 0 there), every x >= 10 (x itself) and
 * x <= -11 (-0), in steps of 4099 patterns.
 */

/* The function in double and, in *bound, the error bound of the float evaluation at x. */
static double kw_gelu_tanh_exact(float x, double *bound) {
    const double xd = (double)x, u = (double)0.79788456080286535588f * (xd + (double)0.044715f * (xd * xd * xd));
    const double y = xd / (1.0 + exp(-2.0 * u));
    const double a = fabs(2.0 * u), e = exp(-a); /* sigmoid'(v) = e^-|v| / (1 + e^-|v|)^2, even in v */
    const double v_dsig = isfinite(a) ? a * e / ((1.0 + e) * (1.0 + e)) : 0.0;
    *bound = 2.0 * (5.0 * fabs(xd) * v_dsig + 6.0 * fabs(y)) * 0x1p-24 + 0x1p-122;
    return y;
}

static void kw_gelu_tanh_chunk(void *ctx, const float *x, int n) {
    kw_sweep *sw = ctx;
    static float y[KW_PATTERN_CHUNK];
    kw__cpu_gelu_tanh_f32(sw->isa, y, x, n);
    for (int i = 0; i < n; ++i) {
        double bound;
        const double ref = kw_gelu_tanh_exact(x[i], &bound);
        assert_true(isfinite(y[i]));
        const double ratio = fabs((double)y[i] - ref) / bound;
        if (ratio > sw->worst) sw->worst = ratio, sw->worst_x = x[i];
    }
}

/* x >= 10: x itself; x <= -11: -0; both as kw_opm_act's torch form */
static void kw_gelu_tanh_tail_chunk(void *ctx, const float *x, int n) {
    const kw_sweep *sw = ctx;
    static float y[KW_PATTERN_CHUNK];
    kw__cpu_gelu_tanh_f32(sw->isa, y, x, n);
    for (int i = 0; i < n; ++i)
        assert_true(kw_f32_bits(y[i]) == (signbit(x[i]) ? 0x80000000u : kw_f32_bits(x[i])) &&
                    kw_f32_bits(y[i]) == kw_f32_bits(kw_opm_act(x[i], KW_ACT_GELU_TANH)));
}

static void kw_gelu_tanh_sweep_isa(const char *isa_name) {
    kw_backend *be = kw_make_cpu(isa_name, 1);
    const enum kw_cpu_isa isa = kw__cpu(be)->isa;
    kw_backend_destroy(be);
    kw_sweep sw = {isa, 0.0, 0.0f}; /* worst: the largest |error| / bound */
    kw_for_patterns(0x00000000u, 0x7f7fffffu, 1021, 0u, kw_gelu_tanh_chunk, &sw); /* all finite: positive, */
    kw_for_patterns(0x80000000u, 0xff7fffffu, 1021, 0u, kw_gelu_tanh_chunk, &sw); /* then negative */
    kw_for_patterns(0xc0600000u, 0xc0800000u, 1, 0u, kw_gelu_tanh_chunk, &sw);    /* -3.5 .. -4: the steep left tail */
    kw_for_patterns(0x3f000000u, 0x3f028f5cu, 1, 0u, kw_gelu_tanh_chunk, &sw);    /* 0.5 .. 0.51 */
    const double worst = sw.worst;
    const float worst_x = sw.worst_x;
    fprintf(stderr, "cpu gelu tanh (%s): worst error %.3f of the bound at x = %.9g\n", kw__cpu_isa_name(isa), worst,
            (double)worst_x);
    assert_true(worst <= 1.0);

    const float specials[] = {0.0f, -0.0f, INFINITY, NAN, -NAN, 10.0f, -11.0f, 1e10f, -1e10f, FLT_MAX, -FLT_MAX};
    enum { NS = sizeof specials / sizeof specials[0] };
    float g[NS], minus_inf = -INFINITY, at_minus_inf;
    kw__cpu_gelu_tanh_f32(isa, g, specials, NS);
    for (int i = 0; i < NS; ++i) {
        const float ref = kw_opm_act(specials[i], KW_ACT_GELU_TANH);
        if (isnan(ref))
            assert_true(isnan(g[i]));
        else
            assert_true(kw_f32_bits(g[i]) == kw_f32_bits(ref));
    }
    kw__cpu_gelu_tanh_f32(isa, &at_minus_inf, &minus_inf, 1);
    assert_true(isnan(at_minus_inf));
    kw_for_patterns(kw_f32_bits(10.0f), 0x7f7fffffu, 4099, 0u, kw_gelu_tanh_tail_chunk, &sw);
    kw_for_patterns(kw_f32_bits(11.0f), 0x7f7fffffu, 4099, 0x80000000u, kw_gelu_tanh_tail_chunk, &sw);
}

static void test_cpu_gelu_tanh_error(void **state) {
    (void)state;
    kw_gelu_tanh_sweep_isa("scalar");
    kw_gelu_tanh_sweep_isa("avx2");
    kw_gelu_tanh_sweep_isa("");
}

/* The ops' blocked vector paths (1024 values per call, 2 threads from 32768 values): unary GELU (erf and tanh) and
 * the sigmoid, and GLU on 70001 values (a partial last block, both threads, out == in) equal the vector functions bit
 * for bit. */
static void test_cpu_act_blocks(void **state) {
    (void)state;
    enum { N = 70001 };
    static float x[N], u[N], want[N], got[N];
    uint32_t seed = 12345u;
    for (int i = 0; i < N; ++i) {
        seed = seed * 1664525u + 1013904223u;
        x[i] = ((float)(seed >> 8) / 16777216.0f - 0.5f) * 16.0f;
        u[i] = (float)(i % 7) - 3.0f;
    }
    kw_backend *b = kw_make_cpu("", 2);
    const enum kw_cpu_isa isa = kw__cpu(b)->isa;
    kw_tensor tx, tu;
    assert_int_equal(kw_tensor_from_host(b, &tx, KW_DTYPE_F32, 1, (int64_t[]){N}, got), 0);
    assert_int_equal(kw_tensor_from_host(b, &tu, KW_DTYPE_F32, 1, (int64_t[]){N}, u), 0);
    const enum kw_act acts[3] = {KW_ACT_GELU_ERF, KW_ACT_SIGMOID, KW_ACT_GELU_TANH};
    for (int a = 0; a < 3; ++a) {
        memcpy(got, x, sizeof x);
        assert_int_equal(kw_op_unary(b, &tx, &tx, acts[a]), 0);
        assert_int_equal(kw_backend_synchronize(b), 0);
        if (acts[a] == KW_ACT_GELU_ERF)
            kw__cpu_gelu_erf_f32(isa, want, x, N);
        else if (acts[a] == KW_ACT_SIGMOID)
            kw__cpu_sigmoid_f32(isa, want, x, N);
        else
            kw__cpu_gelu_tanh_f32(isa, want, x, N);
        assert_memory_equal(got, want, sizeof want);
    }
    for (int a = 0; a < 2; ++a) { /* GLU: the exact-erf GELU, then the tanh GELU (Gemma's) */
        memcpy(got, x, sizeof x);
        assert_int_equal(kw_op_glu(b, &tx, &tx, &tu, a ? KW_ACT_GELU_TANH : KW_ACT_GELU_ERF), 0);
        assert_int_equal(kw_backend_synchronize(b), 0);
        if (a)
            kw__cpu_gelu_tanh_f32(isa, want, x, N);
        else
            kw__cpu_gelu_erf_f32(isa, want, x, N);
        for (int i = 0; i < N; ++i)
            assert_true(kw_f32_bits(got[i]) == kw_f32_bits(want[i] * u[i]));
    }
    kw_tensor_free(&tx);
    kw_tensor_free(&tu);
    kw_backend_destroy(b);
}

/* ------------------------------------------------------------------------------------------------------------
 * --perf
 */

static int kw_perf_main(int reps) {
    kw_backend *b = NULL;
    if (kw_backend_create_cpu(0, &b) != 0) return 1;
    char desc[160];
    printf("%-80s %12s\n", "case (cpu, all threads)", "us/op");
    for (size_t i = 0; i < kw_n_cases; ++i) {
        double s = 0.0;
        const enum kw_case_result r = kw_case_run(b, &kw_cases[i], reps, &s);
        printf("%-80s %12.2f%s\n", kw_case_describe(&kw_cases[i], desc, sizeof desc), s * 1e6,
               r == KW_CASE_FAIL          ? "  (FAILED parity)"
               : r == KW_CASE_UNSUPPORTED ? "  (unsupported)"
                                          : "");
    }
    kw_backend_destroy(b);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "--perf") == 0) return kw_perf_main(argc >= 3 ? atoi(argv[2]) : 20);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cases_cpu_best_2_threads),
        cmocka_unit_test(test_cases_cpu_best_1_thread),
        cmocka_unit_test(test_cases_cpu_avx2),
        cmocka_unit_test(test_cases_cpu_scalar),
        cmocka_unit_test(test_get_rows_bad_id_reported_at_synchronize),
        cmocka_unit_test(test_get_rows_bad_ids_first_row_of_first_call),
        cmocka_unit_test(test_shape_rejections),
        cmocka_unit_test(test_names_and_sizes),
        cmocka_unit_test(test_rope_inv_freq_matches_transformers),
        cmocka_unit_test(test_cpu_rope_decode_steps),
        cmocka_unit_test(test_cpu_exp_within_2_ulp),
        cmocka_unit_test(test_cpu_erf_within_1_5_ulp),
        cmocka_unit_test(test_cpu_gelu_tanh_error),
        cmocka_unit_test(test_cpu_act_blocks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* test_rope_table.c: kw_op_rope_table (RoPE from a host table of cos and sin) on the CUDA backend and on the CPU
 * backend gives the bits of the host rotation, kw_ref_rope and model/'s kw_config_rope_rows (the receiver rotates
 * pre-RoPE keys on the device with it, kw_receive.c), across head dims, rotary dims, rope scalings (none with Qwen's
 * and Llama's thetas, llama3, linear), Gemma 3's local RoPE of a sliding layer, the inverse rotation and positions from
 * 0 to 2^31 - 1 (15 chosen, 49 pseudo-random). Also the op's shape checks.
 *
 * Built twice: against the emulator (label gpu-emu) and, with KW_TEST_REAL_CUDA, against a real device (tests/gpu,
 * label gpu), which exits 77 without one.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_status.h"
#ifndef KW_TEST_REAL_CUDA
#include "kernels/cuda/emu/kw_cuda_emu_api.h"
#define kw_create_gpu kw_backend_create_cuda_emu
#else
#define kw_create_gpu kw_backend_create_cuda
#endif
#include "kernels/kw_backend.h"
#include "kernels/ref/kw_ref.h"
#include "model/kw_config.h"

static kw_backend *G, *C; /* the CUDA backend, the CPU backend */

/* Positions: these, then pseudo-random ones below 2^20 (fill_positions). */
static const int32_t POS0[] = {0, 1, 2, 3, 7, 31, 100, 1000, 4095, 8191, 8192, 32767, 131071, 1 << 20, INT32_MAX};
#define NPOS 64
static int32_t POS[NPOS];

static void fill_positions(void) {
    uint32_t s = 12345u;
    for (int i = 0; i < NPOS; ++i) {
        s = s * 1664525u + 1013904223u;
        POS[i] = i < (int)(sizeof POS0 / sizeof *POS0) ? POS0[i] : (int32_t)(s >> 12);
    }
}

static int setup(void **state) {
    (void)state;
    fill_positions();
    const int rc = kw_create_gpu(0, &G);
    if (rc == KW_E_NO_DEVICE || rc == KW_E_UNSUPPORTED) {
        fprintf(stderr, "no CUDA device: skipped\n");
        exit(77);
    }
    return rc < 0 || kw_backend_create_cpu(2, &C) < 0 ? -1 : 0;
}

static int teardown(void **state) {
    (void)state;
    kw_backend_destroy(G);
    kw_backend_destroy(C);
    return 0;
}

/* Deterministic values in [-4, 4) with every low mantissa bit in play. */
static void fill(float *x, size_t n, uint32_t seed) {
    uint32_t s = seed * 2654435761u + 1u;
    for (size_t i = 0; i < n; ++i) {
        s = s * 1664525u + 1013904223u;
        x[i] = (float)((double)(s >> 8) / (double)(1u << 24) * 8.0 - 4.0);
    }
}

/* rows (T, H, D) rotated on backend b by table (T, half, 2), downloaded into out. */
static void rotate_on(kw_backend *b, const float *rows, const float *table, int64_t T, int64_t H, int64_t D,
                      int64_t half, float *out) {
    const int64_t nx[3] = {T, H, D}, nt[3] = {T, half, 2};
    kw_tensor x, t;
    assert_int_equal(kw_tensor_alloc(b, &x, KW_DTYPE_F32, 3, nx), 0); /* a copy: the CPU backend would borrow rows */
    assert_int_equal(kw_backend_upload(b, &x, 0, rows, (size_t)(T * H * D) * sizeof *rows), 0);
    assert_int_equal(kw_tensor_from_host(b, &t, KW_DTYPE_F32, 3, nt, table), 0);
    const int rc = kw_op_rope_table(b, &x, &t);
    if (rc < 0) fail_msg("rope_table: %s (%s)", kw_status_name(rc), kw_error_detail());
    assert_int_equal(kw_backend_download(b, out, &x, 0, (size_t)(T * H * D) * sizeof *out), 0);
    assert_int_equal(kw_backend_synchronize(b), 0);
    kw_tensor_free(&x), kw_tensor_free(&t);
}

static void same_bits(const char *what, const float *want, const float *got, size_t n) {
    for (size_t i = 0; i < n; ++i)
        if (memcmp(&want[i], &got[i], sizeof *got) != 0)
            fail_msg("%s: value %zu: %.9g, host %.9g", what, i, got[i], want[i]);
}

typedef struct rope_case {
    const char *name;
    int64_t H, D;
    kw_rope_params p;
} rope_case;

/* kw_ref_rope == kw_ref_rope_table + kw_op_rope_table on both backends, forward and inverse (negated positions). */
static void test_ref(void **state) {
    (void)state;
    const kw_rope_params qwen = {.theta = 1000000.0, .scaling = KW_ROPE_SCALING_NONE};
    const kw_rope_params llama = {.theta = 500000.0,
                                  .scaling = KW_ROPE_SCALING_LLAMA3,
                                  .factor = 8.0,
                                  .low_freq_factor = 1.0,
                                  .high_freq_factor = 4.0,
                                  .original_max_position = 8192.0};
    const kw_rope_params linear = {.theta = 10000.0, .scaling = KW_ROPE_SCALING_LINEAR, .factor = 4.0};
    rope_case cases[] = {
        {"qwen D16", 2, 16, qwen},           {"qwen D64", 3, 64, qwen},
        {"qwen D128", 2, 128, qwen},         {"qwen D256", 1, 256, qwen},
        {"llama3 D128", 2, 128, llama},      {"llama3 D64", 1, 64, llama},
        {"linear D80", 2, 80, linear},       {"linear D32", 4, 32, linear},
        {"qwen D80 rotary 64", 2, 80, qwen}, {"llama3 D96 rotary 32", 1, 96, llama},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; ++c) {
        rope_case *rc = &cases[c];
        rc->p.rotary_dim = strstr(rc->name, "rotary 64") ? 64 : strstr(rc->name, "rotary 32") ? 32 : (int32_t)rc->D;
        const int64_t T = NPOS, H = rc->H, D = rc->D, half = rc->p.rotary_dim / 2;
        const size_t n = (size_t)(T * H * D);
        float *rows = malloc(n * sizeof *rows), *want = malloc(n * sizeof *want), *got = malloc(n * sizeof *got);
        float *table = malloc((size_t)(T * half * 2) * sizeof *table);
        assert_true(rows && want && got && table);
        for (int inverse = 0; inverse < 2; ++inverse) {
            int32_t pos[NPOS];
            for (int64_t t = 0; t < T; ++t)
                pos[t] = inverse ? -POS[t] : POS[t];
            fill(rows, n, (uint32_t)(c * 2 + (size_t)inverse));
            memcpy(want, rows, n * sizeof *want);
            kw_ref_rope(want, pos, T, H, D, &rc->p);
            kw_ref_rope_table(table, pos, T, &rc->p);
            char what[96];
            snprintf(what, sizeof what, "%s%s, CUDA", rc->name, inverse ? " inverse" : "");
            rotate_on(G, rows, table, T, H, D, half, got);
            same_bits(what, want, got, n);
            snprintf(what, sizeof what, "%s%s, CPU", rc->name, inverse ? " inverse" : "");
            rotate_on(C, rows, table, T, H, D, half, got);
            same_bits(what, want, got, n);
        }
        printf("  %-24s H %lld D %lld rotary %d: %lld positions, forward and inverse, both backends\n", rc->name,
               (long long)H, (long long)D, (int)rc->p.rotary_dim, (long long)T);
        free(rows), free(want), free(got), free(table);
    }
}

/* kw_config_rope_rows == kw_config_rope_table + kw_op_rope_table, layer by layer (a Gemma 3 style sliding layer uses
 * rope_local), forward and inverse. */
static void test_config(void **state) {
    (void)state;
    kw_model_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.n_layers = 2, cfg.n_kv_heads = 2, cfg.head_dim = 128, cfg.sliding_window = 512;
    cfg.rope = (kw_rope_params){.theta = 1000000.0, .rotary_dim = 128, .scaling = KW_ROPE_SCALING_LINEAR, .factor = 8};
    cfg.rope_local = (kw_rope_params){.theta = 10000.0, .rotary_dim = 128, .scaling = KW_ROPE_SCALING_NONE};
    cfg.layer_sliding[0] = 1;
    const int64_t T = NPOS, row = (int64_t)cfg.n_kv_heads * cfg.head_dim, half = cfg.head_dim / 2;
    int64_t pos[NPOS];
    for (int64_t t = 0; t < T; ++t)
        pos[t] = POS[t];
    float *rows = malloc((size_t)(T * row) * sizeof *rows), *want = malloc((size_t)(T * row) * sizeof *want);
    float *got = malloc((size_t)(T * row) * sizeof *got), *table = malloc((size_t)(T * half * 2) * sizeof *table);
    assert_true(rows && want && got && table);
    for (int32_t layer = 0; layer < 2; ++layer)
        for (int inverse = 0; inverse < 2; ++inverse) {
            fill(rows, (size_t)(T * row), (uint32_t)(100 + layer * 2 + inverse));
            memcpy(want, rows, (size_t)(T * row) * sizeof *want);
            assert_int_equal(kw_config_rope_rows(&cfg, layer, pos, T, inverse, want), 0);
            assert_int_equal(kw_config_rope_half(&cfg, layer), half);
            assert_int_equal(kw_config_rope_table(&cfg, layer, pos, T, inverse, table), 0);
            rotate_on(G, rows, table, T, cfg.n_kv_heads, cfg.head_dim, half, got);
            same_bits(layer ? "global layer" : "sliding layer", want, got, (size_t)(T * row));
        }
    const int64_t bad = -1;
    assert_int_equal(kw_config_rope_table(&cfg, 0, &bad, 1, 0, table), KW_E_INVALID_ARG);
    assert_int_equal(kw_config_rope_table(&cfg, 2, pos, 1, 0, table), KW_E_INVALID_ARG);
    assert_int_equal(kw_config_rope_half(&cfg, 2), 0);
    free(rows), free(want), free(got), free(table);
}

/* The op's checks: a table of another token count, wider than D / 2, not (T, half, 2), not f32. */
static void test_shapes(void **state) {
    (void)state;
    const int64_t nx[3] = {4, 2, 8};
    const int64_t bad[][3] = {{3, 4, 2}, {4, 5, 2}, {4, 4, 3}};
    kw_tensor x, t;
    assert_int_equal(kw_tensor_alloc(G, &x, KW_DTYPE_F32, 3, nx), 0);
    for (size_t i = 0; i < sizeof bad / sizeof *bad; ++i) {
        assert_int_equal(kw_tensor_alloc(G, &t, KW_DTYPE_F32, 3, bad[i]), 0);
        assert_int_equal(kw_op_rope_table(G, &x, &t), KW_E_SHAPE);
        kw_tensor_free(&t);
    }
    const int64_t ok[3] = {4, 4, 2};
    assert_int_equal(kw_tensor_alloc(G, &t, KW_DTYPE_I32, 3, ok), 0);
    assert_int_equal(kw_op_rope_table(G, &x, &t), KW_E_SHAPE);
    kw_tensor_free(&t);
    kw_tensor_free(&x);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ref),
        cmocka_unit_test(test_config),
        cmocka_unit_test(test_shapes),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

/* test_model_quantized_st.c: kvwire quantize's safetensors output (model/kw_st_quant.h) on gen-model folders.
 *
 * - Round trip: each scheme (Q8_0, Q4_K, Q4_K_M) written as a GGUF file and as a safetensors folder; every matrix
 *   of the folder dequantizes to the very f32 bits of the GGUF tensor (kw_weights_get on both), and the two load to
 *   the same logits bit for bit, with weights kept quantized (the same bytes per token: nothing fell back to f32)
 *   and dequantized. Llama (its own output matrix, permuted q/k rows in the GGUF), Qwen3 (tied; intermediate 352, so
 *   down_proj falls back to Q5_0 / Q8_0 rows of 32), Gemma 3 (1 + w norms in the GGUF).
 * - Safetensors in: a quantized folder converted to an F32 GGUF file gives the folder's logits (dequantized).
 * - GGUF in: the folder written as an F32 GGUF file, then quantized to safetensors from it, gives the logits of the
 *   folder quantized directly (names mapped back, q/k rows un-permuted, Gemma 3 norms back to w exactly).
 * - Determinism: two runs write the same bytes.
 * - The layout itself, independently of the writer: hand-made files whose codes and scales give known values (the
 *   nibble order, the group of each scale, the sign of the minimum).
 * - Malformed files: a wrong scale shape, truncated codes, an unknown layout or version, missing or extra tensors, a
 *   truncated file: a clear error, never a crash. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/kw_bytes.h"
#include "common/kw_file.h"
#include "common/kw_half.h"
#include "common/kw_status.h"
#include "kernels/kw_backend.h"
#include "model/kw_genmodel.h"
#include "model/kw_model.h"
#include "model/kw_quantize.h"
#include "model/kw_safetensors.h"
#include "model/kw_st_quant.h"
#include "model/kw_weights.h"
#include "model_fixture.h"

#define N_IDS 16

/* Fails unless the models at a and b give the same logits bit for bit, reading the same weight bytes per token (so
 * one did not fall back to f32 where the other kept its weights quantized), but that b may read fewer if it is a GGUF
 * file: its Q4_K and Q6_K matrices load in the CPU's super-block layouts (0.59375 and 1.078 bytes a weight, not 0.75
 * and 1.25; Q6_K 0.828 in 6 bits with AVX-512 VBMI; the safetensors layout has no super-block d, so a folder loads in
 * the plain ones), the same bits. */
static void expect_same_logits(kw_backend *be, const char *a, const char *b, enum kw_gguf_weights gw,
                               const char *what) {
    int32_t ids[N_IDS];
    for (int i = 0; i < N_IDS; ++i)
        ids[i] = (int32_t)(((uint64_t)i * 2654435761u + 7) % 1000);
    const kw_model_options opts = {.gguf_weights = gw};
    int64_t va = 0, vb = 0;
    size_t ba = 0, bb = 0;
    float *x = kwfx_model_logits(be, a, &opts, ids, N_IDS, &va, &ba);
    float *y = kwfx_model_logits(be, b, &opts, ids, N_IDS, &vb, &bb);
    assert_int_equal(va, vb);
    if (gw == KW_GGUF_WEIGHTS_DEQUANTIZED || ba == bb)
        assert_int_equal(ba, bb);
    else
        assert_true(bb < ba && (double)bb >= (double)ba * (0.828125 / 1.25)); /* Q6_K in 6 bits (VBMI) the least */
    if (memcmp(x, y, (size_t)(N_IDS * va) * sizeof *x) != 0)
        fail_msg("%s (%s weights): the logits of %s differ from those of %s", what,
                 gw == KW_GGUF_WEIGHTS_DEQUANTIZED ? "dequantized" : "quantized", a, b);
    free(x);
    free(y);
}

/* Removes an HF folder as the tests leave it (the weights and the two JSON files) and the folder itself. */
static void remove_folder(const char *dir) {
    static const char *const files[] = {"model.safetensors", "config.json", "generation_config.json"};
    char path[600];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; ++i) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        unlink(path);
    }
    rmdir(dir);
}

/* Every tensor of the safetensors folder st_dir reads back (dequantized where quantized) as the bits the GGUF file
 * gives for the same HF name (but Gemma 3's norms: 1 + w in the GGUF, w in the folder); returns the number of
 * quantized matrices. */
static size_t same_weights(const char *st_dir, const char *gguf, int gemma) {
    kw_weights *a = NULL, *b = NULL;
    if (kw_weights_open(st_dir, NULL, &a) < 0) fail_msg("open %s: %s", st_dir, kw_error_detail());
    assert_int_equal(kw_weights_open(gguf, NULL, &b), 0);
    kw_safetensors *st = NULL;
    char path[600];
    snprintf(path, sizeof path, "%s/model.safetensors", st_dir);
    assert_int_equal(kw_safetensors_open(path, &st), 0);
    size_t quantized = 0, compared = 0;
    for (size_t i = 0; i < kw_safetensors_count(st); ++i) {
        const char *name = kw_safetensors_at(st, i)->name;
        const size_t len = strlen(name);
        if ((len > 6 && strcmp(name + len - 6, "_scale") == 0) || (len > 4 && strcmp(name + len - 4, "_min") == 0) ||
            (gemma && strstr(name, "norm.weight")))
            continue;
        kw_quant_rows q;
        const int is_q = kw_weights_get_quantized(a, name, &q);
        assert_true(is_q >= 0);
        quantized += (size_t)is_q;
        kw_weight x, y;
        assert_int_equal(kw_weights_get(a, name, &x), 1);
        void *copy = malloc(x.nbytes);
        assert_non_null(copy);
        memcpy(copy, x.data, x.nbytes);
        assert_int_equal(kw_weights_get(b, name, &y), 1);
        assert_int_equal(x.dtype, KW_DTYPE_F32);
        assert_int_equal(y.dtype, KW_DTYPE_F32);
        assert_int_equal(x.ndim, y.ndim);
        assert_memory_equal(x.shape, y.shape, sizeof x.shape);
        assert_int_equal(x.nbytes, y.nbytes);
        if (memcmp(copy, y.data, x.nbytes) != 0) fail_msg("%s: the safetensors values differ from the GGUF's", name);
        free(copy);
        ++compared;
    }
    assert_true(compared > 0);
    kw_safetensors_close(st);
    kw_weights_close(a);
    kw_weights_close(b);
    return quantized;
}

static void run_arch(enum kw_arch arch, int tied, int64_t intermediate) {
    char dir[] = "/tmp/kw_qst_test_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char src[128], st_dir[128], gguf[600], st_file[600], again[600];
    snprintf(src, sizeof src, "%s/src", dir);
    kw_genmodel_options go = {.dtype = KW_DTYPE_BF16, .seed = 5};
    assert_int_equal(kw_genmodel_preset("tiny", &arch, &go.cfg), 0);
    go.cfg.hidden = 256;
    go.cfg.head_dim = 64;
    go.cfg.intermediate = intermediate;
    go.cfg.vocab = 1024;
    go.cfg.tie_embeddings = tied;
    go.cfg.rope.rotary_dim = 64;
    if (arch == KW_ARCH_LLAMA) { /* llama3 RoPE scaling has no GGUF form kvwire writes */
        go.cfg.rope.scaling = KW_ROPE_SCALING_NONE;
        go.cfg.rope.factor = 1.0;
    }
    kw_genmodel_fit_special_ids(&go.cfg);
    if (arch == KW_ARCH_GEMMA3) go.cfg.query_pre_attn_scalar = go.cfg.head_dim;
    if (kw_genmodel_write(&go, src) < 0) fail_msg("gen-model: %s", kw_error_detail());

    kw_backend *be = NULL;
    assert_int_equal(kw_backend_create_cpu(2, &be), 0);
    static const char *const names[] = {"q8_0", "q4_k", "q4_k_m"};
    static const enum kw_quant_scheme schemes[] = {KW_QUANT_Q8_0, KW_QUANT_Q4_K, KW_QUANT_Q4_K_M};
    for (int s = 0; s < 3; ++s) {
        snprintf(gguf, sizeof gguf, "%s/%s.gguf", dir, names[s]);
        snprintf(st_dir, sizeof st_dir, "%s/%s", dir, names[s]);
        snprintf(st_file, sizeof st_file, "%s/model.safetensors", st_dir);
        snprintf(again, sizeof again, "%s/again.safetensors", dir);
        assert_int_equal(kw_path_mkdir(st_dir), 0);
        if (kw_quantize_file(src, gguf, schemes[s], NULL, NULL) < 0) fail_msg("quantize: %s", kw_error_detail());
        kw_quantize_stats stats;
        if (kw_quantize_file(src, st_file, schemes[s], NULL, &stats) < 0)
            fail_msg("quantize %s to safetensors: %s", names[s], kw_error_detail());
        assert_int_equal(kw_quantize_file(src, again, schemes[s], NULL, NULL), 0);
        kwfx_expect_same_file(st_file, again);
        unlink(again);
        snprintf(again, sizeof again, "%s/config.json", st_dir);
        assert_true(kw_path_is_file(again));
        snprintf(again, sizeof again, "%s/again.safetensors", dir);

        const size_t nq = same_weights(st_dir, gguf, arch == KW_ARCH_GEMMA3);
        assert_true(nq >= (size_t)(7 * go.cfg.n_layers));
        char what[64];
        snprintf(what, sizeof what, "%s %s", kw_arch_name(arch), names[s]);
        expect_same_logits(be, st_dir, gguf, KW_GGUF_WEIGHTS_QUANTIZED, what);
        expect_same_logits(be, st_dir, gguf, KW_GGUF_WEIGHTS_DEQUANTIZED, what);
        /* safetensors in: the folder converted to an F32 GGUF file holds its dequantized values */
        char f32[600];
        snprintf(f32, sizeof f32, "%s/f32.gguf", dir);
        if (kw_quantize_file(st_dir, f32, KW_QUANT_F32, NULL, NULL) < 0)
            fail_msg("quantize %s safetensors to F32: %s", names[s], kw_error_detail());
        expect_same_logits(be, st_dir, f32, KW_GGUF_WEIGHTS_DEQUANTIZED, what);
        /* GGUF in: the folder's weights through an F32 GGUF file (llama q/k interleaved, Gemma norms 1 + w), then to
         * safetensors: the same logits as straight from the folder */
        char st2_dir[128], st2_file[600];
        snprintf(st2_dir, sizeof st2_dir, "%s/via-gguf", dir);
        snprintf(st2_file, sizeof st2_file, "%s/model.safetensors", st2_dir);
        assert_int_equal(kw_path_mkdir(st2_dir), 0);
        assert_int_equal(kw_quantize_file(src, f32, KW_QUANT_F32, NULL, NULL), 0);
        if (kw_quantize_file(f32, st2_file, schemes[s], NULL, NULL) < 0)
            fail_msg("quantize %s GGUF to safetensors: %s", names[s], kw_error_detail());
        assert_int_equal(kw_quantize_file(f32, again, schemes[s], NULL, NULL), 0);
        kwfx_expect_same_file(st2_file, again);
        unlink(again);
        expect_same_logits(be, st2_dir, st_dir, KW_GGUF_WEIGHTS_QUANTIZED, what);
        remove_folder(st2_dir);
        unlink(f32);
        print_message("  %s %-6s: %zu quantized matrices, logits equal to the GGUF's (and from the GGUF's)\n",
                      kw_arch_name(arch), names[s], nq);
        remove_folder(st_dir);
        unlink(gguf);
    }
    kw_backend_destroy(be);
    remove_folder(src);
    remove_folder(dir); /* the JSON files beside again.safetensors quantized from the GGUF file */
}

static void test_llama_untied(void **state) {
    (void)state;
    run_arch(KW_ARCH_LLAMA, 0, 512);
}

static void test_qwen3_tied_fallback(void **state) {
    (void)state;
    run_arch(KW_ARCH_QWEN3, 1, 352);
}

static void test_gemma3(void **state) {
    (void)state;
    run_arch(KW_ARCH_GEMMA3, 1, 512);
}

// ---------------------------------------------------------------------------------------------------------------
// Hand-made files

/* One matrix "w" of 2 rows x 64 inputs in layout `layout`, with tensors given by the caller, written to a temporary
 * file and indexed: returns the index status, and *ix (or NULL). */
typedef struct hand {
    const char *layout, *version;
    kw_st_write_tensor t[4];
    size_t n;
} hand;

static char hand_path[] = "/tmp/kw_qst_hand_XXXXXX";

static int hand_open(const hand *h, kw_safetensors **st, kw_stq_index **ix) {
    char meta[256];
    snprintf(meta, sizeof meta, "{\"quantization\":\"%s\",\"quantization.w\":\"%s\"}",
             h->version ? h->version : KW_STQ_VERSION, h->layout);
    assert_int_equal(kw_safetensors_write(hand_path, h->t, h->n, meta), 0);
    *ix = NULL;
    assert_int_equal(kw_safetensors_open(hand_path, st), 0);
    return kw_stq_index_open(*st, ix);
}

static void expect_refused(const hand *h, const char *needle) {
    kw_safetensors *st = NULL;
    kw_stq_index *ix = NULL;
    const int rc = hand_open(h, &st, &ix);
    if (rc != KW_E_MODEL_FORMAT) fail_msg("expected KW_E_MODEL_FORMAT (%s), got %d", needle, rc);
    if (!strstr(kw_error_detail(), needle)) fail_msg("detail \"%s\" lacks \"%s\"", kw_error_detail(), needle);
    assert_null(ix);
    kw_safetensors_close(st);
}

static int8_t i8_codes[2 * 64];
static uint8_t u4_codes[2 * 32];
static uint16_t f16_scales[2 * 2];
static float f32_scales[2 * 4], f32_mins[2 * 2];

static kw_st_write_tensor tensor(const char *name, enum kw_dtype dtype, int64_t a, int64_t b, const void *data) {
    return (kw_st_write_tensor){.name = name, .dtype = dtype, .ndim = 2, .shape = {a, b}, .data = data};
}

static void test_layout_values(void **state) {
    (void)state;
    for (int i = 0; i < 2 * 64; ++i)
        i8_codes[i] = (int8_t)(i % 7 - 3);
    for (int i = 0; i < 2 * 32; ++i)
        u4_codes[i] = (uint8_t)((i % 16) | ((15 - i % 16) << 4));
    for (int i = 0; i < 4; ++i)
        f16_scales[i] = kw_f32_to_f16(0.5f + (float)i);
    for (int i = 0; i < 8; ++i)
        kw_store_lef32((uint8_t *)&f32_scales[i], 0.25f * (float)(i + 1));
    for (int i = 0; i < 4; ++i)
        kw_store_lef32((uint8_t *)&f32_mins[i], 1.5f + (float)i);

    void *buf = NULL;
    size_t cap = 0, nbytes = 0;
    int64_t shape[2];
    /* int8/g32: value (r, k) = code * scale[r][k / 32] */
    hand h = {.layout = "int8/g32", .n = 2};
    h.t[0] = tensor("w", KW_DTYPE_I8, 2, 64, i8_codes);
    h.t[1] = tensor("w_scale", KW_DTYPE_F16, 2, 2, f16_scales);
    kw_safetensors *st = NULL;
    kw_stq_index *ix = NULL;
    assert_int_equal(hand_open(&h, &st, &ix), 0);
    assert_int_equal(kw_stq_count(ix), 1);
    assert_int_equal(kw_stq_dequantize(ix, "w", KW_DTYPE_F32, &buf, &cap, &nbytes, shape), 1);
    assert_int_equal(shape[0], 2);
    assert_int_equal(shape[1], 64);
    for (int i = 0; i < 128; ++i)
        assert_true(((float *)buf)[i] == (float)i8_codes[i] * (0.5f + (float)(i / 32)));
    assert_int_equal(kw_stq_dequantize(ix, "w_scale", KW_DTYPE_F32, &buf, &cap, &nbytes, shape), 0);
    kw_stq_index_free(ix);
    kw_safetensors_close(st);

    /* uint4/g32/min: byte j of a row holds value 2j (low nibble) and 2j + 1 (high); value = code * scale - min */
    h = (hand){.layout = "uint4/g32/min", .n = 3};
    h.t[0] = tensor("w", KW_DTYPE_U8, 2, 32, u4_codes);
    h.t[1] = tensor("w_scale", KW_DTYPE_F32, 2, 2, f32_scales);
    h.t[2] = tensor("w_min", KW_DTYPE_F32, 2, 2, f32_mins);
    assert_int_equal(hand_open(&h, &st, &ix), 0);
    assert_int_equal(kw_stq_dequantize(ix, "w", KW_DTYPE_F32, &buf, &cap, &nbytes, shape), 1);
    assert_int_equal(shape[1], 64);
    for (int r = 0; r < 2; ++r)
        for (int k = 0; k < 64; ++k) {
            const uint8_t byte = u4_codes[r * 32 + k / 2];
            const int code = k % 2 == 0 ? byte & 15 : byte >> 4;
            const float want = (float)code * (0.25f * (float)(r * 2 + k / 32 + 1)) - (1.5f + (float)(r * 2 + k / 32));
            assert_true(((float *)buf)[r * 64 + k] == want);
        }
    kw_gguf_codes_buf cb = {0};
    kw_quant_rows q;
    assert_int_equal(kw_stq_read(ix, "w", &cb, &q), 1);
    assert_int_equal(q.layout, KW_LAYOUT_QPANELS_U4);
    assert_int_equal(q.codes[0], u4_codes[0] & 15);
    assert_int_equal(q.codes[1], u4_codes[0] >> 4);
    assert_true(q.offsets[3] == -(1.5f + 3.0f));
    kw_gguf_codes_buf_free(&cb);
    kw_stq_index_free(ix);
    kw_safetensors_close(st);
    free(buf);
}

static void test_malformed(void **state) {
    (void)state;
    hand h = {.layout = "int8/g32", .n = 2};
    h.t[0] = tensor("w", KW_DTYPE_I8, 2, 64, i8_codes);
    h.t[1] = tensor("w_scale", KW_DTYPE_F16, 2, 3, f32_scales); /* a scale too many per row */
    expect_refused(&h, "w_scale has shape [2, 3]");
    h.t[1] = tensor("w_scale", KW_DTYPE_F16, 1, 2, f16_scales); /* a row of scales missing */
    expect_refused(&h, "w_scale has shape [1, 2]");
    h.t[0] = tensor("w", KW_DTYPE_I8, 2, 48, i8_codes); /* truncated codes: not whole groups */
    h.t[1] = tensor("w_scale", KW_DTYPE_F16, 2, 2, f16_scales);
    expect_refused(&h, "not whole groups of 32");
    h.t[0] = tensor("w", KW_DTYPE_I8, 2, 32, i8_codes); /* truncated codes: one group where the scales say two */
    expect_refused(&h, "w_scale has shape [2, 2]");
    h.t[0] = tensor("w", KW_DTYPE_U8, 2, 64, i8_codes);
    expect_refused(&h, "are u8, layout int8/g32 needs i8");
    h.t[0] = tensor("w", KW_DTYPE_I8, 2, 64, i8_codes);
    h.t[1] = tensor("w_scale", KW_DTYPE_I8, 2, 2, i8_codes);
    expect_refused(&h, "w_scale has dtype i8");
    h.t[1] = tensor("w_scale", KW_DTYPE_F16, 2, 2, f16_scales);
    h.layout = "int3/g32";
    expect_refused(&h, "unknown layout \"int3/g32\"");
    h.layout = "int8/g32";
    h.version = "kvwire-v9";
    expect_refused(&h, "unknown quantization format \"kvwire-v9\"");
    h.version = NULL;
    h.t[2] = tensor("w_min", KW_DTYPE_F32, 2, 2, f32_mins);
    h.n = 3;
    expect_refused(&h, "has no minimum");
    h.layout = "uint4/g32/min";
    h.n = 2;
    h.t[0] = tensor("w", KW_DTYPE_U8, 2, 32, u4_codes);
    h.t[1] = tensor("w_scale", KW_DTYPE_F32, 2, 2, f32_scales);
    expect_refused(&h, "w_min is missing");
    h.t[1] = tensor("x", KW_DTYPE_F32, 2, 2, f32_scales);
    expect_refused(&h, "w_scale is missing");
    h.n = 1;
    h.t[0] = tensor("v", KW_DTYPE_U8, 2, 32, u4_codes);
    expect_refused(&h, "names w, which the file lacks");
    unlink(hand_path);
}

/* A real quantized folder with its file cut short, or its metadata made unknown, fails to load with a clear error. */
static void test_broken_model(void **state) {
    (void)state;
    char dir[] = "/tmp/kw_qst_broken_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char src[128], out[128], path[600];
    snprintf(src, sizeof src, "%s/src", dir);
    snprintf(out, sizeof out, "%s/q", dir);
    enum kw_arch arch = KW_ARCH_QWEN3;
    kw_genmodel_options go = {.dtype = KW_DTYPE_BF16, .seed = 3};
    assert_int_equal(kw_genmodel_preset("tiny", &arch, &go.cfg), 0);
    go.cfg.vocab = 512;
    kw_genmodel_fit_special_ids(&go.cfg);
    assert_int_equal(kw_genmodel_write(&go, src), 0);
    assert_int_equal(kw_path_mkdir(out), 0);
    snprintf(path, sizeof path, "%s/model.safetensors", out);
    assert_int_equal(kw_quantize_file(src, path, KW_QUANT_Q8_0, NULL, NULL), 0);
    /* into the input folder: refused (its config.json would be overwritten by itself) */
    char into[600];
    snprintf(into, sizeof into, "%s/q.safetensors", src);
    assert_int_equal(kw_quantize_file(src, into, KW_QUANT_Q8_0, NULL, NULL), KW_E_INVALID_ARG);
    char *bytes = NULL;
    size_t n = 0;
    assert_int_equal(kw_file_read_all(path, (size_t)1 << 30, &bytes, &n), 0);
    kw_backend *be = NULL;
    assert_int_equal(kw_backend_create_cpu(1, &be), 0);
    kw_model *m = NULL;
    assert_int_equal(kw_model_load(be, out, NULL, &m), 0);
    kw_model_free(m);
    m = NULL;
    assert_int_equal(kw_file_write_all(path, bytes, n - 100), 0);
    assert_int_equal(kw_model_load(be, out, NULL, &m), KW_E_MODEL_FORMAT);
    assert_null(m);
    char *v1 = memmem(bytes, n, KW_STQ_VERSION, strlen(KW_STQ_VERSION)); /* same length: the offsets stay right */
    assert_non_null(v1);
    v1[strlen(KW_STQ_VERSION) - 1] = '7';
    assert_int_equal(kw_file_write_all(path, bytes, n), 0);
    assert_int_equal(kw_model_load(be, out, NULL, &m), KW_E_MODEL_FORMAT);
    assert_non_null(strstr(kw_error_detail(), "unknown quantization format"));
    kw_backend_destroy(be);
    free(bytes);
    remove_folder(src);
    remove_folder(out);
    rmdir(dir);
}

int main(void) {
    const int fd = mkstemp(hand_path);
    assert_true(fd >= 0);
    close(fd);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layout_values),       cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_broken_model),        cmocka_unit_test(test_llama_untied),
        cmocka_unit_test(test_qwen3_tied_fallback), cmocka_unit_test(test_gemma3),
    };
    const int rc = cmocka_run_group_tests(tests, NULL, NULL);
    unlink(hand_path);
    return rc;
}

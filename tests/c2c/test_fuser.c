/* test_fuser.c: fuser folder loading and generation.
 *  - a folder written by the C2C reference code itself (tests/data/c2c/fuser_ref, tools/make_fuser_fixtures.py):
 *    dims, mapping, gates and every tensor's shape and bf16 bytes as torch reads them (f32 projector converted);
 *  - gen-fuser output: deterministic, reloadable, mapping last_aligned, gate kinds as asked, f32 and safetensors
 *    variants, num_layers 4;
 *  - must-reject folders made by damaging a generated one: missing, unexpected or misshaped tensors, bad mappings,
 *    mismatched file counts, bad projector configs, recipe disagreements. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "c2c/kw_fuser_load.h"
#include "c2c/kw_genfuser.h"
#include "c2c/kw_torchzip.h"
#include "common/kw_file.h"
#include "common/kw_half.h"
#include "common/kw_json.h"
#include "common/kw_status.h"
#include "tests/kw_test_util.h"

#define REF_DIR KW_TEST_DATA_DIR "/c2c/fuser_ref"

static char g_tmp[256];

static int setup(void **state) {
    (void)state;
    snprintf(g_tmp, sizeof g_tmp, "/tmp/kw_test_fuser_XXXXXX");
    return mkdtemp(g_tmp) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    return kw_test_remove_tree(g_tmp);
}

static char *tmp_path(const char *name) {
    static char buf[8][512];
    static int k = 0;
    char *p = buf[k++ % 8];
    snprintf(p, 512, "%s/%s", g_tmp, name);
    return p;
}

static const kw_fuser_dims tiny_dims = {.source_dim = 4,
                                        .source_heads = 2,
                                        .target_dim = 8,
                                        .target_heads = 2,
                                        .hidden_dim = 16,
                                        .intermediate_dim = 12,
                                        .num_layers = 3};

static kw_genfuser_options tiny_options(void) {
    kw_genfuser_options o = {.recv_layers = 4,
                             .sharer_layers = 3,
                             .dims = tiny_dims,
                             .dtype = KW_DTYPE_BF16,
                             .seed = 42,
                             .base_model = "tiny-receiver",
                             .teacher_model = "tiny-sharer"};
    return o;
}

static void gen(const char *dir, const kw_genfuser_options *o) {
    const int rc = kw_genfuser_write(o, dir);
    if (rc < 0) fprintf(stderr, "gen %s: %s\n", dir, kw_error_detail());
    assert_int_equal(rc, 0);
}

static void write_text(const char *path, const char *text) {
    assert_int_equal(kw_file_write_all(path, text, strlen(text)), 0);
}

static void expect_load(const char *dir, int want) {
    kw_fuser *f = (kw_fuser *)&want;
    const int rc = kw_fuser_load(dir, 0, &f);
    if (rc != want)
        fprintf(stderr, "%s: got %s (%s), want %s\n", dir, kw_status_name(rc), kw_error_detail(), kw_status_name(want));
    assert_int_equal(rc, want);
    if (rc == 0) {
        kw_fuser_free(f);
    } else {
        assert_null(f);
        assert_true(strlen(kw_error_detail()) > 0);
    }
}

// ---------------------------------------------------------------------------------------------------------------

static void test_tensor_spec(void **state) {
    (void)state;
    assert_int_equal(kw_fuser_tensor_count(&tiny_dims), 32);
    char name[64];
    int32_t ndim = 0;
    int64_t shape[2];
    static const char *const expect[32] = {
        "key_gate_logit",
        "value_gate_logit",
        "key_in.weight",
        "key_in.bias",
        "value_in.weight",
        "value_in.bias",
        "key_mlp1.blocks.0.norm.weight",
        "key_mlp1.blocks.0.w1.weight",
        "key_mlp1.blocks.0.w2.weight",
        "value_mlp1.blocks.0.norm.weight",
        "value_mlp1.blocks.0.w1.weight",
        "value_mlp1.blocks.0.w2.weight",
        "key_scalar_mlp2.blocks.0.norm.weight",
        "key_scalar_mlp2.blocks.0.w1.weight",
        "key_scalar_mlp2.blocks.0.w2.weight",
        "value_scalar_mlp2.blocks.0.norm.weight",
        "value_scalar_mlp2.blocks.0.w1.weight",
        "value_scalar_mlp2.blocks.0.w2.weight",
        "key_scalar_head.weight",
        "key_scalar_head.bias",
        "value_scalar_head.weight",
        "value_scalar_head.bias",
        "key_proj_mlp2.blocks.0.norm.weight",
        "key_proj_mlp2.blocks.0.w1.weight",
        "key_proj_mlp2.blocks.0.w2.weight",
        "value_proj_mlp2.blocks.0.norm.weight",
        "value_proj_mlp2.blocks.0.w1.weight",
        "value_proj_mlp2.blocks.0.w2.weight",
        "key_proj_out.weight",
        "key_proj_out.bias",
        "value_proj_out.weight",
        "value_proj_out.bias",
    };
    for (size_t i = 0; i < 32; ++i) {
        assert_int_equal(kw_fuser_tensor_spec(&tiny_dims, i, name, sizeof name, &ndim, shape), 0);
        assert_string_equal(name, expect[i]);
    }
    /* Shapes from §2.6 with in = 2*4 + 2*8 = 24, out = 16, hidden 16, intermediate 12, 2 target heads. */
    assert_int_equal(kw_fuser_tensor_spec(&tiny_dims, 2, name, sizeof name, &ndim, shape), 0);
    assert_true(ndim == 2 && shape[0] == 16 && shape[1] == 24);
    assert_int_equal(kw_fuser_tensor_spec(&tiny_dims, 7, name, sizeof name, &ndim, shape), 0);
    assert_true(ndim == 2 && shape[0] == 12 && shape[1] == 16); /* mlp1 w1: (intermediate, hidden) */
    assert_int_equal(kw_fuser_tensor_spec(&tiny_dims, 13, name, sizeof name, &ndim, shape), 0);
    assert_true(ndim == 2 && shape[0] == 16 && shape[1] == 16); /* scalar_mlp2 w1: (hidden, hidden) */
    assert_int_equal(kw_fuser_tensor_spec(&tiny_dims, 18, name, sizeof name, &ndim, shape), 0);
    assert_true(ndim == 2 && shape[0] == 2 && shape[1] == 16); /* scalar_head: (target heads, hidden) */
    assert_int_equal(kw_fuser_tensor_spec(&tiny_dims, 31, name, sizeof name, &ndim, shape), 0);
    assert_true(ndim == 1 && shape[0] == 16);
    assert_int_equal(kw_fuser_tensor_spec(&tiny_dims, 0, name, sizeof name, &ndim, shape), 0);
    assert_int_equal(ndim, 0);
    assert_int_equal(kw_fuser_tensor_spec(&tiny_dims, 32, name, sizeof name, &ndim, shape), KW_E_INVALID_ARG);

    kw_fuser_dims four = tiny_dims;
    four.num_layers = 4;
    assert_int_equal(kw_fuser_tensor_count(&four), 38);
    assert_int_equal(kw_fuser_tensor_spec(&four, 25, name, sizeof name, &ndim, shape), 0);
    assert_string_equal(name, "key_proj_mlp2.blocks.1.norm.weight");
    assert_int_equal(kw_fuser_tensor_spec(&four, 28, name, sizeof name, &ndim, shape), 0);
    assert_string_equal(name, "value_proj_mlp2.blocks.0.norm.weight");
    assert_int_equal(kw_fuser_tensor_spec(&four, 34, name, sizeof name, &ndim, shape), 0);
    assert_string_equal(name, "key_proj_out.weight");

    kw_fuser_dims bad = tiny_dims;
    bad.num_layers = 2;
    assert_int_equal(kw_fuser_dims_check(&bad), KW_E_FUSER_CONFIG);
    bad = tiny_dims;
    bad.hidden_dim = 0;
    assert_int_equal(kw_fuser_dims_check(&bad), KW_E_FUSER_CONFIG);
}

static void check_reference(const kw_fuser *f, int with_recipe) {
    cJSON *m = NULL;
    assert_int_equal(kw_json_load_file(REF_DIR "/manifest.json", 1 << 22, &m), 0);
    assert_int_equal(f->n_projectors, 3);
    assert_int_equal(f->n_target_layers, 3);
    assert_int_equal(f->source_model, 1);
    assert_int_equal(f->n_extra_pairs, 0);
    assert_memory_equal(&f->dims, &tiny_dims, sizeof tiny_dims);
    const cJSON *mapping = cJSON_GetObjectItemCaseSensitive(m, "mapping");
    for (int32_t t = 0; t < 3; ++t) {
        int32_t src = -1;
        const kw_fuser_projector *p = NULL;
        assert_int_equal(kw_fuser_layer(f, t, &src, &p), 0);
        assert_int_equal(src, (int)cJSON_GetArrayItem(cJSON_GetArrayItem(mapping, t), 0)->valuedouble);
        assert_ptr_equal(p, &f->projectors[(int)cJSON_GetArrayItem(cJSON_GetArrayItem(mapping, t), 1)->valuedouble]);
    }
    assert_int_equal(kw_fuser_layer(f, 3, NULL, NULL), KW_E_NOT_FOUND);
    assert_int_equal(kw_fuser_layer(f, -1, NULL, NULL), KW_E_NOT_FOUND);
    /* Gates: projector 0 open/open, 1 closed/closed (logit exactly 0 is closed), 2 key only. */
    assert_true(f->projectors[0].key.gate_open && f->projectors[0].value.gate_open);
    assert_true(!f->projectors[1].key.gate_open && !f->projectors[1].value.gate_open);
    assert_true(f->projectors[2].key.gate_open && !f->projectors[2].value.gate_open);
    assert_int_equal(kw_fuser_layer_active(f, 0), 1);
    assert_int_equal(kw_fuser_layer_active(f, 1), 0);
    assert_int_equal(kw_fuser_layer_active(f, 2), 1);
    for (int p = 0; p < 3; ++p) {
        const cJSON *mp = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(m, "projectors"), p);
        const cJSON *gates = cJSON_GetObjectItemCaseSensitive(mp, "gates");
        assert_true(f->projectors[p].key.gate_value == (float)cJSON_GetArrayItem(gates, 0)->valuedouble);
        assert_true(f->projectors[p].value.gate_value == (float)cJSON_GetArrayItem(gates, 1)->valuedouble);
        const cJSON *tensors = cJSON_GetObjectItemCaseSensitive(mp, "tensors");
        assert_int_equal(f->projectors[p].n_tensors, (size_t)cJSON_GetArraySize(tensors));
        size_t i = 0;
        const cJSON *want = NULL;
        cJSON_ArrayForEach(want, tensors) {
            const kw_fuser_tensor *t = &f->projectors[p].tensors[i++];
            assert_string_equal(t->name, cJSON_GetObjectItemCaseSensitive(want, "name")->valuestring);
            assert_int_equal(t->dtype, KW_DTYPE_BF16);
            const cJSON *shape = cJSON_GetObjectItemCaseSensitive(want, "shape");
            assert_int_equal(t->ndim, cJSON_GetArraySize(shape));
            for (int32_t d = 0; d < t->ndim; ++d)
                assert_true(t->shape[d] == (int64_t)cJSON_GetArrayItem(shape, d)->valuedouble);
            assert_int_equal((uintptr_t)t->data % 2, 0);
            assert_true((double)kw_torchzip_crc32(0, t->data, t->nbytes) ==
                        cJSON_GetObjectItemCaseSensitive(want, "crc32")->valuedouble);
        }
        /* The branch views point at the right tensors. */
        const kw_fuser_branch *v = &f->projectors[p].value;
        assert_string_equal(v->in_w->name, "value_in.weight");
        assert_string_equal(v->mlp1.w2->name, "value_mlp1.blocks.0.w2.weight");
        assert_string_equal(v->scalar_mlp2.norm->name, "value_scalar_mlp2.blocks.0.norm.weight");
        assert_string_equal(v->scalar_head_b->name, "value_scalar_head.bias");
        assert_int_equal(v->n_proj_blocks, 1);
        assert_string_equal(v->proj_mlp2[0].w1->name, "value_proj_mlp2.blocks.0.w1.weight");
        assert_string_equal(v->proj_out_w->name, "value_proj_out.weight");
        assert_string_equal(f->projectors[p].key.gate_logit->name, "key_gate_logit");
    }
    assert_int_equal(f->recipe.present, with_recipe);
    if (with_recipe) {
        assert_string_equal(f->recipe.base_model, "kvwire/tiny-qwen3-receiver");
        assert_string_equal(f->recipe.teacher_model, "kvwire/tiny-qwen2-sharer");
        assert_string_equal(f->recipe.mapping, "last_aligned");
        assert_string_equal(f->recipe.alignment_strategy, "first");
        assert_string_equal(f->recipe.multi_source_fusion_mode, "sequential");
        assert_int_equal(f->recipe.include_response, 0);
        assert_int_equal(f->recipe.is_do_alignment, 0);
    }
    assert_int_equal(kw_fuser_check_models(f, 3, 2, 8, 2, 2, 4), 0);
    assert_int_equal(kw_fuser_check_models(f, 2, 2, 8, 2, 2, 4), KW_E_FUSER_CONFIG); /* layer 2 beyond receiver */
    assert_int_equal(kw_fuser_check_models(f, 3, 2, 8, 1, 2, 4), KW_E_FUSER_CONFIG); /* source 1 beyond sharer */
    assert_int_equal(kw_fuser_check_models(f, 3, 4, 8, 2, 2, 4), KW_E_FUSER_CONFIG);
    assert_int_equal(kw_fuser_check_models(f, 3, 2, 8, 2, 2, 8), KW_E_FUSER_CONFIG);
    cJSON_Delete(m);
}

static void test_reference_folder(void **state) {
    (void)state;
    kw_fuser *f = NULL;
    assert_int_equal(kw_fuser_load(REF_DIR, 0, &f), 0);
    check_reference(f, 1);
    kw_fuser_free(f);
    /* The checkpoint folder itself (what the reference's evaluator is given): no recipe. */
    assert_int_equal(kw_fuser_load(REF_DIR "/final", KW_FUSER_LOAD_NO_CRC, &f), 0);
    check_reference(f, 0);
    kw_fuser_free(f);
    kw_fuser_free(NULL);
    expect_load(KW_TEST_DATA_DIR "/c2c", KW_E_NOT_FOUND);
}

static int files_equal(const char *a, const char *b) {
    kw_file_map ma = {0}, mb = {0};
    assert_int_equal(kw_file_map_open(a, &ma), 0);
    assert_int_equal(kw_file_map_open(b, &mb), 0);
    const int eq = ma.size == mb.size && (ma.size == 0 || memcmp(ma.data, mb.data, ma.size) == 0);
    kw_file_unmap(&ma);
    kw_file_unmap(&mb);
    return eq;
}

static void test_gen_reload(void **state) {
    (void)state;
    kw_genfuser_options o = tiny_options();
    gen(tmp_path("g1"), &o);
    gen(tmp_path("g2"), &o);
    static const char *const files[] = {"config.json", "final/projector_config.json", "final/projector_0.json",
                                        "final/projector_0.pt", "final/projector_3.pt"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; ++i) {
        char a[600], b[600];
        snprintf(a, sizeof a, "%s/%s", tmp_path("g1"), files[i]);
        snprintf(b, sizeof b, "%s/%s", tmp_path("g2"), files[i]);
        assert_true(files_equal(a, b)); /* same seed, same bytes */
    }
    o.seed = 43;
    gen(tmp_path("g3"), &o);
    assert_false(files_equal(tmp_path("g1/final/projector_0.pt"), tmp_path("g3/final/projector_0.pt")));

    kw_fuser *f = NULL;
    assert_int_equal(kw_fuser_load(tmp_path("g1"), 0, &f), 0);
    assert_int_equal(f->n_projectors, 4);
    assert_int_equal(f->n_target_layers, 4);
    /* last_aligned, T = 4 from S = 3: offset -1, so 0 -> 0, 1 -> 0, 2 -> 1, 3 -> 2. */
    static const int32_t want_src[4] = {0, 0, 1, 2};
    for (int32_t t = 0; t < 4; ++t) {
        int32_t src = -1;
        assert_int_equal(kw_fuser_layer(f, t, &src, NULL), 0);
        assert_int_equal(src, want_src[t]);
        assert_int_equal(kw_genfuser_last_aligned(4, 3, t), want_src[t]);
    }
    /* Default gates for 4 layers: open, open, closed, k_only. */
    assert_true(f->projectors[0].key.gate_open && f->projectors[0].value.gate_open);
    assert_true(f->projectors[1].key.gate_open && f->projectors[1].value.gate_open);
    assert_true(!f->projectors[2].key.gate_open && !f->projectors[2].value.gate_open);
    assert_true(f->projectors[2].key.gate_value == 0.0f && f->projectors[2].value.gate_value < 0.0f);
    assert_true(f->projectors[3].key.gate_open && !f->projectors[3].value.gate_open);
    assert_true(f->projectors[0].key.gate_value >= 0.0625f && f->projectors[0].key.gate_value <= 1.0f);
    assert_string_equal(f->recipe.base_model, "tiny-receiver");
    assert_string_equal(f->recipe.mapping, "last_aligned");
    /* Norm weights around 1, other weights small. */
    const uint16_t *norm = f->projectors[1].key.mlp1.norm->data;
    const uint16_t *w = f->projectors[1].key.in_w->data;
    assert_true(kw_bf16_to_f32(norm[0]) > 0.5f && kw_bf16_to_f32(norm[0]) < 1.5f);
    assert_true(kw_bf16_to_f32(w[0]) > -0.2f && kw_bf16_to_f32(w[0]) < 0.2f);
    kw_fuser_free(f);

    /* Known real mappings (c2c_spec.md §1.7). */
    assert_int_equal(kw_genfuser_last_aligned(28, 24, 4), 0);
    assert_int_equal(kw_genfuser_last_aligned(28, 24, 5), 1);
    assert_int_equal(kw_genfuser_last_aligned(28, 24, 27), 23);
    assert_int_equal(kw_genfuser_last_aligned(28, 16, 12), 0);
    assert_int_equal(kw_genfuser_last_aligned(28, 16, 13), 1);
    assert_int_equal(kw_genfuser_last_aligned(28, 36, 0), 8);
    assert_int_equal(kw_genfuser_last_aligned(28, 28, 9), 9);

    uint8_t g[2];
    kw_genfuser_default_gates(2, g);
    assert_true(g[0] == KW_GENFUSER_GATE_OPEN && g[1] == KW_GENFUSER_GATE_K_ONLY);
}

/* The same seed in bf16 .pt, bf16 safetensors and f32 .pt gives the same bf16 weights after loading. */
static void test_gen_variants(void **state) {
    (void)state;
    kw_genfuser_options o = tiny_options();
    const uint8_t gates[4] = {KW_GENFUSER_GATE_V_ONLY, KW_GENFUSER_GATE_CLOSED, KW_GENFUSER_GATE_OPEN,
                              KW_GENFUSER_GATE_K_ONLY};
    o.gates = gates;
    gen(tmp_path("v_pt"), &o);
    o.safetensors = 1;
    gen(tmp_path("v_st"), &o);
    o.safetensors = 0;
    o.dtype = KW_DTYPE_F32;
    gen(tmp_path("v_f32"), &o);
    kw_fuser *a = NULL, *b = NULL, *c = NULL;
    assert_int_equal(kw_fuser_load(tmp_path("v_pt"), 0, &a), 0);
    assert_int_equal(kw_fuser_load(tmp_path("v_st"), 0, &b), 0);
    assert_int_equal(kw_fuser_load(tmp_path("v_f32"), 0, &c), 0);
    assert_int_equal(b->weights_safetensors, 1);
    assert_true(a->projectors[0].value.gate_open && !a->projectors[0].key.gate_open);
    for (int32_t p = 0; p < 4; ++p) {
        for (size_t i = 0; i < a->projectors[p].n_tensors; ++i) {
            const kw_fuser_tensor *ta = &a->projectors[p].tensors[i], *tb = &b->projectors[p].tensors[i],
                                  *tc = &c->projectors[p].tensors[i];
            assert_string_equal(ta->name, tb->name);
            assert_int_equal(ta->nbytes, tb->nbytes);
            assert_int_equal(ta->nbytes, tc->nbytes);
            assert_memory_equal(ta->data, tb->data, ta->nbytes);
            assert_memory_equal(ta->data, tc->data, ta->nbytes); /* f32 rounded to bf16 at load */
        }
    }
    kw_fuser_free(a);
    kw_fuser_free(b);
    kw_fuser_free(c);

    o = tiny_options();
    o.dims.num_layers = 4;
    gen(tmp_path("v_nl4"), &o);
    assert_int_equal(kw_fuser_load(tmp_path("v_nl4"), 0, &a), 0);
    assert_int_equal(a->projectors[0].n_tensors, 38);
    assert_int_equal(a->projectors[0].key.n_proj_blocks, 2);
    assert_string_equal(a->projectors[0].key.proj_mlp2[1].w2->name, "key_proj_mlp2.blocks.1.w2.weight");
    kw_fuser_free(a);

    o = tiny_options();
    o.dtype = KW_DTYPE_F16;
    assert_int_equal(kw_genfuser_write(&o, tmp_path("bad")), KW_E_INVALID_ARG);
    o = tiny_options();
    o.dims.num_layers = 2;
    assert_int_equal(kw_genfuser_write(&o, tmp_path("bad")), KW_E_INVALID_ARG);
}

/* convert-fuser: the reference folder (bf16 and f32 projectors) to safetensors and to .pt, both load to the same
 * bf16 tensors, gates and mapping; the output must not be the input. */
static void test_convert(void **state) {
    (void)state;
    kw_fuser *ref = NULL, *st = NULL, *pt = NULL;
    assert_int_equal(kw_fuser_load(REF_DIR, 0, &ref), 0);
    assert_int_equal(kw_fuser_convert(REF_DIR, tmp_path("conv_st"), 1), 0);
    assert_int_equal(kw_fuser_convert(tmp_path("conv_st"), tmp_path("conv_pt"), 0), 0);
    assert_int_equal(kw_fuser_load(tmp_path("conv_st"), 0, &st), 0);
    assert_int_equal(kw_fuser_load(tmp_path("conv_pt"), 0, &pt), 0);
    assert_int_equal(st->weights_safetensors, 1);
    assert_int_equal(pt->weights_safetensors, 0);
    assert_true(kw_path_is_file(tmp_path("conv_st/final/projector_2.safetensors")));
    assert_true(files_equal(REF_DIR "/final/projector_config.json", tmp_path("conv_st/final/projector_config.json")));
    assert_true(files_equal(REF_DIR "/config.json", tmp_path("conv_pt/config.json")));
    check_reference(st, 1);
    check_reference(pt, 1);
    for (int32_t p = 0; p < 3; ++p)
        for (size_t i = 0; i < ref->projectors[p].n_tensors; ++i)
            assert_memory_equal(ref->projectors[p].tensors[i].data, st->projectors[p].tensors[i].data,
                                ref->projectors[p].tensors[i].nbytes);
    kw_fuser_free(ref);
    kw_fuser_free(st);
    kw_fuser_free(pt);
    assert_int_equal(kw_fuser_convert(tmp_path("conv_st"), tmp_path("conv_st"), 1), KW_E_INVALID_ARG);
    assert_int_equal(kw_fuser_convert(tmp_path("nowhere"), tmp_path("conv_x"), 1), KW_E_NOT_FOUND);
}

// ---------------------------------------------------------------------------------------------------------------
// Must-reject folders

/* A fresh copy of the generated folder "base" at name. */
static const char *fresh(const char *name) {
    kw_genfuser_options o = tiny_options();
    const char *dir = tmp_path(name);
    gen(dir, &o);
    return dir;
}

/* Rewrites DIR/final/projector_1.pt with one change: drop `drop`, reshape `reshape` (first dim + 1), add `add`. */
static void rewrite_pt(const char *dir, const char *drop, const char *reshape, const char *add) {
    char path[600];
    snprintf(path, sizeof path, "%s/final/projector_1.pt", dir);
    kw_torchzip *tz = NULL;
    assert_int_equal(kw_torchzip_open(path, 0, &tz), 0);
    const size_t n = kw_torchzip_count(tz);
    kw_torchzip_write_tensor *w = calloc(n + 1, sizeof *w);
    uint16_t *big = calloc(1 << 12, 2);
    size_t m = 0;
    for (size_t i = 0; i < n; ++i) {
        const kw_torchzip_tensor *t = kw_torchzip_at(tz, i);
        if (drop && strcmp(t->name, drop) == 0) continue;
        w[m] = (kw_torchzip_write_tensor){.name = t->name, .dtype = t->dtype, .ndim = t->ndim, .data = t->data};
        memcpy(w[m].shape, t->shape, sizeof w[m].shape);
        if (reshape && strcmp(t->name, reshape) == 0) {
            if (w[m].ndim == 0) {
                w[m].ndim = 1;
                w[m].shape[0] = 1;
            } else {
                w[m].shape[0] += 1;
                w[m].data = big;
            }
        }
        ++m;
    }
    if (add)
        w[m++] = (kw_torchzip_write_tensor){.name = add, .dtype = KW_DTYPE_BF16, .ndim = 1, .shape = {3}, .data = big};
    assert_int_equal(kw_torchzip_write(path, "projector_1", w, m), 0);
    kw_torchzip_close(tz);
    free(w);
    free(big);
}

static void test_reject_tensors(void **state) {
    (void)state;
    rewrite_pt(fresh("t_missing"), "value_proj_out.bias", NULL, NULL);
    expect_load(tmp_path("t_missing"), KW_E_FUSER_TENSOR);
    rewrite_pt(fresh("t_gate_missing"), "key_gate_logit", NULL, NULL);
    expect_load(tmp_path("t_gate_missing"), KW_E_FUSER_TENSOR);
    rewrite_pt(fresh("t_shape"), NULL, "key_mlp1.blocks.0.w1.weight", NULL);
    expect_load(tmp_path("t_shape"), KW_E_FUSER_TENSOR);
    rewrite_pt(fresh("t_gate_shape"), NULL, "value_gate_logit", NULL);
    expect_load(tmp_path("t_gate_shape"), KW_E_FUSER_TENSOR);
    rewrite_pt(fresh("t_extra"), NULL, NULL, "key_extra.weight");
    expect_load(tmp_path("t_extra"), KW_E_FUSER_TENSOR);
    /* gate_temperature may be absent (it is a buffer the loader ignores). */
    rewrite_pt(fresh("t_no_temp"), "gate_temperature", NULL, NULL);
    expect_load(tmp_path("t_no_temp"), 0);
    /* A damaged archive reports the reader's error. */
    const char *d = fresh("t_damaged");
    char path[600];
    snprintf(path, sizeof path, "%s/final/projector_2.pt", d);
    write_text(path, "not a zip");
    expect_load(d, KW_E_PT_FORMAT);
}

static void test_reject_mapping(void **state) {
    (void)state;
    static const struct {
        const char *json;
        int rc;
    } cases[] = {
        {"{\"0\": {\"1\": {\"0\": [[0, 0]], \"1\": [[0, 1]], \"2\": [[1, 2]], \"3\": [[2, 4]]}}}",
         KW_E_FUSER_CONFIG}, /* projector 4 of 4 */
        {"{\"0\": {\"1\": {\"0\": [[0, 0]], \"1\": [[-1, 1]]}}}", KW_E_FUSER_CONFIG},
        {"{\"0\": {\"1\": {\"0\": [[0, 0]], \"00\": [[0, 1]]}}}", KW_E_FUSER_CONFIG},         /* layer 0 twice */
        {"{\"0\": {\"1\": {\"0\": [[0, 0]]}, \"2\": {\"0\": [[0, 0]]}}}", KW_E_FUSER_CONFIG}, /* two sharers */
        {"{\"1\": {\"1\": {\"0\": [[0, 0]]}}}", KW_E_FUSER_CONFIG},                           /* target model 1 */
        {"{\"0\": {\"0\": {\"0\": [[0, 0]]}}}", KW_E_FUSER_CONFIG},                           /* sharer index 0 */
        {"{\"0\": {\"1\": {\"0\": []}}}", KW_E_FUSER_CONFIG},
        {"{\"0\": {\"1\": {\"x\": [[0, 0]]}}}", KW_E_FUSER_CONFIG},
        {"{\"0\": {\"1\": {\"0\": [[0]]}}}", KW_E_FUSER_CONFIG},
        {"{\"0\": {\"1\": {\"0\": [[0, 1.5]]}}}", KW_E_FUSER_CONFIG},
        {"{\"0\": {\"1\": {}}}", KW_E_FUSER_CONFIG},
        {"[]", KW_E_FUSER_CONFIG},
        {"{\"0\": ", KW_E_PARSE},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; ++i) {
        char name[32], path[600];
        snprintf(name, sizeof name, "m_%zu", i);
        const char *d = fresh(name);
        snprintf(path, sizeof path, "%s/final/projector_config.json", d);
        write_text(path, cases[i].json);
        expect_load(d, cases[i].rc);
    }
    /* Extra pairs are counted and ignored; an unmapped layer is not fused. */
    const char *d = fresh("m_ok");
    char path[600];
    snprintf(path, sizeof path, "%s/final/projector_config.json", d);
    write_text(path, "{\"0\": {\"1\": {\"0\": [[2, 3], [1, 1]], \"2\": [[1, 2]]}}}");
    kw_fuser *f = NULL;
    assert_int_equal(kw_fuser_load(d, 0, &f), 0);
    assert_int_equal(f->n_extra_pairs, 1);
    assert_int_equal(f->n_target_layers, 3);
    int32_t src = -1;
    const kw_fuser_projector *p = NULL;
    assert_int_equal(kw_fuser_layer(f, 0, &src, &p), 0);
    assert_int_equal(src, 2);
    assert_ptr_equal(p, &f->projectors[3]);
    assert_int_equal(kw_fuser_layer(f, 1, &src, &p), KW_E_NOT_FOUND);
    assert_int_equal(kw_fuser_layer_active(f, 1), 0);
    kw_fuser_free(f);
}

static void test_reject_counts_and_configs(void **state) {
    (void)state;
    char a[600], b[600];
    const char *d = fresh("c_gap");
    snprintf(a, sizeof a, "%s/final/projector_1.pt", d);
    snprintf(b, sizeof b, "%s/final/projector_7.pt", d);
    assert_int_equal(rename(a, b), 0); /* 4 files, but projector_1.pt is missing */
    expect_load(d, KW_E_FUSER_CONFIG);

    d = fresh("c_fewer");
    snprintf(a, sizeof a, "%s/final/projector_3.pt", d);
    assert_int_equal(unlink(a), 0); /* 3 projectors, the mapping uses projector 3 */
    expect_load(d, KW_E_FUSER_CONFIG);

    d = fresh("c_backup");
    snprintf(a, sizeof a, "%s/final/projector_0.pt", d);
    snprintf(b, sizeof b, "%s/final/projector_0.pt.bak", d);
    write_text(b, "x"); /* counted by the reference's re.match: 5 files, projector_4.* expected */
    expect_load(d, KW_E_FUSER_CONFIG);

    d = fresh("c_json");
    snprintf(a, sizeof a, "%s/final/projector_2.json", d);
    assert_int_equal(unlink(a), 0);
    expect_load(d, KW_E_FUSER_CONFIG);

    d = fresh("c_both");
    snprintf(a, sizeof a, "%s/final/projector_0.safetensors", d);
    write_text(a, "x");
    expect_load(d, KW_E_FUSER_CONFIG);

    static const struct {
        const char *json;
        int rc;
    } proj_cases[] = {
        {"{\"class\": \"AllInOneProjector\", \"init_args\": {\"source_dim\": 4, \"target_dim\": 8}}",
         KW_E_FUSER_CONFIG},
        {"{\"class\": \"C2CProjector\", \"init_args\": {\"source_dim\": 4, \"target_dim\": 8, \"source_num_heads\": 2, "
         "\"target_num_heads\": 2, \"hidden_dim\": 16, \"intermediate_dim\": 12, \"bogus\": 1}}",
         KW_E_FUSER_CONFIG},
        {"{\"class\": \"C2CProjector\", \"init_args\": {\"target_dim\": 8}}", KW_E_FUSER_CONFIG},
        {"{\"class\": \"C2CProjector\", \"init_args\": {\"source_dim\": 4, \"target_dim\": 8, \"source_num_heads\": 2, "
         "\"target_num_heads\": 2, \"hidden_dim\": 16, \"intermediate_dim\": 12, \"num_layers\": 2}}",
         KW_E_FUSER_CONFIG},
        /* Defaults apply: hidden_dim 1024 then disagrees with projector 0. */
        {"{\"class\": \"C2CProjector\", \"init_args\": {\"source_dim\": 4, \"target_dim\": 8, \"source_num_heads\": 2, "
         "\"target_num_heads\": 2}}",
         KW_E_FUSER_CONFIG},
        {"{\"class\": \"C2CProjector\", \"init_args\": {\"source_dim\": 4, \"target_dim\": 8, \"source_num_heads\": 2, "
         "\"target_num_heads\": 2, \"hidden_dim\": 16, \"intermediate_dim\": 12, \"dtype\": \"bfloat16\"}}",
         KW_E_FUSER_CONFIG},
        /* Case-insensitive class name and no optional arguments besides the dims: accepted. */
        {"{\"class\": \"c2cprojector\", \"init_args\": {\"source_dim\": 4, \"target_dim\": 8, \"source_num_heads\": 2, "
         "\"target_num_heads\": 2, \"hidden_dim\": 16, \"intermediate_dim\": 12, \"zero_init\": false}}",
         0},
    };
    for (size_t i = 0; i < sizeof proj_cases / sizeof proj_cases[0]; ++i) {
        char name[32];
        snprintf(name, sizeof name, "p_%zu", i);
        d = fresh(name);
        snprintf(a, sizeof a, "%s/final/projector_1.json", d);
        write_text(a, proj_cases[i].json);
        expect_load(d, proj_cases[i].rc);
    }

    static const struct {
        const char *json;
        int rc;
    } recipe_cases[] = {
        {"{\"model\": {\"base_model\": \"r\", \"teacher_model\": \"s\", \"projector\": {\"type\": \"C2CProjector\", "
         "\"params\": {\"hidden_dim\": 1024}}}}",
         KW_E_FUSER_CONFIG},
        {"{\"model\": {\"base_model\": \"r\", \"teacher_model\": \"s\", \"projector\": {\"type\": "
         "\"AllInOneProjector\"}}}",
         KW_E_FUSER_CONFIG},
        {"{\"model\": {\"base_model\": \"r\", \"projector\": {\"type\": \"C2CProjector\"}}}", KW_E_FUSER_CONFIG},
        {"{\"model\": {\"base_model\": \"r\", \"teacher_model\": \"s\", \"include_response\": \"no\", "
         "\"projector\": {\"type\": \"C2CProjector\"}}}",
         KW_E_FUSER_CONFIG},
        {"{\"training\": {}}", KW_E_FUSER_CONFIG},
        {"{\"model\": {\"base_model\": \"r\", \"teacher_model\": \"s\", \"include_response\": true, "
         "\"projector\": {\"type\": \"c2cprojector\", \"params\": {\"num_layers\": 3}}}}",
         0},
    };
    for (size_t i = 0; i < sizeof recipe_cases / sizeof recipe_cases[0]; ++i) {
        char name[32];
        snprintf(name, sizeof name, "r_%zu", i);
        d = fresh(name);
        snprintf(a, sizeof a, "%s/config.json", d);
        write_text(a, recipe_cases[i].json);
        expect_load(d, recipe_cases[i].rc);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tensor_spec),    cmocka_unit_test(test_reference_folder),
        cmocka_unit_test(test_gen_reload),     cmocka_unit_test(test_gen_variants),
        cmocka_unit_test(test_convert),        cmocka_unit_test(test_reject_tensors),
        cmocka_unit_test(test_reject_mapping), cmocka_unit_test(test_reject_counts_and_configs),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

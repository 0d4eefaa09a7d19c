/* kw_quantize_file.c: a model file in, a GGUF file with quantized matrices out (kw_quantize_file in kw_quantize.h).
 *
 * GGUF in: every metadata entry is copied (general.file_type, general.quantization_version and general.alignment
 * excepted: they are written anew), every tensor is dequantized (model/kw_dequant.h) and re-quantized in file order,
 * names, shapes and layout unchanged. HF in: the metadata llama.cpp reads for the architecture is written from
 * config.json, the tensors are renamed (kw_gguf_model_tensor_name), ordered (token_embd, the blocks in layer order,
 * output_norm, output) and laid out as llama.cpp's converter lays them out (llama q/k rows interleaved per head, Gemma
 * 3 norms stored as 1 + w); the tokenizer keys come from vocab_from (a GGUF file whose tokenizer.* entries are copied),
 * else only the special token ids are written (kvwire loads such a file; llama.cpp needs a vocabulary). An HF folder
 * written by this file's safetensors output is read back too: its quantized matrices dequantized (kw_st_quant.h).
 *
 * Safetensors out (a path ending in .safetensors): the same type per tensor as the GGUF file, but HF names and layout
 * (no interleaving, Gemma 3 norms as w), quantized matrices split into codes, scales and minimums (kw_st_quant.h);
 * beside the file, an HF folder's config.json, generation_config.json and tokenizer files are copied, and a GGUF
 * file's configuration is written as config.json and generation_config.json (its tokenizer stays in the GGUF). */
#include "model/kw_quantize.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_bytes.h"
#include "common/kw_file.h"
#include "common/kw_half.h"
#include "common/kw_size.h"
#include "common/kw_status.h"
#include "model/kw_config.h"
#include "model/kw_dequant.h"
#include "model/kw_gguf.h"
#include "model/kw_gguf_model.h"
#include "model/kw_gguf_writer.h"
#include "model/kw_quantize_st.h"
#include "model/kw_safetensors.h"
#include "model/kw_st_quant.h"
#include "model/kw_weights.h"

// ---------------------------------------------------------------------------------------------------------------
// One tensor: f32 values in GGUF layout -> the scheme's type -> the writer

typedef struct kw_q_ctx {
    kw_gguf_writer *w; /* GGUF output, or */
    kw_q_st_sink *so;  /* safetensors output (HF names and layout) */
    enum kw_quant_scheme scheme;
    int32_t n_layers;
    int tied;
    kw_quantize_stats *stats;
} kw_q_ctx;

/* The N of "blk.N.", or -1. */
static int32_t kw_q_layer_of(const char *gguf_name) {
    unsigned layer = 0;
    if (sscanf(gguf_name, "blk.%u.", &layer) != 1 || layer > 1 << 20) return -1;
    return (int32_t)layer;
}

/* Quantizes x (rows x ne[0] f32 values; owned by the caller) and hands the result to the writer: GGUF tensor name, or
 * with safetensors output HF tensor hf_name (x then in HF layout; name still picks the type). */
static int kw_q_add(kw_q_ctx *c, const char *name, const char *hf_name, int32_t n_dims, const int64_t *ne,
                    const float *x) {
    const kw_quant_tensor qt = {.name = name,
                                .n_dims = n_dims,
                                .ne0 = ne[0],
                                .layer = kw_q_layer_of(name),
                                .n_layers = c->n_layers,
                                .tied = c->tied};
    const uint32_t type = kw_quant_choose_type(c->scheme, &qt);
    int64_t rows = 1;
    for (int32_t d = 1; d < n_dims; ++d)
        rows *= ne[d]; /* bounded by the input file */
    size_t row_bytes = 0;
    size_t bytes = 0;
    KW_FORWARD(kw_ggml_row_bytes(type, ne[0], &row_bytes));
    KW_RETURN_IF(kw_size_mul(row_bytes, (size_t)rows, &bytes) < 0, KW_E_OVERFLOW, "%s: too large", name);
    void *q = malloc(bytes);
    KW_RETURN_IF(!q, KW_E_NOMEM, "out of memory for %s", name);
    for (int64_t r = 0; r < rows; ++r) {
        const int rc = kw_quantize_row(type, x + r * ne[0], ne[0], (uint8_t *)q + (size_t)r * row_bytes);
        if (rc < 0) {
            free(q);
            return kw_error_set(rc, "%s: %s", name, kw_error_detail());
        }
    }
    if (c->stats) ++c->stats->tensors[type < KW_QUANT_MAX_TYPES ? type : KW_QUANT_MAX_TYPES - 1];
    if (!c->so) return kw_gguf_writer_add_tensor(c->w, name, type, n_dims, ne, q, bytes);
    int64_t shape[KW_GGUF_MAX_DIMS];
    for (int32_t d = 0; d < n_dims; ++d)
        shape[d] = ne[n_dims - 1 - d];
    return kw_q_st_sink_add(c->so, hf_name, type, n_dims, shape, q, bytes);
}

/* Grows a float buffer to n values. */
static int kw_q_grow(float **buf, size_t *cap, size_t n) {
    if (n <= *cap) return 0;
    float *p = realloc(*buf, n * sizeof *p);
    KW_RETURN_IF(!p, KW_E_NOMEM, "out of memory for %zu values", n);
    *buf = p;
    *cap = n;
    return 0;
}

static void kw_q_file_keys(kw_q_ctx *c, int *rc) {
    const int32_t ft = kw_quant_file_type(c->scheme);
    if (*rc == 0 && ft >= 0) *rc = kw_gguf_writer_set_u32(c->w, "general.file_type", (uint32_t)ft);
    if (*rc == 0 && c->scheme != KW_QUANT_F32 && c->scheme != KW_QUANT_BF16)
        *rc = kw_gguf_writer_set_u32(c->w, "general.quantization_version", 2);
}

// ---------------------------------------------------------------------------------------------------------------
// GGUF in

static int kw_q_from_gguf(kw_q_ctx *c, const char *path) {
    kw_gguf *g = NULL;
    float *x = NULL;
    size_t cap = 0;
    int rc = kw_gguf_open(path, &g);
    const char *arch = NULL;
    size_t arch_n = 0;
    if (rc == 0) rc = kw_gguf_get_str(g, "general.architecture", &arch, &arch_n);
    if (rc == 0) {
        char key[96];
        int64_t blocks = 0;
        snprintf(key, sizeof key, "%.*s.block_count", (int)(arch_n < 64 ? arch_n : 64), arch);
        rc = kw_gguf_get_int(g, key, 1, 1 << 20, &blocks);
        c->n_layers = (int32_t)blocks;
        c->tied = kw_gguf_find_tensor(g, "output.weight") == NULL;
    }
    for (size_t i = 0; rc == 0 && i < kw_gguf_kv_count(g); ++i) {
        const kw_gguf_kv *kv = kw_gguf_kv_at(g, i);
        if (strcmp(kv->key, "general.alignment") == 0 || strcmp(kv->key, "general.file_type") == 0 ||
            strcmp(kv->key, "general.quantization_version") == 0)
            continue;
        rc = kw_gguf_writer_copy_kv(c->w, g, kv);
    }
    kw_q_file_keys(c, &rc);
    for (size_t i = 0; rc == 0 && i < kw_gguf_tensor_count(g); ++i) {
        const kw_gguf_tensor *t = kw_gguf_tensor_at(g, i);
        int64_t rows = 1;
        for (int32_t d = 1; d < t->n_dims; ++d)
            rows *= t->ne[d];
        size_t row_bytes = 0;
        rc = kw_ggml_row_bytes(t->type, t->ne[0], &row_bytes);
        if (rc == 0) rc = kw_q_grow(&x, &cap, (size_t)rows * (size_t)t->ne[0]);
        for (int64_t r = 0; rc == 0 && r < rows; ++r)
            rc = kw_dequant_row(t->type, (const uint8_t *)t->data + (size_t)r * row_bytes, t->ne[0], KW_DTYPE_F32,
                                x + r * t->ne[0]);
        if (rc == 0) rc = kw_q_add(c, t->name, NULL, t->n_dims, t->ne, x);
    }
    free(x);
    kw_gguf_close(g);
    return rc;
}

/* Gemma 3's GGUF norms hold a = 1 + w, HF's hold w: each a becomes b = a - 1, provided 1 + b gives a back (then the
 * norm kvwire computes from either file is the same; true for every a in [0.5, 2^24), by Sterbenz's lemma). */
static int kw_q_norm_minus_one(const char *name, float *x, size_t n) {
    for (size_t i = 0; i < n; ++i) {
        const float b = x[i] - 1.0f;
        KW_RETURN_IF(!(1.0f + b == x[i]), KW_E_MODEL_CONFIG,
                     "GGUF tensor %s: the norm weight %g is not 1 + w for any f32 w (no exact HF form)", name,
                     (double)x[i]);
        x[i] = b;
    }
    return 0;
}

/* GGUF in, safetensors out: every tensor renamed to its HF name and read as kw_weights hands it out (dequantized to
 * f32, HF layout: llama q/k rows un-permuted), Gemma 3 norms back to w, then converted like an HF folder's tensor;
 * config.json and generation_config.json come from the GGUF's configuration. */
static int kw_q_gguf_to_st(kw_q_ctx *c, const char *path, const char *out) {
    kw_weights *w = NULL;
    kw_gguf *g = NULL;
    float *x = NULL;
    size_t cap = 0;
    int rc = kw_weights_open(path, NULL, &w);
    if (rc == 0) rc = kw_gguf_open(path, &g);
    const kw_model_config *cfg = rc == 0 ? kw_weights_config(w) : NULL;
    if (rc == 0) {
        c->n_layers = cfg->n_layers;
        c->tied = cfg->tie_embeddings;
    }
    for (size_t i = 0; rc == 0 && i < kw_gguf_tensor_count(g); ++i) {
        const kw_gguf_tensor *t = kw_gguf_tensor_at(g, i);
        char hf[256];
        kw_weight wt;
        KW_CHECK(kw_gguf_model_hf_name(cfg->arch, t->name, hf, sizeof hf));
        const int found = kw_weights_get(w, hf, &wt);
        KW_CHECK_IF(found == 0, KW_E_INTERNAL, "GGUF tensor %s (%s) did not read back", t->name, hf);
        KW_CHECK(found < 0 ? found : 0);
        const size_t n = wt.nbytes / sizeof(float); /* f32: the kw_weights default */
        KW_CHECK(kw_q_grow(&x, &cap, n));
        memcpy(x, wt.data, wt.nbytes);
        if (cfg->arch == KW_ARCH_GEMMA3 && strstr(hf, "norm.weight") != NULL)
            KW_CHECK(kw_q_norm_minus_one(t->name, x, n));
        KW_CHECK(kw_q_add(c, t->name, hf, t->n_dims, t->ne, x));
    }
    if (rc == 0) rc = kw_q_st_write_config(cfg, out);
out:
    free(x);
    kw_gguf_close(g);
    kw_weights_close(w);
    return rc;
}

// ---------------------------------------------------------------------------------------------------------------
// HF folder in

/* llama.cpp's metadata for cfg (the keys kw_gguf_model_config and llama.cpp's llama-model.cpp read). */
static int kw_q_hf_metadata(kw_q_ctx *c, const kw_model_config *cfg) {
    kw_gguf_writer *w = c->w;
    const char *arch = kw_arch_name(cfg->arch);
    char key[128];
#define KW_Q_KEY(suffix) (snprintf(key, sizeof key, "%s.%s", arch, (suffix)), key)
    KW_FORWARD(kw_gguf_writer_set_str(w, "general.architecture", arch, strlen(arch)));
    static const char name[] = "kvwire quantize";
    KW_FORWARD(kw_gguf_writer_set_str(w, "general.name", name, sizeof name - 1));
    KW_FORWARD(kw_gguf_writer_set_u32(w, KW_Q_KEY("block_count"), (uint32_t)cfg->n_layers));
    KW_FORWARD(kw_gguf_writer_set_u32(w, KW_Q_KEY("context_length"), (uint32_t)cfg->max_positions));
    KW_FORWARD(kw_gguf_writer_set_u32(w, KW_Q_KEY("embedding_length"), (uint32_t)cfg->hidden));
    KW_FORWARD(kw_gguf_writer_set_u32(w, KW_Q_KEY("feed_forward_length"), (uint32_t)cfg->intermediate));
    KW_FORWARD(kw_gguf_writer_set_u32(w, KW_Q_KEY("attention.head_count"), (uint32_t)cfg->n_heads));
    KW_FORWARD(kw_gguf_writer_set_u32(w, KW_Q_KEY("attention.head_count_kv"), (uint32_t)cfg->n_kv_heads));
    KW_FORWARD(kw_gguf_writer_set_u32(w, KW_Q_KEY("attention.key_length"), (uint32_t)cfg->head_dim));
    KW_FORWARD(kw_gguf_writer_set_u32(w, KW_Q_KEY("attention.value_length"), (uint32_t)cfg->head_dim));
    KW_FORWARD(kw_gguf_writer_set_f32(w, KW_Q_KEY("attention.layer_norm_rms_epsilon"), cfg->rms_eps));
    KW_FORWARD(kw_gguf_writer_set_f32(w, KW_Q_KEY("rope.freq_base"), (float)cfg->rope.theta));
    KW_FORWARD(kw_gguf_writer_set_u32(w, KW_Q_KEY("rope.dimension_count"), (uint32_t)cfg->rope.rotary_dim));
    if (cfg->rope.scaling == KW_ROPE_SCALING_LINEAR) {
        KW_FORWARD(kw_gguf_writer_set_str(w, KW_Q_KEY("rope.scaling.type"), "linear", 6));
        KW_FORWARD(kw_gguf_writer_set_f32(w, KW_Q_KEY("rope.scaling.factor"), (float)cfg->rope.factor));
    } else {
        KW_RETURN_IF(cfg->rope.scaling != KW_ROPE_SCALING_NONE, KW_E_MODEL_CONFIG,
                     "this RoPE scaling has no GGUF form kvwire writes (none, linear)");
    }
    if (cfg->arch == KW_ARCH_GEMMA3) {
        /* kvwire's GGUF reader and llama.cpp take these from the file or fix them; refuse what they would misread */
        int32_t pattern = 0;
        for (int32_t l = 0; l < cfg->n_layers && pattern == 0; ++l)
            if (!cfg->layer_sliding[l]) pattern = l + 1;
        for (int32_t l = 0; l < cfg->n_layers; ++l)
            KW_RETURN_IF(pattern > 0 && cfg->layer_sliding[l] != ((l + 1) % pattern != 0), KW_E_MODEL_CONFIG,
                         "Gemma 3 sliding layers that are not every N-th layer global");
        KW_RETURN_IF(cfg->rope_local.theta != 10000.0 || cfg->query_pre_attn_scalar != (double)cfg->head_dim,
                     KW_E_MODEL_CONFIG,
                     "Gemma 3 with rope_local_base_freq != 10000 or query_pre_attn_scalar != "
                     "head_dim (GGUF readers fix both)");
        KW_FORWARD(kw_gguf_writer_set_u32(w, KW_Q_KEY("attention.sliding_window"), (uint32_t)cfg->sliding_window));
        if (pattern > 0 && pattern != 6)
            KW_FORWARD(kw_gguf_writer_set_u32(w, KW_Q_KEY("attention.sliding_window_pattern"), (uint32_t)pattern));
        if (cfg->final_logit_softcap > 0)
            KW_FORWARD(kw_gguf_writer_set_f32(w, KW_Q_KEY("final_logit_softcapping"), (float)cfg->final_logit_softcap));
    }
#undef KW_Q_KEY
    return 0;
}

static int kw_q_hf_special(kw_gguf_writer *w, const kw_model_config *cfg) {
    if (cfg->bos_id >= 0) KW_FORWARD(kw_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)cfg->bos_id));
    if (cfg->n_eos > 0) KW_FORWARD(kw_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)cfg->eos_ids[0]));
    if (cfg->pad_id >= 0)
        KW_FORWARD(kw_gguf_writer_set_u32(w, "tokenizer.ggml.padding_token_id", (uint32_t)cfg->pad_id));
    return 0;
}

/* Copies the tokenizer.* entries of the GGUF file at path; *n_tokens the length of tokenizer.ggml.tokens. */
static int kw_q_vocab_from(kw_gguf_writer *w, const char *path, uint64_t *n_tokens) {
    kw_gguf *g = NULL;
    KW_FORWARD(kw_gguf_open(path, &g));
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < kw_gguf_kv_count(g); ++i) {
        const kw_gguf_kv *kv = kw_gguf_kv_at(g, i);
        if (strncmp(kv->key, "tokenizer.", 10) != 0) continue;
        if (strcmp(kv->key, "tokenizer.ggml.tokens") == 0) *n_tokens = kv->count;
        rc = kw_gguf_writer_copy_kv(w, g, kv);
    }
    kw_gguf_close(g);
    return rc;
}

typedef struct kw_q_hf_tensor {
    const kw_st_tensor *t;
    int32_t ndim; /* the values' shape: t's, or {N, K} for a quantized matrix (kw_st_quant.h) */
    int64_t shape[KW_SAFETENSORS_MAX_DIMS];
    int quantized;
    char gguf[160];
    int32_t order; /* -1 token_embd, N for blk.N, INT_MAX - 1 output_norm, INT_MAX output */
} kw_q_hf_tensor;

static int kw_q_hf_cmp(const void *a, const void *b) {
    const kw_q_hf_tensor *x = a, *y = b;
    if (x->order != y->order) return x->order < y->order ? -1 : 1;
    return strcmp(x->gguf, y->gguf);
}

/* The values of HF tensor e as f32 into x (n of them): converted from its dtype, or dequantized (kw_st_quant.h) through
 * *dq (*dq_cap bytes, grown; owned by the caller). */
static int kw_q_hf_load(const kw_stq_index *ix, const kw_q_hf_tensor *e, void **dq, size_t *dq_cap, float *x,
                        size_t n) {
    const kw_st_tensor *t = e->t;
    if (e->quantized) {
        size_t nbytes = 0;
        int64_t shape[2];
        KW_FORWARD(kw_stq_dequantize(ix, t->name, KW_DTYPE_F32, dq, dq_cap, &nbytes, shape));
        memcpy(x, *dq, nbytes); /* n * 4 bytes: the shape recorded at listing */
        return 0;
    }
    const uint8_t *src = t->data;
    for (size_t i = 0; i < n; ++i) {
        switch (t->dtype) {
        case KW_DTYPE_F32:
            x[i] = kw_load_lef32(src + 4 * i);
            break;
        case KW_DTYPE_BF16:
            x[i] = kw_bf16_to_f32(kw_load_le16(src + 2 * i));
            break;
        case KW_DTYPE_F16:
            x[i] = kw_f16_to_f32(kw_load_le16(src + 2 * i));
            break;
        default:
            KW_FAIL(KW_E_MODEL_DTYPE, "HF tensor %s: dtype %s", t->name, kw_dtype_name(t->dtype));
        }
    }
    return 0;
}

/* The values x of HF tensor e put in GGUF layout if gguf: llama q/k rows (or bias values) interleaved per head, Gemma 3
 * norms + 1. */
static int kw_q_hf_layout(const kw_model_config *cfg, const kw_q_hf_tensor *e, int gguf, float *x, size_t n) {
    const kw_st_tensor *t = e->t;
    if (!gguf) return 0;
    if (cfg->arch == KW_ARCH_GEMMA3 && strstr(t->name, "norm.weight") != NULL)
        for (size_t i = 0; i < n; ++i)
            x[i] = x[i] + 1.0f;
    const int q = strstr(t->name, ".self_attn.q_proj.") != NULL, k = strstr(t->name, ".self_attn.k_proj.") != NULL;
    if (cfg->arch != KW_ARCH_LLAMA || !(q || k)) return 0;
    /* GGUF row 2j + i of a head of hd rows holds HF row i * hd/2 + j (rows of a weight, values of a bias). */
    const size_t units = e->ndim == 1 ? n : (size_t)e->shape[0], cols = n / units;
    const size_t heads = (size_t)(q ? cfg->n_heads : cfg->n_kv_heads);
    KW_RETURN_IF(heads == 0 || units % (2 * heads) != 0, KW_E_MODEL_SHAPE,
                 "HF tensor %s: %zu rows do not split into %zu heads of an even size", t->name, units, heads);
    const size_t hd = units / heads;
    float *tmp = malloc(n * sizeof *tmp);
    KW_RETURN_IF(!tmp, KW_E_NOMEM, "out of memory");
    memcpy(tmp, x, n * sizeof *tmp);
    for (size_t r = 0; r < units; ++r) {
        const size_t h = r / hd, rr = r % hd, from = h * hd + (rr % 2) * (hd / 2) + rr / 2;
        memcpy(x + r * cols, tmp + from * cols, cols * sizeof *x);
    }
    free(tmp);
    return 0;
}

static int kw_q_from_hf(kw_q_ctx *c, const char *dir, const char *vocab_from) {
    kw_model_config cfg;
    KW_FORWARD(kw_config_load(dir, &cfg));
    kw_safetensors *st = NULL;
    KW_FORWARD(kw_safetensors_open(dir, &st));
    kw_stq_index *ix = NULL;
    const size_t count = kw_safetensors_count(st);
    kw_q_hf_tensor *list = calloc(count ? count : 1, sizeof *list);
    float *x = NULL;
    void *dq = NULL;
    size_t cap = 0, dq_cap = 0, n_list = 0;
    int rc = list ? kw_stq_index_open(st, &ix) : kw_error_set(KW_E_NOMEM, "out of memory");
    c->n_layers = cfg.n_layers;
    if (c->stats) c->stats->embedding_rows = cfg.vocab;
    c->tied = 1;
    for (size_t i = 0; rc == 0 && i < count; ++i) {
        const kw_st_tensor *t = kw_safetensors_at(st, i);
        if (cfg.tie_embeddings && strcmp(t->name, "lm_head.weight") == 0) continue; /* the embedding is the output */
        kw_q_hf_tensor *e = &list[n_list];
        e->t = t;
        e->ndim = t->ndim;
        memcpy(e->shape, t->shape, sizeof e->shape);
        const int role = kw_stq_role(ix, t->name, e->shape); /* a quantized matrix: its values' shape */
        if (role == 2) continue;                             /* a quantized matrix's scales or minimums */
        e->quantized = role == 1;
        rc = kw_gguf_model_tensor_name(cfg.arch, t->name, e->gguf, sizeof e->gguf);
        if (rc < 0) {
            rc = kw_error_set(rc, "HF tensor %s has no GGUF name", t->name);
            break;
        }
        KW_CHECK_IF(e->ndim < 1 || e->ndim > KW_GGUF_MAX_DIMS, KW_E_MODEL_SHAPE, "HF tensor %s has %d dimensions",
                    t->name, (int)e->ndim);
        if (strcmp(e->gguf, "output.weight") == 0) c->tied = 0;
        const int32_t layer = kw_q_layer_of(e->gguf);
        e->order = strcmp(e->gguf, "token_embd.weight") == 0    ? -1
                   : layer >= 0                                 ? layer
                   : strcmp(e->gguf, "output_norm.weight") == 0 ? INT_MAX - 1
                                                                : INT_MAX;
        ++n_list;
    }
    if (rc == 0) qsort(list, n_list, sizeof *list, kw_q_hf_cmp);
    if (rc == 0 && c->w) rc = kw_q_hf_metadata(c, &cfg);
    if (c->w) kw_q_file_keys(c, &rc);
    uint64_t n_tokens = 0;
    /* safetensors output has no metadata to write here: config.json and the tokenizer files are copied */
    if (rc == 0 && c->w && vocab_from) {
        rc = kw_q_vocab_from(c->w, vocab_from, &n_tokens);
        if (c->stats) c->stats->vocab_tokens = (int64_t)n_tokens;
    } else if (rc == 0 && c->w) {
        rc = kw_q_hf_special(c->w, &cfg);
    }
    for (size_t i = 0; rc == 0 && i < n_list; ++i) {
        const kw_q_hf_tensor *e = &list[i];
        size_t n = 1;
        int64_t ne[KW_GGUF_MAX_DIMS];
        for (int32_t d = 0; d < e->ndim; ++d) {
            ne[d] = e->shape[e->ndim - 1 - d];
            n *= (size_t)e->shape[d]; /* bounded by the file */
        }
        KW_CHECK(kw_q_grow(&x, &cap, n));
        KW_CHECK(kw_q_hf_load(ix, e, &dq, &dq_cap, x, n));
        KW_CHECK(kw_q_hf_layout(&cfg, e, c->w != NULL, x, n));
        KW_CHECK(kw_q_add(c, e->gguf, e->t->name, e->ndim, ne, x));
    }
out:
    free(x);
    free(dq);
    free(list);
    kw_stq_index_free(ix);
    kw_safetensors_close(st);
    return rc;
}

/* 1 if path names a safetensors file (by its suffix). */
static int kw_q_is_safetensors(const char *path) {
    static const char suffix[] = ".safetensors";
    const size_t n = strlen(path), k = sizeof suffix - 1;
    return n >= k && strcmp(path + n - k, suffix) == 0;
}

/* KW_E_INVALID_ARG if the folder of out is the folder in (the copy of config.json would overwrite its source). */
static int kw_q_check_out_dir(const char *in, const char *out) {
    const char *slash = strrchr(out, '/');
    char *dir = slash ? strndup(out, (size_t)(slash - out) + 1) : strdup(".");
    KW_RETURN_IF(!dir, KW_E_NOMEM, "out of memory");
    char *a = realpath(in, NULL), *b = realpath(dir, NULL);
    const int same = a && b && strcmp(a, b) == 0, missing = !b;
    free(a);
    free(b);
    int rc = 0;
    if (missing) rc = kw_error_set(KW_E_IO, "the folder %s of the output does not exist", dir);
    if (same) rc = kw_error_set(KW_E_INVALID_ARG, "the output folder %s is the input folder", dir);
    free(dir);
    return rc;
}

int kw_quantize_file(const char *in, const char *out, enum kw_quant_scheme scheme, const char *vocab_from,
                     kw_quantize_stats *stats) {
    static const char *const scheme_names[] = {"f32", "bf16", "q8_0", "q4_k", "q4_k_m"};
    KW_RETURN_IF(!in || !out, KW_E_INVALID_ARG, "kw_quantize_file: NULL path");
    KW_RETURN_IF((unsigned)scheme > KW_QUANT_Q4_K_M, KW_E_INVALID_ARG, "kw_quantize_file: scheme %d", (int)scheme);
    const int gguf_in = kw_gguf_is_gguf(in), st_out = kw_q_is_safetensors(out);
    KW_RETURN_IF(gguf_in && vocab_from, KW_E_INVALID_ARG,
                 "a vocabulary source is for HF folders (a GGUF input keeps its own tokenizer)");
    KW_RETURN_IF(st_out && vocab_from, KW_E_INVALID_ARG,
                 "a vocabulary source is for GGUF output (safetensors output copies the folder's tokenizer files)");
    if (st_out) KW_FORWARD(kw_q_check_out_dir(in, out));
    if (stats) memset(stats, 0, sizeof *stats);
    kw_q_ctx c = {.scheme = scheme, .stats = stats};
    int rc = st_out ? kw_q_st_sink_new(scheme_names[scheme], &c.so) : kw_gguf_writer_new(0, &c.w);
    if (rc == 0 && gguf_in)
        rc = st_out ? kw_q_gguf_to_st(&c, in, out) : kw_q_from_gguf(&c, in);
    else if (rc == 0)
        rc = kw_q_from_hf(&c, in, vocab_from);
    if (rc == 0) rc = st_out ? kw_q_st_sink_write(c.so, out) : kw_gguf_writer_write(c.w, out);
    if (rc == 0 && st_out && !gguf_in) rc = kw_q_st_copy_sidecars(in, out);
    kw_gguf_writer_free(c.w);
    kw_q_st_sink_free(c.so);
    return rc;
}

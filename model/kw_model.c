/* kw_model.c: loading a Qwen2/Qwen3/Llama/Gemma3 checkpoint onto a backend and the transformer forward pass.
 *
 * Per layer (pre-norm, as in HF modeling_qwen2/qwen3/llama):
 *   h = rms_norm(x, input_layernorm); q, k, v = h W^T (+ bias); [Qwen3: q, k = rms_norm per head]; rope(q, k)
 *   cache[rows] = k, v; a = attention(q, cache); x += a Wo^T (+ bias)
 *   h = rms_norm(x, post_attention_layernorm); x += down(silu(gate(h)) * up(h))
 * then logits = rms_norm(x, norm) lm_head^T.
 *
 * Gemma3 (HF modeling_gemma3, transformers 4.52) differs in these places, and nowhere else:
 *   x = embed[ids] * sqrt(hidden), computed in the embedding's dtype as HF does (the scale rounded to that dtype,
 *       the product rounded to it: exact in fp32 for bf16 and f16 tables, then one rounding);
 *   every RMSNorm multiplies by (1 + w) (KW_RMS_NORM_UNIT_OFFSET), q/k norm included (cfg.norm_plus_one; a GGUF
 *       file's weights already hold 1 + w);
 *   x += rms_norm(attention out, post_attention_layernorm); h = rms_norm(x, pre_feedforward_layernorm);
 *   x += rms_norm(down(gelu_tanh(gate(h)) * up(h)), post_feedforward_layernorm);
 *   sliding layers attend over the last sliding_window positions and rotate with rope_local_base_freq, global layers
 *       with rope_theta (+ rope_scaling); the score scale is query_pre_attn_scalar^-0.5;
 *   logits = cap * tanh(logits / cap) when final_logit_softcapping is set.
 * Everything goes through kernels/kw_backend.h; host code never reads tensor data. Not here: the generation loop
 * (kw_generate.c) and the cache bookkeeping (kw_kvcache.c).
 */
#include "model/kw_model.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_bytes.h"
#include "common/kw_half.h"
#include "common/kw_size.h"
#include "common/kw_status.h"
#include "common/kw_time.h"
#include "model/kw_weights.h"

#define KW_MODEL_DEFAULT_BATCH 256
/* Logits scratch is capped at this many floats (32 MiB): with a 152k vocab that is 55 rows per lm_head matmul. */
#define KW_MODEL_LOGITS_SCRATCH (8u << 20)

typedef struct kw_layer {
    kw_tensor attn_norm, ffn_norm;         /* before attention, before the MLP */
    kw_tensor attn_out_norm, ffn_out_norm; /* Gemma3: on the attention and MLP outputs; zeroed for the others */
    kw_tensor wq, wk, wv, wo;
    kw_tensor bq, bk, bv, bo; /* zeroed (data NULL) when absent */
    kw_tensor q_norm, k_norm; /* Qwen3 */
    kw_tensor w_gate, w_up, w_down;
    kw_tensor b_gate, b_up, b_down; /* Llama mlp_bias */
} kw_layer;

struct kw_model {
    kw_model_config cfg;
    kw_backend *backend; /* borrowed */
    /* A fork (kw_model_fork): the model whose weights it runs (borrowed, outlives it); every weight field below
     * (weights, embed, final_norm, lm_head, layers) is then a borrowed copy of the parent's and is not freed. NULL: a
     * loaded model, which owns them. */
    const kw_model *parent;
    kw_weights *weights; /* owned: the weight source (the mappings unpacked CPU tensors alias, or the GGUF file) */
    kw_tensor embed, final_norm, lm_head;
    int lm_head_tied;
    char prefix[32];   /* the text model's tensor names start with it: "model." or a multimodal checkpoint's */
    int norm_flags;    /* KW_RMS_NORM_UNIT_OFFSET for HF Gemma3 weights */
    float embed_scale; /* Gemma3: sqrt(hidden) rounded to the embedding dtype; 0: no scaling */
    kw_layer *layers;
    size_t bytes_per_token;
    kw_model_span *spans; /* owned: n_spans, the memory bytes_per_token counts, in the order bound */
    size_t n_spans, cap_spans;

    int32_t max_batch;  /* scratch rows */
    int32_t logit_rows; /* rows per lm_head matmul */
    int32_t *pos_host;  /* max_batch positions staged for upload */
    struct {
        kw_tensor ids, pos;      /* (B) i32 */
        kw_tensor x, h, o;       /* (B, hidden) */
        kw_tensor q, att;        /* (B, Hq * D) */
        kw_tensor k, v;          /* (B, Hkv * D) */
        kw_tensor gate, up, act; /* (B, intermediate) */
        kw_tensor logits;        /* (logit_rows, vocab) */
        kw_tensor emb_round;     /* (B, hidden) in the embedding dtype: Gemma3's scaled embedding is rounded to it */
        kw_tensor amax;          /* (logit_rows) i32 */
    } s;

    int profiling;
    int separate_matmuls; /* kw_model_set_shared_matmuls(0): q/k/v and gate/up as separate matmuls */
    double prof_ms[KW_OP_COUNT];
    int64_t prof_calls[KW_OP_COUNT];

    uint64_t serial;      /* unique per model in the process: part of a cache's graph key */
    int graphs_off;       /* the backend has no step graphs (or they are off): decode runs the ops one by one */
    int keep_quantized;   /* GGUF matmul weights of the types kept quantized go to the backend's quantized panels */
    int int8_activations; /* KW_GGUF_WEIGHTS_QUANTIZED_INT8: the U4, S8_G16, S8 ones in their int8-activation layouts */
    int bf16_activations; /* kw_model_options.bf16_activations: bf16 matmul weights in KW_LAYOUT_PANELS_BF16_PAIRS */
    int64_t graph_recordings, graph_launches; /* kw_model_graph_counts */
};

/* Numbers models for their caches' graph keys (a freed model's address may be reused by the next). */
static uint64_t kw_model_serials;

/* ------------------------------------------------------------------------------------------------------------
 * Loading
 */

/* Replaces the matmul weight t (bound from tensor name) by the backend's packed form (kw_tensor_pack_weight). When
 * that is a copy (the CPU's panel layout), the file pages it was read from are dropped from the resident set. */
static int model_pack(kw_model *m, kw_tensor *t, const char *name) {
    if (t->layout != KW_LAYOUT_ROWS) return 0; /* kept quantized: already in the backend's layout */
    kw_tensor packed;
    if (m->bf16_activations && t->dtype == KW_DTYPE_BF16 &&
        kw_backend_supports_layout(m->backend, KW_LAYOUT_PANELS_BF16_PAIRS))
        KW_FORWARD(kw_tensor_pack_weight_bf16_pairs(m->backend, t, &packed));
    else
        KW_FORWARD(kw_tensor_pack_weight(m->backend, t, &packed));
    if (packed.data == t->data) return 0; /* a view: the backend reads the row-major weight itself */
    kw_tensor_free(t);
    *t = packed;
    kw_weights_release(m->weights, name);
    return 0;
}

/* Counts t (bound, in its final layout: kw_tensor_nbytes) among the bytes a decode token reads, and records its memory.
 */
static int model_count(kw_model *m, const kw_tensor *t) {
    const size_t bytes = kw_tensor_nbytes(t);
    if (m->n_spans == m->cap_spans) {
        const size_t cap = m->cap_spans ? 2 * m->cap_spans : 64;
        kw_model_span *grown = realloc(m->spans, cap * sizeof *grown);
        KW_RETURN_IF(!grown, KW_E_NOMEM, "model: out of memory");
        m->spans = grown;
        m->cap_spans = cap;
    }
    m->spans[m->n_spans++] = (kw_model_span){t->data, bytes};
    m->bytes_per_token += bytes;
    return 0;
}

/* KW_E_MODEL_SHAPE naming the tensor unless its shape have[0..have_ndim) is the config's ne[0..ndim). */
static int model_check_shape(const char *name, int32_t have_ndim, const int64_t *have_shape, int32_t ndim,
                             const int64_t *ne) {
    int same = have_ndim == ndim;
    for (int32_t i = 0; same && i < ndim; ++i)
        same = have_shape[i] == ne[i];
    if (same) return 0;
    char want[96] = "", have[96] = "";
    for (int32_t i = 0; i < ndim; ++i)
        snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", i ? "," : "", (long long)ne[i]);
    for (int32_t i = 0; i < have_ndim && i < 4; ++i)
        snprintf(have + strlen(have), sizeof have - strlen(have), "%s%lld", i ? "," : "", (long long)have_shape[i]);
    KW_FAIL(KW_E_MODEL_SHAPE, "model: tensor %s has shape (%s), the config implies (%s)", name, have, want);
}

/* 1 if every code of q is in lo..hi. */
static int model_codes_fit(const kw_quant_rows *q, int lo, int hi) {
    int8_t min, max;
    kw_i8_range(q->codes, q->n * q->k, &min, &max);
    return min >= lo && max <= hi;
}

/* Binds the 2-D weight name (shape ne) kept quantized (kw_tensor_pack_quantized) if the file holds it in a type kept
 * quantized and the backend has that layout: 1 if bound, 0 if not (the caller dequantizes it), or a negative status. */
static int model_bind_quantized(kw_model *m, kw_tensor *t, const char *name, const int64_t *ne) {
    kw_quant_rows q;
    const int found = kw_weights_get_quantized(m->weights, name, &q);
    if (found <= 0) return found;
    /* KW_GGUF_WEIGHTS_QUANTIZED_INT8: 4-bit codes with offsets (Q4_K, Q4_1) and 8-bit codes per 16 (Q6_K) run with
     * int8 activations where the backend has those layouts (the same bytes, a few times fewer instructions) */
    const int x8 = m->int8_activations;
    if (x8 && q.layout == KW_LAYOUT_QPANELS_U4 && kw_backend_supports_layout(m->backend, KW_LAYOUT_QPANELS_U4_X8))
        q.layout = KW_LAYOUT_QPANELS_U4_X8;
    if (x8 && q.layout == KW_LAYOUT_QPANELS_S8_G16 &&
        kw_backend_supports_layout(m->backend, KW_LAYOUT_QPANELS_S8_G16_X8))
        q.layout = KW_LAYOUT_QPANELS_S8_G16_X8;
    /* and 8-bit codes per 32 without offsets (Q8_0, Q5_0) whose scales are f16 values (GGUF's are): llama.cpp's Q8_0
     * path in its bytes, 1.0625 per weight instead of 1.125 */
    if (x8 && q.layout == KW_LAYOUT_QPANELS_S8 && kw_backend_supports_layout(m->backend, KW_LAYOUT_QPANELS_S8_X8) &&
        kw_quant_rows_first_non_f16_scale(&q) < 0)
        q.layout = KW_LAYOUT_QPANELS_S8_X8;
    /* and those in super-blocks where the reader gave the super-blocks' d and m (K a multiple of 256): the same bits
     * in 0.59 / 1.08 bytes per weight instead of 0.75 / 1.25 */
    const enum kw_layout x8_sb = q.layout == KW_LAYOUT_QPANELS_U4_X8       ? KW_LAYOUT_QPANELS_U4_SB_X8
                                 : q.layout == KW_LAYOUT_QPANELS_S8_G16_X8 ? KW_LAYOUT_QPANELS_S8_G16_SB_X8
                                                                           : KW_LAYOUT_ROWS;
    enum kw_layout x8_sb6 = x8_sb; /* Q6_K's codes (-32..31) in 6 bits: 0.83 bytes per weight, not 1.08 */
    if (x8_sb == KW_LAYOUT_QPANELS_S8_G16_SB_X8 && model_codes_fit(&q, -32, 31))
        x8_sb6 = KW_LAYOUT_QPANELS_S6_G16_SB_X8;
    if (q.sb_scales && x8_sb6 != KW_LAYOUT_ROWS && kw_backend_supports_layout(m->backend, x8_sb6))
        q.layout = x8_sb6;
    else if (q.sb_scales && x8_sb != KW_LAYOUT_ROWS && kw_backend_supports_layout(m->backend, x8_sb))
        q.layout = x8_sb;
    /* else the super-block layouts where the reader gave the super-blocks' d and m (Q4_K, Q6_K with K a multiple of
     * 256) and the backend has them (the CPU): the same weights and bits in fewer bytes per token */
    enum kw_layout sb = q.layout == KW_LAYOUT_QPANELS_U4       ? KW_LAYOUT_QPANELS_U4_SB
                        : q.layout == KW_LAYOUT_QPANELS_S8_G16 ? KW_LAYOUT_QPANELS_S8_G16_SB
                                                               : KW_LAYOUT_ROWS;
    /* Q6_K's codes (-32..31) in 6 bits where that decodes fast (AVX-512 VBMI): 0.83 bytes per weight, not 1.08 */
    if (sb == KW_LAYOUT_QPANELS_S8_G16_SB && model_codes_fit(&q, -32, 31) &&
        kw_backend_cpu_layout_fast(m->backend, KW_LAYOUT_QPANELS_S6_G16_SB))
        sb = KW_LAYOUT_QPANELS_S6_G16_SB;
    if (q.sb_scales && sb != KW_LAYOUT_ROWS && kw_backend_supports_layout(m->backend, sb)) q.layout = sb;
    if (!kw_backend_supports_layout(m->backend, q.layout)) return 0;
    KW_FORWARD(model_check_shape(name, 2, (const int64_t[]){q.n, q.k}, 2, ne));
    KW_FORWARD(kw_tensor_pack_quantized(m->backend, &q, t));
    if (t != &m->embed) KW_FORWARD(model_count(m, t));
    return 1;
}

/* Binds tensor name (shape ne[0..ndim)) to t. Missing tensors: KW_E_MODEL_MISSING if required, else t stays zeroed.
 * op is the op that consumes it (its dtype must be supported). */
static int model_bind(kw_model *m, kw_tensor *t, enum kw_op op, int required, int32_t ndim, const int64_t *ne,
                      const char *fmt, ...) __attribute__((format(printf, 7, 8)));

static int model_bind(kw_model *m, kw_tensor *t, enum kw_op op, int required, int32_t ndim, const int64_t *ne,
                      const char *fmt, ...) {
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    if ((op == KW_OP_MATMUL || op == KW_OP_GET_ROWS) && ndim == 2 && m->keep_quantized) {
        const int kept = model_bind_quantized(m, t, name, ne);
        KW_FORWARD(kept);
        if (kept) return 0;
    }
    kw_weight wt;
    const int found = kw_weights_get(m->weights, name, &wt);
    KW_FORWARD(found);
    if (!found) {
        KW_RETURN_IF(required, KW_E_MODEL_MISSING, "model: tensor %s is missing", name);
        return 0;
    }
    const kw_weight *st = &wt;
    KW_FORWARD(model_check_shape(name, st->ndim, st->shape, ndim, ne));
    KW_RETURN_IF(!kw_backend_supports(m->backend, op, st->dtype), KW_E_OP_UNSUPPORTED,
                 "model: backend %s cannot run %s with %s weights (%s)", kw_backend_name(m->backend), kw_op_name(op),
                 kw_dtype_name(st->dtype), name);
    KW_FORWARD(kw_weights_bind(m->backend, st, t));
    if (op == KW_OP_MATMUL && ndim == 2) KW_FORWARD(model_pack(m, t, name));
    if (t != &m->embed) KW_FORWARD(model_count(m, t));
    return 0;
}

static int model_bind_layer(kw_model *m, int32_t l) {
    const kw_model_config *c = &m->cfg;
    kw_layer *L = &m->layers[l];
    const int64_t hid = c->hidden, qd = (int64_t)c->n_heads * c->head_dim, kd = (int64_t)c->n_kv_heads * c->head_dim;
    const int64_t inter = c->intermediate, hd = c->head_dim;
    char p[48];
    snprintf(p, sizeof p, "%slayers", m->prefix);
    const int ab = c->attention_bias, ob = c->o_bias, mb = c->mlp_bias;
#define KW_NE(...) ((const int64_t[]){__VA_ARGS__})
    KW_FORWARD(model_bind(m, &L->attn_norm, KW_OP_RMS_NORM, 1, 1, KW_NE(hid), "%s.%d.input_layernorm.weight", p, l));
    if (c->arch == KW_ARCH_GEMMA3) { /* post_attention_layernorm is on the attention output; the MLP has two */
        KW_FORWARD(model_bind(m, &L->attn_out_norm, KW_OP_RMS_NORM, 1, 1, KW_NE(hid),
                              "%s.%d.post_attention_layernorm.weight", p, l));
        KW_FORWARD(model_bind(m, &L->ffn_norm, KW_OP_RMS_NORM, 1, 1, KW_NE(hid),
                              "%s.%d.pre_feedforward_layernorm.weight", p, l));
        KW_FORWARD(model_bind(m, &L->ffn_out_norm, KW_OP_RMS_NORM, 1, 1, KW_NE(hid),
                              "%s.%d.post_feedforward_layernorm.weight", p, l));
    } else {
        KW_FORWARD(model_bind(m, &L->ffn_norm, KW_OP_RMS_NORM, 1, 1, KW_NE(hid),
                              "%s.%d.post_attention_layernorm.weight", p, l));
    }
    KW_FORWARD(model_bind(m, &L->wq, KW_OP_MATMUL, 1, 2, KW_NE(qd, hid), "%s.%d.self_attn.q_proj.weight", p, l));
    KW_FORWARD(model_bind(m, &L->wk, KW_OP_MATMUL, 1, 2, KW_NE(kd, hid), "%s.%d.self_attn.k_proj.weight", p, l));
    KW_FORWARD(model_bind(m, &L->wv, KW_OP_MATMUL, 1, 2, KW_NE(kd, hid), "%s.%d.self_attn.v_proj.weight", p, l));
    KW_FORWARD(model_bind(m, &L->wo, KW_OP_MATMUL, 1, 2, KW_NE(hid, qd), "%s.%d.self_attn.o_proj.weight", p, l));
    if (ab) {
        KW_FORWARD(model_bind(m, &L->bq, KW_OP_MATMUL, 1, 1, KW_NE(qd), "%s.%d.self_attn.q_proj.bias", p, l));
        KW_FORWARD(model_bind(m, &L->bk, KW_OP_MATMUL, 1, 1, KW_NE(kd), "%s.%d.self_attn.k_proj.bias", p, l));
        KW_FORWARD(model_bind(m, &L->bv, KW_OP_MATMUL, 1, 1, KW_NE(kd), "%s.%d.self_attn.v_proj.bias", p, l));
    }
    if (ob) KW_FORWARD(model_bind(m, &L->bo, KW_OP_MATMUL, 1, 1, KW_NE(hid), "%s.%d.self_attn.o_proj.bias", p, l));
    if (c->qk_norm) {
        KW_FORWARD(model_bind(m, &L->q_norm, KW_OP_RMS_NORM, 1, 1, KW_NE(hd), "%s.%d.self_attn.q_norm.weight", p, l));
        KW_FORWARD(model_bind(m, &L->k_norm, KW_OP_RMS_NORM, 1, 1, KW_NE(hd), "%s.%d.self_attn.k_norm.weight", p, l));
    }
    KW_FORWARD(model_bind(m, &L->w_gate, KW_OP_MATMUL, 1, 2, KW_NE(inter, hid), "%s.%d.mlp.gate_proj.weight", p, l));
    KW_FORWARD(model_bind(m, &L->w_up, KW_OP_MATMUL, 1, 2, KW_NE(inter, hid), "%s.%d.mlp.up_proj.weight", p, l));
    KW_FORWARD(model_bind(m, &L->w_down, KW_OP_MATMUL, 1, 2, KW_NE(hid, inter), "%s.%d.mlp.down_proj.weight", p, l));
    if (mb) {
        KW_FORWARD(model_bind(m, &L->b_gate, KW_OP_MATMUL, 1, 1, KW_NE(inter), "%s.%d.mlp.gate_proj.bias", p, l));
        KW_FORWARD(model_bind(m, &L->b_up, KW_OP_MATMUL, 1, 1, KW_NE(inter), "%s.%d.mlp.up_proj.bias", p, l));
        KW_FORWARD(model_bind(m, &L->b_down, KW_OP_MATMUL, 1, 1, KW_NE(hid), "%s.%d.mlp.down_proj.bias", p, l));
    }
    return 0;
}

static int model_alloc2(kw_model *m, kw_tensor *t, enum kw_dtype dtype, int64_t rows, int64_t cols) {
    const int64_t ne[2] = {rows, cols};
    return kw_tensor_alloc(m->backend, t, dtype, cols > 0 ? 2 : 1, ne);
}

static int model_alloc_scratch(kw_model *m) {
    const kw_model_config *c = &m->cfg;
    const int64_t B = m->max_batch;
    const int64_t qd = (int64_t)c->n_heads * c->head_dim, kd = (int64_t)c->n_kv_heads * c->head_dim;
    int64_t lr = (int64_t)(KW_MODEL_LOGITS_SCRATCH / (uint64_t)c->vocab);
    if (lr < 1) lr = 1;
    if (lr > B) lr = B;
    m->logit_rows = (int32_t)lr;
    m->pos_host = malloc((size_t)B * sizeof *m->pos_host);
    KW_RETURN_IF(!m->pos_host, KW_E_NOMEM, "model: out of memory");
    KW_FORWARD(model_alloc2(m, &m->s.ids, KW_DTYPE_I32, B, 0));
    KW_FORWARD(model_alloc2(m, &m->s.pos, KW_DTYPE_I32, B, 0));
    KW_FORWARD(model_alloc2(m, &m->s.x, KW_DTYPE_F32, B, c->hidden));
    KW_FORWARD(model_alloc2(m, &m->s.h, KW_DTYPE_F32, B, c->hidden));
    KW_FORWARD(model_alloc2(m, &m->s.o, KW_DTYPE_F32, B, c->hidden));
    KW_FORWARD(model_alloc2(m, &m->s.q, KW_DTYPE_F32, B, qd));
    KW_FORWARD(model_alloc2(m, &m->s.att, KW_DTYPE_F32, B, qd));
    KW_FORWARD(model_alloc2(m, &m->s.k, KW_DTYPE_F32, B, kd));
    KW_FORWARD(model_alloc2(m, &m->s.v, KW_DTYPE_F32, B, kd));
    KW_FORWARD(model_alloc2(m, &m->s.gate, KW_DTYPE_F32, B, c->intermediate));
    KW_FORWARD(model_alloc2(m, &m->s.up, KW_DTYPE_F32, B, c->intermediate));
    KW_FORWARD(model_alloc2(m, &m->s.act, KW_DTYPE_F32, B, c->intermediate));
    KW_FORWARD(model_alloc2(m, &m->s.logits, KW_DTYPE_F32, lr, c->vocab));
    KW_FORWARD(model_alloc2(m, &m->s.amax, KW_DTYPE_I32, lr, 0));
    if (m->embed_scale != 0.0f && m->embed.dtype != KW_DTYPE_F32) {
        const int64_t ne[2] = {B, c->hidden};
        KW_FORWARD(kw_tensor_alloc(m->backend, &m->s.emb_round, m->embed.dtype, 2, ne));
    }
    return 0;
}

/* The text model's tensor-name prefix: "model." (every *ForCausalLM), or where a multimodal Gemma 3 checkpoint keeps
 * it: "model.language_model." (transformers >= 4.52) or "language_model.model." (the published files). */
static int model_find_prefix(kw_model *m) {
    static const char *const prefixes[] = {"model.", "model.language_model.", "language_model.model."};
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; ++i) {
        char name[96];
        snprintf(name, sizeof name, "%sembed_tokens.weight", prefixes[i]);
        if (kw_weights_has(m->weights, name)) {
            snprintf(m->prefix, sizeof m->prefix, "%s", prefixes[i]);
            return 0;
        }
        if (m->cfg.arch != KW_ARCH_GEMMA3) break;
    }
    KW_FAIL(KW_E_MODEL_MISSING, "model: tensor model.embed_tokens.weight is missing");
}

/* Gemma3's embedding scale, sqrt(hidden): HF's torch.tensor(hidden ** 0.5) (fp32) converted to the table's dtype. */
static float model_embed_scale(const kw_model_config *c, enum kw_dtype table) {
    const float s = (float)sqrt((double)c->hidden);
    if (table == KW_DTYPE_BF16) return kw_round_bf16(s);
    if (table == KW_DTYPE_F16) return kw_f16_to_f32(kw_f32_to_f16(s));
    return s;
}

const char *const kw_model_weight_modes[] = {"f32", "bf16", "quantized", "quantized-int8", "bf16-act", NULL};

void kw_model_options_set_weight_mode(kw_model_options *opts, int mode) {
    const int bf16 = mode == KW_MODEL_WEIGHT_MODE_BF16 || mode == KW_MODEL_WEIGHT_MODE_BF16_ACT;
    opts->weights.gguf_dtype = bf16 ? KW_DTYPE_BF16 : KW_DTYPE_F32;
    opts->gguf_weights = mode == KW_MODEL_WEIGHT_MODE_QUANTIZED_INT8 ? KW_GGUF_WEIGHTS_QUANTIZED_INT8
                         : mode == KW_MODEL_WEIGHT_MODE_QUANTIZED    ? KW_GGUF_WEIGHTS_QUANTIZED
                                                                     : KW_GGUF_WEIGHTS_DEQUANTIZED;
    opts->bf16_activations = mode == KW_MODEL_WEIGHT_MODE_BF16_ACT;
}

int kw_model_load(kw_backend *backend, const char *dir, const kw_model_options *opts, kw_model **out) {
    KW_RETURN_IF(!backend || !dir || !out, KW_E_INVALID_ARG, "model: NULL argument");
    *out = NULL;
    const int32_t max_batch = (opts && opts->max_batch > 0) ? opts->max_batch : KW_MODEL_DEFAULT_BATCH;
    KW_RETURN_IF(max_batch > (1 << 20), KW_E_INVALID_ARG, "model: max_batch %d too large", (int)max_batch);
    int rc = 0;
    kw_model *m = calloc(1, sizeof *m);
    KW_RETURN_IF(!m, KW_E_NOMEM, "model: out of memory");
    m->backend = backend;
    m->max_batch = max_batch;
    m->serial = __atomic_add_fetch(&kw_model_serials, 1, __ATOMIC_RELAXED);
    KW_CHECK(kw_weights_open(dir, opts ? &opts->weights : NULL, &m->weights));
    const enum kw_gguf_weights gw = opts ? opts->gguf_weights : KW_GGUF_WEIGHTS_DEFAULT;
    KW_CHECK_IF((unsigned)gw > KW_GGUF_WEIGHTS_QUANTIZED_INT8, KW_E_INVALID_ARG, "model: gguf_weights %d", (int)gw);
    m->int8_activations = gw == KW_GGUF_WEIGHTS_QUANTIZED_INT8;
    m->bf16_activations = opts && opts->bf16_activations;
    const int quantized = gw == KW_GGUF_WEIGHTS_QUANTIZED || gw == KW_GGUF_WEIGHTS_QUANTIZED_INT8 ||
                          (gw == KW_GGUF_WEIGHTS_DEFAULT && (!opts || opts->weights.gguf_dtype == KW_DTYPE_F32));
    kw_quant_layout ql;
    for (int l = KW_LAYOUT_QPANELS_S4; quantized && l < KW_LAYOUT_COUNT; ++l) /* else: dequantized, as before */
        m->keep_quantized |=
            kw_layout_quant((enum kw_layout)l, &ql) && kw_backend_supports_layout(backend, (enum kw_layout)l);
    m->cfg = *kw_weights_config(m->weights);
    kw_model_config *c = &m->cfg;
    KW_CHECK_IF(c->arch != KW_ARCH_QWEN2 && c->arch != KW_ARCH_QWEN3 && c->arch != KW_ARCH_LLAMA &&
                    c->arch != KW_ARCH_GEMMA3,
                KW_E_MODEL_ARCH, "model: architecture %s is not supported by the forward pass", kw_arch_name(c->arch));
    KW_CHECK_IF(c->n_layers <= 0 || c->hidden <= 0 || c->n_heads <= 0 || c->n_kv_heads <= 0 || c->head_dim <= 0 ||
                    c->intermediate <= 0 || c->vocab <= 0 || c->n_heads % c->n_kv_heads != 0 || c->head_dim % 2 != 0,
                KW_E_MODEL_CONFIG, "model: inconsistent config (heads %d, kv heads %d, head_dim %d)", (int)c->n_heads,
                (int)c->n_kv_heads, (int)c->head_dim);
    if (c->rope.rotary_dim <= 0) c->rope.rotary_dim = c->head_dim;
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    KW_CHECK_IF(!m->layers, KW_E_NOMEM, "model: out of memory");
    KW_CHECK(model_find_prefix(m));
    m->norm_flags = c->norm_plus_one ? KW_RMS_NORM_UNIT_OFFSET : KW_RMS_NORM_PLAIN;

    const int64_t vocab = c->vocab, hid = c->hidden;
    const char *pre = m->prefix;
    KW_CHECK(model_bind(m, &m->embed, KW_OP_GET_ROWS, 1, 2, KW_NE(vocab, hid), "%sembed_tokens.weight", pre));
    KW_CHECK(model_bind(m, &m->final_norm, KW_OP_RMS_NORM, 1, 1, KW_NE(hid), "%snorm.weight", pre));
    if (c->arch == KW_ARCH_GEMMA3) {
        m->embed_scale = model_embed_scale(c, m->embed.dtype);
        KW_CHECK_IF(m->embed.dtype != KW_DTYPE_F32 && !kw_backend_supports(backend, KW_OP_COPY, m->embed.dtype),
                    KW_E_OP_UNSUPPORTED, "model: backend cannot round to %s", kw_dtype_name(m->embed.dtype));
    }
    /* the tied table is packed first, while no other packed copy exists: its file pages and its packed copy are the
     * largest pair that is ever resident at once, and the peak stays near the model's size */
    if (c->tie_embeddings) {
        /* HF ties lm_head to embed_tokens and ignores a stored lm_head.weight */
        KW_CHECK_IF(!kw_backend_supports(backend, KW_OP_MATMUL, m->embed.dtype), KW_E_OP_UNSUPPORTED,
                    "model: backend cannot run matmul with %s embeddings", kw_dtype_name(m->embed.dtype));
        /* one packed table serves both: get_rows reads the packed layout too */
        char embed_name[64];
        snprintf(embed_name, sizeof embed_name, "%sembed_tokens.weight", pre);
        KW_CHECK(model_pack(m, &m->embed, embed_name));
        m->lm_head = m->embed;
        m->lm_head.owns_data = 0; /* the same memory; only embed frees it */
        m->lm_head_tied = 1;
        KW_CHECK(model_count(m, &m->embed));
    } else {
        /* a multimodal Gemma 3 checkpoint in the published layout keeps lm_head under language_model. */
        const int nested = strcmp(pre, "language_model.model.") == 0;
        KW_CHECK(model_bind(m, &m->lm_head, KW_OP_MATMUL, 1, 2, KW_NE(vocab, hid), "%slm_head.weight",
                            nested ? "language_model." : ""));
    }
    for (int32_t l = 0; l < c->n_layers; ++l)
        KW_CHECK(model_bind_layer(m, l));
#undef KW_NE
    KW_CHECK(model_alloc_scratch(m));
    KW_CHECK(kw_backend_synchronize(backend)); /* device backends: uploads done, host mappings no longer needed */
    *out = m;
    m = NULL;
out:
    kw_model_free(m);
    return rc;
}

static void model_free_layer(kw_layer *L) {
    kw_tensor *ts[] = {&L->attn_norm,    &L->ffn_norm, &L->attn_out_norm,
                       &L->ffn_out_norm, &L->wq,       &L->wk,
                       &L->wv,           &L->wo,       &L->bq,
                       &L->bk,           &L->bv,       &L->bo,
                       &L->q_norm,       &L->k_norm,   &L->w_gate,
                       &L->w_up,         &L->w_down,   &L->b_gate,
                       &L->b_up,         &L->b_down};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; ++i)
        kw_tensor_free(ts[i]);
}

void kw_model_free(kw_model *m) {
    if (!m) return;
    kw_backend_synchronize(m->backend);
    kw_tensor *scratch[] = {&m->s.ids, &m->s.pos, &m->s.x,      &m->s.h,    &m->s.o,
                            &m->s.q,   &m->s.att, &m->s.k,      &m->s.v,    &m->s.gate,
                            &m->s.up,  &m->s.act, &m->s.logits, &m->s.amax, &m->s.emb_round};
    for (size_t i = 0; i < sizeof scratch / sizeof scratch[0]; ++i)
        kw_tensor_free(scratch[i]);
    if (m->parent) { /* a fork: the weights are the parent's */
        free(m->pos_host);
        free(m);
        return;
    }
    if (m->layers)
        for (int32_t l = 0; l < m->cfg.n_layers; ++l)
            model_free_layer(&m->layers[l]);
    if (!m->lm_head_tied) kw_tensor_free(&m->lm_head);
    kw_tensor_free(&m->embed);
    kw_tensor_free(&m->final_norm);
    free(m->layers);
    free(m->spans);
    free(m->pos_host);
    kw_weights_close(m->weights);
    free(m);
}

int kw_model_fork(const kw_model *parent, kw_backend *backend, kw_model **out) {
    KW_RETURN_IF(!parent || !out, KW_E_INVALID_ARG, "kw_model_fork: NULL argument");
    *out = NULL;
    if (!backend) backend = parent->backend;
    if (parent->parent) parent = parent->parent; /* a fork of a fork runs the loaded model's weights */
    KW_RETURN_IF(kw_backend_root(backend) != kw_backend_root(parent->backend), KW_E_INVALID_ARG,
                 "kw_model_fork: the backend is neither the model's nor one of its stream contexts");
    kw_model *m = malloc(sizeof *m);
    KW_RETURN_IF(!m, KW_E_NOMEM, "kw_model_fork: out of memory");
    *m = *parent; /* the config and every weight binding, borrowed */
    m->parent = parent;
    m->backend = backend;
    memset(&m->s, 0, sizeof m->s);
    m->pos_host = NULL;
    m->profiling = 0;
    memset(m->prof_ms, 0, sizeof m->prof_ms);
    memset(m->prof_calls, 0, sizeof m->prof_calls);
    m->graph_recordings = m->graph_launches = 0;
    m->graphs_off = 0;
    m->serial = __atomic_add_fetch(&kw_model_serials, 1, __ATOMIC_RELAXED); /* its own step graphs per cache */
    int rc = 0;
    KW_CHECK(model_alloc_scratch(m));
    *out = m;
    m = NULL;
out:
    kw_model_free(m);
    return rc;
}

const kw_model *kw_model_parent(const kw_model *model) {
    return model->parent;
}

const kw_model_config *kw_model_get_config(const kw_model *model) {
    return &model->cfg;
}
kw_backend *kw_model_backend(const kw_model *model) {
    return model->backend;
}
enum kw_dtype kw_model_logits_weight_dtype(const kw_model *model) {
    return model->lm_head.dtype;
}
size_t kw_model_weight_bytes_per_token(const kw_model *model) {
    return model->bytes_per_token;
}
const kw_model_span *kw_model_weight_spans(const kw_model *model, size_t *n) {
    *n = model->n_spans;
    return model->spans;
}

/* Gives a new cache the model's per-layer attention windows (frees it and clears *out on failure). */
static int model_cache_windows(const kw_model *model, kw_kvcache **out) {
    for (int32_t l = 0; l < model->cfg.n_layers; ++l) {
        const int rc = kw_kvcache_set_layer_window(*out, l, kw_config_layer_window(&model->cfg, l));
        if (rc < 0) {
            kw_kvcache_free(*out);
            *out = NULL;
            return rc;
        }
    }
    return 0;
}

int kw_model_create_cache(const kw_model *model, int64_t capacity, enum kw_dtype dtype, kw_kvcache **out) {
    KW_FORWARD(kw_kvcache_create(model->backend, model->cfg.n_layers, model->cfg.n_kv_heads, model->cfg.head_dim,
                                 capacity, dtype, out));
    return model_cache_windows(model, out);
}

int kw_model_create_cache_quantized(const kw_model *model, int64_t capacity, enum kw_kvq_codec codec,
                                    int32_t page_tokens, kw_kvcache **out) {
    KW_FORWARD(kw_kvcache_create_quantized(model->backend, model->cfg.n_layers, model->cfg.n_kv_heads,
                                           model->cfg.head_dim, capacity, codec, page_tokens, out));
    return model_cache_windows(model, out);
}

int kw_model_create_cache_mixed(const kw_model *model, int64_t capacity, const enum kw_kvq_codec *layer_codecs,
                                int32_t page_tokens, kw_kvcache **out) {
    KW_FORWARD(kw_kvcache_create_mixed(model->backend, model->cfg.n_layers, model->cfg.n_kv_heads, model->cfg.head_dim,
                                       capacity, layer_codecs, page_tokens, out));
    return model_cache_windows(model, out);
}

int kw_model_create_cache_layers(const kw_model *model, int64_t capacity, enum kw_kvq_codec codec, const char *layers,
                                 int32_t page_tokens, kw_kvcache **out) {
    KW_RETURN_IF(!out, KW_E_INVALID_ARG, "model: NULL argument");
    *out = NULL;
    const int32_t n_layers = model->cfg.n_layers;
    enum kw_kvq_codec *codecs = malloc((size_t)n_layers * sizeof *codecs);
    KW_RETURN_IF(!codecs, KW_E_NOMEM, "model: out of memory");
    for (int32_t l = 0; l < n_layers; ++l)
        codecs[l] = codec;
    int rc = layers ? kw_kvcache_parse_layer_codecs(layers, n_layers, codecs) : 0;
    if (rc == 0) rc = kw_model_create_cache_mixed(model, capacity, codecs, page_tokens, out);
    free(codecs);
    return rc;
}

/* ------------------------------------------------------------------------------------------------------------
 * Forward
 */

void kw_model_set_profiling(kw_model *model, int on) {
    model->profiling = on;
}

void kw_model_profile(kw_model *model, double *ms, int64_t *calls, int reset) {
    if (ms) memcpy(ms, model->prof_ms, sizeof model->prof_ms);
    if (calls) memcpy(calls, model->prof_calls, sizeof model->prof_calls);
    if (reset) {
        memset(model->prof_ms, 0, sizeof model->prof_ms);
        memset(model->prof_calls, 0, sizeof model->prof_calls);
    }
}

/* Runs one op; with profiling on, waits for it and charges its time to op. */
#define KW_MODEL_OP(m, op, expr)                                                                                       \
    do {                                                                                                               \
        const uint64_t kw_op_t0_ = (m)->profiling ? kw_time_now_ns() : 0;                                              \
        KW_FORWARD(expr);                                                                                              \
        if ((m)->profiling) {                                                                                          \
            KW_FORWARD(kw_backend_synchronize((m)->backend));                                                          \
            (m)->prof_ms[op] += kw_time_ms(kw_op_t0_, kw_time_now_ns());                                               \
            (m)->prof_calls[op] += 1;                                                                                  \
        }                                                                                                              \
    } while (0)

void kw_model_set_shared_matmuls(kw_model *model, int on) {
    model->separate_matmuls = !on;
}

/* out[i] = x w[i]^T (+ b[i]) for the n weights of one input: one kw_op_matmul_shared, or n kw_op_matmul calls when
 * the model is set so (the same bits either way). */
static int model_matmuls(kw_model *m, int n, kw_tensor *const *out, const kw_tensor *x, const kw_tensor *const *w,
                         const kw_tensor *const *b) {
    if (!m->separate_matmuls) return kw_op_matmul_shared(m->backend, n, out, x, w, b);
    for (int i = 0; i < n; ++i)
        KW_FORWARD(kw_op_matmul(m->backend, out[i], x, w[i], b[i]));
    return 0;
}

static const kw_tensor *opt_bias(const kw_tensor *b) {
    return b->data ? b : NULL;
}

/* Views rows [0, T) of a scratch tensor, reshaped to (T, heads, dim) when heads > 0. */
static int view_rows(const kw_tensor *src, int64_t T, int64_t heads, int64_t dim, kw_tensor *out) {
    kw_tensor rows;
    KW_FORWARD(kw_tensor_view_rows(src, 0, T, &rows));
    if (heads <= 0) {
        *out = rows;
        return 0;
    }
    const int64_t ne[3] = {T, heads, dim};
    return kw_tensor_view_reshape(&rows, 3, ne, out);
}

/* Stores a chunk's K/V rows into a quantized cache and runs its attention, in pieces cut so that every query sees the
 * cache exactly as a decode step at its position would: a query sees the key page it sits in as the bf16 tail until
 * its own row fills the page (kernels/kw_backend.h, the paged quantized cache). So a piece never crosses a page and
 * the last row of a page is a piece of its own; the logits of a row then do not depend on how the prompt was cut. */
static int model_attention_quantized(kw_model *m, kw_kvcache *cache, int32_t l, int64_t T, int64_t row0,
                                     const kw_tensor *q3, const kw_tensor *k3, const kw_tensor *v3, kw_tensor *att3,
                                     const kw_attention_params *ap) {
    const int64_t P = kw_kvcache_page_tokens(cache);
    for (int64_t a = 0; a < T;) {
        const int64_t pos = row0 + a, page_last = pos / P * P + P - 1; /* the page's last row */
        int64_t end = pos < page_last ? page_last : page_last + 1;     /* up to, not including, the last row */
        if (end > row0 + T) end = row0 + T;
        const int64_t n = end - pos;
        kw_tensor q, k, v, o;
        KW_FORWARD(kw_tensor_view_rows(q3, a, n, &q));
        KW_FORWARD(kw_tensor_view_rows(k3, a, n, &k));
        KW_FORWARD(kw_tensor_view_rows(v3, a, n, &v));
        KW_FORWARD(kw_tensor_view_rows(att3, a, n, &o));
        KW_MODEL_OP(m, KW_OP_KV_STORE, kw_kvcache_store_rows(cache, l, pos, &k, &v));
        kw_attention_params p = *ap;
        p.q_pos0 = pos;
        p.n_kv = end;
        KW_MODEL_OP(m, KW_OP_ATTENTION, kw_kvcache_attention(cache, l, &o, &q, &p));
        a += n;
    }
    return 0;
}

/* One layer over T tokens whose hidden states are x_rows (T, hidden) (updated in place) at positions pos_rows (T) and
 * whose K/V go to cache rows [row0, row0 + T). */
static int model_layer(kw_model *m, const kw_layer *L, int32_t l, kw_kvcache *cache, int64_t T, int64_t row0,
                       const kw_tensor *x_rows, const kw_tensor *pos_rows) {
    const kw_model_config *c = &m->cfg;
    kw_backend *be = m->backend;
    const float eps = c->rms_eps;
    const int nf = m->norm_flags;
    const int64_t window = kw_config_layer_window(c, l);
    const kw_rope_params *rope = window > 0 ? &c->rope_local : &c->rope;
    kw_tensor x = *x_rows, pos = *pos_rows, h, o, q, k, v, q3, k3, v3, att, att3, gate, up, act;
    KW_FORWARD(view_rows(&m->s.h, T, 0, 0, &h));
    KW_FORWARD(view_rows(&m->s.o, T, 0, 0, &o));
    KW_FORWARD(view_rows(&m->s.q, T, 0, 0, &q));
    KW_FORWARD(view_rows(&m->s.k, T, 0, 0, &k));
    KW_FORWARD(view_rows(&m->s.v, T, 0, 0, &v));
    KW_FORWARD(view_rows(&m->s.q, T, c->n_heads, c->head_dim, &q3));
    KW_FORWARD(view_rows(&m->s.k, T, c->n_kv_heads, c->head_dim, &k3));
    KW_FORWARD(view_rows(&m->s.v, T, c->n_kv_heads, c->head_dim, &v3));
    KW_FORWARD(view_rows(&m->s.att, T, 0, 0, &att));
    KW_FORWARD(view_rows(&m->s.att, T, c->n_heads, c->head_dim, &att3));
    KW_FORWARD(view_rows(&m->s.gate, T, 0, 0, &gate));
    KW_FORWARD(view_rows(&m->s.up, T, 0, 0, &up));
    KW_FORWARD(view_rows(&m->s.act, T, 0, 0, &act));

    /* attention block */
    KW_MODEL_OP(m, KW_OP_RMS_NORM, kw_op_rms_norm(be, &h, &x, &L->attn_norm, eps, nf));
    { /* q, k and v from one h: one job (model_matmuls) */
        kw_tensor *qkv[3] = {&q, &k, &v};
        const kw_tensor *w[3] = {&L->wq, &L->wk, &L->wv};
        const kw_tensor *b[3] = {opt_bias(&L->bq), opt_bias(&L->bk), opt_bias(&L->bv)};
        KW_MODEL_OP(m, KW_OP_MATMUL, model_matmuls(m, 3, qkv, &h, w, b));
    }
    if (c->qk_norm) {
        KW_MODEL_OP(m, KW_OP_RMS_NORM, kw_op_rms_norm(be, &q3, &q3, &L->q_norm, eps, nf));
        KW_MODEL_OP(m, KW_OP_RMS_NORM, kw_op_rms_norm(be, &k3, &k3, &L->k_norm, eps, nf));
    }
    KW_MODEL_OP(m, KW_OP_ROPE, kw_op_rope(be, &q3, &pos, rope));
    KW_MODEL_OP(m, KW_OP_ROPE, kw_op_rope(be, &k3, &pos, rope));
    const int quantized = kw_kvcache_layer_codec(cache, l) != 0;
    if (!quantized) {
        KW_MODEL_OP(m, KW_OP_KV_STORE, kw_op_kv_store(be, kw_kvcache_k(cache, l), &k3, row0));
        KW_MODEL_OP(m, KW_OP_KV_STORE, kw_op_kv_store(be, kw_kvcache_v(cache, l), &v3, row0));
    }
    /* Gemma3: query_pre_attn_scalar ** -0.5, the Python double HF passes as the score scale */
    const double scalar = c->query_pre_attn_scalar > 0 ? c->query_pre_attn_scalar : (double)c->head_dim;
    const kw_attention_params ap = {
        .q_pos0 = row0,
        .n_kv = row0 + T,
        .scale = (float)(1.0 / sqrt(scalar)),
        .sliding_window = window,
        .kv_mask = kw_kvcache_mask(cache),
    };
    if (quantized)
        KW_FORWARD(model_attention_quantized(m, cache, l, T, row0, &q3, &k3, &v3, &att3, &ap));
    else
        KW_MODEL_OP(m, KW_OP_ATTENTION,
                    kw_op_attention(be, &att3, &q3, kw_kvcache_k(cache, l), kw_kvcache_v(cache, l), &ap));
    KW_MODEL_OP(m, KW_OP_MATMUL, kw_op_matmul(be, &o, &att, &L->wo, opt_bias(&L->bo)));
    if (L->attn_out_norm.data) KW_MODEL_OP(m, KW_OP_RMS_NORM, kw_op_rms_norm(be, &o, &o, &L->attn_out_norm, eps, nf));
    KW_MODEL_OP(m, KW_OP_ADD, kw_op_add(be, &x, &x, &o));

    /* MLP block */
    KW_MODEL_OP(m, KW_OP_RMS_NORM, kw_op_rms_norm(be, &h, &x, &L->ffn_norm, eps, nf));
    {
        kw_tensor *gu[2] = {&gate, &up};
        const kw_tensor *w[2] = {&L->w_gate, &L->w_up}, *b[2] = {opt_bias(&L->b_gate), opt_bias(&L->b_up)};
        KW_MODEL_OP(m, KW_OP_MATMUL, model_matmuls(m, 2, gu, &h, w, b));
    }
    KW_MODEL_OP(m, KW_OP_GLU, kw_op_glu(be, &act, &gate, &up, c->act));
    KW_MODEL_OP(m, KW_OP_MATMUL, kw_op_matmul(be, &o, &act, &L->w_down, opt_bias(&L->b_down)));
    if (L->ffn_out_norm.data) KW_MODEL_OP(m, KW_OP_RMS_NORM, kw_op_rms_norm(be, &o, &o, &L->ffn_out_norm, eps, nf));
    KW_MODEL_OP(m, KW_OP_ADD, kw_op_add(be, &x, &x, &o));
    return 0;
}

/* Final norm, lm_head (and softcap) for rows [r0, r0 + rows <= logit_rows) of the chunk's hidden states into the
 * logits scratch rows [0, rows), and their argmax into the amax scratch if a asks for it. No transfers. */
static int model_head_ops(kw_model *m, const kw_forward_args *a, int64_t r0, int64_t rows) {
    kw_backend *be = m->backend;
    kw_tensor xr, hr, lg, am;
    KW_FORWARD(kw_tensor_view_rows(&m->s.x, r0, rows, &xr));
    KW_FORWARD(kw_tensor_view_rows(&m->s.h, 0, rows, &hr));
    KW_FORWARD(kw_tensor_view_rows(&m->s.logits, 0, rows, &lg));
    KW_FORWARD(kw_tensor_view_rows(&m->s.amax, 0, rows, &am));
    KW_MODEL_OP(m, KW_OP_RMS_NORM, kw_op_rms_norm(be, &hr, &xr, &m->final_norm, m->cfg.rms_eps, m->norm_flags));
    KW_MODEL_OP(m, KW_OP_MATMUL, kw_op_matmul(be, &lg, &hr, &m->lm_head, NULL));
    const double cap = m->cfg.final_logit_softcap;
    if (cap > 0) { /* HF: logits / cap, tanh, * cap */
        KW_MODEL_OP(m, KW_OP_SCALE, kw_op_scale(be, &lg, &lg, (float)(1.0 / cap)));
        KW_MODEL_OP(m, KW_OP_UNARY, kw_op_unary(be, &lg, &lg, KW_ACT_TANH));
        KW_MODEL_OP(m, KW_OP_SCALE, kw_op_scale(be, &lg, &lg, (float)cap));
    }
    if (a->argmax) KW_MODEL_OP(m, KW_OP_ARGMAX, kw_op_argmax(be, &am, &lg, a->argmax_flags));
    return 0;
}

/* Downloads what model_head_ops left in the scratch for rows output rows starting at out_row. */
static int model_head_downloads(kw_model *m, const kw_forward_args *a, int64_t rows, int64_t out_row) {
    kw_backend *be = m->backend;
    kw_tensor lg, am;
    KW_FORWARD(kw_tensor_view_rows(&m->s.logits, 0, rows, &lg));
    KW_FORWARD(kw_tensor_view_rows(&m->s.amax, 0, rows, &am));
    if (a->logits)
        KW_FORWARD(
            kw_backend_download(be, a->logits + (size_t)out_row * (size_t)m->cfg.vocab, &lg, 0, kw_tensor_nbytes(&lg)));
    if (a->argmax) KW_FORWARD(kw_backend_download(be, a->argmax + out_row, &am, 0, kw_tensor_nbytes(&am)));
    return 0;
}

/* Final norm and lm_head for rows [r0, r0 + n) of the chunk's hidden states; logits/argmax written for output rows
 * starting at out_row. */
static int model_head(kw_model *m, const kw_forward_args *a, int64_t r0, int64_t n, int64_t out_row) {
    kw_backend *be = m->backend;
    for (int64_t done = 0; done < n;) {
        const int64_t rows = (n - done < m->logit_rows) ? n - done : m->logit_rows;
        KW_FORWARD(model_head_ops(m, a, r0 + done, rows));
        KW_FORWARD(model_head_downloads(m, a, rows, out_row + done));
        /* the logits scratch is reused by the next block: its downloads must land first */
        if (done + rows < n) KW_FORWARD(kw_backend_synchronize(be));
        done += rows;
    }
    return 0;
}

/* x (T <= max_batch, hidden) = the embeddings of ids (T); Gemma3 scales them by sqrt(hidden) in the embedding's
 * dtype: the fp32 product of a bf16/f16 value and a bf16/f16 scale is exact, so rounding it once to that dtype is
 * HF's product in that dtype. */
static int model_embed(kw_model *m, kw_tensor *x, const kw_tensor *ids) {
    kw_backend *be = m->backend;
    KW_MODEL_OP(m, KW_OP_GET_ROWS, kw_op_get_rows(be, x, &m->embed, ids));
    if (m->embed_scale == 0.0f) return 0;
    KW_MODEL_OP(m, KW_OP_SCALE, kw_op_scale(be, x, x, m->embed_scale));
    if (m->s.emb_round.data) {
        kw_tensor r;
        KW_FORWARD(kw_tensor_view_rows(&m->s.emb_round, 0, x->ne[0], &r));
        KW_MODEL_OP(m, KW_OP_COPY, kw_op_copy(be, &r, x));
        KW_MODEL_OP(m, KW_OP_COPY, kw_op_copy(be, x, &r));
    }
    return 0;
}

/* The ops of a one-token forward (a decode step) at cache row row0 once its id and position are uploaded: what a
 * step graph records. */
static int model_step_ops(kw_model *m, kw_kvcache *cache, const kw_forward_args *a, int64_t row0) {
    kw_tensor ids, pos, x;
    KW_FORWARD(kw_tensor_view_rows(&m->s.ids, 0, 1, &ids));
    KW_FORWARD(kw_tensor_view_rows(&m->s.pos, 0, 1, &pos));
    KW_FORWARD(kw_tensor_view_rows(&m->s.x, 0, 1, &x));
    KW_FORWARD(model_embed(m, &x, &ids));
    for (int32_t l = 0; l < m->cfg.n_layers; ++l)
        KW_FORWARD(model_layer(m, &m->layers[l], l, cache, 1, row0, &x, &pos));
    if (a->mode != KW_LOGITS_NONE) KW_FORWARD(model_head_ops(m, a, 0, 1));
    return 0;
}

/* A decode step through the cache's step graph (kw_backend.h, "Step graphs"): the ops are recorded once per cache
 * and replayed at each step's row, recorded again when the backend says the graph no longer fits (attention's split
 * count changed) or when what was recorded changes (another model, the cache's mask appearing, another head). The
 * id and position are uploaded before by the caller, the logits and argmax downloaded here after the launch.
 * Returns 1 if the step ran so, 0 if it did not run at all (no graphs on this backend, or the ops could not be
 * recorded: the caller runs them one by one), negative on error. */
static int model_step_graph(kw_model *m, kw_kvcache *cache, const kw_forward_args *a, int64_t row0) {
    kw_backend *be = m->backend;
    if (m->graphs_off || m->profiling || (a->argmax && (a->argmax_flags & ~KW_ARGMAX_ROUND_BF16) != 0)) return 0;
    /* A quantized cache's ops take where its full pages end, which a replay would not update (the CUDA backend
     * refuses them while recording): its steps run op by op. */
    if (kw_kvcache_quantized(cache)) return 0;
    const uint64_t head = a->mode == KW_LOGITS_NONE ? 0 : a->argmax ? 2 + (uint64_t)a->argmax_flags : 1;
    const uint64_t key = m->serial << 3 | head << 1 | (kw_kvcache_mask(cache) != NULL);
    kw_backend_graph *g = kw_kvcache_graph(cache, key);
    int launched = g ? kw_backend_graph_launch(be, g, row0) : 0;
    if (launched < 0) return launched;
    if (!launched) {
        const int begin = kw_backend_graph_begin(be, row0);
        if (begin == KW_E_UNSUPPORTED) m->graphs_off = 1; /* the CPU backend, or KW_CUDA_GRAPHS=0 */
        if (begin < 0) return begin == KW_E_UNSUPPORTED ? 0 : begin;
        const int ops = model_step_ops(m, cache, a, row0);
        const int end = kw_backend_graph_end(be, &g);
        if (ops < 0 || end < 0) { /* e.g. the workspace had to grow: this step runs without a graph */
            kw_backend_graph_free(g);
            return 0;
        }
        kw_kvcache_set_graph(cache, g, key);
        m->graph_recordings += 1;
        launched = kw_backend_graph_launch(be, g, row0);
        if (launched <= 0) return launched;
    }
    m->graph_launches += 1;
    if (a->mode != KW_LOGITS_NONE) KW_FORWARD(model_head_downloads(m, a, 1, 0));
    return 1;
}

/* Hands layer l's queries of the chunk's T rows (the q scratch model_layer left) to a->on_queries. */
static int model_pass_queries(kw_model *m, const kw_forward_args *a, int32_t l, int64_t row0, int64_t T) {
    const size_t bytes = (size_t)T * (size_t)m->cfg.n_heads * (size_t)m->cfg.head_dim * sizeof(float);
    float *q = malloc(bytes); /* owned */
    KW_RETURN_IF(!q, KW_E_NOMEM, "model: out of memory for %lld query rows", (long long)T);
    int rc = kw_backend_download(m->backend, q, &m->s.q, 0, bytes);
    if (rc == 0) rc = kw_backend_synchronize(m->backend);
    if (rc == 0) {
        rc = a->on_queries(a->user, l, row0, T, q);
        if (rc < 0 && kw_error_detail()[0] == '\0') kw_error_set(rc, "model: the query callback failed at layer %d", l);
    }
    free(q);
    return rc < 0 ? rc : 0;
}

/* One chunk of T <= max_batch tokens starting at token index t0 of the call. */
static int model_chunk(kw_model *m, kw_kvcache *cache, const kw_forward_args *a, int64_t t0, int64_t T) {
    kw_backend *be = m->backend;
    int64_t row0;
    KW_FORWARD(kw_kvcache_append(cache, T, &row0));
    for (int64_t t = 0; t < T; ++t)
        m->pos_host[t] = a->positions ? a->positions[t0 + t] : (int32_t)(row0 + t);
    kw_tensor ids, pos, x;
    KW_FORWARD(kw_tensor_view_rows(&m->s.ids, 0, T, &ids));
    KW_FORWARD(kw_tensor_view_rows(&m->s.pos, 0, T, &pos));
    KW_FORWARD(kw_tensor_view_rows(&m->s.x, 0, T, &x));
    KW_FORWARD(kw_backend_upload(be, &ids, 0, a->ids + t0, (size_t)T * sizeof(int32_t)));
    KW_FORWARD(kw_backend_upload(be, &pos, 0, m->pos_host, (size_t)T * sizeof(int32_t)));
    if (a->n == 1 && !a->on_queries) {
        const int graph = model_step_graph(m, cache, a, row0);
        if (graph < 0) return graph;
        if (graph == 1) return kw_backend_synchronize(be);
    }
    KW_FORWARD(model_embed(m, &x, &ids));
    for (int32_t l = 0; l < m->cfg.n_layers; ++l) {
        KW_FORWARD(model_layer(m, &m->layers[l], l, cache, T, row0, &x, &pos));
        if (a->on_queries) KW_FORWARD(model_pass_queries(m, a, l, row0, T));
    }
    if (a->mode == KW_LOGITS_ALL) {
        KW_FORWARD(model_head(m, a, 0, T, t0));
    } else if (a->mode == KW_LOGITS_LAST && t0 + T == a->n) {
        KW_FORWARD(model_head(m, a, T - 1, 1, 0));
    }
    /* pos_host and the scratch are reused by the next chunk */
    return kw_backend_synchronize(be);
}

/* Checks a forward's cache and tokens (shared by both forward orders). */
static int model_check_forward(const kw_model *m, const kw_kvcache *cache, const int32_t *ids, int64_t n,
                               const int32_t *positions) {
    KW_RETURN_IF(kw_kvcache_backend(cache) != m->backend || kw_kvcache_n_layers(cache) != m->cfg.n_layers ||
                     kw_kvcache_n_kv_heads(cache) != m->cfg.n_kv_heads || kw_kvcache_head_dim(cache) != m->cfg.head_dim,
                 KW_E_SHAPE, "model: the cache was not made for this model");
    for (int32_t l = 0; l < m->cfg.n_layers; ++l)
        KW_RETURN_IF(kw_kvcache_layer_window(cache, l) != kw_config_layer_window(&m->cfg, l), KW_E_SHAPE,
                     "model: cache layer %d has window %lld, the model's is %lld (use kw_model_create_cache)", (int)l,
                     (long long)kw_kvcache_layer_window(cache, l), (long long)kw_config_layer_window(&m->cfg, l));
    KW_RETURN_IF(n > kw_kvcache_capacity(cache) - kw_kvcache_length(cache), KW_E_MODEL_CONTEXT,
                 "model: %lld tokens do not fit in the cache (length %lld, capacity %lld)", (long long)n,
                 (long long)kw_kvcache_length(cache), (long long)kw_kvcache_capacity(cache));
    KW_RETURN_IF(n + kw_kvcache_length(cache) > INT32_MAX, KW_E_LIMIT, "model: sequence too long");
    for (int64_t t = 0; t < n; ++t) {
        KW_RETURN_IF(ids[t] < 0 || ids[t] >= m->cfg.vocab, KW_E_TOKEN_ID,
                     "model: token id %d at index %lld is outside the vocabulary (%d)", (int)ids[t], (long long)t,
                     (int)m->cfg.vocab);
        KW_RETURN_IF(positions && positions[t] < 0, KW_E_INVALID_ARG, "model: negative position at index %lld",
                     (long long)t);
    }
    return 0;
}

int kw_model_forward(kw_model *m, kw_kvcache *cache, const kw_forward_args *a) {
    KW_RETURN_IF(!m || !cache || !a || !a->ids || a->n <= 0, KW_E_INVALID_ARG, "model: bad forward arguments");
    KW_RETURN_IF(a->mode != KW_LOGITS_NONE && a->mode != KW_LOGITS_LAST && a->mode != KW_LOGITS_ALL, KW_E_INVALID_ARG,
                 "model: logits mode %d", (int)a->mode);
    KW_FORWARD(model_check_forward(m, cache, a->ids, a->n, a->positions));
    const int64_t len0 = kw_kvcache_length(cache);
    int rc = 0;
    for (int64_t t0 = 0; t0 < a->n && rc == 0; t0 += m->max_batch) {
        const int64_t T = (a->n - t0 < m->max_batch) ? a->n - t0 : m->max_batch;
        rc = model_chunk(m, cache, a, t0, T);
    }
    if (rc < 0) {
        const int sync = kw_backend_synchronize(m->backend); /* keep rc's detail unless the wait itself fails */
        (void)sync;
        kw_kvcache_truncate(cache, len0);
    }
    return rc;
}

int kw_model_forward_layers(kw_model *m, kw_kvcache *cache, const int32_t *ids, int64_t n, const int32_t *positions,
                            kw_model_layer_fn on_layer, void *user) {
    KW_RETURN_IF(!m || !cache || !ids || n <= 0, KW_E_INVALID_ARG, "model: bad forward arguments");
    KW_FORWARD(model_check_forward(m, cache, ids, n, positions));
    kw_backend *be = m->backend;
    const int64_t len0 = kw_kvcache_length(cache), B = m->max_batch;
    int32_t *pos_host = malloc((size_t)n * sizeof *pos_host);
    KW_RETURN_IF(!pos_host, KW_E_NOMEM, "model: out of memory");
    kw_tensor x_all = {0}, pos_all = {0};
    int64_t row0 = 0;
    int rc;
    KW_CHECK(kw_kvcache_append(cache, n, &row0));
    for (int64_t t = 0; t < n; ++t)
        pos_host[t] = positions ? positions[t] : (int32_t)(row0 + t);
    KW_CHECK(model_alloc2(m, &x_all, KW_DTYPE_F32, n, m->cfg.hidden));
    KW_CHECK(model_alloc2(m, &pos_all, KW_DTYPE_I32, n, 0));
    KW_CHECK(kw_backend_upload(be, &pos_all, 0, pos_host, (size_t)n * sizeof(int32_t)));
    for (int64_t t0 = 0; t0 < n; t0 += B) { /* embeddings, chunk by chunk through the ids scratch */
        const int64_t T = n - t0 < B ? n - t0 : B;
        kw_tensor ids_t, x;
        KW_CHECK(kw_tensor_view_rows(&m->s.ids, 0, T, &ids_t));
        KW_CHECK(kw_tensor_view_rows(&x_all, t0, T, &x));
        KW_CHECK(kw_backend_upload(be, &ids_t, 0, ids + t0, (size_t)T * sizeof(int32_t)));
        KW_CHECK(model_embed(m, &x, &ids_t));
        KW_CHECK(kw_backend_synchronize(be)); /* the ids scratch is reused by the next chunk */
    }
    for (int32_t l = 0; l < m->cfg.n_layers; ++l) {
        for (int64_t t0 = 0; t0 < n; t0 += B) {
            const int64_t T = n - t0 < B ? n - t0 : B;
            kw_tensor x, pos;
            KW_CHECK(kw_tensor_view_rows(&x_all, t0, T, &x));
            KW_CHECK(kw_tensor_view_rows(&pos_all, t0, T, &pos));
            KW_CHECK(model_layer(m, &m->layers[l], l, cache, T, row0 + t0, &x, &pos));
        }
        KW_CHECK(kw_backend_synchronize(be));
        if (on_layer) {
            rc = on_layer(user, l, row0, n);
            if (rc < 0) {
                if (kw_error_detail()[0] == '\0') kw_error_set(rc, "model: the layer callback failed at layer %d", l);
                goto out;
            }
            rc = 0;
        }
    }
out:
    kw_tensor_free(&x_all);
    kw_tensor_free(&pos_all);
    free(pos_host);
    if (rc < 0) {
        const int sync = kw_backend_synchronize(be); /* keep rc's detail unless the wait itself fails */
        (void)sync;
        kw_kvcache_truncate(cache, len0);
    }
    return rc;
}

int kw_model_prefill(kw_model *model, kw_kvcache *cache, const int32_t *ids, int64_t n) {
    const kw_forward_args a = {.ids = ids, .n = n, .mode = KW_LOGITS_NONE};
    return kw_model_forward(model, cache, &a);
}

void kw_model_graph_counts(const kw_model *model, int64_t *recordings, int64_t *launches) {
    if (recordings) *recordings = model->graph_recordings;
    if (launches) *launches = model->graph_launches;
}

int kw_model_decode_step(kw_model *model, kw_kvcache *cache, int32_t id, float *logits, int32_t *next,
                         int argmax_flags) {
    const kw_forward_args a = {
        .ids = &id, .n = 1, .mode = KW_LOGITS_LAST, .logits = logits, .argmax = next, .argmax_flags = argmax_flags};
    return kw_model_forward(model, cache, &a);
}

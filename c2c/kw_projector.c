/* kw_projector.c: C2CProjector weight binding and forward pass (see kw_projector.h for the math and the numerics).
 *
 * Layout of the work per branch and chunk of R positions (all f32 backend tensors, rows = positions):
 *   xs (R, Hs*Ds), xt (R, Ht*Dt)           the inputs (rounded copies in bf16 mode, else views of the caller's)
 *   h  = xs Win_s^T + b + xt Win_t^T         the in-Linear, split by column block
 *   ha = block(h, mlp1)                      the shared hidden state
 *   hb = block(ha, scalar_mlp2); s = sigmoid(hb Whead^T + bhead)           (R, Ht)
 *   cur = ha; cur = block(cur, proj_mlp2[i]) ping-ponging through h / hb;  p = cur Wout^T + bout   (R, Ht*Dt)
 *   out = xt + (1 * s) * p                   kw_op_head_scale_add, fp32
 * where block(x) = x + W2(GELU(W1(RMSNorm(x)))) uses n (R, hidden) and a (R, max(inter, hidden)). In bf16 mode each
 * rounding point goes through a bf16 scratch tensor with two kw_op_copy calls (f32 -> bf16 -> f32). The two-rounding
 * RMSNorm (KW_PROJECTOR_BF16) is built from backend ops too: kw_op_rms_norm with a weight of ones gives x * r exactly,
 * rounded; the weight rows are replicated with kw_op_get_rows (all ids 0) and kw_op_head_scale_add with D = 1 and a
 * zero base forms 0 + (1 * w) * n, which is the exact fp32 product of two bf16 values; rounded again.
 * Not here: which rows to project (kw_fusion.c).
 */
#include "c2c/kw_projector.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "c2c/kw_fuser_load.h"
#include "common/kw_half.h"
#include "common/kw_size.h"
#include "common/kw_status.h"

#define KW_PROJ_NORM_EPS 1e-6f
/* torch <= 2.6 holds rms_norm's eps in the input dtype: bf16(1e-6) = 0x3586 */
#define KW_PROJ_NORM_EPS_BF16 9.98377799987793e-07f
#define KW_PROJ_MAX_LAYERS    64

/* A residual FFN block's weights. */
typedef struct kw_proj_ffn {
    kw_tensor norm, w1, w2;
    int64_t inter; /* rows of w1 */
} kw_proj_ffn;

typedef struct kw_proj_branch {
    kw_tensor in_src, in_tgt, in_b; /* in_src/in_tgt: packed from the split copy (or views of it) */
    kw_proj_ffn mlp1, scalar_mlp2;
    kw_proj_ffn *proj_mlp2; /* n_proj entries, owned */
    int32_t n_proj;
    kw_tensor head_w, head_b, out_w, out_b;
    float gate_logit;
    int gate_open;
    void *in_split; /* owned host copy: the source column block then the target column block */
} kw_proj_branch;

struct kw_projector {
    kw_backend *backend;
    kw_projector_dims dims;
    kw_proj_branch key, value;
    kw_tensor ones;   /* (hidden) f32 ones: the weight of the two-rounding RMSNorm's first step */
    float *ones_host; /* owned host data behind ones */
};

/* ------------------------------------------------------------------------------------------------------------
 * Binding
 */

static int kw_proj_check_dims(const kw_projector_dims *d) {
    KW_RETURN_IF(d == NULL, KW_E_INVALID_ARG, "projector: NULL dims");
    const int32_t v[6] = {d->src_heads, d->src_head_dim, d->tgt_heads, d->tgt_head_dim, d->hidden, d->intermediate};
    for (int i = 0; i < 6; ++i)
        KW_RETURN_IF(v[i] < 1 || v[i] > KW_PROJECTOR_MAX_DIM, KW_E_INVALID_ARG,
                     "projector: dims field %d is %d (must be in [1, %d])", i, (int)v[i], KW_PROJECTOR_MAX_DIM);
    KW_RETURN_IF(d->num_layers < 3 || d->num_layers > KW_PROJ_MAX_LAYERS, KW_E_INVALID_ARG,
                 "projector: num_layers %d must be in [3, %d]", (int)d->num_layers, KW_PROJ_MAX_LAYERS);
    return 0;
}

/* Looks name up and checks its shape against want[0..ndim) (ndim 0: a scalar, also accepted as one element). */
static int kw_proj_find(kw_projector_lookup_fn lookup, void *user, const char *name, int32_t ndim, const int64_t *want,
                        kw_projector_tensor *t) {
    memset(t, 0, sizeof *t);
    const int rc = lookup(user, name, t);
    if (rc == KW_E_NOT_FOUND) KW_FAIL(KW_E_FUSER_TENSOR, "projector tensor %s is missing", name);
    if (rc < 0) return rc;
    KW_RETURN_IF(t->data == NULL, KW_E_FUSER_TENSOR, "projector tensor %s has no data", name);
    KW_RETURN_IF(t->dtype != KW_DTYPE_F32 && t->dtype != KW_DTYPE_BF16 && t->dtype != KW_DTYPE_F16, KW_E_FUSER_TENSOR,
                 "projector tensor %s has dtype %s (f32, bf16 or f16 expected)", name, kw_dtype_name(t->dtype));
    int ok;
    if (ndim == 0) {
        ok = t->ndim == 0 || (t->ndim == 1 && t->shape[0] == 1);
    } else {
        ok = t->ndim == ndim;
        for (int32_t i = 0; ok && i < ndim; ++i)
            ok = t->shape[i] == want[i];
    }
    if (!ok) {
        char got[96] = "", exp[96] = "";
        int n = 0;
        for (int32_t i = 0; i < t->ndim && i < 4 && n >= 0 && n < (int)sizeof got; ++i)
            n += snprintf(got + n, sizeof got - (size_t)n, i ? ", %lld" : "%lld", (long long)t->shape[i]);
        n = 0;
        for (int32_t i = 0; i < ndim && n >= 0 && n < (int)sizeof exp; ++i)
            n += snprintf(exp + n, sizeof exp - (size_t)n, i ? ", %lld" : "%lld", (long long)want[i]);
        KW_FAIL(KW_E_FUSER_TENSOR, "projector tensor %s has shape (%s), expected (%s)", name, got, exp);
    }
    return 0;
}

/* Replaces the matmul weight t by the backend's packed form (kw_tensor_pack_weight; the same bits, read faster). */
static int kw_proj_pack(kw_backend *be, kw_tensor *t) {
    kw_tensor packed;
    KW_FORWARD(kw_tensor_pack_weight(be, t, &packed));
    if (packed.data == t->data) return 0; /* a view: the backend reads the row-major weight */
    kw_tensor_free(t);
    *t = packed;
    return 0;
}

/* Binds a looked-up tensor to a backend tensor of the given shape; a matrix (every 2-D projector tensor is a matmul
 * weight) is packed. */
static int kw_proj_bind(kw_backend *be, kw_projector_lookup_fn lookup, void *user, const char *name, int32_t ndim,
                        const int64_t *shape, kw_tensor *out) {
    kw_projector_tensor t;
    KW_FORWARD(kw_proj_find(lookup, user, name, ndim, shape, &t));
    KW_RETURN_IF(!kw_backend_supports(be, KW_OP_MATMUL, t.dtype), KW_E_OP_UNSUPPORTED,
                 "projector tensor %s: backend %s cannot use %s weights", name, kw_backend_name(be),
                 kw_dtype_name(t.dtype));
    KW_FORWARD(kw_tensor_from_host(be, out, t.dtype, ndim, shape, t.data));
    return ndim == 2 ? kw_proj_pack(be, out) : 0;
}

static int kw_proj_bind_ffn(kw_backend *be, kw_projector_lookup_fn lookup, void *user, const char *prefix,
                            int64_t hidden, int64_t inter, kw_proj_ffn *f) {
    char name[160];
    f->inter = inter;
    snprintf(name, sizeof name, "%s.norm.weight", prefix);
    KW_FORWARD(kw_proj_bind(be, lookup, user, name, 1, (int64_t[]){hidden}, &f->norm));
    snprintf(name, sizeof name, "%s.w1.weight", prefix);
    KW_FORWARD(kw_proj_bind(be, lookup, user, name, 2, (int64_t[]){inter, hidden}, &f->w1));
    snprintf(name, sizeof name, "%s.w2.weight", prefix);
    return kw_proj_bind(be, lookup, user, name, 2, (int64_t[]){hidden, inter}, &f->w2);
}

static float kw_proj_scalar(const kw_projector_tensor *t) {
    switch (t->dtype) {
    case KW_DTYPE_BF16: {
        uint16_t h;
        memcpy(&h, t->data, 2);
        return kw_bf16_to_f32(h);
    }
    case KW_DTYPE_F16: {
        uint16_t h;
        memcpy(&h, t->data, 2);
        return kw_f16_to_f32(h);
    }
    default: {
        float f;
        memcpy(&f, t->data, 4);
        return f;
    }
    }
}

static void kw_proj_free_ffn(kw_proj_ffn *f) {
    kw_tensor_free(&f->norm);
    kw_tensor_free(&f->w1);
    kw_tensor_free(&f->w2);
}

static void kw_proj_free_branch(kw_proj_branch *b) {
    kw_tensor_free(&b->in_src);
    kw_tensor_free(&b->in_tgt);
    kw_tensor_free(&b->in_b);
    kw_proj_free_ffn(&b->mlp1);
    kw_proj_free_ffn(&b->scalar_mlp2);
    for (int32_t i = 0; b->proj_mlp2 && i < b->n_proj; ++i)
        kw_proj_free_ffn(&b->proj_mlp2[i]);
    free(b->proj_mlp2);
    kw_tensor_free(&b->head_w);
    kw_tensor_free(&b->head_b);
    kw_tensor_free(&b->out_w);
    kw_tensor_free(&b->out_b);
    free(b->in_split);
    memset(b, 0, sizeof *b);
}

static int kw_proj_bind_branch(kw_projector *p, kw_projector_lookup_fn lookup, void *user, const char *which,
                               kw_proj_branch *b) {
    kw_backend *be = p->backend;
    const kw_projector_dims *d = &p->dims;
    const int64_t hidden = d->hidden, inter = d->intermediate;
    const int64_t in_s = (int64_t)d->src_heads * d->src_head_dim, in_t = (int64_t)d->tgt_heads * d->tgt_head_dim;
    char name[160];

    /* the in-Linear, split into its source and target column blocks (two contiguous matrices) */
    kw_projector_tensor w;
    snprintf(name, sizeof name, "%s_in.weight", which);
    KW_FORWARD(kw_proj_find(lookup, user, name, 2, (int64_t[]){hidden, in_s + in_t}, &w));
    KW_RETURN_IF(!kw_backend_supports(be, KW_OP_MATMUL, w.dtype), KW_E_OP_UNSUPPORTED,
                 "projector tensor %s: backend %s cannot use %s weights", name, kw_backend_name(be),
                 kw_dtype_name(w.dtype));
    const size_t es = kw_dtype_size(w.dtype);
    size_t bytes;
    KW_RETURN_IF(kw_size_mul3((size_t)hidden, (size_t)(in_s + in_t), es, &bytes) < 0, KW_E_OVERFLOW,
                 "projector: %s is too large", name);
    b->in_split = malloc(bytes);
    KW_RETURN_IF(b->in_split == NULL, KW_E_NOMEM, "projector: cannot copy %s (%zu bytes)", name, bytes);
    char *dst_s = b->in_split, *dst_t = dst_s + (size_t)(hidden * in_s) * es;
    const char *src = w.data;
    for (int64_t r = 0; r < hidden; ++r) {
        memcpy(dst_s + (size_t)(r * in_s) * es, src + (size_t)(r * (in_s + in_t)) * es, (size_t)in_s * es);
        memcpy(dst_t + (size_t)(r * in_t) * es, src + (size_t)(r * (in_s + in_t) + in_s) * es, (size_t)in_t * es);
    }
    KW_FORWARD(kw_tensor_from_host(be, &b->in_src, w.dtype, 2, (int64_t[]){hidden, in_s}, dst_s));
    KW_FORWARD(kw_tensor_from_host(be, &b->in_tgt, w.dtype, 2, (int64_t[]){hidden, in_t}, dst_t));
    KW_FORWARD(kw_proj_pack(be, &b->in_src));
    KW_FORWARD(kw_proj_pack(be, &b->in_tgt));
    snprintf(name, sizeof name, "%s_in.bias", which);
    KW_FORWARD(kw_proj_bind(be, lookup, user, name, 1, (int64_t[]){hidden}, &b->in_b));

    snprintf(name, sizeof name, "%s_mlp1.blocks.0", which);
    KW_FORWARD(kw_proj_bind_ffn(be, lookup, user, name, hidden, inter, &b->mlp1));
    snprintf(name, sizeof name, "%s_scalar_mlp2.blocks.0", which);
    KW_FORWARD(kw_proj_bind_ffn(be, lookup, user, name, hidden, hidden, &b->scalar_mlp2));
    b->n_proj = d->num_layers - 2;
    b->proj_mlp2 = calloc((size_t)b->n_proj, sizeof *b->proj_mlp2);
    KW_RETURN_IF(b->proj_mlp2 == NULL, KW_E_NOMEM, "projector: out of memory");
    for (int32_t i = 0; i < b->n_proj; ++i) {
        snprintf(name, sizeof name, "%s_proj_mlp2.blocks.%d", which, (int)i);
        KW_FORWARD(kw_proj_bind_ffn(be, lookup, user, name, hidden, inter, &b->proj_mlp2[i]));
    }
    snprintf(name, sizeof name, "%s_scalar_head.weight", which);
    KW_FORWARD(kw_proj_bind(be, lookup, user, name, 2, (int64_t[]){d->tgt_heads, hidden}, &b->head_w));
    snprintf(name, sizeof name, "%s_scalar_head.bias", which);
    KW_FORWARD(kw_proj_bind(be, lookup, user, name, 1, (int64_t[]){d->tgt_heads}, &b->head_b));
    snprintf(name, sizeof name, "%s_proj_out.weight", which);
    KW_FORWARD(kw_proj_bind(be, lookup, user, name, 2, (int64_t[]){in_t, hidden}, &b->out_w));
    snprintf(name, sizeof name, "%s_proj_out.bias", which);
    KW_FORWARD(kw_proj_bind(be, lookup, user, name, 1, (int64_t[]){in_t}, &b->out_b));

    kw_projector_tensor g;
    snprintf(name, sizeof name, "%s_gate_logit", which);
    KW_FORWARD(kw_proj_find(lookup, user, name, 0, NULL, &g));
    b->gate_logit = kw_proj_scalar(&g);
    b->gate_open = b->gate_logit > 0.0f; /* strictly: a logit of exactly 0 (the initial value) is closed */
    return 0;
}

int kw_projector_create(kw_backend *backend, const kw_projector_dims *dims, kw_projector_lookup_fn lookup, void *user,
                        kw_projector **out) {
    KW_RETURN_IF(backend == NULL || lookup == NULL || out == NULL, KW_E_INVALID_ARG, "kw_projector_create: NULL");
    *out = NULL;
    KW_FORWARD(kw_proj_check_dims(dims));
    kw_projector *p = calloc(1, sizeof *p);
    KW_RETURN_IF(p == NULL, KW_E_NOMEM, "kw_projector_create: out of memory");
    p->backend = backend;
    p->dims = *dims;
    int rc;
    KW_CHECK(kw_proj_bind_branch(p, lookup, user, "key", &p->key));
    KW_CHECK(kw_proj_bind_branch(p, lookup, user, "value", &p->value));
    p->ones_host = malloc((size_t)dims->hidden * sizeof *p->ones_host);
    if (p->ones_host == NULL) KW_CHECK(kw_error_set(KW_E_NOMEM, "kw_projector_create: out of memory"));
    for (int32_t i = 0; i < dims->hidden; ++i)
        p->ones_host[i] = 1.0f;
    KW_CHECK(kw_tensor_from_host(backend, &p->ones, KW_DTYPE_F32, 1, (int64_t[]){dims->hidden}, p->ones_host));
    *out = p;
    return 0;
out:
    kw_projector_free(p);
    return rc;
}

/* Name lookup over one loaded projector's tensor table. */
static int kw_proj_fuser_find(void *user, const char *name, kw_projector_tensor *out) {
    const kw_fuser_projector *fp = user;
    for (size_t i = 0; i < fp->n_tensors; ++i) {
        const kw_fuser_tensor *t = &fp->tensors[i];
        if (strcmp(t->name, name) != 0) continue;
        memset(out, 0, sizeof *out);
        out->dtype = t->dtype;
        out->ndim = t->ndim;
        for (int32_t d = 0; d < t->ndim && d < 2; ++d)
            out->shape[d] = t->shape[d];
        out->data = t->data;
        return 0;
    }
    return KW_E_NOT_FOUND;
}

int kw_projector_create_from_fuser(kw_backend *backend, const struct kw_fuser *fuser, int32_t index,
                                   kw_projector **out) {
    KW_RETURN_IF(fuser == NULL || out == NULL, KW_E_INVALID_ARG, "kw_projector_create_from_fuser: NULL");
    KW_RETURN_IF(index < 0 || index >= fuser->n_projectors, KW_E_INVALID_ARG,
                 "kw_projector_create_from_fuser: projector %d of %d", (int)index, (int)fuser->n_projectors);
    const kw_fuser_dims *fd = &fuser->dims;
    const kw_projector_dims d = {.src_heads = fd->source_heads,
                                 .src_head_dim = fd->source_dim,
                                 .tgt_heads = fd->target_heads,
                                 .tgt_head_dim = fd->target_dim,
                                 .hidden = fd->hidden_dim,
                                 .intermediate = fd->intermediate_dim,
                                 .num_layers = fd->num_layers};
    const int rc = kw_projector_create(backend, &d, kw_proj_fuser_find, (void *)&fuser->projectors[index], out);
    if (rc < 0) KW_FAIL(rc, "projector_%d: %s", (int)index, kw_error_detail());
    return 0;
}

void kw_projector_free(kw_projector *p) {
    if (p == NULL) return;
    kw_proj_free_branch(&p->key);
    kw_proj_free_branch(&p->value);
    kw_tensor_free(&p->ones);
    free(p->ones_host);
    free(p);
}

const char *kw_projector_numerics_name(enum kw_projector_numerics numerics) {
    switch (numerics) {
    case KW_PROJECTOR_FP32:
        return "fp32";
    case KW_PROJECTOR_BF16:
        return "bf16";
    case KW_PROJECTOR_BF16_FUSED_NORM:
        return "bf16-fused-norm";
    }
    return NULL;
}

const kw_projector_dims *kw_projector_get_dims(const kw_projector *p) {
    return &p->dims;
}

void kw_projector_gates(const kw_projector *p, float *key_logit, float *value_logit, int *key_open, int *value_open) {
    if (key_logit) *key_logit = p->key.gate_logit;
    if (value_logit) *value_logit = p->value.gate_logit;
    if (key_open) *key_open = p->key.gate_open;
    if (value_open) *value_open = p->value.gate_open;
}

int64_t kw_projector_branch_macs(const kw_projector_dims *d) {
    const int64_t hidden = d->hidden, inter = d->intermediate;
    const int64_t in_s = (int64_t)d->src_heads * d->src_head_dim, in_t = (int64_t)d->tgt_heads * d->tgt_head_dim;
    const int64_t in = hidden * (in_s + in_t);
    const int64_t blocks = 2 * hidden * inter + 2 * hidden * hidden + (int64_t)(d->num_layers - 2) * 2 * hidden * inter;
    return in + blocks + (int64_t)d->tgt_heads * hidden + in_t * hidden;
}

/* ------------------------------------------------------------------------------------------------------------
 * Workspace
 */

/* NW (replicated norm weight), NZ (zeros) and NID (i32 zero ids) serve the two-rounding RMSNorm only */
enum {
    KW_WS_XS,
    KW_WS_XT,
    KW_WS_H,
    KW_WS_HA,
    KW_WS_HB,
    KW_WS_N,
    KW_WS_A,
    KW_WS_P,
    KW_WS_S,
    KW_WS_R16,
    KW_WS_NW,
    KW_WS_NZ,
    KW_WS_NID,
    KW_WS_COUNT
};

struct kw_projector_ws {
    kw_backend *backend;
    int64_t max_rows;
    kw_tensor buf[KW_WS_COUNT]; /* 1-D, grown on demand; KW_WS_R16 is bf16, KW_WS_NID i32, the others f32; KW_WS_NZ
                                   and KW_WS_NID are zeroed when allocated and never written */
    int64_t cap[KW_WS_COUNT];   /* elements */
};

int kw_projector_ws_create(kw_backend *backend, int64_t max_rows, kw_projector_ws **out) {
    KW_RETURN_IF(backend == NULL || out == NULL || max_rows < 0 || max_rows > (1 << 20), KW_E_INVALID_ARG,
                 "kw_projector_ws_create: bad argument (max_rows %lld)", (long long)max_rows);
    kw_projector_ws *ws = calloc(1, sizeof *ws);
    KW_RETURN_IF(ws == NULL, KW_E_NOMEM, "kw_projector_ws_create: out of memory");
    ws->backend = backend;
    ws->max_rows = max_rows ? max_rows : 256;
    *out = ws;
    return 0;
}

void kw_projector_ws_free(kw_projector_ws *ws) {
    if (ws == NULL) return;
    for (int i = 0; i < KW_WS_COUNT; ++i)
        kw_tensor_free(&ws->buf[i]);
    free(ws);
}

size_t kw_projector_ws_bytes(const kw_projector_ws *ws) {
    size_t n = 0;
    for (int i = 0; ws && i < KW_WS_COUNT; ++i)
        n += ws->buf[i].data ? kw_tensor_nbytes(&ws->buf[i]) : 0;
    return n;
}

/* Makes buffer i hold at least n elements. Growing drops the old contents: call before any op uses it (the backend
 * stream is in order, so freeing a buffer queued ops still read would be wrong on an asynchronous backend; the forward
 * therefore sizes every buffer before enqueueing anything). */
static int kw_ws_reserve(kw_projector_ws *ws, int i, int64_t n) {
    if (ws->cap[i] >= n) return 0;
    if (ws->buf[i].data) {
        KW_FORWARD(kw_backend_synchronize(ws->backend));
        kw_tensor_free(&ws->buf[i]);
    }
    ws->cap[i] = 0;
    const int64_t ne[1] = {n};
    const enum kw_dtype dt = i == KW_WS_R16 ? KW_DTYPE_BF16 : i == KW_WS_NID ? KW_DTYPE_I32 : KW_DTYPE_F32;
    KW_FORWARD(kw_tensor_alloc(ws->backend, &ws->buf[i], dt, 1, ne));
    if (i == KW_WS_NZ || i == KW_WS_NID) {
        const int rc = kw_backend_memset_zero(ws->backend, &ws->buf[i]);
        if (rc < 0) {
            kw_tensor_free(&ws->buf[i]);
            return rc;
        }
    }
    ws->cap[i] = n;
    return 0;
}

/* A (rows, cols) view of the first rows * cols elements of buffer i. */
static int kw_ws_view(kw_projector_ws *ws, int i, int64_t rows, int64_t cols, kw_tensor *v) {
    kw_tensor prefix;
    KW_FORWARD(kw_tensor_view_rows(&ws->buf[i], 0, rows * cols, &prefix));
    return kw_tensor_view_reshape(&prefix, 2, (int64_t[]){rows, cols}, v);
}

/* ------------------------------------------------------------------------------------------------------------
 * Forward
 */

typedef struct kw_proj_run {
    const kw_projector *p;
    kw_projector_ws *ws;
    kw_backend *be;
    int bf16;
    int norm_twice; /* the torch <= 2.6 RMSNorm (KW_PROJECTOR_BF16) */
    int64_t rows;   /* rows of the current chunk */
} kw_proj_run;

/* In bf16 mode, rounds t (f32) to bf16 values in place: f32 -> bf16 scratch -> f32. */
static int kw_proj_round(kw_proj_run *r, kw_tensor *t) {
    if (!r->bf16) return 0;
    kw_tensor s;
    KW_FORWARD(kw_tensor_view_rows(&r->ws->buf[KW_WS_R16], 0, kw_tensor_nelem(t), &s));
    KW_FORWARD(kw_op_copy(r->be, &s, t));
    return kw_op_copy(r->be, t, &s);
}

/* n = RMSNorm(x) with weight w, (R, hidden): one rounding (fp32 and the fused rule), or torch <= 2.6's two. */
static int kw_proj_norm(kw_proj_run *r, const kw_tensor *w, const kw_tensor *x, kw_tensor *n) {
    if (!r->norm_twice) {
        KW_FORWARD(kw_op_rms_norm(r->be, n, x, w, KW_PROJ_NORM_EPS, KW_RMS_NORM_PLAIN));
        return kw_proj_round(r, n);
    }
    const int64_t R = r->rows, hidden = r->p->dims.hidden;
    KW_FORWARD(kw_op_rms_norm(r->be, n, x, &r->p->ones, KW_PROJ_NORM_EPS_BF16, KW_RMS_NORM_PLAIN)); /* (x * r) * 1 */
    KW_FORWARD(kw_proj_round(r, n));
    kw_tensor table, ids, wrep, zero, zero3, n3;
    KW_FORWARD(kw_tensor_view_reshape(w, 2, (int64_t[]){1, hidden}, &table));
    KW_FORWARD(kw_tensor_view_rows(&r->ws->buf[KW_WS_NID], 0, R, &ids));
    KW_FORWARD(kw_ws_view(r->ws, KW_WS_NW, R, hidden, &wrep));
    KW_FORWARD(kw_op_get_rows(r->be, &wrep, &table, &ids)); /* every row = w, widened exactly */
    KW_FORWARD(kw_tensor_view_rows(&r->ws->buf[KW_WS_NZ], 0, R * hidden, &zero));
    KW_FORWARD(kw_tensor_view_reshape(&zero, 3, (int64_t[]){R, hidden, 1}, &zero3));
    KW_FORWARD(kw_tensor_view_reshape(n, 3, (int64_t[]){R, hidden, 1}, &n3));
    KW_FORWARD(kw_op_head_scale_add(r->be, &n3, &zero3, &n3, &wrep, 1.0f)); /* 0 + (1 * w) * n: exact */
    return kw_proj_round(r, n);
}

/* out = x + W2(GELU(W1(RMSNorm(x)))), every intermediate rounded in bf16 mode; out != x. */
static int kw_proj_block(kw_proj_run *r, const kw_proj_ffn *f, const kw_tensor *x, kw_tensor *out) {
    const int64_t R = r->rows, hidden = r->p->dims.hidden;
    kw_tensor n, a;
    KW_FORWARD(kw_ws_view(r->ws, KW_WS_N, R, hidden, &n));
    KW_FORWARD(kw_ws_view(r->ws, KW_WS_A, R, f->inter, &a));
    KW_FORWARD(kw_proj_norm(r, &f->norm, x, &n));
    KW_FORWARD(kw_op_matmul(r->be, &a, &n, &f->w1, NULL));
    KW_FORWARD(kw_proj_round(r, &a));
    KW_FORWARD(kw_op_unary(r->be, &a, &a, KW_ACT_GELU_ERF));
    KW_FORWARD(kw_proj_round(r, &a));
    KW_FORWARD(kw_op_matmul(r->be, &n, &a, &f->w2, NULL)); /* n is free again: it holds W2's output */
    KW_FORWARD(kw_proj_round(r, &n));
    KW_FORWARD(kw_op_add(r->be, out, x, &n));
    return kw_proj_round(r, out);
}

/* One branch over one chunk: src (R, Hs, Ds), tgt and out (R, Ht, Dt) views. */
static int kw_proj_branch_chunk(kw_proj_run *r, const kw_proj_branch *b, const kw_tensor *src, const kw_tensor *tgt,
                                kw_tensor *out) {
    const kw_projector_dims *d = &r->p->dims;
    const int64_t R = r->rows, hidden = d->hidden;
    const int64_t in_s = (int64_t)d->src_heads * d->src_head_dim, in_t = (int64_t)d->tgt_heads * d->tgt_head_dim;
    kw_tensor xs, xt, h, ha, hb, n, p, s;
    if (r->bf16) { /* the inputs as a bf16 cache would hold them */
        KW_FORWARD(kw_ws_view(r->ws, KW_WS_XS, R, in_s, &xs));
        KW_FORWARD(kw_ws_view(r->ws, KW_WS_XT, R, in_t, &xt));
        kw_tensor s16;
        KW_FORWARD(kw_tensor_view_rows(&r->ws->buf[KW_WS_R16], 0, R * in_s, &s16));
        KW_FORWARD(kw_op_copy(r->be, &s16, src));
        KW_FORWARD(kw_op_copy(r->be, &xs, &s16));
        KW_FORWARD(kw_tensor_view_rows(&r->ws->buf[KW_WS_R16], 0, R * in_t, &s16));
        KW_FORWARD(kw_op_copy(r->be, &s16, tgt));
        KW_FORWARD(kw_op_copy(r->be, &xt, &s16));
    } else {
        KW_FORWARD(kw_tensor_view_reshape(src, 2, (int64_t[]){R, in_s}, &xs));
        KW_FORWARD(kw_tensor_view_reshape(tgt, 2, (int64_t[]){R, in_t}, &xt));
    }
    KW_FORWARD(kw_ws_view(r->ws, KW_WS_H, R, hidden, &h));
    KW_FORWARD(kw_ws_view(r->ws, KW_WS_HA, R, hidden, &ha));
    KW_FORWARD(kw_ws_view(r->ws, KW_WS_HB, R, hidden, &hb));
    KW_FORWARD(kw_ws_view(r->ws, KW_WS_N, R, hidden, &n));
    KW_FORWARD(kw_ws_view(r->ws, KW_WS_P, R, in_t, &p));
    KW_FORWARD(kw_ws_view(r->ws, KW_WS_S, R, d->tgt_heads, &s));

    /* in-Linear: h = x Win^T + b over the concatenation [src, tgt], as two GEMMs added in fp32 */
    KW_FORWARD(kw_op_matmul(r->be, &h, &xs, &b->in_src, &b->in_b));
    KW_FORWARD(kw_op_matmul(r->be, &n, &xt, &b->in_tgt, NULL));
    KW_FORWARD(kw_op_add(r->be, &h, &h, &n));
    KW_FORWARD(kw_proj_round(r, &h));
    KW_FORWARD(kw_proj_block(r, &b->mlp1, &h, &ha));

    /* scalar path: one weight per token and head */
    KW_FORWARD(kw_proj_block(r, &b->scalar_mlp2, &ha, &hb));
    KW_FORWARD(kw_op_matmul(r->be, &s, &hb, &b->head_w, &b->head_b));
    KW_FORWARD(kw_proj_round(r, &s));
    KW_FORWARD(kw_op_unary(r->be, &s, &s, KW_ACT_SIGMOID));
    KW_FORWARD(kw_proj_round(r, &s));

    /* projection path: ha -> h -> hb -> h ... through the proj_mlp2 blocks */
    const kw_tensor *cur = &ha;
    kw_tensor *pong[2] = {&h, &hb};
    for (int32_t i = 0; i < b->n_proj; ++i) {
        kw_tensor *next = pong[i & 1];
        KW_FORWARD(kw_proj_block(r, &b->proj_mlp2[i], cur, next));
        cur = next;
    }
    KW_FORWARD(kw_op_matmul(r->be, &p, cur, &b->out_w, &b->out_b));
    KW_FORWARD(kw_proj_round(r, &p));

    /* out = tgt + (g * w) * p with g = 1 (only open branches run), in fp32 */
    kw_tensor base3, p3;
    KW_FORWARD(kw_tensor_view_reshape(&xt, 3, (int64_t[]){R, d->tgt_heads, d->tgt_head_dim}, &base3));
    KW_FORWARD(kw_tensor_view_reshape(&p, 3, (int64_t[]){R, d->tgt_heads, d->tgt_head_dim}, &p3));
    return kw_op_head_scale_add(r->be, out, &base3, &p3, &s, 1.0f);
}

static int kw_proj_check_io_tensor(const kw_projector *p, const kw_tensor *t, int64_t T, int32_t heads, int32_t dim,
                                   const char *what) {
    KW_RETURN_IF(t == NULL || t->data == NULL, KW_E_INVALID_ARG, "projector forward: %s is NULL", what);
    KW_RETURN_IF(t->backend != p->backend, KW_E_INVALID_ARG, "projector forward: %s is on another backend", what);
    KW_RETURN_IF(t->dtype != KW_DTYPE_F32 || t->ndim != 3 || t->ne[0] != T || t->ne[1] != heads || t->ne[2] != dim,
                 KW_E_SHAPE, "projector forward: %s is (%lld, %lld, %lld) %s, expected (%lld, %d, %d) f32", what,
                 (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2], kw_dtype_name(t->dtype), (long long)T,
                 (int)heads, (int)dim);
    return 0;
}

/* Runs one branch over all T positions in chunks. */
static int kw_proj_branch_run(kw_proj_run *r, const kw_proj_branch *b, const kw_tensor *src, const kw_tensor *tgt,
                              kw_tensor *out) {
    const int64_t T = tgt->ne[0];
    if (!b->gate_open) { /* out = tgt + 0 * w * p = tgt exactly: nothing to compute */
        if (out->data == tgt->data) return 0;
        return kw_op_copy(r->be, out, tgt);
    }
    for (int64_t t0 = 0; t0 < T; t0 += r->ws->max_rows) {
        r->rows = T - t0 < r->ws->max_rows ? T - t0 : r->ws->max_rows;
        kw_tensor sv, tv, ov;
        KW_FORWARD(kw_tensor_view_rows(src, t0, r->rows, &sv));
        KW_FORWARD(kw_tensor_view_rows(tgt, t0, r->rows, &tv));
        KW_FORWARD(kw_tensor_view_rows(out, t0, r->rows, &ov));
        KW_FORWARD(kw_proj_branch_chunk(r, b, &sv, &tv, &ov));
    }
    return 0;
}

int kw_projector_forward(const kw_projector *p, kw_projector_ws *ws, enum kw_projector_numerics numerics,
                         const kw_projector_io *io) {
    KW_RETURN_IF(p == NULL || ws == NULL || io == NULL, KW_E_INVALID_ARG, "kw_projector_forward: NULL argument");
    KW_RETURN_IF(ws->backend != p->backend, KW_E_INVALID_ARG, "kw_projector_forward: workspace on another backend");
    KW_RETURN_IF(kw_projector_numerics_name(numerics) == NULL, KW_E_INVALID_ARG,
                 "kw_projector_forward: unknown numerics %d", (int)numerics);
    const int bf16 = numerics != KW_PROJECTOR_FP32, norm_twice = numerics == KW_PROJECTOR_BF16;
    const kw_projector_dims *d = &p->dims;
    const int run_k = io->out_k != NULL, run_v = io->out_v != NULL;
    if (!run_k && !run_v) return 0;
    const kw_tensor *any = run_k ? io->tgt_k : io->tgt_v;
    KW_RETURN_IF(any == NULL, KW_E_INVALID_ARG, "kw_projector_forward: NULL target");
    const int64_t T = any->ne[0];
    KW_RETURN_IF(T < 1, KW_E_SHAPE, "kw_projector_forward: no positions");
    if (run_k) {
        KW_FORWARD(kw_proj_check_io_tensor(p, io->src_k, T, d->src_heads, d->src_head_dim, "src_k"));
        KW_FORWARD(kw_proj_check_io_tensor(p, io->tgt_k, T, d->tgt_heads, d->tgt_head_dim, "tgt_k"));
        KW_FORWARD(kw_proj_check_io_tensor(p, io->out_k, T, d->tgt_heads, d->tgt_head_dim, "out_k"));
    }
    if (run_v) {
        KW_FORWARD(kw_proj_check_io_tensor(p, io->src_v, T, d->src_heads, d->src_head_dim, "src_v"));
        KW_FORWARD(kw_proj_check_io_tensor(p, io->tgt_v, T, d->tgt_heads, d->tgt_head_dim, "tgt_v"));
        KW_FORWARD(kw_proj_check_io_tensor(p, io->out_v, T, d->tgt_heads, d->tgt_head_dim, "out_v"));
    }

    /* size every scratch buffer up front (see kw_ws_reserve) */
    const int64_t R = T < ws->max_rows ? T : ws->max_rows, hidden = d->hidden;
    const int64_t in_s = (int64_t)d->src_heads * d->src_head_dim, in_t = (int64_t)d->tgt_heads * d->tgt_head_dim;
    const int64_t wide = d->intermediate > hidden ? d->intermediate : hidden;
    int64_t r16 = wide > in_t ? wide : in_t;
    r16 = r16 > in_s ? r16 : in_s;
    if (bf16) {
        KW_FORWARD(kw_ws_reserve(ws, KW_WS_XS, R * in_s));
        KW_FORWARD(kw_ws_reserve(ws, KW_WS_XT, R * in_t));
        KW_FORWARD(kw_ws_reserve(ws, KW_WS_R16, R * r16));
    }
    if (norm_twice) {
        KW_FORWARD(kw_ws_reserve(ws, KW_WS_NW, R * hidden));
        KW_FORWARD(kw_ws_reserve(ws, KW_WS_NZ, R * hidden));
        KW_FORWARD(kw_ws_reserve(ws, KW_WS_NID, R));
    }
    KW_FORWARD(kw_ws_reserve(ws, KW_WS_H, R * hidden));
    KW_FORWARD(kw_ws_reserve(ws, KW_WS_HA, R * hidden));
    KW_FORWARD(kw_ws_reserve(ws, KW_WS_HB, R * hidden));
    KW_FORWARD(kw_ws_reserve(ws, KW_WS_N, R * hidden));
    KW_FORWARD(kw_ws_reserve(ws, KW_WS_A, R * wide));
    KW_FORWARD(kw_ws_reserve(ws, KW_WS_P, R * in_t));
    KW_FORWARD(kw_ws_reserve(ws, KW_WS_S, R * d->tgt_heads));

    kw_proj_run r = {.p = p, .ws = ws, .be = p->backend, .bf16 = bf16, .norm_twice = norm_twice};
    if (run_k) KW_FORWARD(kw_proj_branch_run(&r, &p->key, io->src_k, io->tgt_k, io->out_k));
    if (run_v) KW_FORWARD(kw_proj_branch_run(&r, &p->value, io->src_v, io->tgt_v, io->out_v));
    return 0;
}

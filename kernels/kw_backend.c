/* kw_backend.c: the generic layer of the backend interface: dtype and op tables, tensor bookkeeping, argument
 * validation and dispatch to a backend's function table.
 *
 * Every public entry point checks its arguments here, once, and returns KW_E_INVALID_ARG (NULL pointers, tensors of
 * another backend, bad enum values), KW_E_SHAPE (shapes, dtypes, ranges) or KW_E_OP_UNSUPPORTED (not on the
 * backend's whitelist) with a reason in kw_error_detail(). Backends therefore never see invalid input. This file
 * does no math except the RoPE frequency table, which every backend shares so that it matches HF in one place.
 */
#include "kernels/kw_backend_impl.h"
#include "kernels/kw_kvq_format.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_bytes.h"
#include "common/kw_half.h"
#include "common/kw_log.h"
#include "common/kw_size.h"
#include "common/kw_status.h"

/* ------------------------------------------------------------------------------------------------------------
 * dtypes and ops
 */

static const size_t kw_dtype_sizes[KW_DTYPE_COUNT] = {4, 2, 2, 4, 1, 1};
static const char *const kw_dtype_names[KW_DTYPE_COUNT] = {"f32", "bf16", "f16", "i32", "u8", "i8"};

size_t kw_dtype_size(enum kw_dtype dtype) {
    return ((unsigned)dtype < KW_DTYPE_COUNT) ? kw_dtype_sizes[dtype] : 0;
}

const char *kw_dtype_name(enum kw_dtype dtype) {
    return ((unsigned)dtype < KW_DTYPE_COUNT) ? kw_dtype_names[dtype] : "?";
}

static const char *const kw_op_names[] = {
    "get_rows", "matmul", "rms_norm", "rope",    "attention", "kv_store", "kv_load",        "glu",
    "unary",    "add",    "scale",    "softmax", "argmax",    "copy",     "head_scale_add",
};
_Static_assert(KW_OP_COUNT == 15, "update kw_op_names and the dispatch below when adding an op");
_Static_assert(sizeof kw_op_names / sizeof kw_op_names[0] == KW_OP_COUNT, "kw_op_names out of step with kw_op");

const char *kw_op_name(enum kw_op op) {
    return ((unsigned)op < KW_OP_COUNT) ? kw_op_names[op] : "?";
}

static int kw_dtype_is_float(enum kw_dtype dtype) {
    return dtype == KW_DTYPE_F32 || dtype == KW_DTYPE_BF16 || dtype == KW_DTYPE_F16;
}

/* ------------------------------------------------------------------------------------------------------------
 * Tensors
 */

int64_t kw_tensor_nelem(const kw_tensor *t) {
    int64_t n = 1;
    for (int32_t i = 0; i < t->ndim && i < 4; ++i)
        n *= t->ne[i];
    return n;
}

int kw_layout_quant(enum kw_layout layout, kw_quant_layout *out) {
    switch (layout) {
    case KW_LAYOUT_QPANELS_S4:
        *out = (kw_quant_layout){.code_bits = 4, .group = 32, .has_offset = 0, .code_min = -8, .code_max = 7};
        return 1;
    case KW_LAYOUT_QPANELS_U4:
    case KW_LAYOUT_QPANELS_U4_X8:
        *out = (kw_quant_layout){.code_bits = 4, .group = 32, .has_offset = 1, .code_min = 0, .code_max = 15};
        return 1;
    case KW_LAYOUT_QPANELS_S8:
        *out = (kw_quant_layout){.code_bits = 8, .group = 32, .has_offset = 0, .code_min = -128, .code_max = 127};
        return 1;
    case KW_LAYOUT_QPANELS_S8_X8:
        *out = (kw_quant_layout){
            .code_bits = 8, .group = 32, .has_offset = 0, .code_min = -128, .code_max = 127, .f16_scales = 1};
        return 1;
    case KW_LAYOUT_QPANELS_S8_OFS:
        *out = (kw_quant_layout){.code_bits = 8, .group = 32, .has_offset = 1, .code_min = -128, .code_max = 127};
        return 1;
    case KW_LAYOUT_QPANELS_S8_G16:
    case KW_LAYOUT_QPANELS_S8_G16_X8:
        *out = (kw_quant_layout){.code_bits = 8, .group = 16, .has_offset = 0, .code_min = -128, .code_max = 127};
        return 1;
    case KW_LAYOUT_QPANELS_U4_SB:
    case KW_LAYOUT_QPANELS_U4_SB_X8:
        *out = (kw_quant_layout){.code_bits = 4,
                                 .group = 32,
                                 .has_offset = 1,
                                 .code_min = 0,
                                 .code_max = 15,
                                 .superblock = KW_QUANT_SUPERBLOCK};
        return 1;
    case KW_LAYOUT_QPANELS_S8_G16_SB:
    case KW_LAYOUT_QPANELS_S8_G16_SB_X8:
        *out = (kw_quant_layout){.code_bits = 8,
                                 .group = 16,
                                 .has_offset = 0,
                                 .code_min = -128,
                                 .code_max = 127,
                                 .superblock = KW_QUANT_SUPERBLOCK};
        return 1;
    case KW_LAYOUT_QPANELS_S6_G16_SB:
    case KW_LAYOUT_QPANELS_S6_G16_SB_X8:
        *out = (kw_quant_layout){.code_bits = 6,
                                 .group = 16,
                                 .has_offset = 0,
                                 .code_min = -32,
                                 .code_max = 31,
                                 .superblock = KW_QUANT_SUPERBLOCK};
        return 1;
    case KW_LAYOUT_ROWS:
    case KW_LAYOUT_PANELS:
    case KW_LAYOUT_PANELS_BF16_PAIRS:
    case KW_LAYOUT_COUNT:
        break;
    }
    memset(out, 0, sizeof *out);
    return 0;
}

size_t kw__quant_group_bytes(const kw_quant_layout *q) {
    return (size_t)KW_PANEL_ROWS * (q->f16_scales ? sizeof(uint16_t) : sizeof(float)) * (size_t)(1 + q->has_offset) +
           (size_t)(q->group * KW_PANEL_ROWS * q->code_bits / 8);
}

size_t kw__quant_sb_bytes(const kw_quant_layout *q) {
    const size_t per = (size_t)(1 + q->has_offset), groups = (size_t)(q->superblock / q->group);
    return (size_t)KW_PANEL_ROWS * (per * sizeof(float) + per * groups) +
           (size_t)(q->superblock * KW_PANEL_ROWS * q->code_bits / 8);
}

size_t kw__quant_panel_bytes(const kw_quant_layout *q, int64_t K) {
    if (q->superblock) return (size_t)(K / q->superblock) * kw__quant_sb_bytes(q);
    return (size_t)(K / q->group) * kw__quant_group_bytes(q);
}

int kw__quant_sb_int(float value, float d, int8_t *s) {
    const double guess = d != 0.0f && isfinite(d) ? rint((double)value / (double)d) : 0.0;
    const int first = guess >= -128.0 && guess <= 127.0 ? (int)guess : 0;
    const int tries[4] = {first, 0, 1, -1}; /* the last three: d zero, infinite or NaN, and signed zeros */
    uint32_t want;
    memcpy(&want, &value, 4);
    for (int i = 0; i < 4; ++i) {
        const float v = d * (float)tries[i];
        uint32_t got;
        memcpy(&got, &v, 4);
        if (got == want) {
            *s = (int8_t)tries[i];
            return 0;
        }
    }
    return KW_E_INVALID_ARG;
}

/* Rows a tensor occupies in memory: ne[0], rounded up to whole panels for the panel layouts. */
static int64_t kw_tensor_stored_rows(enum kw_layout layout, int64_t rows) {
    return layout != KW_LAYOUT_ROWS ? (rows + KW_PANEL_ROWS - 1) / KW_PANEL_ROWS * KW_PANEL_ROWS : rows;
}

size_t kw_tensor_nbytes(const kw_tensor *t) {
    kw_quant_layout q;
    if (kw_layout_quant(t->layout, &q))
        return (size_t)(kw_tensor_stored_rows(t->layout, t->ne[0]) / KW_PANEL_ROWS) *
               kw__quant_panel_bytes(&q, t->ne[1]);
    if (t->layout == KW_LAYOUT_PANELS)
        return (size_t)(kw_tensor_stored_rows(t->layout, t->ne[0]) * t->ne[1]) * kw_dtype_size(t->dtype);
    if (t->layout == KW_LAYOUT_PANELS_BF16_PAIRS) /* K padded to even */
        return (size_t)(kw_tensor_stored_rows(t->layout, t->ne[0]) * ((t->ne[1] + 1) & ~(int64_t)1)) *
               kw_dtype_size(t->dtype);
    return (size_t)kw_tensor_nelem(t) * kw_dtype_size(t->dtype);
}

int64_t kw_tensor_nrows(const kw_tensor *t) {
    int64_t n = 1;
    for (int32_t i = 0; i + 1 < t->ndim && i < 4; ++i)
        n *= t->ne[i];
    return n;
}

static int64_t kw_tensor_last(const kw_tensor *t) {
    return t->ne[t->ndim - 1];
}

/* "(2, 3, 4) bf16" for messages. */
static const char *kw_shape_str(const kw_tensor *t, char *buf, size_t size) {
    int n = snprintf(buf, size, "(");
    for (int32_t i = 0; i < t->ndim && i < 4 && n > 0 && (size_t)n < size; ++i)
        n += snprintf(buf + n, size - (size_t)n, i ? ", %lld" : "%lld", (long long)t->ne[i]);
    if (n > 0 && (size_t)n < size) snprintf(buf + n, size - (size_t)n, ") %s", kw_dtype_name(t->dtype));
    return buf;
}

#define KW_SHAPE(t) kw_shape_str((t), (char[96]){0}, 96)

/* Checks a shape in a layout: 1..4 dims (exactly 2 for the panel layouts), each >= 1, element count and byte size
 * (padded rows included) without overflow; a quantized layout holds f32 values and K a multiple of its group. */
static int kw_check_layout_shape(enum kw_dtype dtype, int32_t ndim, const int64_t *ne, enum kw_layout layout,
                                 size_t *nbytes) {
    KW_RETURN_IF((unsigned)dtype >= KW_DTYPE_COUNT, KW_E_INVALID_ARG, "invalid dtype %d", (int)dtype);
    KW_RETURN_IF((unsigned)layout >= KW_LAYOUT_COUNT, KW_E_INVALID_ARG, "invalid layout %d", (int)layout);
    KW_RETURN_IF(ndim < 1 || ndim > 4, KW_E_SHAPE, "tensor rank %d is outside 1..4", (int)ndim);
    KW_RETURN_IF(layout != KW_LAYOUT_ROWS && ndim != 2, KW_E_SHAPE, "a panel-packed tensor has rank 2, not %d",
                 (int)ndim);
    kw_quant_layout q;
    if (kw_layout_quant(layout, &q)) {
        KW_RETURN_IF(dtype != KW_DTYPE_F32, KW_E_INVALID_ARG, "a quantized weight holds f32 values, not %s",
                     kw_dtype_name(dtype));
        const int32_t unit = q.superblock ? q.superblock : q.group;
        KW_RETURN_IF(ne[0] < 1 || ne[1] < 1 || ne[1] % unit != 0, KW_E_SHAPE,
                     "a quantized weight (%lld, %lld) needs K a positive multiple of its group of %d", (long long)ne[0],
                     (long long)ne[1], (int)unit);
        KW_RETURN_IF(ne[0] > INT64_MAX - KW_PANEL_ROWS, KW_E_OVERFLOW, "tensor size overflows");
        size_t n = 0;
        const int64_t panels = (ne[0] + KW_PANEL_ROWS - 1) / KW_PANEL_ROWS;
        const size_t unit_bytes = q.superblock ? kw__quant_sb_bytes(&q) : kw__quant_group_bytes(&q);
        KW_RETURN_IF(kw_size_mul((size_t)panels, (size_t)(ne[1] / unit), &n) < 0 ||
                         kw_size_mul(n, unit_bytes, &n) < 0 || n > (size_t)INT64_MAX,
                     KW_E_OVERFLOW, "tensor size overflows");
        if (nbytes) *nbytes = n;
        return 0;
    }
    KW_RETURN_IF(layout == KW_LAYOUT_PANELS_BF16_PAIRS && dtype != KW_DTYPE_BF16, KW_E_INVALID_ARG,
                 "a PANELS_BF16_PAIRS weight holds bf16 values, not %s", kw_dtype_name(dtype));
    size_t n = kw_dtype_size(dtype);
    for (int32_t i = 0; i < ndim; ++i) {
        size_t d;
        KW_RETURN_IF(ne[i] < 1, KW_E_SHAPE, "dimension %d of a tensor is %lld (must be >= 1)", (int)i,
                     (long long)ne[i]);
        KW_RETURN_IF(ne[i] > INT64_MAX - KW_PANEL_ROWS, KW_E_OVERFLOW, "tensor size overflows");
        int64_t stored = i == 0 ? kw_tensor_stored_rows(layout, ne[0]) : ne[i];
        if (i == 1 && layout == KW_LAYOUT_PANELS_BF16_PAIRS) stored += stored & 1; /* K padded to even */
        KW_RETURN_IF(kw_size_from_i64(stored, &d) < 0 || kw_size_mul(n, d, &n) < 0, KW_E_OVERFLOW,
                     "tensor size overflows");
    }
    KW_RETURN_IF(n > (size_t)INT64_MAX, KW_E_OVERFLOW, "tensor size overflows");
    if (nbytes) *nbytes = n;
    return 0;
}

static int kw_check_shape(enum kw_dtype dtype, int32_t ndim, const int64_t *ne, size_t *nbytes) {
    return kw_check_layout_shape(dtype, ndim, ne, KW_LAYOUT_ROWS, nbytes);
}

/* A tensor argument in any layout: present, allocated on this backend, well-formed. */
static int kw_check_tensor_any_layout(const kw_backend *backend, const kw_tensor *t, const char *op, const char *name) {
    KW_RETURN_IF(t == NULL, KW_E_INVALID_ARG, "%s: tensor %s is NULL", op, name);
    KW_RETURN_IF(t->data == NULL, KW_E_INVALID_ARG, "%s: tensor %s has no data", op, name);
    /* a stream context uses its root's tensors, and a root those of its contexts (they share one device) */
    KW_RETURN_IF(t->backend == NULL || t->backend->root != backend->root, KW_E_INVALID_ARG,
                 "%s: tensor %s belongs to another backend", op, name);
    const int rc = kw_check_layout_shape(t->dtype, t->ndim, t->ne, t->layout, NULL);
    if (rc < 0) KW_FAIL(rc, "%s: tensor %s: %s", op, name, kw_error_detail());
    return 0;
}

/* A row-major tensor argument (every operand but a matmul weight and a get_rows table). */
static int kw_check_tensor(const kw_backend *backend, const kw_tensor *t, const char *op, const char *name) {
    KW_FORWARD(kw_check_tensor_any_layout(backend, t, op, name));
    KW_RETURN_IF(t->layout != KW_LAYOUT_ROWS, KW_E_SHAPE,
                 "%s: tensor %s is a packed matmul weight; only matmul and get_rows read that layout", op, name);
    return 0;
}

static int kw_check_dtype(const kw_tensor *t, enum kw_dtype want, const char *op, const char *name) {
    KW_RETURN_IF(t->dtype != want, KW_E_SHAPE, "%s: %s is %s, needs %s", op, name, KW_SHAPE(t), kw_dtype_name(want));
    return 0;
}

static int kw_check_supported(const kw_backend *backend, enum kw_op op, enum kw_dtype dtype, int have_entry) {
    KW_RETURN_IF(!have_entry || !backend->iface->supports(backend, op, dtype), KW_E_OP_UNSUPPORTED,
                 "backend %s does not support %s with %s", backend->iface->name, kw_op_name(op), kw_dtype_name(dtype));
    return 0;
}

static int kw_check_act(enum kw_act act, const char *op) {
    KW_RETURN_IF((unsigned)act > KW_ACT_TANH, KW_E_INVALID_ARG, "%s: invalid activation %d", op, (int)act);
    return 0;
}

int kw__tensor_alloc_layout(kw_backend *backend, kw_tensor *t, enum kw_dtype dtype, int32_t ndim, const int64_t *ne,
                            enum kw_layout layout) {
    KW_RETURN_IF(backend == NULL || t == NULL || ne == NULL, KW_E_INVALID_ARG, "kw_tensor_alloc: NULL argument");
    size_t nbytes;
    KW_FORWARD(kw_check_layout_shape(dtype, ndim, ne, layout, &nbytes));
    void *data = NULL;
    KW_FORWARD(kw__backend_charge(backend, nbytes, "a tensor"));
    const int weight = layout != KW_LAYOUT_ROWS && backend->iface->alloc_weight != NULL;
    const int rc = (weight ? backend->iface->alloc_weight : backend->iface->alloc)(backend, nbytes, &data);
    if (rc < 0) {
        kw__backend_uncharge(backend, nbytes);
        return rc;
    }
    memset(t, 0, sizeof *t);
    t->backend = backend;
    t->data = data;
    t->dtype = dtype;
    t->ndim = ndim;
    for (int32_t i = 0; i < 4; ++i)
        t->ne[i] = i < ndim ? ne[i] : 1;
    t->owns_data = 1;
    t->layout = layout;
    __atomic_add_fetch(&backend->n_live_allocs, 1, __ATOMIC_RELAXED);
    return 0;
}

int kw_tensor_alloc(kw_backend *backend, kw_tensor *t, enum kw_dtype dtype, int32_t ndim, const int64_t *ne) {
    return kw__tensor_alloc_layout(backend, t, dtype, ndim, ne, KW_LAYOUT_ROWS);
}

int kw_tensor_pack_weight(kw_backend *backend, const kw_tensor *w, kw_tensor *packed) {
    static const char op[] = "kw_tensor_pack_weight";
    KW_RETURN_IF(backend == NULL || packed == NULL, KW_E_INVALID_ARG, "%s: NULL argument", op);
    KW_FORWARD(kw_check_tensor(backend, w, op, "w"));
    KW_RETURN_IF(w->ndim != 2 || !kw_dtype_is_float(w->dtype), KW_E_SHAPE, "%s: w %s must be (N, K) f32/bf16/f16", op,
                 KW_SHAPE(w));
    KW_FORWARD(kw_check_supported(backend, KW_OP_MATMUL, w->dtype, backend->iface->matmul != NULL));
    if (backend->iface->pack_weight == NULL) {
        *packed = *w;
        packed->owns_data = 0;
        return 0;
    }
    return backend->iface->pack_weight(backend, w, packed);
}

int kw_tensor_pack_weight_bf16_pairs(kw_backend *backend, const kw_tensor *w, kw_tensor *packed) {
    static const char op[] = "kw_tensor_pack_weight_bf16_pairs";
    KW_RETURN_IF(backend == NULL || packed == NULL, KW_E_INVALID_ARG, "%s: NULL argument", op);
    KW_FORWARD(kw_check_tensor(backend, w, op, "w"));
    KW_RETURN_IF(w->ndim != 2 || w->dtype != KW_DTYPE_BF16, KW_E_SHAPE, "%s: w %s must be (N, K) bf16", op,
                 KW_SHAPE(w));
    KW_RETURN_IF(backend->iface->pack_bf16_pairs == NULL, KW_E_OP_UNSUPPORTED, "%s: backend %s has no such layout", op,
                 kw_backend_name(backend));
    return backend->iface->pack_bf16_pairs(backend, w, packed);
}

int kw_backend_supports_layout(const kw_backend *backend, enum kw_layout layout) {
    kw_quant_layout q;
    if (backend == NULL) return 0;
    if (layout == KW_LAYOUT_ROWS) return 1;
    if (layout == KW_LAYOUT_PANELS) return backend->iface->pack_weight != NULL;
    if (layout == KW_LAYOUT_PANELS_BF16_PAIRS) return backend->iface->pack_bf16_pairs != NULL;
    const int x8_sb = layout == KW_LAYOUT_QPANELS_U4_SB_X8 || layout == KW_LAYOUT_QPANELS_S8_G16_SB_X8 ||
                      layout == KW_LAYOUT_QPANELS_S6_G16_SB_X8;
    if ((layout == KW_LAYOUT_QPANELS_U4_X8 || layout == KW_LAYOUT_QPANELS_S8_G16_X8 ||
         layout == KW_LAYOUT_QPANELS_S8_X8 || x8_sb) &&
        !backend->iface->int8_activations)
        return 0;
    if ((layout == KW_LAYOUT_QPANELS_U4_SB || layout == KW_LAYOUT_QPANELS_S8_G16_SB ||
         layout == KW_LAYOUT_QPANELS_S6_G16_SB || x8_sb) &&
        !backend->iface->superblocks)
        return 0;
    return kw_layout_quant(layout, &q) && backend->iface->pack_quantized != NULL &&
           backend->iface->supports(backend, KW_OP_MATMUL, KW_DTYPE_F32);
}

/* Checks every code of q against the layout's range. */
static int kw_check_quant_codes(const kw_quant_rows *q, const kw_quant_layout *ql) {
    for (int64_t n = 0; n < q->n; ++n) {
        const int8_t *row = q->codes + n * q->k;
        int8_t lo, hi;
        kw_i8_range(row, q->k, &lo, &hi); /* vectorized; the loop below only finds the code to report */
        if (lo >= ql->code_min && hi <= ql->code_max) continue;
        for (int64_t k = 0; k < q->k; ++k)
            KW_RETURN_IF(row[k] < ql->code_min || row[k] > ql->code_max, KW_E_INVALID_ARG,
                         "kw_tensor_pack_quantized: code %d at (%lld, %lld) is outside %d..%d", (int)row[k],
                         (long long)n, (long long)k, (int)ql->code_min, (int)ql->code_max);
    }
    return 0;
}

int64_t kw_quant_rows_first_non_f16_scale(const kw_quant_rows *q) {
    kw_quant_layout ql;
    kw_layout_quant(q->layout, &ql);
    const int64_t groups = q->n * (q->k / ql.group);
    for (int64_t g = 0; g < groups; ++g) {
        const float s = q->scales[g];
        if (!isnan(s) && kw_f32_bits(kw_round_f16(s)) != kw_f32_bits(s)) return g;
    }
    return -1;
}

/* For a layout with f16 scales: checks that every scale of q is an f16 value. */
static int kw_check_quant_f16(const kw_quant_rows *q, const kw_quant_layout *ql) {
    const int64_t g = kw_quant_rows_first_non_f16_scale(q);
    KW_RETURN_IF(g >= 0, KW_E_INVALID_ARG,
                 "kw_tensor_pack_quantized: scale %a of group %lld (row %lld) is not an f16 value",
                 (double)q->scales[g], (long long)(g % (q->k / ql->group)), (long long)(g / (q->k / ql->group)));
    return 0;
}

/* For a super-block layout: checks that every scale (offset) of q is fl(d * s) (fl(m * o)) for an int8 s (o) and the
 * super-block's d (m), kw__quant_sb_int. */
static int kw_check_quant_sb(const kw_quant_rows *q, const kw_quant_layout *ql) {
    static const char op[] = "kw_tensor_pack_quantized";
    KW_RETURN_IF(q->sb_scales == NULL || (ql->has_offset && q->sb_offsets == NULL), KW_E_INVALID_ARG,
                 "%s: a super-block layout needs the super-blocks' d%s", op, ql->has_offset ? " and m" : "");
    const int64_t groups = q->k / ql->group, per = ql->superblock / ql->group, sbs = q->k / ql->superblock;
    int8_t s;
    float d = 0.0f, m = 0.0f, di = 0.0f, mi = 0.0f; /* the super-block's, and their reciprocals */
    for (int64_t n = 0; n < q->n; ++n)
        for (int64_t g = 0; g < groups; ++g) {
            const int64_t sb = n * sbs + g / per, at = n * groups + g;
            if (g % per == 0) {
                d = q->sb_scales[sb], di = 1.0f / d;
                if (ql->has_offset) m = q->sb_offsets[sb], mi = 1.0f / m;
            }
            KW_RETURN_IF(kw__quant_sb_int_inv(q->scales[at], d, di, &s) < 0 ||
                             (ql->has_offset && kw__quant_sb_int_inv(q->offsets[at], m, mi, &s) < 0),
                         KW_E_INVALID_ARG, "%s: group %lld of row %lld is not an int8 multiple of its super-block's %s",
                         op, (long long)g, (long long)n, ql->has_offset ? "d and m" : "d");
        }
    return 0;
}

int kw_tensor_pack_quantized(kw_backend *backend, const kw_quant_rows *q, kw_tensor *packed) {
    static const char op[] = "kw_tensor_pack_quantized";
    KW_RETURN_IF(backend == NULL || q == NULL || packed == NULL, KW_E_INVALID_ARG, "%s: NULL argument", op);
    kw_quant_layout ql;
    KW_RETURN_IF(!kw_layout_quant(q->layout, &ql), KW_E_INVALID_ARG, "%s: layout %d is not a quantized layout", op,
                 (int)q->layout);
    KW_RETURN_IF(!kw_backend_supports_layout(backend, q->layout), KW_E_OP_UNSUPPORTED,
                 "%s: backend %s keeps no weight quantized", op, backend->iface->name);
    KW_RETURN_IF(q->n < 1 || q->k < 1 || q->k % ql.group != 0, KW_E_SHAPE,
                 "%s: (%lld, %lld): K must be a positive multiple of the group of %d", op, (long long)q->n,
                 (long long)q->k, (int)ql.group);
    KW_RETURN_IF(q->layout == KW_LAYOUT_QPANELS_S8_G16_X8 && q->k % 32 != 0, KW_E_SHAPE,
                 "%s: K %lld is not a multiple of 32, the int8 activations' group", op, (long long)q->k);
    const int64_t ne[2] = {q->n, q->k};
    KW_FORWARD(kw_check_layout_shape(KW_DTYPE_F32, 2, ne, q->layout, NULL)); /* sizes that overflow */
    KW_RETURN_IF(q->codes == NULL || q->scales == NULL, KW_E_INVALID_ARG, "%s: NULL codes or scales", op);
    KW_RETURN_IF((q->offsets != NULL) != (ql.has_offset != 0), KW_E_INVALID_ARG, "%s: the layout %s offsets", op,
                 ql.has_offset ? "needs" : "has no");
    KW_FORWARD(kw_check_quant_codes(q, &ql));
    if (ql.superblock) KW_FORWARD(kw_check_quant_sb(q, &ql));
    if (ql.f16_scales) KW_FORWARD(kw_check_quant_f16(q, &ql));
    return backend->iface->pack_quantized(backend, q, packed);
}

void kw_tensor_free(kw_tensor *t) {
    if (t == NULL) return;
    if (t->owns_data && t->data && t->backend) {
        t->backend->iface->free(t->backend, t->data);
        __atomic_sub_fetch(&t->backend->n_live_allocs, 1, __ATOMIC_RELAXED);
        kw__backend_uncharge(t->backend, kw_tensor_nbytes(t));
    }
    memset(t, 0, sizeof *t);
}

int kw_tensor_from_host(kw_backend *backend, kw_tensor *t, enum kw_dtype dtype, int32_t ndim, const int64_t *ne,
                        const void *host_data) {
    KW_RETURN_IF(backend == NULL || t == NULL || ne == NULL || host_data == NULL, KW_E_INVALID_ARG,
                 "kw_tensor_from_host: NULL argument");
    if (!backend->iface->host_memory) {
        KW_FORWARD(kw_tensor_alloc(backend, t, dtype, ndim, ne));
        const int rc = kw_backend_upload(backend, t, 0, host_data, kw_tensor_nbytes(t));
        if (rc < 0) kw_tensor_free(t);
        return rc;
    }
    KW_FORWARD(kw_check_shape(dtype, ndim, ne, NULL));
    memset(t, 0, sizeof *t);
    t->backend = backend;
    t->data = (void *)(uintptr_t)host_data; /* aliased, never owned; ops write only to their outputs */
    t->dtype = dtype;
    t->ndim = ndim;
    for (int32_t i = 0; i < 4; ++i)
        t->ne[i] = i < ndim ? ne[i] : 1;
    return 0;
}

int kw_tensor_view_rows(const kw_tensor *src, int64_t row0, int64_t nrows, kw_tensor *view) {
    KW_RETURN_IF(src == NULL || view == NULL || src->data == NULL, KW_E_INVALID_ARG, "kw_tensor_view_rows: NULL");
    KW_RETURN_IF(src->layout != KW_LAYOUT_ROWS, KW_E_SHAPE, "kw_tensor_view_rows: a packed weight has no row views");
    KW_FORWARD(kw_check_shape(src->dtype, src->ndim, src->ne, NULL));
    KW_RETURN_IF(row0 < 0 || nrows < 1 || row0 > src->ne[0] || nrows > src->ne[0] - row0, KW_E_SHAPE,
                 "kw_tensor_view_rows: rows [%lld, %lld) outside %s", (long long)row0, (long long)(row0 + nrows),
                 KW_SHAPE(src));
    const size_t row_bytes = kw_tensor_nbytes(src) / (size_t)src->ne[0];
    kw_tensor v = *src;
    v.data = (char *)src->data + (size_t)row0 * row_bytes;
    v.ne[0] = nrows;
    v.owns_data = 0;
    *view = v;
    return 0;
}

int kw_tensor_view_reshape(const kw_tensor *src, int32_t ndim, const int64_t *ne, kw_tensor *view) {
    KW_RETURN_IF(src == NULL || view == NULL || ne == NULL || src->data == NULL, KW_E_INVALID_ARG,
                 "kw_tensor_view_reshape: NULL");
    KW_RETURN_IF(src->layout != KW_LAYOUT_ROWS, KW_E_SHAPE, "kw_tensor_view_reshape: a packed weight cannot be viewed");
    KW_FORWARD(kw_check_shape(src->dtype, ndim, ne, NULL));
    int64_t n = 1;
    for (int32_t i = 0; i < ndim; ++i)
        n *= ne[i];
    KW_RETURN_IF(n != kw_tensor_nelem(src), KW_E_SHAPE, "kw_tensor_view_reshape: %lld elements cannot view %s",
                 (long long)n, KW_SHAPE(src));
    kw_tensor v = *src;
    v.ndim = ndim;
    for (int32_t i = 0; i < 4; ++i)
        v.ne[i] = i < ndim ? ne[i] : 1;
    v.owns_data = 0;
    *view = v;
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------
 * Backend lifetime, errors, transfers
 */

void kw__backend_init(kw_backend *backend, const struct kw_backend_i *iface) {
    memset(backend, 0, sizeof *backend);
    backend->iface = iface;
    backend->root = backend;
    pthread_mutex_init(&backend->mem_lock, NULL);
}

void kw__backend_defer_error(kw_backend *backend, int status, const char *fmt, ...) {
    if (backend->deferred_status != 0) return;
    backend->deferred_status = status;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(backend->deferred_detail, sizeof backend->deferred_detail, fmt, ap);
    va_end(ap);
}

int kw__backend_charge(kw_backend *backend, uint64_t bytes, const char *what) {
    kw_backend *root = backend->root;
    kw_backend_memory *m = &root->mem;
    pthread_mutex_lock(&root->mem_lock);
    const kw_backend_memory now = *m;
    const int fits = now.limit == 0 || (bytes <= now.limit && now.live <= now.limit - bytes);
    if (fits) {
        m->live += bytes;
        if (m->live > m->peak) m->peak = m->live;
    }
    pthread_mutex_unlock(&root->mem_lock);
    KW_RETURN_IF(!fits, KW_E_NOMEM,
                 "%s backend: %s of %llu bytes does not fit its memory limit (%llu of %llu bytes in use)",
                 backend->iface->name, what, (unsigned long long)bytes, (unsigned long long)now.live,
                 (unsigned long long)now.limit);
    return 0;
}

void kw__backend_uncharge(kw_backend *backend, uint64_t bytes) {
    kw_backend *root = backend->root;
    pthread_mutex_lock(&root->mem_lock);
    root->mem.live -= bytes < root->mem.live ? bytes : root->mem.live;
    pthread_mutex_unlock(&root->mem_lock);
}

/* kw_backend_host_alloc memory starts KW_HOST_HEADER bytes into the block, after its size (the header keeps the
 * 64-byte alignment). */
#define KW_HOST_HEADER 64

int kw_backend_host_alloc(kw_backend *backend, size_t size, void **out) {
    KW_RETURN_IF(backend == NULL || out == NULL || size == 0, KW_E_INVALID_ARG, "kw_backend_host_alloc: bad arguments");
    *out = NULL;
    size_t total;
    /* aligned_alloc wants a multiple of the alignment */
    KW_RETURN_IF(kw_size_add(size, KW_HOST_HEADER, &total) < 0 || kw_size_align_up(total, KW_HOST_HEADER, &total) < 0,
                 KW_E_OVERFLOW, "kw_backend_host_alloc: %zu bytes", size);
    void *block = NULL;
    if (backend->iface->host_alloc) {
        KW_FORWARD(backend->iface->host_alloc(backend, total, &block));
    } else {
        block = aligned_alloc(KW_HOST_HEADER, total);
        KW_RETURN_IF(block == NULL, KW_E_NOMEM, "kw_backend_host_alloc: out of memory for %zu bytes", size);
    }
    memcpy(block, &size, sizeof size);
    __atomic_add_fetch(&backend->root->host_bytes, (uint64_t)size, __ATOMIC_RELAXED);
    *out = (char *)block + KW_HOST_HEADER;
    return 0;
}

void kw_backend_host_free(kw_backend *backend, void *p) {
    if (p == NULL) return;
    void *block = (char *)p - KW_HOST_HEADER;
    size_t size;
    memcpy(&size, block, sizeof size);
    __atomic_sub_fetch(&backend->root->host_bytes, (uint64_t)size, __ATOMIC_RELAXED);
    if (backend->iface->host_free)
        backend->iface->host_free(backend, block);
    else
        free(block);
}

uint64_t kw_backend_host_bytes(const kw_backend *backend) {
    return __atomic_load_n(&backend->root->host_bytes, __ATOMIC_RELAXED);
}

void kw_backend_get_memory(const kw_backend *backend, kw_backend_memory *out) {
    kw_backend *root = backend->root;
    pthread_mutex_lock(&root->mem_lock);
    *out = root->mem;
    pthread_mutex_unlock(&root->mem_lock);
}

const char *const kw_backend_kind_names[3] = {"cpu", "cuda", NULL};

/* kw_backend_set_cuda_create's choice (NULL: kw_backend_create_cuda). */
static int (*kw_backend_cuda_create)(int device, kw_backend **out);

void kw_backend_set_cuda_create(int (*create)(int device, kw_backend **out)) {
    kw_backend_cuda_create = create;
}

int kw_backend_create_with(const kw_backend_options *o, kw_backend **out) {
    KW_RETURN_IF(o == NULL || out == NULL, KW_E_INVALID_ARG, "kw_backend_create_with: NULL argument");
    *out = NULL;
    kw_backend *be = NULL;
    if (o->kind == KW_BACKEND_CUDA)
        KW_FORWARD((kw_backend_cuda_create ? kw_backend_cuda_create : kw_backend_create_cuda)(o->device, &be));
    else
        KW_FORWARD(kw_backend_create_cpu(kw_backend_threads_per_worker(o->n_threads, o->n_workers), &be));
    const int rc = kw_backend_set_memory_limit(be, o->memory_limit);
    if (rc < 0) {
        kw_backend_destroy(be);
        return rc;
    }
    *out = be;
    return 0;
}

int kw_backend_set_memory_limit(kw_backend *backend, uint64_t limit) {
    KW_RETURN_IF(backend == NULL, KW_E_INVALID_ARG, "kw_backend_set_memory_limit: NULL backend");
    kw_backend *root = backend->root;
    pthread_mutex_lock(&root->mem_lock);
    const uint64_t live = root->mem.live;
    const int ok = limit == 0 || limit >= live;
    if (ok) root->mem.limit = limit;
    pthread_mutex_unlock(&root->mem_lock);
    KW_RETURN_IF(!ok, KW_E_INVALID_ARG, "%s backend: memory limit %llu below the %llu bytes in use",
                 backend->iface->name, (unsigned long long)limit, (unsigned long long)live);
    return 0;
}

int kw_backend_create_stream(kw_backend *parent, kw_backend **out) {
    KW_RETURN_IF(parent == NULL || out == NULL, KW_E_INVALID_ARG, "kw_backend_create_stream: NULL argument");
    *out = NULL;
    kw_backend *root = parent->root;
    KW_RETURN_IF(root->iface->create_stream == NULL, KW_E_UNSUPPORTED, "the %s backend has no stream contexts",
                 root->iface->name);
    kw_backend *child = NULL;
    KW_FORWARD(root->iface->create_stream(root, &child));
    child->root = root;
    __atomic_add_fetch(&root->n_streams, 1, __ATOMIC_RELAXED);
    *out = child;
    return 0;
}

kw_backend *kw_backend_root(const kw_backend *backend) {
    return backend->root;
}

void kw_backend_destroy(kw_backend *backend) {
    if (backend == NULL) return;
    const int rc = kw_backend_synchronize(backend);
    if (rc < 0) KW_LOG_WARN("kw_backend_destroy(%s): pending error: %s", backend->iface->name, kw_error_detail());
    const int64_t live = __atomic_load_n(&backend->n_live_allocs, __ATOMIC_RELAXED);
    if (live != 0)
        KW_LOG_WARN("kw_backend_destroy(%s): %lld tensors still allocated", backend->iface->name, (long long)live);
    const int64_t streams = __atomic_load_n(&backend->n_streams, __ATOMIC_RELAXED);
    if (streams != 0) /* they would charge freed accounting: a bug of the caller, said loudly */
        KW_LOG_ERROR("kw_backend_destroy(%s): %lld stream contexts still alive (destroy them first)",
                     backend->iface->name, (long long)streams);
    if (backend->root != backend) __atomic_sub_fetch(&backend->root->n_streams, 1, __ATOMIC_RELAXED);
    pthread_mutex_destroy(&backend->mem_lock);
    backend->iface->destroy(backend);
}

enum kw_backend_kind kw_backend_kind(const kw_backend *backend) {
    return backend->iface->kind;
}

const char *kw_backend_name(const kw_backend *backend) {
    return backend->iface->name;
}

int kw_backend_supports(const kw_backend *backend, enum kw_op op, enum kw_dtype dtype) {
    if (backend == NULL || (unsigned)op >= KW_OP_COUNT || (unsigned)dtype >= KW_DTYPE_COUNT) return 0;
    return backend->iface->supports(backend, op, dtype) ? 1 : 0;
}

int kw_backend_synchronize(kw_backend *backend) {
    KW_RETURN_IF(backend == NULL, KW_E_INVALID_ARG, "kw_backend_synchronize: NULL backend");
    const int rc = backend->iface->synchronize(backend);
    if (backend->deferred_status != 0) {
        const int status = backend->deferred_status;
        backend->deferred_status = 0;
        return kw_error_set(status, "%s", backend->deferred_detail);
    }
    return rc;
}

int kw_backend_graph_begin(kw_backend *backend, int64_t base) {
    KW_RETURN_IF(backend == NULL, KW_E_INVALID_ARG, "kw_backend_graph_begin: NULL backend");
    KW_RETURN_IF(base < 0, KW_E_INVALID_ARG, "kw_backend_graph_begin: negative base %lld", (long long)base);
    KW_RETURN_IF(backend->iface->graph_begin == NULL, KW_E_UNSUPPORTED, "the %s backend has no step graphs",
                 backend->iface->name);
    return backend->iface->graph_begin(backend, base);
}

int kw_backend_graph_end(kw_backend *backend, kw_backend_graph **out) {
    KW_RETURN_IF(backend == NULL || out == NULL, KW_E_INVALID_ARG, "kw_backend_graph_end: NULL argument");
    *out = NULL;
    KW_RETURN_IF(backend->iface->graph_end == NULL, KW_E_UNSUPPORTED, "the %s backend has no step graphs",
                 backend->iface->name);
    return backend->iface->graph_end(backend, out);
}

int kw_backend_graph_launch(kw_backend *backend, kw_backend_graph *graph, int64_t base) {
    KW_RETURN_IF(backend == NULL || graph == NULL, KW_E_INVALID_ARG, "kw_backend_graph_launch: NULL argument");
    KW_RETURN_IF(graph->backend != backend, KW_E_INVALID_ARG,
                 "kw_backend_graph_launch: the graph is another backend's");
    KW_RETURN_IF(base < 0, KW_E_INVALID_ARG, "kw_backend_graph_launch: negative base %lld", (long long)base);
    return backend->iface->graph_launch(backend, graph, base);
}

void kw_backend_graph_free(kw_backend_graph *graph) {
    if (graph) graph->backend->iface->graph_free(graph);
}

/* offset + size within t, without overflow. */
static int kw_check_range(const kw_tensor *t, size_t offset, size_t size, const char *what) {
    size_t end;
    KW_RETURN_IF(kw_size_add(offset, size, &end) < 0 || end > kw_tensor_nbytes(t), KW_E_SHAPE,
                 "%s: bytes [%zu, +%zu) outside tensor %s", what, offset, size, KW_SHAPE(t));
    return 0;
}

int kw_backend_upload(kw_backend *backend, kw_tensor *dst, size_t offset, const void *src, size_t size) {
    KW_RETURN_IF(backend == NULL, KW_E_INVALID_ARG, "kw_backend_upload: NULL backend");
    KW_FORWARD(kw_check_tensor(backend, dst, "upload", "dst"));
    KW_FORWARD(kw_check_range(dst, offset, size, "upload"));
    if (size == 0) return 0;
    KW_RETURN_IF(src == NULL, KW_E_INVALID_ARG, "kw_backend_upload: NULL source");
    return backend->iface->upload(backend, (char *)dst->data + offset, src, size);
}

int kw_backend_download(kw_backend *backend, void *dst, const kw_tensor *src, size_t offset, size_t size) {
    KW_RETURN_IF(backend == NULL, KW_E_INVALID_ARG, "kw_backend_download: NULL backend");
    KW_FORWARD(kw_check_tensor(backend, src, "download", "src"));
    KW_FORWARD(kw_check_range(src, offset, size, "download"));
    if (size == 0) return 0;
    KW_RETURN_IF(dst == NULL, KW_E_INVALID_ARG, "kw_backend_download: NULL destination");
    return backend->iface->download(backend, dst, (const char *)src->data + offset, size);
}

int kw_backend_memset_zero(kw_backend *backend, kw_tensor *t) {
    KW_RETURN_IF(backend == NULL, KW_E_INVALID_ARG, "kw_backend_memset_zero: NULL backend");
    KW_FORWARD(kw_check_tensor(backend, t, "memset_zero", "t"));
    return backend->iface->memset_zero(backend, t->data, kw_tensor_nbytes(t));
}

/* ------------------------------------------------------------------------------------------------------------
 * Ops: validation, then dispatch
 */

#define KW_CHECK_BACKEND(op) KW_RETURN_IF(backend == NULL, KW_E_INVALID_ARG, "%s: NULL backend", op)

int kw_op_get_rows(kw_backend *backend, kw_tensor *out, const kw_tensor *table, const kw_tensor *ids) {
    static const char op[] = "get_rows";
    KW_CHECK_BACKEND(op);
    KW_FORWARD(kw_check_tensor(backend, out, op, "out"));
    KW_FORWARD(kw_check_tensor_any_layout(backend, table, op, "table"));
    KW_FORWARD(kw_check_tensor(backend, ids, op, "ids"));
    KW_FORWARD(kw_check_dtype(out, KW_DTYPE_F32, op, "out"));
    KW_FORWARD(kw_check_dtype(ids, KW_DTYPE_I32, op, "ids"));
    KW_RETURN_IF(table->ndim != 2 || !kw_dtype_is_float(table->dtype), KW_E_SHAPE,
                 "%s: table %s must be (V, D) f32/bf16/f16", op, KW_SHAPE(table));
    KW_RETURN_IF(kw_tensor_nrows(out) != kw_tensor_nelem(ids) || kw_tensor_last(out) != table->ne[1], KW_E_SHAPE,
                 "%s: out %s must be (%lld, %lld) for ids %s and table %s", op, KW_SHAPE(out),
                 (long long)kw_tensor_nelem(ids), (long long)table->ne[1], KW_SHAPE(ids), KW_SHAPE(table));
    KW_FORWARD(kw_check_supported(backend, KW_OP_GET_ROWS, table->dtype, backend->iface->get_rows != NULL));
    return backend->iface->get_rows(backend, out, table, ids);
}

/* The checks of kw_op_matmul (and of each weight of kw_op_matmul_shared). */
static int kw_check_matmul(kw_backend *backend, const kw_tensor *out, const kw_tensor *x, const kw_tensor *w,
                           const kw_tensor *bias, const char *op) {
    KW_FORWARD(kw_check_tensor(backend, out, op, "out"));
    KW_FORWARD(kw_check_tensor(backend, x, op, "x"));
    KW_FORWARD(kw_check_tensor_any_layout(backend, w, op, "w"));
    KW_FORWARD(kw_check_dtype(out, KW_DTYPE_F32, op, "out"));
    KW_FORWARD(kw_check_dtype(x, KW_DTYPE_F32, op, "x"));
    KW_RETURN_IF(w->ndim != 2 || !kw_dtype_is_float(w->dtype), KW_E_SHAPE, "%s: w %s must be (N, K) f32/bf16/f16", op,
                 KW_SHAPE(w));
    KW_RETURN_IF(kw_tensor_last(x) != w->ne[1], KW_E_SHAPE, "%s: x %s and w %s disagree on K", op, KW_SHAPE(x),
                 KW_SHAPE(w));
    KW_RETURN_IF(kw_tensor_nrows(out) != kw_tensor_nrows(x) || kw_tensor_last(out) != w->ne[0], KW_E_SHAPE,
                 "%s: out %s must be (%lld, %lld) for x %s and w %s", op, KW_SHAPE(out), (long long)kw_tensor_nrows(x),
                 (long long)w->ne[0], KW_SHAPE(x), KW_SHAPE(w));
    KW_FORWARD(kw_check_supported(backend, KW_OP_MATMUL, w->dtype, backend->iface->matmul != NULL));
    if (bias) {
        KW_FORWARD(kw_check_tensor(backend, bias, op, "bias"));
        KW_RETURN_IF(kw_tensor_nelem(bias) != w->ne[0] || !kw_dtype_is_float(bias->dtype), KW_E_SHAPE,
                     "%s: bias %s must be (%lld) f32/bf16/f16", op, KW_SHAPE(bias), (long long)w->ne[0]);
        KW_FORWARD(kw_check_supported(backend, KW_OP_MATMUL, bias->dtype, 1));
    }
    return 0;
}

int kw_op_matmul(kw_backend *backend, kw_tensor *out, const kw_tensor *x, const kw_tensor *w, const kw_tensor *bias) {
    static const char op[] = "matmul";
    KW_CHECK_BACKEND(op);
    KW_FORWARD(kw_check_matmul(backend, out, x, w, bias, op));
    return backend->iface->matmul(backend, out, x, w, bias);
}

int kw_op_matmul_shared(kw_backend *backend, int n, kw_tensor *const *out, const kw_tensor *x,
                        const kw_tensor *const *w, const kw_tensor *const *bias) {
    static const char op[] = "matmul_shared";
    KW_CHECK_BACKEND(op);
    KW_RETURN_IF(n < 1 || n > KW_MATMUL_SHARED_MAX || out == NULL || w == NULL, KW_E_INVALID_ARG,
                 "%s: %d weights (1..%d) or NULL arrays", op, n, KW_MATMUL_SHARED_MAX);
    for (int i = 0; i < n; ++i) {
        KW_FORWARD(kw_check_matmul(backend, out[i], x, w[i], bias ? bias[i] : NULL, op));
        for (int j = 0; j < i; ++j) /* each output written once: no two may share bytes */
            KW_RETURN_IF((const char *)out[i]->data < (const char *)out[j]->data + kw_tensor_nbytes(out[j]) &&
                             (const char *)out[j]->data < (const char *)out[i]->data + kw_tensor_nbytes(out[i]),
                         KW_E_INVALID_ARG, "%s: out %d and out %d overlap", op, j, i);
    }
    if (backend->iface->matmul_shared) return backend->iface->matmul_shared(backend, n, out, x, w, bias);
    for (int i = 0; i < n; ++i)
        KW_FORWARD(backend->iface->matmul(backend, out[i], x, w[i], bias ? bias[i] : NULL));
    return 0;
}

int kw_op_rms_norm(kw_backend *backend, kw_tensor *out, const kw_tensor *x, const kw_tensor *w, float eps, int flags) {
    static const char op[] = "rms_norm";
    KW_CHECK_BACKEND(op);
    KW_FORWARD(kw_check_tensor(backend, out, op, "out"));
    KW_FORWARD(kw_check_tensor(backend, x, op, "x"));
    KW_FORWARD(kw_check_tensor_any_layout(backend, w, op, "w"));
    KW_FORWARD(kw_check_dtype(out, KW_DTYPE_F32, op, "out"));
    KW_FORWARD(kw_check_dtype(x, KW_DTYPE_F32, op, "x"));
    KW_RETURN_IF(!kw_dtype_is_float(w->dtype) || kw_tensor_nelem(w) != kw_tensor_last(x), KW_E_SHAPE,
                 "%s: w %s must be (%lld) f32/bf16/f16 for x %s", op, KW_SHAPE(w), (long long)kw_tensor_last(x),
                 KW_SHAPE(x));
    KW_RETURN_IF(kw_tensor_nelem(out) != kw_tensor_nelem(x) || kw_tensor_last(out) != kw_tensor_last(x), KW_E_SHAPE,
                 "%s: out %s does not match x %s", op, KW_SHAPE(out), KW_SHAPE(x));
    KW_RETURN_IF(!(eps >= 0.0f) || !isfinite(eps), KW_E_INVALID_ARG, "%s: eps %g must be finite and >= 0", op,
                 (double)eps);
    KW_RETURN_IF(flags != KW_RMS_NORM_PLAIN && flags != KW_RMS_NORM_UNIT_OFFSET, KW_E_INVALID_ARG,
                 "%s: unknown flags 0x%x", op, (unsigned)flags);
    KW_FORWARD(kw_check_supported(backend, KW_OP_RMS_NORM, w->dtype, backend->iface->rms_norm != NULL));
    return backend->iface->rms_norm(backend, out, x, w, eps, flags);
}

static int kw_check_rope_params(const kw_rope_params *p, int64_t head_dim) {
    static const char op[] = "rope";
    KW_RETURN_IF(p == NULL, KW_E_INVALID_ARG, "%s: NULL params", op);
    KW_RETURN_IF(!(p->theta > 0.0) || !isfinite(p->theta), KW_E_INVALID_ARG, "%s: theta %g must be > 0", op, p->theta);
    KW_RETURN_IF(p->rotary_dim < 2 || p->rotary_dim % 2 != 0 || p->rotary_dim > head_dim ||
                     p->rotary_dim > KW_ROPE_MAX_DIM,
                 KW_E_SHAPE, "%s: rotary_dim %d must be even, in [2, min(head_dim %lld, %d)]", op, (int)p->rotary_dim,
                 (long long)head_dim, KW_ROPE_MAX_DIM);
    switch (p->scaling) {
    case KW_ROPE_SCALING_NONE:
        return 0;
    case KW_ROPE_SCALING_LINEAR:
        KW_RETURN_IF(!(p->factor > 0.0) || !isfinite(p->factor), KW_E_INVALID_ARG, "%s: linear factor %g", op,
                     p->factor);
        return 0;
    case KW_ROPE_SCALING_LLAMA3:
        KW_RETURN_IF(!(p->factor > 0.0) || !isfinite(p->factor) || !(p->low_freq_factor > 0.0) ||
                         !(p->high_freq_factor > p->low_freq_factor) || !isfinite(p->high_freq_factor) ||
                         !(p->original_max_position > 0.0) || !isfinite(p->original_max_position),
                     KW_E_INVALID_ARG,
                     "%s: llama3 scaling needs factor > 0, 0 < low_freq_factor < high_freq_factor and "
                     "original_max_position > 0 (got %g, %g, %g, %g)",
                     op, p->factor, p->low_freq_factor, p->high_freq_factor, p->original_max_position);
        return 0;
    }
    KW_FAIL(KW_E_INVALID_ARG, "%s: unknown scaling %d", op, (int)p->scaling);
}

int kw_op_rope(kw_backend *backend, kw_tensor *x, const kw_tensor *pos, const kw_rope_params *params) {
    static const char op[] = "rope";
    KW_CHECK_BACKEND(op);
    KW_FORWARD(kw_check_tensor(backend, x, op, "x"));
    KW_FORWARD(kw_check_tensor(backend, pos, op, "pos"));
    KW_FORWARD(kw_check_dtype(x, KW_DTYPE_F32, op, "x"));
    KW_FORWARD(kw_check_dtype(pos, KW_DTYPE_I32, op, "pos"));
    KW_RETURN_IF(x->ndim != 3, KW_E_SHAPE, "%s: x %s must be (T, H, D)", op, KW_SHAPE(x));
    KW_RETURN_IF(kw_tensor_nelem(pos) != x->ne[0], KW_E_SHAPE, "%s: pos %s must hold %lld positions", op, KW_SHAPE(pos),
                 (long long)x->ne[0]);
    KW_FORWARD(kw_check_rope_params(params, x->ne[2]));
    KW_FORWARD(kw_check_supported(backend, KW_OP_ROPE, KW_DTYPE_F32, backend->iface->rope != NULL));
    return backend->iface->rope(backend, x, pos, params);
}

int kw_op_rope_table(kw_backend *backend, kw_tensor *x, const kw_tensor *table) {
    static const char op[] = "rope_table";
    KW_CHECK_BACKEND(op);
    KW_FORWARD(kw_check_tensor(backend, x, op, "x"));
    KW_FORWARD(kw_check_tensor(backend, table, op, "table"));
    KW_FORWARD(kw_check_dtype(x, KW_DTYPE_F32, op, "x"));
    KW_FORWARD(kw_check_dtype(table, KW_DTYPE_F32, op, "table"));
    KW_RETURN_IF(x->ndim != 3 || table->ndim != 3 || table->ne[0] != x->ne[0] || table->ne[2] != 2 ||
                     table->ne[1] < 1 || 2 * table->ne[1] > x->ne[2],
                 KW_E_SHAPE, "%s: table %s must be (T, half, 2) with 2 half <= D for x %s (T, H, D)", op,
                 KW_SHAPE(table), KW_SHAPE(x));
    KW_FORWARD(kw_check_supported(backend, KW_OP_ROPE, KW_DTYPE_F32, backend->iface->rope_table != NULL));
    return backend->iface->rope_table(backend, x, table);
}

/* The shape and parameter checks of attention over a cache of Hkv heads, cap rows of cache_D dims. */
static int kw_check_attention_shape(const kw_backend *backend, const char *op, const kw_tensor *q, int64_t Hkv,
                                    int64_t cap, int64_t cache_D, const kw_attention_params *params) {
    const int64_t T = q->ne[0], Hq = q->ne[1], D = q->ne[2];
    KW_RETURN_IF(cache_D != D, KW_E_SHAPE, "%s: cache head dim %lld differs from q %s", op, (long long)cache_D,
                 KW_SHAPE(q));
    KW_RETURN_IF(D > KW_ATTENTION_MAX_HEAD_DIM, KW_E_SHAPE, "%s: head dim %lld exceeds %d", op, (long long)D,
                 KW_ATTENTION_MAX_HEAD_DIM);
    KW_RETURN_IF(Hq % Hkv != 0, KW_E_SHAPE, "%s: %lld query heads are not a multiple of %lld kv heads", op,
                 (long long)Hq, (long long)Hkv);
    KW_RETURN_IF(params->q_pos0 < 0 || params->n_kv > cap || params->q_pos0 > params->n_kv - T, KW_E_SHAPE,
                 "%s: need 0 <= q_pos0 (%lld), q_pos0 + T (%lld) <= n_kv (%lld) <= cap (%lld)", op,
                 (long long)params->q_pos0, (long long)(params->q_pos0 + T), (long long)params->n_kv, (long long)cap);
    KW_RETURN_IF(params->sliding_window < 0, KW_E_INVALID_ARG, "%s: sliding_window %lld < 0", op,
                 (long long)params->sliding_window);
    KW_RETURN_IF(!isfinite(params->scale), KW_E_INVALID_ARG, "%s: scale is not finite", op);
    if (params->kv_mask) {
        KW_FORWARD(kw_check_tensor(backend, params->kv_mask, op, "kv_mask"));
        KW_RETURN_IF(params->kv_mask->dtype != KW_DTYPE_U8 || kw_tensor_nelem(params->kv_mask) < params->n_kv,
                     KW_E_SHAPE, "%s: kv_mask %s must be u8 with at least n_kv = %lld entries", op,
                     KW_SHAPE(params->kv_mask), (long long)params->n_kv);
    }
    return 0;
}

int kw_op_attention(kw_backend *backend, kw_tensor *out, const kw_tensor *q, const kw_tensor *k_cache,
                    const kw_tensor *v_cache, const kw_attention_params *params) {
    static const char op[] = "attention";
    KW_CHECK_BACKEND(op);
    KW_FORWARD(kw_check_tensor(backend, out, op, "out"));
    KW_FORWARD(kw_check_tensor(backend, q, op, "q"));
    KW_FORWARD(kw_check_tensor(backend, k_cache, op, "k_cache"));
    KW_FORWARD(kw_check_tensor(backend, v_cache, op, "v_cache"));
    KW_RETURN_IF(params == NULL, KW_E_INVALID_ARG, "%s: NULL params", op);
    KW_FORWARD(kw_check_dtype(out, KW_DTYPE_F32, op, "out"));
    KW_FORWARD(kw_check_dtype(q, KW_DTYPE_F32, op, "q"));
    KW_RETURN_IF(q->ndim != 3 || out->ndim != 3 || memcmp(q->ne, out->ne, sizeof q->ne) != 0, KW_E_SHAPE,
                 "%s: q %s and out %s must both be (T, Hq, D)", op, KW_SHAPE(q), KW_SHAPE(out));
    KW_RETURN_IF(k_cache->ndim != 3 || v_cache->ndim != 3 || k_cache->dtype != v_cache->dtype ||
                     memcmp(k_cache->ne, v_cache->ne, sizeof k_cache->ne) != 0,
                 KW_E_SHAPE, "%s: k_cache %s and v_cache %s must both be (Hkv, cap, D) of one dtype", op,
                 KW_SHAPE(k_cache), KW_SHAPE(v_cache));
    KW_FORWARD(kw_check_attention_shape(backend, op, q, k_cache->ne[0], k_cache->ne[1], k_cache->ne[2], params));
    KW_FORWARD(kw_check_supported(backend, KW_OP_ATTENTION, k_cache->dtype, backend->iface->attention != NULL));
    return backend->iface->attention(backend, out, q, k_cache, v_cache, params);
}

/* The checks kv_store and kv_load share (after the backend's): cache (H, cap, D) and rows (T, H, D) f32 on this
 * backend, pos0 + T <= cap, the cache dtype on the whitelist. */
static int kw_check_kv_op(const kw_backend *backend, enum kw_op id, const kw_tensor *cache, const kw_tensor *rows,
                          int64_t pos0, int have_entry) {
    const char *op = kw_op_name(id);
    KW_FORWARD(
        kw_check_tensor(backend, id == KW_OP_KV_STORE ? cache : rows, op, id == KW_OP_KV_STORE ? "cache" : "out"));
    KW_FORWARD(
        kw_check_tensor(backend, id == KW_OP_KV_STORE ? rows : cache, op, id == KW_OP_KV_STORE ? "src" : "cache"));
    KW_FORWARD(kw_check_dtype(rows, KW_DTYPE_F32, op, "rows"));
    KW_RETURN_IF(cache->ndim != 3 || rows->ndim != 3 || rows->ne[1] != cache->ne[0] || rows->ne[2] != cache->ne[2],
                 KW_E_SHAPE, "%s: cache %s must be (H, cap, D) and rows %s (T, H, D)", op, KW_SHAPE(cache),
                 KW_SHAPE(rows));
    KW_RETURN_IF(pos0 < 0 || pos0 > cache->ne[1] - rows->ne[0], KW_E_SHAPE,
                 "%s: rows [%lld, %lld) outside the cache capacity %lld", op, (long long)pos0,
                 (long long)(pos0 + rows->ne[0]), (long long)cache->ne[1]);
    return kw_check_supported(backend, id, cache->dtype, have_entry);
}

int kw_op_kv_store(kw_backend *backend, kw_tensor *cache, const kw_tensor *src, int64_t pos0) {
    KW_CHECK_BACKEND("kv_store");
    KW_FORWARD(kw_check_kv_op(backend, KW_OP_KV_STORE, cache, src, pos0, backend->iface->kv_store != NULL));
    return backend->iface->kv_store(backend, cache, src, pos0);
}

int kw_op_kv_load(kw_backend *backend, kw_tensor *out, const kw_tensor *cache, int64_t pos0) {
    KW_CHECK_BACKEND("kv_load");
    KW_FORWARD(kw_check_kv_op(backend, KW_OP_KV_LOAD, cache, out, pos0, backend->iface->kv_load != NULL));
    return backend->iface->kv_load(backend, out, cache, pos0);
}

/* out and every input f32 with the same element count. */
static int kw_check_elementwise(const kw_backend *backend, const kw_tensor *out, const kw_tensor *a, const kw_tensor *b,
                                const char *op) {
    KW_FORWARD(kw_check_tensor(backend, out, op, "out"));
    KW_FORWARD(kw_check_tensor(backend, a, op, "a"));
    KW_FORWARD(kw_check_dtype(out, KW_DTYPE_F32, op, "out"));
    KW_FORWARD(kw_check_dtype(a, KW_DTYPE_F32, op, "input"));
    KW_RETURN_IF(kw_tensor_nelem(out) != kw_tensor_nelem(a), KW_E_SHAPE, "%s: out %s and input %s differ in size", op,
                 KW_SHAPE(out), KW_SHAPE(a));
    if (b) {
        KW_FORWARD(kw_check_tensor(backend, b, op, "b"));
        KW_FORWARD(kw_check_dtype(b, KW_DTYPE_F32, op, "input"));
        KW_RETURN_IF(kw_tensor_nelem(b) != kw_tensor_nelem(a), KW_E_SHAPE, "%s: inputs %s and %s differ in size", op,
                     KW_SHAPE(a), KW_SHAPE(b));
    }
    return 0;
}

/* The checks of the f32 elementwise ops (after the backend's): kw_check_elementwise over out, a and, for the binary
 * ones (glu, add), b; a valid activation for glu and unary; equal row lengths for softmax; f32 on the whitelist. */
static int kw_check_f32_op(const kw_backend *backend, enum kw_op id, const kw_tensor *out, const kw_tensor *a,
                           const kw_tensor *b, enum kw_act act, int have_entry) {
    const char *op = kw_op_name(id);
    const int binary = id == KW_OP_GLU || id == KW_OP_ADD;
    KW_RETURN_IF(binary && b == NULL, KW_E_INVALID_ARG, "%s: tensor %s is NULL", op, id == KW_OP_GLU ? "up" : "b");
    KW_FORWARD(kw_check_elementwise(backend, out, a, binary ? b : NULL, op));
    if (id == KW_OP_GLU || id == KW_OP_UNARY) KW_FORWARD(kw_check_act(act, op));
    KW_RETURN_IF(id == KW_OP_SOFTMAX && kw_tensor_last(out) != kw_tensor_last(a), KW_E_SHAPE,
                 "%s: out %s and x %s differ in row length", op, KW_SHAPE(out), KW_SHAPE(a));
    return kw_check_supported(backend, id, KW_DTYPE_F32, have_entry);
}

int kw_op_glu(kw_backend *backend, kw_tensor *out, const kw_tensor *gate, const kw_tensor *up, enum kw_act act) {
    KW_CHECK_BACKEND("glu");
    KW_FORWARD(kw_check_f32_op(backend, KW_OP_GLU, out, gate, up, act, backend->iface->glu != NULL));
    return backend->iface->glu(backend, out, gate, up, act);
}

int kw_op_unary(kw_backend *backend, kw_tensor *out, const kw_tensor *x, enum kw_act act) {
    KW_CHECK_BACKEND("unary");
    KW_FORWARD(kw_check_f32_op(backend, KW_OP_UNARY, out, x, NULL, act, backend->iface->unary != NULL));
    return backend->iface->unary(backend, out, x, act);
}

int kw_op_add(kw_backend *backend, kw_tensor *out, const kw_tensor *a, const kw_tensor *b) {
    KW_CHECK_BACKEND("add");
    KW_FORWARD(kw_check_f32_op(backend, KW_OP_ADD, out, a, b, KW_ACT_IDENTITY, backend->iface->add != NULL));
    return backend->iface->add(backend, out, a, b);
}

int kw_op_scale(kw_backend *backend, kw_tensor *out, const kw_tensor *x, float s) {
    KW_CHECK_BACKEND("scale");
    KW_FORWARD(kw_check_f32_op(backend, KW_OP_SCALE, out, x, NULL, KW_ACT_IDENTITY, backend->iface->scale != NULL));
    return backend->iface->scale(backend, out, x, s);
}

int kw_op_softmax(kw_backend *backend, kw_tensor *out, const kw_tensor *x) {
    KW_CHECK_BACKEND("softmax");
    KW_FORWARD(kw_check_f32_op(backend, KW_OP_SOFTMAX, out, x, NULL, KW_ACT_IDENTITY, backend->iface->softmax != NULL));
    return backend->iface->softmax(backend, out, x);
}

int kw_op_argmax(kw_backend *backend, kw_tensor *out, const kw_tensor *x, int flags) {
    static const char op[] = "argmax";
    KW_CHECK_BACKEND(op);
    KW_FORWARD(kw_check_tensor(backend, out, op, "out"));
    KW_FORWARD(kw_check_tensor(backend, x, op, "x"));
    KW_FORWARD(kw_check_dtype(out, KW_DTYPE_I32, op, "out"));
    KW_FORWARD(kw_check_dtype(x, KW_DTYPE_F32, op, "x"));
    KW_RETURN_IF(kw_tensor_nelem(out) != kw_tensor_nrows(x), KW_E_SHAPE, "%s: out %s must hold one index per row of %s",
                 op, KW_SHAPE(out), KW_SHAPE(x));
    KW_RETURN_IF(kw_tensor_last(x) > INT32_MAX, KW_E_SHAPE, "%s: rows of x %s are too long for i32 indices", op,
                 KW_SHAPE(x));
    KW_RETURN_IF(flags != KW_ARGMAX_PLAIN && flags != KW_ARGMAX_ROUND_BF16, KW_E_INVALID_ARG, "%s: unknown flags 0x%x",
                 op, (unsigned)flags);
    KW_FORWARD(kw_check_supported(backend, KW_OP_ARGMAX, KW_DTYPE_F32, backend->iface->argmax != NULL));
    return backend->iface->argmax(backend, out, x, flags);
}

int kw_op_copy(kw_backend *backend, kw_tensor *dst, const kw_tensor *src) {
    static const char op[] = "copy";
    KW_CHECK_BACKEND(op);
    KW_FORWARD(kw_check_tensor(backend, dst, op, "dst"));
    KW_FORWARD(kw_check_tensor(backend, src, op, "src"));
    KW_RETURN_IF(kw_tensor_nelem(dst) != kw_tensor_nelem(src), KW_E_SHAPE, "%s: dst %s and src %s differ in size", op,
                 KW_SHAPE(dst), KW_SHAPE(src));
    KW_RETURN_IF(dst->dtype != src->dtype && !(kw_dtype_is_float(dst->dtype) && kw_dtype_is_float(src->dtype)),
                 KW_E_SHAPE, "%s: cannot convert %s to %s", op, KW_SHAPE(src), KW_SHAPE(dst));
    KW_FORWARD(kw_check_supported(backend, KW_OP_COPY, dst->dtype, backend->iface->copy != NULL));
    KW_FORWARD(kw_check_supported(backend, KW_OP_COPY, src->dtype, 1));
    return backend->iface->copy(backend, dst, src);
}

int kw_op_head_scale_add(kw_backend *backend, kw_tensor *out, const kw_tensor *base, const kw_tensor *x,
                         const kw_tensor *w, float g) {
    static const char op[] = "head_scale_add";
    KW_CHECK_BACKEND(op);
    KW_RETURN_IF(x == NULL || w == NULL, KW_E_INVALID_ARG, "%s: tensor x or w is NULL", op);
    KW_FORWARD(kw_check_elementwise(backend, out, base, x, op));
    KW_FORWARD(kw_check_tensor(backend, w, op, "w"));
    KW_FORWARD(kw_check_dtype(w, KW_DTYPE_F32, op, "w"));
    KW_RETURN_IF(base->ndim != 3 || memcmp(base->ne, x->ne, sizeof x->ne) != 0 ||
                     kw_tensor_nelem(w) != kw_tensor_nrows(x),
                 KW_E_SHAPE, "%s: base %s and x %s must be (T, H, D) and w %s hold T * H values", op, KW_SHAPE(base),
                 KW_SHAPE(x), KW_SHAPE(w));
    KW_RETURN_IF(!isfinite(g), KW_E_INVALID_ARG, "%s: g is not finite", op);
    KW_FORWARD(kw_check_supported(backend, KW_OP_HEAD_SCALE_ADD, KW_DTYPE_F32, backend->iface->head_scale_add != NULL));
    return backend->iface->head_scale_add(backend, out, base, x, w, g);
}

/* ------------------------------------------------------------------------------------------------------------
 * RoPE frequencies, as transformers 4.52 computes them (modeling_rope_utils.py), every step in fp32:
 *   default: inv_freq = 1.0 / (base ** (arange(0, dim, 2).float() / dim))
 *   linear:  inv_freq / factor (the "linear" type divides positions by factor; the product is the same angle up to
 *            one rounding, and HF itself applies it to inv_freq)
 *   llama3:  wavelen = 2*pi / inv_freq; low-frequency bands divided by factor, a smooth blend in between.
 * Python scalars combined with fp32 tensors are rounded to fp32 first, as torch does.
 */

void kw__rope_inv_freq(const kw_rope_params *params, float *inv_freq) {
    const int32_t dim = params->rotary_dim;
    const float base = (float)params->theta;
    for (int32_t i = 0; i < dim / 2; ++i) {
        const float exponent = (float)(2 * i) / (float)dim;
        /* torch.pow(fp32 scalar, fp32 tensor) is Sleef's powf on CPU (within 1 ulp, not always correctly
         * rounded); the correctly rounded power is the closest portable choice (it differs from torch in at most
         * one ulp of a few frequencies, an angle error below 1e-5 rad at position 40960) */
        const float denom = (float)pow((double)base, (double)exponent);
        inv_freq[i] = 1.0f / denom;
    }
    if (params->scaling == KW_ROPE_SCALING_LINEAR) {
        const float factor = (float)params->factor;
        for (int32_t i = 0; i < dim / 2; ++i)
            inv_freq[i] = inv_freq[i] / factor;
    } else if (params->scaling == KW_ROPE_SCALING_LLAMA3) {
        const float factor = (float)params->factor;
        const float low = (float)params->low_freq_factor;
        const float old_len = (float)params->original_max_position;
        /* python floats: low_freq_wavelen = old_len / low, high_freq_wavelen = old_len / high (double), compared
         * with fp32 tensors after rounding to fp32 */
        const float low_freq_wavelen = (float)(params->original_max_position / params->low_freq_factor);
        const float high_freq_wavelen = (float)(params->original_max_position / params->high_freq_factor);
        const float two_pi = (float)(2.0 * 3.14159265358979323846);
        const float band = (float)(params->high_freq_factor - params->low_freq_factor);
        for (int32_t i = 0; i < dim / 2; ++i) {
            const float f = inv_freq[i];
            /* `scalar / tensor` is tensor.reciprocal() * scalar in torch */
            const float wavelen = (1.0f / f) * two_pi;
            const float f_llama = wavelen > low_freq_wavelen ? f / factor : f;
            const float smooth = ((1.0f / wavelen) * old_len - low) / band;
            const float smoothed = (1.0f - smooth) * f_llama / factor + smooth * f_llama;
            const int medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
            inv_freq[i] = medium ? smoothed : f_llama;
        }
    }
}

#ifndef KW_HAVE_CUDA
/* Built without the CUDA toolkit: kernels/cuda is not compiled and this is the whole CUDA backend. */
int kw_backend_create_cuda(int device, kw_backend **out) {
    (void)device;
    if (out) *out = NULL;
    KW_FAIL(KW_E_UNSUPPORTED, "kvwire was built without CUDA");
}
#endif

/* ------------------------------------------------------------------------------------------------------------
 * The paged quantized KV cache
 */

int kw_kvq_bytes(const kw_kvq_geom *g, size_t *out) {
    KW_RETURN_IF(!g || !out, KW_E_INVALID_ARG, "kvq: NULL argument");
    KW_RETURN_IF(g->codec != KW_KVQ_INT8 && g->codec != KW_KVQ_INT6 && g->codec != KW_KVQ_INT4, KW_E_INVALID_ARG,
                 "kvq: unknown codec %d", (int)g->codec);
    KW_RETURN_IF(g->H <= 0 || g->cap <= 0 || g->D <= 0 || g->D % 16 != 0 || g->D > KW_ATTENTION_MAX_HEAD_DIM ||
                     g->page_tokens < 16 || g->page_tokens > 4096 || g->page_tokens % 16 != 0,
                 KW_E_INVALID_ARG, "kvq: bad geometry (H %lld, cap %lld, D %lld (a multiple of 16), page %d)",
                 (long long)g->H, (long long)g->cap, (long long)g->D, (int)g->page_tokens);
    KW_RETURN_IF(g->cap > ((int64_t)1 << 40) || g->H > ((int64_t)1 << 16), KW_E_OVERFLOW,
                 "kvq: %lld heads of %lld rows is too large", (long long)g->H, (long long)g->cap);
    size_t bytes;
    KW_RETURN_IF(kw_size_mul((size_t)g->H, kw_kvq_head_bytes(g), &bytes) < 0, KW_E_OVERFLOW, "kvq: size overflows");
    *out = bytes;
    return 0;
}

int kw_backend_supports_kvq(const kw_backend *backend) {
    return backend != NULL && backend->iface->attention_kvq != NULL;
}

/* A storage tensor of g on this backend: u8, as many bytes as kw_kvq_bytes says, and a backend with the ops. */
static int kw_check_kvq_store(const kw_backend *backend, const kw_tensor *store, const kw_kvq_geom *g, int64_t n_rows,
                              const char *op) {
    size_t bytes;
    KW_FORWARD(kw_check_tensor(backend, store, op, "store"));
    KW_FORWARD(kw_kvq_bytes(g, &bytes));
    KW_RETURN_IF(store->dtype != KW_DTYPE_U8 || kw_tensor_nbytes(store) != bytes, KW_E_SHAPE,
                 "%s: store %s must be u8 of %zu bytes", op, KW_SHAPE(store), bytes);
    KW_RETURN_IF(n_rows < 0 || n_rows > g->cap, KW_E_SHAPE, "%s: %lld rows stored, capacity %lld", op,
                 (long long)n_rows, (long long)g->cap);
    KW_RETURN_IF(!kw_backend_supports_kvq(backend), KW_E_OP_UNSUPPORTED, "%s: backend %s has no quantized KV cache", op,
                 kw_backend_name(backend));
    return 0;
}

/* rows (T, H, D) f32 matching g. */
static int kw_check_kvq_rows(const kw_backend *backend, const kw_tensor *rows, const kw_kvq_geom *g, const char *op) {
    KW_FORWARD(kw_check_tensor(backend, rows, op, "rows"));
    KW_FORWARD(kw_check_dtype(rows, KW_DTYPE_F32, op, "rows"));
    KW_RETURN_IF(rows->ndim != 3 || rows->ne[1] != g->H || rows->ne[2] != g->D, KW_E_SHAPE,
                 "%s: rows %s must be (T, %lld, %lld)", op, KW_SHAPE(rows), (long long)g->H, (long long)g->D);
    return 0;
}

int kw_op_kvq_store(kw_backend *backend, kw_tensor *store, const kw_kvq_geom *g, const kw_tensor *src, int64_t pos0,
                    int64_t n_rows) {
    static const char op[] = "kvq_store";
    KW_CHECK_BACKEND(op);
    KW_FORWARD(kw_check_kvq_store(backend, store, g, n_rows, op));
    KW_FORWARD(kw_check_kvq_rows(backend, src, g, op));
    KW_RETURN_IF(pos0 < 0 || pos0 > n_rows || src->ne[0] > g->cap - pos0, KW_E_SHAPE,
                 "%s: rows [%lld, +%lld) with %lld stored, capacity %lld", op, (long long)pos0, (long long)src->ne[0],
                 (long long)n_rows, (long long)g->cap);
    return backend->iface->kvq_store(backend, store, g, src, pos0, n_rows);
}

int kw_op_kvq_load(kw_backend *backend, kw_tensor *out, const kw_tensor *store, const kw_kvq_geom *g, int64_t pos0,
                   int64_t n_rows) {
    static const char op[] = "kvq_load";
    KW_CHECK_BACKEND(op);
    KW_FORWARD(kw_check_kvq_store(backend, store, g, n_rows, op));
    KW_FORWARD(kw_check_kvq_rows(backend, out, g, op));
    KW_RETURN_IF(pos0 < 0 || out->ne[0] > n_rows - pos0, KW_E_SHAPE, "%s: rows [%lld, +%lld) beyond %lld stored", op,
                 (long long)pos0, (long long)out->ne[0], (long long)n_rows);
    return backend->iface->kvq_load(backend, out, store, g, pos0, n_rows);
}

int kw_op_kvq_truncate(kw_backend *backend, kw_tensor *store, const kw_kvq_geom *g, int64_t n_rows, int64_t new_rows) {
    static const char op[] = "kvq_truncate";
    KW_CHECK_BACKEND(op);
    KW_FORWARD(kw_check_kvq_store(backend, store, g, n_rows, op));
    KW_RETURN_IF(new_rows < 0 || new_rows > n_rows, KW_E_SHAPE, "%s: %lld rows to %lld", op, (long long)n_rows,
                 (long long)new_rows);
    return backend->iface->kvq_truncate(backend, store, g, n_rows, new_rows);
}

int kw_op_attention_kvq(kw_backend *backend, kw_tensor *out, const kw_tensor *q, const kw_tensor *k_store,
                        const kw_kvq_geom *kg, const kw_tensor *v_store, const kw_kvq_geom *vg,
                        const kw_attention_params *params, int64_t n_rows) {
    static const char op[] = "attention_kvq";
    KW_CHECK_BACKEND(op);
    KW_RETURN_IF(!kg || !vg || !params, KW_E_INVALID_ARG, "%s: NULL argument", op);
    KW_FORWARD(kw_check_kvq_store(backend, k_store, kg, n_rows, op));
    KW_FORWARD(kw_check_kvq_store(backend, v_store, vg, n_rows, op));
    KW_RETURN_IF(!kg->keys || vg->keys || kg->H != vg->H || kg->cap != vg->cap || kg->D != vg->D, KW_E_SHAPE,
                 "%s: need a key and a value storage of one shape", op);
    KW_FORWARD(kw_check_tensor(backend, out, op, "out"));
    KW_FORWARD(kw_check_tensor(backend, q, op, "q"));
    KW_FORWARD(kw_check_dtype(out, KW_DTYPE_F32, op, "out"));
    KW_FORWARD(kw_check_dtype(q, KW_DTYPE_F32, op, "q"));
    KW_RETURN_IF(q->ndim != 3 || out->ndim != 3 || memcmp(q->ne, out->ne, sizeof q->ne) != 0, KW_E_SHAPE,
                 "%s: q %s and out %s must both be (T, Hq, D)", op, KW_SHAPE(q), KW_SHAPE(out));
    KW_FORWARD(kw_check_attention_shape(backend, op, q, kg->H, kg->cap, kg->D, params));
    KW_RETURN_IF(params->n_kv > n_rows, KW_E_SHAPE, "%s: n_kv %lld beyond the %lld rows stored", op,
                 (long long)params->n_kv, (long long)n_rows);
    return backend->iface->attention_kvq(backend, out, q, k_store, kg, v_store, vg, params, n_rows);
}

/* ------------------------------------------------------------------------------------------------------------
 * The sharer's device work
 */

int kw_backend_supports_share(const kw_backend *backend) {
    return backend != NULL && backend->iface->wire_encode != NULL;
}

#define KW_CHECK_SHARE(op)                                                                                             \
    KW_CHECK_BACKEND(op);                                                                                              \
    KW_RETURN_IF(!kw_backend_supports_share(backend), KW_E_OP_UNSUPPORTED, "backend %s has no %s",                     \
                 backend->iface->name, op)

/* A row-major tensor of this backend with this dtype. */
static int kw_check_typed(const kw_backend *backend, const kw_tensor *t, enum kw_dtype dtype, const char *op,
                          const char *name) {
    KW_FORWARD(kw_check_tensor(backend, t, op, name));
    return kw_check_dtype(t, dtype, op, name);
}

/* A dense cache tensor (H, cap, D) f32/bf16. */
static int kw_check_share_cache(const kw_backend *backend, const kw_tensor *cache, const char *op) {
    KW_FORWARD(kw_check_tensor(backend, cache, op, "cache"));
    KW_RETURN_IF(cache->ndim != 3 || (cache->dtype != KW_DTYPE_F32 && cache->dtype != KW_DTYPE_BF16), KW_E_SHAPE,
                 "%s: cache %s must be (H, cap, D) f32 or bf16", op, KW_SHAPE(cache));
    return 0;
}

int kw_op_select_scores(kw_backend *backend, kw_tensor *score, const kw_tensor *cache, int64_t pos0) {
    static const char op[] = "select_scores";
    KW_CHECK_SHARE(op);
    KW_FORWARD(kw_check_share_cache(backend, cache, op));
    KW_FORWARD(kw_check_typed(backend, score, KW_DTYPE_F32, op, "score"));
    const int64_t T = kw_tensor_nelem(score);
    KW_RETURN_IF(cache->ne[0] > 256 || pos0 < 0 || T > cache->ne[1] - pos0, KW_E_SHAPE,
                 "%s: rows [%lld, +%lld) of cache %s (at most 256 heads)", op, (long long)pos0, (long long)T,
                 KW_SHAPE(cache));
    return backend->iface->select_scores(backend, score, cache, pos0);
}

int kw_op_select_topk(kw_backend *backend, kw_tensor *out, kw_tensor *count, const kw_tensor *score, int64_t k) {
    static const char op[] = "select_topk";
    KW_CHECK_SHARE(op);
    KW_FORWARD(kw_check_typed(backend, out, KW_DTYPE_I32, op, "out"));
    KW_FORWARD(kw_check_typed(backend, count, KW_DTYPE_I32, op, "count"));
    KW_FORWARD(kw_check_typed(backend, score, KW_DTYPE_F32, op, "score"));
    KW_RETURN_IF(kw_tensor_nelem(out) != kw_tensor_nelem(score) || kw_tensor_nelem(count) != 1 || k < 0 ||
                     kw_tensor_nelem(score) > (int64_t)UINT32_MAX,
                 KW_E_SHAPE, "%s: out %s, count %s, score %s, k %lld", op, KW_SHAPE(out), KW_SHAPE(count),
                 KW_SHAPE(score), (long long)k);
    return backend->iface->select_topk(backend, out, count, score, k);
}

int kw_backend_wire_sizes_clip(const kw_backend *backend, const kw_wire_op_spec *spec, int clip, uint32_t H, uint32_t T,
                               uint32_t D, uint64_t *tensor_bytes, uint64_t *work_bytes) {
    static const char op[] = "wire_sizes";
    KW_CHECK_SHARE(op);
    KW_RETURN_IF(spec == NULL || tensor_bytes == NULL || work_bytes == NULL, KW_E_INVALID_ARG, "%s: NULL argument", op);
    return backend->iface->wire_sizes(spec, clip ? 1 : 0, H, T, D, tensor_bytes, work_bytes);
}

int kw_backend_wire_sizes(const kw_backend *backend, const kw_wire_op_spec *spec, uint32_t H, uint32_t T, uint32_t D,
                          uint64_t *tensor_bytes, uint64_t *work_bytes) {
    return kw_backend_wire_sizes_clip(backend, spec, 0, H, T, D, tensor_bytes, work_bytes);
}

int kw_op_wire_encode(kw_backend *backend, kw_tensor *dst, size_t offset, const kw_wire_op_spec *spec,
                      const kw_tensor *cache, const kw_tensor *rows, uint32_t t0, uint32_t T, kw_tensor *work,
                      kw_tensor *err, int64_t err_index, const kw_tensor *mask, uint64_t mask_base) {
    return kw_op_wire_encode_clip(backend, dst, offset, spec, 0, cache, rows, t0, T, work, err, err_index, mask,
                                  mask_base);
}

int kw_op_wire_encode_clip(kw_backend *backend, kw_tensor *dst, size_t offset, const kw_wire_op_spec *spec, int clip,
                           const kw_tensor *cache, const kw_tensor *rows, uint32_t t0, uint32_t T, kw_tensor *work,
                           kw_tensor *err, int64_t err_index, const kw_tensor *mask, uint64_t mask_base) {
    static const char op[] = "wire_encode";
    KW_CHECK_SHARE(op);
    KW_FORWARD(kw_check_share_cache(backend, cache, op));
    KW_FORWARD(kw_check_typed(backend, dst, KW_DTYPE_U8, op, "dst"));
    KW_FORWARD(kw_check_typed(backend, rows, KW_DTYPE_I32, op, "rows"));
    KW_FORWARD(kw_check_typed(backend, work, KW_DTYPE_U8, op, "work"));
    KW_FORWARD(kw_check_typed(backend, err, KW_DTYPE_U8, op, "err"));
    uint64_t bytes = 0, scratch = 0;
    KW_FORWARD(kw_backend_wire_sizes_clip(backend, spec, clip, (uint32_t)cache->ne[0], T, (uint32_t)cache->ne[2],
                                          &bytes, &scratch));
    KW_FORWARD(kw_check_range(dst, offset, (size_t)bytes, op));
    KW_RETURN_IF(scratch > kw_tensor_nbytes(work) || T < 1 || (int64_t)t0 + T > kw_tensor_nelem(rows) ||
                     err_index < 0 || (uint64_t)err_index >= kw_tensor_nbytes(err) / 8,
                 KW_E_SHAPE, "%s: work %s (needs %llu bytes), rows %s from %u for %u tokens, error word %lld of %s", op,
                 KW_SHAPE(work), (unsigned long long)scratch, KW_SHAPE(rows), t0, T, (long long)err_index,
                 KW_SHAPE(err));
    if (mask) {
        KW_FORWARD(kw_check_typed(backend, mask, KW_DTYPE_U8, op, "mask"));
        const uint64_t half = (uint64_t)cache->ne[0] * (t0 + T) * (uint64_t)cache->ne[2];
        KW_RETURN_IF(mask_base != 0 && mask_base != half, KW_E_SHAPE, "%s: mask base %llu is neither K's nor V's", op,
                     (unsigned long long)mask_base);
        KW_RETURN_IF(kw_tensor_nbytes(mask) < (2 * half + 7) / 8, KW_E_SHAPE, "%s: mask %s for %llu elements", op,
                     KW_SHAPE(mask), (unsigned long long)(2 * half));
    }
    return backend->iface->wire_encode(backend, dst, offset, spec, clip ? 1 : 0, cache, rows, t0, T, work, err,
                                       err_index, mask, mask_base);
}

int kw_backend_wire_outlier_work(const kw_backend *backend, const kw_wire_op_spec *sk, const kw_wire_op_spec *sv,
                                 uint32_t H, uint32_t T, uint32_t D, uint64_t *work_bytes) {
    static const char op[] = "wire_outlier_work";
    KW_CHECK_SHARE(op);
    KW_RETURN_IF(!sk || !sv || !work_bytes, KW_E_INVALID_ARG, "%s: NULL argument", op);
    return backend->iface->wire_outlier_work(sk, sv, H, T, D, work_bytes);
}

int kw_op_wire_outliers(kw_backend *backend, const kw_wire_op_spec *sk, const kw_wire_op_spec *sv,
                        const kw_tensor *cache_k, const kw_tensor *cache_v, const kw_tensor *rows, uint32_t T,
                        uint32_t count, kw_tensor *work, kw_tensor *elems, kw_tensor *n, kw_tensor *values,
                        kw_tensor *mask, kw_tensor *bad) {
    static const char op[] = "wire_outliers";
    KW_CHECK_SHARE(op);
    KW_FORWARD(kw_check_share_cache(backend, cache_k, op));
    KW_FORWARD(kw_check_share_cache(backend, cache_v, op));
    KW_FORWARD(kw_check_typed(backend, rows, KW_DTYPE_I32, op, "rows"));
    KW_FORWARD(kw_check_typed(backend, work, KW_DTYPE_U8, op, "work"));
    KW_FORWARD(kw_check_typed(backend, elems, KW_DTYPE_I32, op, "elems"));
    KW_FORWARD(kw_check_typed(backend, n, KW_DTYPE_I32, op, "n"));
    KW_FORWARD(kw_check_typed(backend, values, KW_DTYPE_F32, op, "values"));
    KW_FORWARD(kw_check_typed(backend, mask, KW_DTYPE_U8, op, "mask"));
    KW_FORWARD(kw_check_typed(backend, bad, KW_DTYPE_I32, op, "bad"));
    const uint32_t H = (uint32_t)cache_k->ne[0], D = (uint32_t)cache_k->ne[2];
    KW_RETURN_IF(memcmp(cache_k->ne, cache_v->ne, sizeof cache_k->ne) != 0, KW_E_SHAPE, "%s: K %s and V %s differ", op,
                 KW_SHAPE(cache_k), KW_SHAPE(cache_v));
    uint64_t need = 0;
    KW_FORWARD(kw_backend_wire_outlier_work(backend, sk, sv, H, T, D, &need));
    const uint64_t total = 2ull * H * T * D;
    KW_RETURN_IF(T < 1 || T > kw_tensor_nelem(rows) || need > kw_tensor_nbytes(work) ||
                     kw_tensor_nelem(elems) < count || kw_tensor_nelem(values) < count || kw_tensor_nelem(n) != 1 ||
                     kw_tensor_nelem(bad) != 1 || kw_tensor_nbytes(mask) < (total + 31) / 32 * 4,
                 KW_E_SHAPE, "%s: tensors too small for %u tokens and %u outliers", op, T, count);
    return backend->iface->wire_outliers(backend, sk, sv, cache_k, cache_v, rows, T, count, work, elems, n, values,
                                         mask, bad);
}

int kw_op_wire_rotate_rows(kw_backend *backend, kw_tensor *out, const kw_tensor *cache, const kw_tensor *rows,
                           uint32_t T, int rotate) {
    static const char op[] = "wire_rotate_rows";
    KW_CHECK_SHARE(op);
    KW_FORWARD(kw_check_share_cache(backend, cache, op));
    KW_FORWARD(kw_check_typed(backend, out, KW_DTYPE_F32, op, "out"));
    KW_FORWARD(kw_check_typed(backend, rows, KW_DTYPE_I32, op, "rows"));
    const int64_t D = cache->ne[2];
    KW_RETURN_IF(out->ndim != 3 || out->ne[0] != cache->ne[0] || out->ne[1] != (int64_t)T || out->ne[2] != D || T < 1 ||
                     (int64_t)T > kw_tensor_nelem(rows) || D > 1024 || (rotate && (D < 2 || (D & (D - 1)) != 0)),
                 KW_E_SHAPE, "%s: out %s for %u rows of cache %s (rows %s; head_dim a power of two up to 1024)", op,
                 KW_SHAPE(out), T, KW_SHAPE(cache), KW_SHAPE(rows));
    return backend->iface->wire_rotate_rows(backend, out, cache, rows, T, rotate ? 1 : 0);
}

int kw_backend_wire_status(kw_backend *backend, const kw_tensor *err, int64_t n) {
    static const char op[] = "wire_status";
    KW_CHECK_SHARE(op);
    KW_FORWARD(kw_check_tensor(backend, err, op, "err"));
    unsigned long long words[2];
    for (int64_t i = 0; i < n; i += 2) {
        const size_t m = n - i < 2 ? (size_t)(n - i) : 2;
        KW_FORWARD(kw_backend_download(backend, words, err, (size_t)i * 8, m * 8));
        KW_FORWARD(kw_backend_synchronize(backend));
        for (size_t j = 0; j < m; ++j)
            KW_FORWARD(backend->iface->wire_status(words[j]));
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------
 * The receiver's device work
 */

int kw_backend_supports_wire_decode(const kw_backend *backend) {
    return backend != NULL && backend->iface->wire_decode != NULL && backend->iface->wire_sizes != NULL;
}

#define KW_CHECK_WIRE_DECODE(op)                                                                                       \
    KW_CHECK_BACKEND(op);                                                                                              \
    KW_RETURN_IF(!kw_backend_supports_wire_decode(backend), KW_E_OP_UNSUPPORTED, "backend %s has no %s",               \
                 backend->iface->name, op)

/* Decoded rows (n, H, D) f32. */
static int kw_check_rows3(const kw_backend *backend, const kw_tensor *t, const char *op, const char *name) {
    KW_FORWARD(kw_check_typed(backend, t, KW_DTYPE_F32, op, name));
    KW_RETURN_IF(t->ndim != 3, KW_E_SHAPE, "%s: %s %s must be (n, H, D)", op, name, KW_SHAPE(t));
    return 0;
}

int kw_op_wire_decode(kw_backend *backend, kw_tensor *out, uint32_t t0, uint32_t T, const kw_wire_op_spec *spec,
                      const kw_tensor *src, size_t offset, kw_tensor *bad) {
    static const char op[] = "wire_decode";
    KW_CHECK_WIRE_DECODE(op);
    KW_FORWARD(kw_check_rows3(backend, out, op, "out"));
    KW_FORWARD(kw_check_typed(backend, src, KW_DTYPE_U8, op, "src"));
    KW_FORWARD(kw_check_typed(backend, bad, KW_DTYPE_I32, op, "bad"));
    KW_RETURN_IF(spec == NULL, KW_E_INVALID_ARG, "%s: NULL spec", op);
    KW_RETURN_IF(T < 1 || (int64_t)t0 + T > out->ne[0] || kw_tensor_nelem(bad) != 1, KW_E_SHAPE,
                 "%s: rows [%u, +%u) of out %s, bad %s", op, t0, T, KW_SHAPE(out), KW_SHAPE(bad));
    uint64_t bytes = 0, scratch = 0;
    KW_FORWARD(backend->iface->wire_sizes(spec, 0, (uint32_t)out->ne[1], T, (uint32_t)out->ne[2], &bytes, &scratch));
    KW_FORWARD(kw_check_range(src, offset, (size_t)bytes, op));
    return backend->iface->wire_decode(backend, out, t0, T, spec, src, offset, bad);
}

int kw_op_wire_outliers_apply(kw_backend *backend, kw_tensor *k, kw_tensor *v, const kw_tensor *elems,
                              const kw_tensor *values, uint32_t n) {
    static const char op[] = "wire_outliers_apply";
    KW_CHECK_WIRE_DECODE(op);
    KW_FORWARD(kw_check_rows3(backend, k, op, "k"));
    KW_FORWARD(kw_check_rows3(backend, v, op, "v"));
    KW_FORWARD(kw_check_typed(backend, elems, KW_DTYPE_I32, op, "elems"));
    KW_FORWARD(kw_check_typed(backend, values, KW_DTYPE_F32, op, "values"));
    KW_RETURN_IF(memcmp(k->ne, v->ne, sizeof k->ne) != 0 || kw_tensor_nelem(elems) < n || kw_tensor_nelem(values) < n,
                 KW_E_SHAPE, "%s: K %s, V %s, elems %s, values %s for %u outliers", op, KW_SHAPE(k), KW_SHAPE(v),
                 KW_SHAPE(elems), KW_SHAPE(values), n);
    KW_RETURN_IF(2 * (uint64_t)kw_tensor_nelem(k) > UINT32_MAX, KW_E_LIMIT,
                 "%s: %lld elements (element numbers are 32-bit here)", op, (long long)(2 * kw_tensor_nelem(k)));
    return backend->iface->wire_outliers_apply(backend, k, v, elems, values, n);
}

int kw_op_wire_unrotate(kw_backend *backend, kw_tensor *x, kw_tensor *bad) {
    static const char op[] = "wire_unrotate";
    KW_CHECK_WIRE_DECODE(op);
    KW_FORWARD(kw_check_rows3(backend, x, op, "x"));
    KW_FORWARD(kw_check_typed(backend, bad, KW_DTYPE_I32, op, "bad"));
    KW_RETURN_IF(kw_tensor_nelem(bad) != 1, KW_E_SHAPE, "%s: bad %s is not one value", op, KW_SHAPE(bad));
    const int64_t D = x->ne[2];
    KW_RETURN_IF(D < 2 || D > 1024 || (D & (D - 1)) != 0, KW_E_SHAPE,
                 "%s: x %s: head_dim must be a power of two in 2..1024", op, KW_SHAPE(x));
    return backend->iface->wire_unrotate(backend, x, bad);
}

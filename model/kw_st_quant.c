/* kw_st_quant.c: the quantized-safetensors layout of kw_st_quant.h: ggml blocks split into codes, scales and minimums
 * (writer side, through kw_ggml_codes_row, so the values are the dequantizer's by construction), and the checks,
 * code reads and dequantization of the reader side. Like kw_dequant.c this file must not contract multiplies and
 * adds into FMAs (the C standard mode keeps -ffp-contract off): a dequantized value is two f32 roundings. */
#include "model/kw_st_quant.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_bytes.h"
#include "common/kw_half.h"
#include "common/kw_size.h"
#include "common/kw_status.h"
#include "model/kw_dequant.h"

typedef struct kw_stq_layout {
    const char *name;
    enum kw_layout layout;
    int32_t code_bits, group, has_min;
    enum kw_dtype scale_dtype; /* what the writer stores */
} kw_stq_layout;

static const kw_stq_layout kw_stq_layouts[] = {
    {"int8/g32", KW_LAYOUT_QPANELS_S8, 8, 32, 0, KW_DTYPE_F16},
    {"uint4/g32/min", KW_LAYOUT_QPANELS_U4, 4, 32, 1, KW_DTYPE_F32},
    {"int8/g16", KW_LAYOUT_QPANELS_S8_G16, 8, 16, 0, KW_DTYPE_F32},
};
#define KW_STQ_N_LAYOUTS (sizeof kw_stq_layouts / sizeof kw_stq_layouts[0])

static const kw_stq_layout *kw_stq_by_layout(enum kw_layout layout) {
    for (size_t i = 0; i < KW_STQ_N_LAYOUTS; ++i)
        if (kw_stq_layouts[i].layout == layout) return &kw_stq_layouts[i];
    return NULL;
}

static const kw_stq_layout *kw_stq_by_name(const char *name) {
    for (size_t i = 0; i < KW_STQ_N_LAYOUTS; ++i)
        if (strcmp(kw_stq_layouts[i].name, name) == 0) return &kw_stq_layouts[i];
    return NULL;
}

// ---------------------------------------------------------------------------------------------------------------
// Writer side

void kw_stq_matrix_free(kw_stq_matrix *m) {
    if (!m) return;
    free(m->codes);
    free(m->scales);
    free(m->mins);
    memset(m, 0, sizeof *m);
}

/* Stores v as dtype (F16 or F32) at element i of dst; KW_E_INTERNAL if an F16 would round it. */
static int kw_stq_put_scale(void *dst, enum kw_dtype dtype, size_t i, float v) {
    if (dtype == KW_DTYPE_F32) {
        kw_store_lef32((uint8_t *)dst + 4 * i, v);
        return 0;
    }
    const uint16_t h = kw_f32_to_f16(v);
    const float back = kw_f16_to_f32(h);
    KW_RETURN_IF(memcmp(&back, &v, sizeof v) != 0, KW_E_INTERNAL, "scale %g is not an f16 value", (double)v);
    kw_store_le16((uint8_t *)dst + 2 * i, h);
    return 0;
}

int kw_stq_from_blocks(uint32_t type, const void *blocks, int64_t rows, int64_t cols, kw_stq_matrix *out) {
    KW_RETURN_IF(!blocks || !out, KW_E_INVALID_ARG, "kw_stq_from_blocks: NULL argument");
    memset(out, 0, sizeof *out);
    const kw_stq_layout *L = kw_stq_by_layout(kw_ggml_quant_layout(type));
    KW_RETURN_IF(!L, KW_E_MODEL_DTYPE, "ggml type %s has no quantized safetensors layout", kw_ggml_type_name(type));
    KW_RETURN_IF(rows < 1, KW_E_MODEL_SHAPE, "a quantized matrix of %lld rows", (long long)rows);
    size_t row_bytes = 0, n = 0;
    KW_FORWARD(kw_ggml_row_bytes(type, cols, &row_bytes)); /* cols whole blocks, so whole groups */
    KW_RETURN_IF(kw_size_mul((size_t)rows, (size_t)cols, &n) < 0, KW_E_OVERFLOW, "matrix too large");
    const int64_t row_groups = cols / L->group;
    const size_t groups = (size_t)rows * (size_t)row_groups;
    int8_t *codes = malloc((size_t)cols);
    float *scales = malloc((size_t)row_groups * sizeof *scales),
          *offsets = malloc((size_t)row_groups * sizeof *offsets);
    out->layout = L->name;
    out->codes_dtype = L->code_bits == 8 ? KW_DTYPE_I8 : KW_DTYPE_U8;
    out->codes_shape[0] = rows;
    out->codes_shape[1] = L->code_bits == 8 ? cols : cols / 2;
    out->scale_dtype = L->scale_dtype;
    out->groups_shape[0] = rows;
    out->groups_shape[1] = row_groups;
    out->codes = malloc(L->code_bits == 8 ? n : n / 2);
    out->scales = malloc(groups * kw_dtype_size(L->scale_dtype));
    out->mins = L->has_min ? malloc(groups * sizeof(float)) : NULL;
    int rc = 0;
    KW_CHECK_IF(!codes || !scales || !offsets || !out->codes || !out->scales || (L->has_min && !out->mins), KW_E_NOMEM,
                "out of memory for a %lld x %lld matrix", (long long)rows, (long long)cols);
    for (int64_t r = 0; r < rows; ++r) {
        KW_CHECK(kw_ggml_codes_row(type, (const uint8_t *)blocks + (size_t)r * row_bytes, cols, codes, scales,
                                   L->has_min ? offsets : NULL));
        if (L->code_bits == 8) {
            memcpy((int8_t *)out->codes + (size_t)r * (size_t)cols, codes, (size_t)cols);
        } else {
            uint8_t *dst = (uint8_t *)out->codes + (size_t)r * (size_t)(cols / 2);
            for (int64_t j = 0; j < cols / 2; ++j) /* value 2j in the low nibble */
                dst[j] = (uint8_t)(((uint8_t)codes[2 * j] & 0x0F) | (((uint8_t)codes[2 * j + 1] & 0x0F) << 4));
        }
        for (int64_t g = 0; g < row_groups; ++g) {
            const size_t at = (size_t)r * (size_t)row_groups + (size_t)g;
            KW_CHECK(kw_stq_put_scale(out->scales, L->scale_dtype, at, scales[g]));
            if (L->has_min) kw_store_lef32((uint8_t *)out->mins + 4 * at, -offsets[g]); /* exact */
        }
    }
out:
    free(codes);
    free(scales);
    free(offsets);
    if (rc < 0) kw_stq_matrix_free(out);
    return rc;
}

// ---------------------------------------------------------------------------------------------------------------
// Reader side

typedef struct kw_stq_entry {
    const kw_stq_layout *L;
    const kw_st_tensor *codes, *scale, *min; /* min NULL without minimum */
    int64_t n, k;
} kw_stq_entry;

struct kw_stq_index {
    kw_stq_entry *e;
    size_t count;
};

void kw_stq_index_free(kw_stq_index *ix) {
    if (!ix) return;
    free(ix->e);
    free(ix);
}

size_t kw_stq_count(const kw_stq_index *ix) {
    return ix ? ix->count : 0;
}

static int kw_stq_is_float(enum kw_dtype d) {
    return d == KW_DTYPE_F32 || d == KW_DTYPE_F16 || d == KW_DTYPE_BF16;
}

/* Finds NAME + suffix and checks it is a float [n, groups] tensor; *out NULL when absent. */
static int kw_stq_groups_tensor(const kw_safetensors *st, const char *name, const char *suffix, int64_t n,
                                int64_t groups, const kw_st_tensor **out) {
    char full[1024];
    KW_RETURN_IF((size_t)snprintf(full, sizeof full, "%s%s", name, suffix) >= sizeof full, KW_E_MODEL_FORMAT,
                 "quantized tensor name %.64s... is too long", name);
    const kw_st_tensor *t = kw_safetensors_find(st, full);
    *out = t;
    if (!t) return 0;
    KW_RETURN_IF(!kw_stq_is_float(t->dtype), KW_E_MODEL_FORMAT, "quantized safetensors: %s has dtype %s (a float)",
                 full, kw_dtype_name(t->dtype));
    KW_RETURN_IF(t->ndim != 2 || t->shape[0] != n || t->shape[1] != groups, KW_E_MODEL_FORMAT,
                 "quantized safetensors: %s has shape [%lld, %lld] (%d dimensions), the codes need [%lld, %lld]", full,
                 (long long)(t->ndim > 0 ? t->shape[0] : 0), (long long)(t->ndim > 1 ? t->shape[1] : 0), (int)t->ndim,
                 (long long)n, (long long)groups);
    return 0;
}

/* Checks matrix name of layout text value and fills *e. */
static int kw_stq_check(const kw_safetensors *st, const char *name, const char *value, kw_stq_entry *e) {
    e->L = kw_stq_by_name(value);
    KW_RETURN_IF(!e->L, KW_E_MODEL_FORMAT,
                 "quantized safetensors: tensor %s has the unknown layout \"%s\" (int8/g32, uint4/g32/min, int8/g16)",
                 name, value);
    e->codes = kw_safetensors_find(st, name);
    KW_RETURN_IF(!e->codes, KW_E_MODEL_FORMAT, "quantized safetensors: the metadata names %s, which the file lacks",
                 name);
    const enum kw_dtype want = e->L->code_bits == 8 ? KW_DTYPE_I8 : KW_DTYPE_U8;
    KW_RETURN_IF(e->codes->dtype != want, KW_E_MODEL_FORMAT,
                 "quantized safetensors: codes %s are %s, layout %s needs %s", name, kw_dtype_name(e->codes->dtype),
                 e->L->name, kw_dtype_name(want));
    KW_RETURN_IF(e->codes->ndim != 2 || e->codes->shape[0] < 1 || e->codes->shape[1] < 1, KW_E_MODEL_FORMAT,
                 "quantized safetensors: codes %s are not a non-empty matrix", name);
    e->n = e->codes->shape[0];
    e->k = e->codes->shape[1] * (8 / e->L->code_bits); /* at most 2^54: no overflow */
    KW_RETURN_IF(e->k % e->L->group != 0, KW_E_MODEL_FORMAT,
                 "quantized safetensors: %s has %lld inputs, not whole groups of %d", name, (long long)e->k,
                 (int)e->L->group);
    const int64_t groups = e->k / e->L->group;
    KW_FORWARD(kw_stq_groups_tensor(st, name, "_scale", e->n, groups, &e->scale));
    KW_RETURN_IF(!e->scale, KW_E_MODEL_FORMAT, "quantized safetensors: %s_scale is missing", name);
    KW_FORWARD(kw_stq_groups_tensor(st, name, "_min", e->n, groups, &e->min));
    KW_RETURN_IF(e->L->has_min && !e->min, KW_E_MODEL_FORMAT, "quantized safetensors: %s_min is missing", name);
    KW_RETURN_IF(!e->L->has_min && e->min, KW_E_MODEL_FORMAT,
                 "quantized safetensors: %s has a _min tensor, but layout %s has no minimum", name, e->L->name);
    return 0;
}

int kw_stq_index_open(const kw_safetensors *st, kw_stq_index **out) {
    KW_RETURN_IF(!st || !out, KW_E_INVALID_ARG, "kw_stq_index_open: NULL argument");
    *out = NULL;
    kw_stq_index *ix = calloc(1, sizeof *ix);
    KW_RETURN_IF(!ix, KW_E_NOMEM, "out of memory");
    int rc = 0;
    const char *version = kw_safetensors_metadata(st, KW_STQ_KEY);
    if (version) {
        KW_CHECK_IF(strcmp(version, KW_STQ_VERSION) != 0, KW_E_MODEL_FORMAT,
                    "quantized safetensors: unknown quantization format \"%s\" (kvwire reads \"%s\")", version,
                    KW_STQ_VERSION);
        const size_t nm = kw_safetensors_metadata_count(st);
        ix->e = calloc(nm ? nm : 1, sizeof *ix->e);
        KW_CHECK_IF(!ix->e, KW_E_NOMEM, "out of memory");
        const size_t plen = strlen(KW_STQ_PREFIX);
        for (size_t i = 0; i < nm; ++i) {
            const char *key = NULL, *value = NULL;
            kw_safetensors_metadata_at(st, i, &key, &value);
            if (strncmp(key, KW_STQ_PREFIX, plen) != 0 || strcmp(key + plen, "scheme") == 0) continue;
            KW_CHECK(kw_stq_check(st, key + plen, value, &ix->e[ix->count]));
            ++ix->count;
        }
    }
    *out = ix;
    ix = NULL;
out:
    kw_stq_index_free(ix);
    return rc;
}

static const kw_stq_entry *kw_stq_find(const kw_stq_index *ix, const char *name) {
    for (size_t i = 0; ix && name && i < ix->count; ++i)
        if (strcmp(ix->e[i].codes->name, name) == 0) return &ix->e[i];
    return NULL;
}

int kw_stq_role(const kw_stq_index *ix, const char *name, int64_t *shape) {
    const kw_stq_entry *e = kw_stq_find(ix, name);
    if (e) {
        shape[0] = e->n;
        shape[1] = e->k;
        return 1;
    }
    for (size_t i = 0; ix && name && i < ix->count; ++i)
        if (strcmp(ix->e[i].scale->name, name) == 0 || (ix->e[i].min && strcmp(ix->e[i].min->name, name) == 0))
            return 2;
    return 0;
}

/* Element i of a float tensor as f32 (exact: every float dtype widens exactly). */
static float kw_stq_float_at(const kw_st_tensor *t, size_t i) {
    const uint8_t *p = t->data;
    switch (t->dtype) {
    case KW_DTYPE_F32:
        return kw_load_lef32(p + 4 * i);
    case KW_DTYPE_F16:
        return kw_f16_to_f32(kw_load_le16(p + 2 * i));
    default:
        return kw_bf16_to_f32(kw_load_le16(p + 2 * i));
    }
}

/* Code i (row-major over [n, k]) of e. */
static int8_t kw_stq_code_at(const kw_stq_entry *e, size_t i) {
    const uint8_t *p = e->codes->data;
    if (e->L->code_bits == 8) return (int8_t)p[i];
    return (int8_t)((p[i / 2] >> (4 * (i % 2))) & 0x0F); /* value 2j low nibble, 2j + 1 high */
}

int kw_stq_read(const kw_stq_index *ix, const char *name, kw_gguf_codes_buf *buf, kw_quant_rows *out) {
    KW_RETURN_IF(!name || !buf || !out, KW_E_INVALID_ARG, "kw_stq_read: NULL argument");
    const kw_stq_entry *e = kw_stq_find(ix, name);
    if (!e) return 0;
    const size_t n = (size_t)e->n * (size_t)e->k, groups = n / (size_t)e->L->group; /* bounded by the file */
    const int u4 = e->L->code_bits != 8, f32 = e->scale->dtype == KW_DTYPE_F32;
    KW_FORWARD(kw_gguf_codes_buf_reserve(buf, u4 ? n : 0, f32 ? 0 : groups, e->min ? groups : 0));
    const int8_t *codes = e->codes->data; /* I8 codes and F32 scales are read where they are */
    const float *scales = e->scale->data;
    for (size_t i = 0; u4 && i < n; ++i)
        buf->codes[i] = kw_stq_code_at(e, i);
    for (size_t i = 0; !f32 && i < groups; ++i)
        buf->scales[i] = kw_stq_float_at(e->scale, i);
    for (size_t i = 0; e->min && i < groups; ++i)
        buf->offsets[i] = -kw_stq_float_at(e->min, i);
    if (u4) codes = buf->codes;
    if (!f32) scales = buf->scales;
    *out = (kw_quant_rows){.layout = e->L->layout,
                           .n = e->n,
                           .k = e->k,
                           .codes = codes,
                           .scales = scales,
                           .offsets = e->min ? buf->offsets : NULL};
    return 1;
}

int kw_stq_dequantize(const kw_stq_index *ix, const char *name, enum kw_dtype out_dtype, void **buf, size_t *cap,
                      size_t *nbytes, int64_t *shape) {
    KW_RETURN_IF(!name || !buf || !cap || !nbytes || !shape, KW_E_INVALID_ARG, "kw_stq_dequantize: NULL argument");
    KW_RETURN_IF(out_dtype != KW_DTYPE_F32 && out_dtype != KW_DTYPE_BF16, KW_E_INVALID_ARG,
                 "quantized safetensors are dequantized to f32 or bf16, not %s", kw_dtype_name(out_dtype));
    const kw_stq_entry *e = kw_stq_find(ix, name);
    if (!e) return 0;
    const size_t n = (size_t)e->n * (size_t)e->k, es = kw_dtype_size(out_dtype);
    size_t bytes = 0;
    KW_RETURN_IF(kw_size_mul(n, es, &bytes) < 0, KW_E_OVERFLOW, "%s is too large", name);
    if (bytes > *cap) {
        void *p = realloc(*buf, bytes);
        KW_RETURN_IF(!p, KW_E_NOMEM, "out of memory for %zu bytes", bytes);
        *buf = p;
        *cap = bytes;
    }
    const size_t group = (size_t)e->L->group;
    for (size_t i = 0; i < n; ++i) {
        const size_t g = i / group;
        const float scaled = (float)kw_stq_code_at(e, i) * kw_stq_float_at(e->scale, g);
        const float v = e->min ? scaled + -kw_stq_float_at(e->min, g) : scaled;
        if (out_dtype == KW_DTYPE_F32)
            ((float *)*buf)[i] = v;
        else
            ((uint16_t *)*buf)[i] = kw_f32_to_bf16(v);
    }
    *nbytes = bytes;
    shape[0] = e->n;
    shape[1] = e->k;
    return 1;
}

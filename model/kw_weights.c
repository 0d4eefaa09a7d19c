/* kw_weights.c: the two weight sources behind kw_weights.h. A safetensors source hands out views of its mapping; a
 * GGUF source renames, dequantizes and re-lays out one tensor at a time into a buffer it reuses (kw_gguf_model.c),
 * which is why its views are transient and kw_weights_bind copies them into backend memory; a GGUF matmul weight may
 * instead be read as codes, scales and offsets (kw_weights_get_quantized), into buffers reused the same way. A
 * safetensors checkpoint written by kvwire quantize (model/kw_st_quant.h) serves its quantized matrices the same two
 * ways: codes read (or dequantized) from the mapping. */
#include "model/kw_weights.h"

#include <stdlib.h>
#include <string.h>

#include "common/kw_file.h"
#include "common/kw_status.h"
#include "model/kw_dequant.h"
#include "model/kw_gguf.h"
#include "model/kw_gguf_model.h"
#include "model/kw_safetensors.h"
#include "model/kw_st_quant.h"

struct kw_weights {
    enum kw_weights_kind kind;
    kw_model_config cfg;
    kw_safetensors *st; /* owned (safetensors) */
    kw_stq_index *stq;  /* owned (safetensors): its quantized matrices, empty for a plain checkpoint */
    kw_gguf *gguf;      /* owned (GGUF) */
    enum kw_dtype gguf_dtype;
    void *buf; /* the dequantization buffer of the last GGUF tensor read */
    size_t cap;
    kw_gguf_codes_buf codes; /* the codes, scales and offsets of the last GGUF tensor read quantized */
};

int kw_weights_open(const char *path, const kw_weights_options *opts, kw_weights **out) {
    KW_RETURN_IF(!path || !out, KW_E_INVALID_ARG, "kw_weights_open: NULL argument");
    *out = NULL;
    const enum kw_dtype gd = opts ? opts->gguf_dtype : KW_DTYPE_F32;
    KW_RETURN_IF(gd != KW_DTYPE_F32 && gd != KW_DTYPE_BF16, KW_E_INVALID_ARG,
                 "GGUF weights are dequantized to f32 or bf16, not %s", kw_dtype_name(gd));
    int rc = 0;
    kw_weights *w = calloc(1, sizeof *w);
    KW_RETURN_IF(!w, KW_E_NOMEM, "out of memory");
    w->gguf_dtype = gd;
    if (kw_path_is_file(path) && kw_gguf_is_gguf(path)) {
        w->kind = KW_WEIGHTS_GGUF;
        KW_CHECK(kw_gguf_open(path, &w->gguf));
        rc = kw_gguf_model_config(w->gguf, &w->cfg);
        if (rc < 0) {
            rc = kw_error_set(rc, "%s: %s", path, kw_error_detail());
            goto out;
        }
        w->cfg.weight_dtype = gd;
    } else {
        w->kind = KW_WEIGHTS_SAFETENSORS;
        KW_CHECK(kw_config_load(path, &w->cfg));
        KW_CHECK(kw_safetensors_open(path, &w->st));
        KW_CHECK(kw_stq_index_open(w->st, &w->stq));
    }
    *out = w;
    w = NULL;
out:
    kw_weights_close(w);
    return rc;
}

void kw_weights_close(kw_weights *w) {
    if (!w) return;
    kw_stq_index_free(w->stq);
    kw_safetensors_close(w->st);
    kw_gguf_close(w->gguf);
    free(w->buf);
    kw_gguf_codes_buf_free(&w->codes);
    free(w);
}

enum kw_weights_kind kw_weights_kind_of(const kw_weights *w) {
    return w->kind;
}

const kw_model_config *kw_weights_config(const kw_weights *w) {
    return &w->cfg;
}

int kw_weights_get(kw_weights *w, const char *hf_name, kw_weight *out) {
    KW_RETURN_IF(!w || !hf_name || !out, KW_E_INVALID_ARG, "kw_weights_get: NULL argument");
    memset(out, 0, sizeof *out);
    if (w->kind == KW_WEIGHTS_SAFETENSORS) {
        const int q = kw_stq_dequantize(w->stq, hf_name, w->gguf_dtype, &w->buf, &w->cap, &out->nbytes, out->shape);
        KW_FORWARD(q);
        if (q) {
            out->dtype = w->gguf_dtype;
            out->ndim = 2;
            out->data = w->buf;
            out->transient = 1;
            return 1;
        }
        const kw_st_tensor *st = kw_safetensors_find(w->st, hf_name);
        if (!st) return 0;
        out->dtype = st->dtype;
        out->ndim = st->ndim;
        memcpy(out->shape, st->shape, sizeof out->shape);
        out->data = st->data;
        out->nbytes = st->nbytes;
        return 1;
    }
    char name[256];
    const int rc = kw_gguf_model_tensor_name(w->cfg.arch, hf_name, name, sizeof name);
    if (rc == KW_E_NOT_FOUND) return 0;
    KW_FORWARD(rc);
    const kw_gguf_tensor *t = kw_gguf_find_tensor(w->gguf, name);
    if (!t) return 0;
    KW_FORWARD(
        kw_gguf_model_read(t, &w->cfg, hf_name, w->gguf_dtype, &w->buf, &w->cap, &out->ndim, out->shape, &out->nbytes));
    out->dtype = w->gguf_dtype;
    out->data = w->buf;
    out->transient = 1;
    return 1;
}

int kw_weights_get_quantized(kw_weights *w, const char *hf_name, kw_quant_rows *out) {
    KW_RETURN_IF(!w || !hf_name || !out, KW_E_INVALID_ARG, "kw_weights_get_quantized: NULL argument");
    memset(out, 0, sizeof *out);
    if (w->kind == KW_WEIGHTS_SAFETENSORS) return kw_stq_read(w->stq, hf_name, &w->codes, out);
    char name[256];
    const int rc = kw_gguf_model_tensor_name(w->cfg.arch, hf_name, name, sizeof name);
    if (rc == KW_E_NOT_FOUND) return 0;
    KW_FORWARD(rc);
    const kw_gguf_tensor *t = kw_gguf_find_tensor(w->gguf, name);
    if (!t || t->n_dims != 2 || kw_ggml_quant_layout(t->type) == KW_LAYOUT_ROWS) return 0;
    KW_FORWARD(kw_gguf_model_read_codes(t, &w->cfg, hf_name, &w->codes, out));
    return 1;
}

int kw_weights_has(const kw_weights *w, const char *hf_name) {
    if (!w || !hf_name) return 0;
    if (w->kind == KW_WEIGHTS_SAFETENSORS) return kw_safetensors_find(w->st, hf_name) != NULL;
    char name[256];
    if (kw_gguf_model_tensor_name(w->cfg.arch, hf_name, name, sizeof name) < 0) return 0;
    return kw_gguf_find_tensor(w->gguf, name) != NULL;
}

void kw_weights_release(kw_weights *w, const char *hf_name) {
    if (!w || !hf_name || w->kind != KW_WEIGHTS_SAFETENSORS) return;
    const kw_st_tensor *st = kw_safetensors_find(w->st, hf_name);
    if (st) kw_safetensors_release(w->st, st);
}

int kw_weights_bind(kw_backend *backend, const kw_weight *wt, kw_tensor *t) {
    KW_RETURN_IF(!backend || !wt || !t, KW_E_INVALID_ARG, "kw_weights_bind: NULL argument");
    KW_RETURN_IF(wt->ndim < 1 || wt->ndim > 4, KW_E_SHAPE, "a weight of %d dimensions cannot be a backend tensor",
                 (int)wt->ndim);
    if (!wt->transient) return kw_tensor_from_host(backend, t, wt->dtype, wt->ndim, wt->shape, wt->data);
    KW_FORWARD(kw_tensor_alloc(backend, t, wt->dtype, wt->ndim, wt->shape));
    int rc = kw_backend_upload(backend, t, 0, wt->data, wt->nbytes);
    if (rc == 0) rc = kw_backend_synchronize(backend); /* the buffer is reused by the next kw_weights_get */
    if (rc < 0) kw_tensor_free(t);
    return rc;
}

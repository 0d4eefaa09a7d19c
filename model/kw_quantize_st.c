/* kw_quantize_st.c: kvwire quantize's safetensors output (kw_quantize_st.h): converted tensors are held in memory
 * (as the GGUF writer holds them) and written by kw_safetensors_write, which orders them itself, so the file does not
 * depend on the order they were added in. */
#include "model/kw_quantize_st.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_buf.h"
#include "common/kw_file.h"
#include "common/kw_json.h"
#include "common/kw_status.h"
#include "model/kw_dequant.h"
#include "model/kw_genmodel.h"
#include "model/kw_safetensors.h"
#include "model/kw_st_quant.h"

struct kw_q_st_sink {
    kw_st_write_tensor *t; /* names and data owned (names malloc'ed, data in owned) */
    size_t n, cap;
    void **owned; /* every buffer the tensors point to */
    size_t n_owned, cap_owned;
    kw_buf meta; /* the __metadata__ JSON object, without its closing brace */
};

int kw_q_st_sink_new(const char *scheme_name, kw_q_st_sink **out) {
    KW_RETURN_IF(!scheme_name || !out, KW_E_INVALID_ARG, "kw_q_st_sink_new: NULL argument");
    kw_q_st_sink *s = calloc(1, sizeof *s);
    KW_RETURN_IF(!s, KW_E_NOMEM, "out of memory");
    int rc = kw_buf_printf(&s->meta, "{\"%s\":\"%s\",\"%sscheme\":", KW_STQ_KEY, KW_STQ_VERSION, KW_STQ_PREFIX);
    if (rc == 0)
        rc = kw_json_append_string(&s->meta.data, &s->meta.len, &s->meta.cap, scheme_name, strlen(scheme_name));
    if (rc < 0) {
        kw_q_st_sink_free(s);
        KW_FAIL(KW_E_NOMEM, "out of memory");
    }
    *out = s;
    return 0;
}

void kw_q_st_sink_free(kw_q_st_sink *s) {
    if (!s) return;
    for (size_t i = 0; i < s->n; ++i)
        free((char *)s->t[i].name);
    free(s->t);
    for (size_t i = 0; i < s->n_owned; ++i)
        free(s->owned[i]);
    free(s->owned);
    kw_buf_free(&s->meta);
    free(s);
}

/* Takes ownership of p (freed now if it cannot be recorded). */
static int kw_q_st_own(kw_q_st_sink *s, void *p) {
    if (s->n_owned == s->cap_owned) {
        const size_t cap = s->cap_owned ? 2 * s->cap_owned : 64;
        void **o = realloc(s->owned, cap * sizeof *o);
        if (!o) {
            free(p);
            KW_FAIL(KW_E_NOMEM, "out of memory");
        }
        s->owned = o;
        s->cap_owned = cap;
    }
    s->owned[s->n_owned++] = p;
    return 0;
}

/* Appends a tensor (name copied; data must already be owned by s). */
static int kw_q_st_push(kw_q_st_sink *s, const char *name, const char *suffix, enum kw_dtype dtype, int32_t ndim,
                        const int64_t *shape, const void *data) {
    if (s->n == s->cap) {
        const size_t cap = s->cap ? 2 * s->cap : 64;
        kw_st_write_tensor *t = realloc(s->t, cap * sizeof *t);
        KW_RETURN_IF(!t, KW_E_NOMEM, "out of memory");
        s->t = t;
        s->cap = cap;
    }
    const size_t len = strlen(name) + strlen(suffix) + 1;
    char *full = malloc(len);
    KW_RETURN_IF(!full, KW_E_NOMEM, "out of memory");
    snprintf(full, len, "%s%s", name, suffix);
    kw_st_write_tensor *t = &s->t[s->n++];
    memset(t, 0, sizeof *t);
    t->name = full;
    t->dtype = dtype;
    t->ndim = ndim;
    memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    t->data = data;
    return 0;
}

int kw_q_st_sink_add(kw_q_st_sink *s, const char *name, uint32_t type, int32_t ndim, const int64_t *shape, void *data,
                     size_t nbytes) {
    (void)nbytes; /* the caller sized data from the same shape */
    KW_RETURN_IF(!s || !name || !shape || !data, KW_E_INVALID_ARG, "kw_q_st_sink_add: NULL argument");
    KW_FORWARD(kw_q_st_own(s, data));
    KW_RETURN_IF(ndim < 1 || ndim > KW_SAFETENSORS_MAX_DIMS, KW_E_MODEL_SHAPE, "%s has %d dimensions", name, (int)ndim);
    const enum kw_dtype plain = type == KW_GGML_F32    ? KW_DTYPE_F32
                                : type == KW_GGML_F16  ? KW_DTYPE_F16
                                : type == KW_GGML_BF16 ? KW_DTYPE_BF16
                                                       : KW_DTYPE_COUNT;
    if (plain != KW_DTYPE_COUNT) return kw_q_st_push(s, name, "", plain, ndim, shape, data);
    KW_RETURN_IF(ndim != 2, KW_E_MODEL_SHAPE, "%s: a quantized tensor of %d dimensions (2 expected)", name, (int)ndim);
    kw_stq_matrix m;
    KW_FORWARD(kw_stq_from_blocks(type, data, shape[0], shape[1], &m));
    void *const bufs[3] = {m.codes, m.scales, m.mins}; /* each owned by s from here on (or freed) */
    int rc = 0;
    for (int i = 0; i < 3; ++i) {
        if (!bufs[i]) continue;
        if (rc == 0)
            rc = kw_q_st_own(s, bufs[i]);
        else
            free(bufs[i]);
    }
    KW_FORWARD(rc);
    void *codes = m.codes, *scales = m.scales, *mins = m.mins;
    KW_FORWARD(kw_q_st_push(s, name, "", m.codes_dtype, 2, m.codes_shape, codes));
    KW_FORWARD(kw_q_st_push(s, name, "_scale", m.scale_dtype, 2, m.groups_shape, scales));
    if (mins) KW_FORWARD(kw_q_st_push(s, name, "_min", KW_DTYPE_F32, 2, m.groups_shape, mins));
    char key[1024];
    KW_RETURN_IF((size_t)snprintf(key, sizeof key, "%s%s", KW_STQ_PREFIX, name) >= sizeof key, KW_E_INVALID_ARG,
                 "tensor name %.64s... is too long", name);
    rc = kw_buf_append_str(&s->meta, ",");
    if (rc == 0) rc = kw_json_append_string(&s->meta.data, &s->meta.len, &s->meta.cap, key, strlen(key));
    if (rc == 0) rc = kw_buf_printf(&s->meta, ":\"%s\"", m.layout);
    KW_RETURN_IF(rc < 0, KW_E_NOMEM, "out of memory");
    return 0;
}

int kw_q_st_sink_write(const kw_q_st_sink *s, const char *path) {
    KW_RETURN_IF(!s || !path, KW_E_INVALID_ARG, "kw_q_st_sink_write: NULL argument");
    kw_buf meta = KW_BUF_INIT;
    kw_buf_append(&meta, s->meta.data, s->meta.len);
    kw_buf_append_str(&meta, "}");
    int rc = meta.status < 0 ? kw_error_set(KW_E_NOMEM, "out of memory") : 0;
    if (rc == 0) rc = kw_safetensors_write(path, s->t, s->n, meta.data);
    kw_buf_free(&meta);
    return rc;
}

/* The folder of out_path (malloc'ed), or NULL when out of memory. */
static char *kw_q_st_dir_of(const char *out_path) {
    const char *slash = strrchr(out_path, '/');
    return slash ? strndup(out_path, (size_t)(slash - out_path) + 1) : strdup(".");
}

int kw_q_st_write_config(const kw_model_config *cfg, const char *out_path) {
    KW_RETURN_IF(!cfg || !out_path, KW_E_INVALID_ARG, "kw_q_st_write_config: NULL argument");
    char *dir = kw_q_st_dir_of(out_path), *config = NULL, *generation = NULL, *path = NULL;
    int rc = dir ? 0 : kw_error_set(KW_E_NOMEM, "out of memory");
    if (rc == 0) rc = kw_genmodel_config_json(cfg, KW_DTYPE_F32, &config);
    if (rc == 0) rc = kw_genmodel_generation_json(cfg, &generation);
    if (rc == 0 && !(path = kw_path_join(dir, "config.json"))) rc = kw_error_set(KW_E_NOMEM, "out of memory");
    if (rc == 0) rc = kw_file_write_all(path, config, strlen(config));
    free(path);
    path = NULL;
    if (rc == 0 && !(path = kw_path_join(dir, "generation_config.json")))
        rc = kw_error_set(KW_E_NOMEM, "out of memory");
    if (rc == 0) rc = kw_file_write_all(path, generation, strlen(generation));
    free(path);
    free(config);
    free(generation);
    free(dir);
    return rc;
}

int kw_q_st_copy_sidecars(const char *in_dir, const char *out_path) {
    static const char *const files[] = {"config.json",
                                        "generation_config.json",
                                        "tokenizer.json",
                                        "tokenizer_config.json",
                                        "special_tokens_map.json",
                                        "tokenizer.model",
                                        "vocab.json",
                                        "merges.txt",
                                        "added_tokens.json",
                                        "chat_template.jinja",
                                        "chat_template.json"};
    char *out_dir = kw_q_st_dir_of(out_path);
    KW_RETURN_IF(!out_dir, KW_E_NOMEM, "out of memory");
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < sizeof files / sizeof files[0]; ++i) {
        char *from = kw_path_join(in_dir, files[i]), *to = kw_path_join(out_dir, files[i]), *text = NULL;
        size_t n = 0;
        if (!from || !to)
            rc = kw_error_set(KW_E_NOMEM, "out of memory");
        else if (kw_path_is_file(from))
            rc = kw_file_read_all(from, (size_t)1 << 30, &text, &n);
        if (rc == 0 && text) rc = kw_file_write_all(to, text, n);
        free(text);
        free(from);
        free(to);
    }
    free(out_dir);
    return rc;
}

/* fuzz_gguf.c: libFuzzer target for the GGUF reader. Any input: kw_gguf_open_memory either refuses it with a status or
 * yields a file whose every metadata value can be read back through the typed getters, whose tensors lie inside the
 * input, whose first rows dequantize, and whose metadata maps to a model configuration or is refused; no crash, no
 * leak, no read outside the input. The corpus (corpora/gguf) holds the files of tests/model/gguf_build.h (one valid,
 * one per defect) and a tiny quantized model. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_status.h"
#include "model/kw_dequant.h"
#include "model/kw_gguf.h"
#include "model/kw_gguf_model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond)                                                                                               \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "fuzz_gguf: %s failed at line %d\n", #cond, __LINE__);                                     \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

static void read_values(const kw_gguf *g) {
    for (size_t i = 0; i < kw_gguf_kv_count(g); ++i) {
        const kw_gguf_kv *kv = kw_gguf_kv_at(g, i);
        FUZZ_CHECK(kw_gguf_find_kv(g, kv->key) == kv);
        int64_t v;
        double f;
        int b;
        const char *s;
        size_t n;
        (void)kw_gguf_get_int(g, kv->key, INT64_MIN, INT64_MAX, &v);
        (void)kw_gguf_get_float(g, kv->key, &f);
        (void)kw_gguf_get_bool(g, kv->key, &b);
        if (kw_gguf_get_str(g, kv->key, &s, &n) == 0) FUZZ_CHECK(s >= (const char *)kv->value);
        if (kv->type != KW_GGUF_ARRAY) continue;
        for (uint64_t k = 0; k < kv->count && k < 64; ++k) {
            if (kv->elem_type == KW_GGUF_STRING)
                FUZZ_CHECK(kw_gguf_array_str(g, kv, k, &s, &n) == 0);
            else if (kv->elem_type == KW_GGUF_FLOAT32 || kv->elem_type == KW_GGUF_FLOAT64)
                FUZZ_CHECK(kw_gguf_array_float(kv, k, &f) == 0);
            else
                (void)kw_gguf_array_int(kv, k, &v);
        }
    }
}

static void read_tensors(const kw_gguf *g, const uint8_t *data, size_t size) {
    for (size_t i = 0; i < kw_gguf_tensor_count(g); ++i) {
        const kw_gguf_tensor *t = kw_gguf_tensor_at(g, i);
        FUZZ_CHECK(kw_gguf_find_tensor(g, t->name) == t);
        FUZZ_CHECK((const uint8_t *)t->data >= data && t->nbytes <= size &&
                   (const uint8_t *)t->data - data <= (ptrdiff_t)(size - t->nbytes));
        kw_ggml_type_info info;
        FUZZ_CHECK(kw_ggml_type_info_get(t->type, &info) == 0);
        if (!info.dequantizable || t->ne[0] > 4096) continue;
        float *row = malloc((size_t)t->ne[0] * sizeof *row);
        FUZZ_CHECK(row);
        FUZZ_CHECK(kw_dequant_row(t->type, t->data, t->ne[0], KW_DTYPE_F32, row) == 0);
        free(row);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    kw_gguf *g = NULL;
    const int rc = kw_gguf_open_memory(data, size, &g);
    if (rc < 0) {
        FUZZ_CHECK(g == NULL && (rc == KW_E_MODEL_FORMAT || rc == KW_E_MODEL_DTYPE || rc == KW_E_NOMEM));
        return 0;
    }
    read_values(g);
    read_tensors(g, data, size);
    kw_model_config cfg;
    (void)kw_gguf_model_config(g, &cfg);
    kw_gguf_close(g);
    return 0;
}

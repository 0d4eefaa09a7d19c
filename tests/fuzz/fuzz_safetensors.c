/* fuzz_safetensors.c: libFuzzer target for the safetensors reader. Any input: kw_safetensors_open_memory either
 * refuses it with a model-format status or yields a table whose tensors lie inside the input, tile its data area,
 * carry a supported dtype and nbytes = product(shape) * element size, and are found again by name; no crash, no leak,
 * no read outside the input. The corpus (corpora/safetensors) holds HF-written files from tests/data and the tiny
 * models of `kvwire gen-model` (bf16, f32). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_status.h"
#include "fuzz_check.h"
#include "model/kw_safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static size_t element_bytes(enum kw_dtype dtype) {
    return dtype == KW_DTYPE_F32 ? 4 : 2;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    kw_safetensors *st = NULL;
    const int rc = kw_safetensors_open_memory(data, size, &st);
    if (rc < 0) {
        FUZZ_CHECK(st == NULL);
        FUZZ_CHECK(rc == KW_E_MODEL_FORMAT || rc == KW_E_MODEL_DTYPE || rc == KW_E_LIMIT || rc == KW_E_NOMEM);
        return 0;
    }
    uint64_t checksum = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < kw_safetensors_count(st); ++i) {
        const kw_st_tensor *t = kw_safetensors_at(st, i);
        FUZZ_CHECK(t && t->name && t->name[0] != '\0');
        FUZZ_CHECK(kw_safetensors_find(st, t->name) == t);
        FUZZ_CHECK(t->dtype == KW_DTYPE_F32 || t->dtype == KW_DTYPE_BF16 || t->dtype == KW_DTYPE_F16);
        FUZZ_CHECK(t->ndim >= 0 && t->ndim <= KW_SAFETENSORS_MAX_DIMS);
        FUZZ_CHECK(t->nbytes == fuzz_numel(t->ndim, t->shape) * element_bytes(t->dtype));
        if (t->nbytes == 0) continue;
        const uint8_t *p = (const uint8_t *)t->data;
        FUZZ_CHECK(p >= data + 8 && t->nbytes <= size && (size_t)(p - data) <= size - t->nbytes);
        checksum = fuzz_hash(checksum, p, t->nbytes); /* every byte readable */
        kw_safetensors_release(st, t);                /* a no-op on a borrowed buffer */
    }
    (void)checksum;
    kw_safetensors_close(st);
    return 0;
}

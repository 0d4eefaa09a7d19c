/* fuzz_torchzip.c: libFuzzer target for the torch.save zip reader (the C2C fuser checkpoints, c2c/kw_torchzip.h). Any
 * input: kw_torchzip_open_buffer either refuses it with a torch-format, pickle, limit or unsupported status, or yields
 * a tensor table whose entries have a supported dtype, nbytes = product(shape) * element size, readable data, and are
 * found again by name. The archive is read without CRC checks first (so mutations reach the pickle and the tensor
 * rules rather than stopping at a checksum), then with them: a checked open may only refuse what the unchecked one
 * accepted with KW_E_PT_FORMAT (a CRC mismatch), and when both accept they agree on every tensor. The corpus
 * (corpora/torchzip) holds torch-written fuser checkpoints from tests/data and `kvwire gen-fuser` output (bf16, f32).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "c2c/kw_torchzip.h"
#include "common/kw_status.h"
#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static size_t element_bytes(enum kw_dtype dtype) {
    return dtype == KW_DTYPE_F32 ? 4 : 2;
}

static uint64_t check_table(const kw_torchzip *tz) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < kw_torchzip_count(tz); ++i) {
        const kw_torchzip_tensor *t = kw_torchzip_at(tz, i);
        FUZZ_CHECK(t && t->name);
        const kw_torchzip_tensor *found = kw_torchzip_find(tz, t->name);
        FUZZ_CHECK(found && strcmp(found->name, t->name) == 0);
        FUZZ_CHECK(t->dtype == KW_DTYPE_F32 || t->dtype == KW_DTYPE_BF16 || t->dtype == KW_DTYPE_F16);
        FUZZ_CHECK(t->ndim >= 0 && t->ndim <= KW_TORCHZIP_MAX_DIMS);
        FUZZ_CHECK(t->nbytes == fuzz_numel(t->ndim, t->shape) * element_bytes(t->dtype));
        FUZZ_CHECK(t->nbytes == 0 || (t->data && (uintptr_t)t->data % element_bytes(t->dtype) == 0));
        h = fuzz_hash(h, t->name, strlen(t->name) + 1);
        h = fuzz_hash(h, t->shape, sizeof t->shape);
        if (t->nbytes > 0) h = fuzz_hash(h, t->data, t->nbytes); /* every byte readable */
    }
    return h;
}

static int refusal_ok(int rc) {
    return rc == KW_E_PT_FORMAT || rc == KW_E_PT_PICKLE || rc == KW_E_UNSUPPORTED || rc == KW_E_LIMIT ||
           rc == KW_E_NOMEM;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    kw_torchzip *unchecked = NULL, *checked = NULL;
    const int rc = kw_torchzip_open_buffer(data, size, KW_TORCHZIP_NO_CRC, &unchecked);
    if (rc < 0) {
        FUZZ_CHECK(unchecked == NULL && refusal_ok(rc));
        return 0;
    }
    const uint64_t h = check_table(unchecked);
    const int rc_crc = kw_torchzip_open_buffer(data, size, 0, &checked);
    if (rc_crc < 0) {
        FUZZ_CHECK(checked == NULL && (rc_crc == KW_E_PT_FORMAT || rc_crc == KW_E_NOMEM));
    } else {
        FUZZ_CHECK(kw_torchzip_count(checked) == kw_torchzip_count(unchecked));
        FUZZ_CHECK(check_table(checked) == h);
    }
    kw_torchzip_close(checked);
    kw_torchzip_close(unchecked);
    return 0;
}

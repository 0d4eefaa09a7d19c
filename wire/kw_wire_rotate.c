/* kw_wire_rotate.c: the randomized Walsh-Hadamard rotation of head vectors (FORMAT.md §5.12): y = H diag(s) x with
 * H the D x D Walsh-Hadamard matrix and s a fixed sign pattern, in f32 butterflies of a fixed order and exact
 * power-of-two scaling, so every build and ISA gives the same bits (the vector kernels, kw_wire_simd_x86.c, do the same
 * operations; tests/wire/test_wire_simd.c compares them). */
#include "wire/kw_wire.h"
#include "wire/kw_wire_internal.h"
#include "wire/kw_wire_quant.h"

#include <math.h>
#include <string.h>

#include "common/kw_status.h"

int kw_wire_rotate_log2(uint32_t head_dim) {
    if (head_dim < 2 || head_dim > 4096 || (head_dim & (head_dim - 1)) != 0) return -1;
    int m = 0;
    while ((1u << m) < head_dim)
        ++m;
    return m;
}

int kw_wire_rotate_sign(uint32_t i) {
    return kw_wire_hadamard_sign(i);
}

/* In-place butterflies over one row of D = 2^m values: for len = 1, 2, ..., D/2, for each block of 2*len from the
 * start, for j in the block's first half: (a, b) -> (a + b, a - b). */
static void kw__rotate_butterflies(float *x, uint32_t D) {
    for (uint32_t len = 1; len < D; len <<= 1)
        for (uint32_t i = 0; i < D; i += len << 1)
            for (uint32_t j = i; j < i + len; ++j) {
                const float a = x[j], b = x[j + len];
                x[j] = a + b;
                x[j + len] = a - b;
            }
}

void kw__wire_rotate_factors(uint32_t head_dim, int inverse, float *sx) {
    const int m = kw_wire_rotate_log2(head_dim);
    /* the encoder scales by 2^-floor(m/2), the decoder by 2^-ceil(m/2): their product undoes H H = D I exactly */
    const float scale = ldexpf(1.0f, inverse ? -(m - m / 2) : -(m / 2));
    for (uint32_t d = 0; d < head_dim; ++d)
        sx[d] = (float)kw_wire_rotate_sign(d) * scale;
}

void kw__wire_rotate_row(float *x, uint32_t head_dim, const float *sx, int inverse) {
    if (!inverse)
        for (uint32_t d = 0; d < head_dim; ++d)
            x[d] *= sx[d];
    kw__rotate_butterflies(x, head_dim);
    if (inverse)
        for (uint32_t d = 0; d < head_dim; ++d)
            x[d] *= sx[d];
}

void kw__wire_rotate_scalar(const void *src, uint32_t src_dtype, void *dst, uint32_t dst_dtype, uint32_t head_dim,
                            const float *sx, int inverse) {
    float row[4096];
    kw__wire_load_f32(src, src_dtype, head_dim, row);
    kw__wire_rotate_row(row, head_dim, sx, inverse);
    if (dst_dtype == KW_WIRE_DTYPE_F32) {
        memcpy(dst, row, (size_t)head_dim * 4);
        return;
    }
    uint16_t *o = (uint16_t *)dst;
    for (uint32_t d = 0; d < head_dim; ++d)
        o[d] = dst_dtype == KW_WIRE_DTYPE_BF16 ? kw_f32_to_bf16(row[d]) : kw_f32_to_f16(row[d]);
}

int kw_wire_rotate_rows(float *x, size_t n_rows, size_t row_stride, uint32_t head_dim, int inverse) {
    KW_RETURN_IF(kw_wire_rotate_log2(head_dim) < 0, KW_E_INVALID_ARG,
                 "the Hadamard rotation needs a head_dim that is a power of two in 2..4096, not %u", head_dim);
    KW_RETURN_IF(n_rows > 1 && row_stride < head_dim, KW_E_INVALID_ARG, "row stride %zu below head_dim %u", row_stride,
                 head_dim);
    float sx[4096];
    kw__wire_rotate_factors(head_dim, inverse, sx);
    const kw__wire_kernels *k = kw__wire_kernels_get(KW_WIRE_ISA_AUTO);
    for (size_t r = 0; r < n_rows; ++r)
        k->rotate(x + r * row_stride, KW_WIRE_DTYPE_F32, x + r * row_stride, KW_WIRE_DTYPE_F32, head_dim, sx, inverse);
    return 0;
}

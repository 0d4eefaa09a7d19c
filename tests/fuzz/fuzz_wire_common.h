/* fuzz_wire_common.h: what both KVWire fuzz targets check on every input: decode everything the decoder accepts
 * (positions, K and V as f32 and as bf16) and assert the guarantees of docs/FORMAT.md on the result: positions
 * strictly increasing and in range, every value finite and at most the largest bf16, bf16 output equal to the RNE of
 * the f32 output, and a byte breakdown that adds up to the bytes consumed. A violated invariant aborts: it is our
 * bug, never the input's fault. Fuzz-only code. */
#ifndef KW_FUZZ_WIRE_COMMON_H
#define KW_FUZZ_WIRE_COMMON_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_bytes.h"
#include "tests/fuzz/fuzz_check.h"
#include "wire/kw_wire.h"
#include "wire/kw_wire_internal.h"

/* Small limits keep each input cheap; the logic is the same as with the defaults. */
static inline void fuzz_wire_options(kw_wire_decoder_options *opt) {
    memset(opt, 0, sizeof *opt);
    kw_wire_limits_default(&opt->limits);
    opt->limits.max_section_bytes = 1u << 20;
    opt->limits.max_positions = 1u << 16;
}

/* A running digest of everything decoded, to compare two decoders. */
typedef struct fuzz_digest {
    uint64_t h;
    uint32_t sections;
} fuzz_digest;

static inline void fuzz_mix(fuzz_digest *d, const void *p, size_t n) {
    const uint8_t *b = p;
    for (size_t i = 0; i < n; ++i)
        d->h = (d->h ^ b[i]) * 0x100000001b3ull;
}

/* Decodes and checks one verified section; folds it into the digest. Returns the dequantization status. */
static inline int fuzz_wire_section(const kw_wire_section *s, fuzz_digest *dg) {
    const size_t T = s->n_tokens, H = s->n_kv_heads, D = s->head_dim, n = T * H * D;
    uint32_t *pos = malloc(T * sizeof *pos);
    float *k = malloc(n * 4), *v = malloc(n * 4);
    uint16_t *kb = malloc(n * 2), *vb = malloc(n * 2);
    FUZZ_CHECK(pos && k && v && kb && vb);
    FUZZ_CHECK(kw_wire_section_positions(s, pos, T) == 0); /* positions were validated before the section came out */
    for (size_t t = 0; t < T; ++t) {
        FUZZ_CHECK(pos[t] < s->n_positions);
        FUZZ_CHECK(t == 0 || pos[t] > pos[t - 1]);
    }
    uint64_t body = s->index_bytes;
    for (uint32_t g = 0; g < s->n_groups; ++g)
        body += (uint64_t)s->groups[g].k.scale_bytes + s->groups[g].k.zero_bytes + s->groups[g].k.code_bytes +
                s->groups[g].v.scale_bytes + s->groups[g].v.zero_bytes + s->groups[g].v.code_bytes;
    FUZZ_CHECK(body + s->outlier_bytes == s->raw_body_bytes);
    FUZZ_CHECK((s->outlier_table != NULL) == (s->n_outliers > 0) && s->n_outliers <= 2 * n);
    const kw_wire_tensor_out ko = {k, KW_WIRE_DTYPE_F32, T * D, D}, vo = {v, KW_WIRE_DTYPE_F32, T * D, D};
    const kw_wire_tensor_out kbo = {kb, KW_WIRE_DTYPE_BF16, D, H * D}, vbo = {vb, KW_WIRE_DTYPE_BF16, D, H * D};
    const int rc = kw_wire_section_dequantize(s, &ko, &vo);
    const int rcb = kw_wire_section_dequantize(s, &kbo, &vbo);
    FUZZ_CHECK(rc == rcb);
    FUZZ_CHECK(rc == 0 || rc == KW_E_WIRE_VALUE);
    if (rc == 0) {
        for (size_t h = 0; h < H; ++h)
            for (size_t t = 0; t < T; ++t)
                for (size_t d = 0; d < D; ++d) {
                    const size_t e = (h * T + t) * D + d, eb = (t * H + h) * D + d;
                    FUZZ_CHECK(isfinite(k[e]) && fabsf(k[e]) <= KW_WIRE_BF16_MAX);
                    FUZZ_CHECK(isfinite(v[e]) && fabsf(v[e]) <= KW_WIRE_BF16_MAX);
                    FUZZ_CHECK(kb[eb] == kw_f32_to_bf16(k[e]) && vb[eb] == kw_f32_to_bf16(v[e]));
                }
        fuzz_mix(dg, k, n * 4);
        fuzz_mix(dg, v, n * 4);
    }
    fuzz_mix(dg, pos, T * 4);
    fuzz_mix(dg, &s->layer, sizeof s->layer);
    dg->sections++;
    free(pos);
    free(k);
    free(v);
    free(kb);
    free(vb);
    return rc;
}

static inline void fuzz_check_breakdown(const kw_wire_breakdown *bd, uint64_t consumed) {
    FUZZ_CHECK(bd->total == consumed);
    FUZZ_CHECK(bd->header + bd->indices + bd->scales + bd->payload + bd->outliers + bd->checksums -
                   bd->compression_saved ==
               bd->total);
}

/* The one-shot decode of data: returns the final status (0 = a complete valid blob). */
static inline int fuzz_wire_oneshot(const uint8_t *data, size_t size, fuzz_digest *dg) {
    kw_wire_decoder_options opt;
    fuzz_wire_options(&opt);
    kw_wire_reader *r;
    const kw_wire_header *h;
    int rc = kw_wire_reader_open(data, size, &opt, &r, &h);
    if (rc < 0) return rc;
    FUZZ_CHECK(h->n_layers >= 1 && h->n_sections <= h->n_layers && h->head_dim % 8 == 0);
    const kw_wire_section *s;
    uint32_t n = 0;
    while ((rc = kw_wire_reader_next(r, &s)) == 1) {
        FUZZ_CHECK(s->ordinal == n++);
        const int d = fuzz_wire_section(s, dg);
        if (d < 0) {
            rc = d;
            break;
        }
    }
    if (rc == 0) {
        FUZZ_CHECK(n == h->n_sections);
        fuzz_check_breakdown(kw_wire_reader_breakdown(r), size);
    }
    kw_wire_reader_close(r);
    return rc;
}

/* Rewrites every checksum of a (possibly malformed) blob that the structure lets us locate: the header, each section
 * (walking the declared sizes) and the trailer. Without this nearly every mutation dies at the header checksum and
 * the fuzzer never reaches the section and body checks; the library itself has no fuzzing mode. */
static inline void fuzz_wire_reseal(uint8_t *p, size_t size) {
    if (size < KW_WIRE_HEADER_BYTES) return;
    kw_store_le64(p + KW__HDR_CHECKSUM, kw__wire_hash_bytes(p, KW__HDR_CHECKSUM));
    kw__wire_hash blob;
    kw__wire_hash_reset(&blob);
    kw__wire_hash_update(&blob, p, KW_WIRE_HEADER_BYTES);
    const uint32_t n = kw_load_le16(p + KW__HDR_N_SECTIONS);
    size_t at = KW_WIRE_HEADER_BYTES;
    for (uint32_t s = 0; s < n; ++s) {
        if (size - at < KW_WIRE_SECTION_HEAD_BYTES) return;
        const uint64_t len = KW_WIRE_SECTION_HEAD_BYTES +
                             (uint64_t)KW_WIRE_GROUP_DESC_BYTES * kw_load_le16(p + at + KW__SEC_N_GROUPS) +
                             kw_load_le32(p + at + KW__SEC_STORED_BYTES);
        if (len + KW_WIRE_CHECKSUM_BYTES > size - at) return;
        kw_store_le64(p + at + len, kw__wire_hash_bytes(p + at, (size_t)len));
        kw__wire_hash_update(&blob, p + at + len, KW_WIRE_CHECKSUM_BYTES);
        at += (size_t)len + KW_WIRE_CHECKSUM_BYTES;
    }
    if (size - at < KW_WIRE_TRAILER_BYTES) return;
    kw__wire_hash_update(&blob, p + at, KW__TRL_CHECKSUM);
    kw_store_le64(p + at + KW__TRL_CHECKSUM, kw__wire_hash_digest(&blob));
}

#endif /* KW_FUZZ_WIRE_COMMON_H */

/* kw_wire_rans.h: the static order-0 byte coder of KVWire v1.1 section bodies (docs/FORMAT.md §5.15, section flag
 * bit 5): up to four frequency tables per body, each byte coded by the table of the run it lies in, the bytes of a
 * table in the order of the bytes read as signed integers (0, -1, 1, -2, ...), rare bytes escaped to 8 raw bits, and
 * four interleaved 32-bit rANS states over 12-bit probabilities renormalizing by 16-bit words. Internal to wire/ and
 * its tests.
 */
#ifndef KW_WIRE_RANS_H
#define KW_WIRE_RANS_H

#include <stddef.h>
#include <stdint.h>

enum {
    KW__WIRE_RANS_MAX_TABLES = 4,   /* tables a coded body may carry */
    KW__WIRE_RANS_MAX_CLASSES = 16, /* kinds of bytes an encoder's caller may name (merged into at most 4 tables) */
};

/* A stretch of the body whose bytes are alike (the caller's knowledge of the layout: scales, K codes, ...). */
typedef struct {
    uint32_t bytes; /* may be 0 (skipped) */
    uint8_t cls;    /* < KW__WIRE_RANS_MAX_CLASSES */
} kw__wire_rans_run;

/* Codes src[0, n) into dst[0, cap): the run list, the tables, then the rANS words. runs[0, n_runs) (borrowed) say
 * which class each byte belongs to and must cover exactly n bytes; runs = NULL puts every byte in one class. The
 * encoder merges classes whose bytes are alike enough that one table costs less than two, down to at most four.
 * *out gets the coded size.
 * @return 0; KW_E_BUFFER_TOO_SMALL when the coded body would not fit in cap bytes (a caller that wants the body only
 *         when it is smaller passes cap = n - 1 and stores it raw on this status); KW_E_INVALID_ARG for a null
 *         pointer, runs that do not cover n bytes or a class out of range. The same input gives the same bytes on
 *         every build. */
int kw__wire_rans_encode(const uint8_t *src, size_t n, const kw__wire_rans_run *runs, size_t n_runs, uint8_t *dst,
                         size_t cap, size_t *out);

/* Decodes src[0, stored) into exactly n bytes at dst (caller-owned, n bytes).
 * @return 0; KW_E_WIRE_COMPRESSION for anything but a coded body of exactly n bytes that uses every stored byte and
 *         ends in the coder's initial states (a malformed run list or table, a bad escape, a truncated or overlong
 *         stream). */
int kw__wire_rans_decode(const uint8_t *src, size_t stored, uint8_t *dst, size_t n);

/* log2(v) in units of 2^-16 (0 for v = 0), within 2 units of the exact value, by integer arithmetic only (the encoder's
 * size estimates, and so its bytes, must not depend on a platform's libm). */
uint32_t kw__wire_rans_log2_q16(uint64_t v);

/* The byte value in table position z (0, -1, 1, -2, 2, ... as two's-complement bytes) and back. */
static inline uint8_t kw__wire_rans_byte(unsigned z) {
    return (z & 1u) ? (uint8_t)(256u - (z + 1u) / 2u) : (uint8_t)(z / 2u);
}
static inline unsigned kw__wire_rans_rank(uint8_t b) {
    return (uint8_t)(b << 1) ^ (b >> 7 ? 0xffu : 0u); /* zigzag, branch-free: 2v for v >= 0, -2v - 1 below */
}

#endif

/* kw_wire_rans.h: the static order-0 byte coder of KVWire v1.1 section bodies (docs/FORMAT.md §5.15, section flag
 * bit 5): one frequency table per body, in the order of the bytes read as signed integers (0, -1, 1, -2, ...), rare
 * bytes escaped to 8 raw bits, and a 32-bit rANS state over 12-bit probabilities. Internal to wire/ and its tests.
 */
#ifndef KW_WIRE_RANS_H
#define KW_WIRE_RANS_H

#include <stddef.h>
#include <stdint.h>

/* Codes src[0, n) into dst[0, cap): the table, then the rANS bytes. *out gets the coded size.
 * @return 0; KW_E_BUFFER_TOO_SMALL when the coded body would not fit in cap bytes (a caller that wants the body only
 *         when it is smaller passes cap = n - 1 and stores it raw on this status); KW_E_INVALID_ARG for a null
 *         pointer. The same input gives the same bytes on every build. */
int kw__wire_rans_encode(const uint8_t *src, size_t n, uint8_t *dst, size_t cap, size_t *out);

/* Decodes src[0, stored) into exactly n bytes at dst (caller-owned, n bytes).
 * @return 0; KW_E_WIRE_COMPRESSION for anything but a coded body of exactly n bytes that uses every stored byte and
 *         ends in the coder's initial state (a malformed table, a bad escape, a truncated or overlong stream). */
int kw__wire_rans_decode(const uint8_t *src, size_t stored, uint8_t *dst, size_t n);

/* The byte value in table position z (0, -1, 1, -2, 2, ... as two's-complement bytes) and back. */
static inline uint8_t kw__wire_rans_byte(unsigned z) {
    return (z & 1u) ? (uint8_t)(256u - (z + 1u) / 2u) : (uint8_t)(z / 2u);
}
static inline unsigned kw__wire_rans_rank(uint8_t b) {
    return b < 128u ? 2u * b : 2u * (256u - b) - 1u;
}

#endif

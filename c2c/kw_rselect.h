/* kw_rselect.h: the receiver-aware selections with "scoring: receiver" (docs/PROTOCOL.md "Receiver-aware
 * selections"): the selection a receiver makes on a preview of the sharer's rows and sends back, as the sharer uses
 * it to send the final rows. One entry per sent (section, sharer layer): the union of its targets' top-k (the rows
 * to send) and, when the layer feeds more than one target, one bitmap per target (kw_share_targets), exactly what
 * kw_rscore_select gives on the sharer with "scoring: local".
 *
 * The encoding (SHARE_SELECTION, every integer an unsigned LEB128 varint, bitmaps LSB first over the section's
 * offsets, ceil(length / 8) bytes, the bits past length zero):
 *   n_entries, then per entry, strictly increasing in (pos0, layer):
 *     pos0 layer length | union bitmap | n_targets (0, or 2..KW_SHARE_MAX_TARGETS) | per target: layer bitmap
 *   with the targets' layers strictly increasing, each target bitmap a subset of the union, their union the union
 *   and the union not empty. kw_rselect_decode refuses anything else (the bytes come from a peer).
 * Not here: scoring (c2c/kw_rscore.h), the preview blob (receiver/kw_receive_preview.h), frames and sockets.
 */
#ifndef KW_RSELECT_H
#define KW_RSELECT_H

#include <stddef.h>
#include <stdint.h>

#include "c2c/kw_share.h"

/* Most entries a selection holds (sections times sharer layers). */
#define KW_RSELECT_MAX_ENTRIES 65536
/* Highest layer number (sharer or receiver) an entry names. */
#define KW_RSELECT_MAX_LAYER 1023

/* One sent (section, sharer layer). */
typedef struct kw_rselect_entry {
    int64_t pos0, length; /* the section: cache positions [pos0, pos0 + length) */
    int32_t layer;        /* sharer layer */
    int64_t n_rows;
    int64_t *rows; /* n_rows ascending offsets in [0, length) (owned) */
    int32_t n_targets;
    int32_t targets[KW_SHARE_MAX_TARGETS]; /* receiver layers, ascending */
    uint8_t *masks;                        /* n_targets bitmaps of ceil(length / 8) bytes (owned; NULL if none) */
    const uint8_t *mask_ptrs[KW_SHARE_MAX_TARGETS]; /* into masks */
} kw_rselect_entry;

typedef struct kw_rselect {
    kw_rselect_entry *entries; /* owned */
    int32_t n, cap;
} kw_rselect;

/* Frees the entries and zeroes s. NULL is a no-op. */
void kw_rselect_free(kw_rselect *s);

/* Appends one entry (copies rows[0..n_rows) and t's bitmaps; t may be NULL or have n 0). Entries must come strictly
 * increasing in (pos0, layer). Errors: KW_E_INVALID_ARG, KW_E_LIMIT, KW_E_NOMEM. */
int kw_rselect_add(kw_rselect *s, int64_t pos0, int64_t length, int32_t layer, const int64_t *rows, int64_t n_rows,
                   const kw_share_targets *t);

/* The encoding above: *out (*len bytes) is owned by the caller (free). */
int kw_rselect_encode(const kw_rselect *s, uint8_t **out, size_t *len);

/* Decodes len bytes (borrowed) into *out (the caller's, freed with kw_rselect_free also on failure), every position
 * below max_positions. Errors: KW_E_TRUNCATED, KW_E_LIMIT (counts), KW_E_PARSE (order, bitmaps, trailing bytes),
 * KW_E_NOMEM. */
int kw_rselect_decode(const uint8_t *buf, size_t len, int64_t max_positions, kw_rselect *out);

/* The entry for (pos0, layer), or NULL. */
const kw_rselect_entry *kw_rselect_find(const kw_rselect *s, int64_t pos0, int32_t layer);

/* kw_share_options' select hook (c2c/kw_share.h) replaying a received selection: user is the const kw_rselect; the
 * rows k, v are not read. KW_E_STATE when the selection has no entry for the layer or another section length. */
int kw_rselect_share_select(void *user, const kw_select_policy *pol, int32_t layer, int64_t pos0, int64_t T,
                            const float *k, const float *v, int64_t *out, int64_t *n_out, kw_share_targets *targets);

#endif /* KW_RSELECT_H */

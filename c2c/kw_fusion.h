/* kw_fusion.h: the receiver side of C2C fusion (c2c_spec.md §1): the receiver's own prefill, per-layer projection of
 * sharer K/V rows into the receiver cache as they arrive, then the last prompt token and greedy decoding with the
 * receiver alone. The sharer side (prefill, selection, transfer) is not here: sharer rows come in through
 * kw_fusion_put, from the sharer half over a network (receiver/), or from sharer models in the same process
 * (kw_fusion_run, the in-process reference this library is tested against).
 *
 * The prompt is cut into sections, as the reference's kv_cache_index list (§1.2, §1.3 at commit d03cc7b). For each
 * section [start, end) but the last:
 *   1. the receiver runs the section on its cache (rows start..end-1, unfused: the whole section through every layer);
 *   2. if the section's index value is > 0 it is a bitmask of sharers (bit k selects sharers[k]); for each selected
 *      sharer, rows of the sharer layers the fuser maps to arrive (all the section's positions, or a selection of
 *      them), and every receiver layer t with an open gate gets those positions replaced by
 *      Projector_t(sharer rows, receiver rows); the other positions keep the receiver's own rows.
 *      Sequential mode applies the sharers one after the other (sharer k+1 sees the rows fused by sharer k, as the
 *      cache holds them); parallel mode projects every sharer from the clean rows and writes
 *      base + sum_s (proj_s(base) - base), summed in fp32 (§1.8).
 * The last section is never fused, whatever its index value: the receiver runs it on the fused cache (its last row
 * gives the first token's logits) and decodes greedily (kw_generate_greedy: EOS list, max_new_tokens). Layers whose
 * projector has both gates closed are skipped (reported); a closed branch leaves its K or V rows untouched. The
 * projector works row by row, so fusing a selection of positions gives those positions exactly the values fusing
 * the whole section would.
 *
 * Sharers with another tokenizer (token alignment, c2c/kw_align.h, §4) get their own ids and padding flags; the
 * caller hides the receiver's padding rows with kw_kvcache_set_valid on the receiver cache. Positions are the cache
 * rows, the same for every model, pads included. Not here: the include_response mode (§1.6), sampling, the wire codecs
 * (c2c/ does not depend on wire/: kw_fusion_run's transfer hook and the receiver half are where codecs plug in).
 */
#ifndef KW_FUSION_H
#define KW_FUSION_H

#include <stdint.h>

#include "c2c/kw_fuser_load.h"
#include "c2c/kw_projector.h"
#include "model/kw_generate.h"
#include "model/kw_kvcache.h"
#include "model/kw_model.h"

/* Most sharers one fusion can hold (a section's bitmask has one bit per sharer). */
#define KW_FUSION_MAX_SHARERS 8

/* One section of the prompt: a kv_cache_index entry. */
typedef struct kw_fusion_section {
    int64_t length; /* tokens, >= 1 */
    int32_t index;  /* > 0: bitmask of sharers to fuse from (bit k = sharers[k]); <= 0 (-1, 0): no projection */
} kw_fusion_section;

/* The standard split (§1.2): [n_prompt - 1 tokens with index mask][1 token, never fused]; with n_prompt == 1 a single
 * section. out needs 2 entries; *n_out receives the count. */
int kw_fusion_sections_standard(int64_t n_prompt, int32_t mask, kw_fusion_section *out, int32_t *n_out);

enum kw_fusion_order {
    KW_FUSION_FRONT = 0, /* the fused tokens first */
    KW_FUSION_BACK = 1,  /* the fused tokens last (just before the final token) */
};

/* The cache-length setting of the reference evaluator (create_segmented_kv_cache_index, latentwire_spec.md §1.3):
 * of the instruction's n_prompt - 1 tokens, pos = floor((n_prompt - 1) * proportion) get index mask and the others
 * -1, in front or back order, then the final token (-1); the per-token list is cut into runs of equal value, so
 * with front order the unfused tokens join the final section (the sharer never sees them). proportion in [0, 1].
 * out needs 3 entries. */
int kw_fusion_sections_proportion(int64_t n_prompt, double proportion, enum kw_fusion_order order, int32_t mask,
                                  kw_fusion_section *out, int32_t *n_out);

enum kw_fusion_mode {
    KW_FUSION_SEQUENTIAL = 0, /* the evaluation default (load_rosetta_model) */
    KW_FUSION_PARALLEL = 1,
};

/* What the transfer hook sees: the selected sharer K and V rows of one sharer layer for one section, i.e. what the
 * sharer would send. k and v are host arrays (n_tokens, n_heads, head_dim), token-major, f32 (exact bf16 values when
 * the sharer cache is bf16), owned by the pipeline and valid during the call. The hook may overwrite them (what the
 * receiver would get over the wire); they are then used for every receiver layer mapped to that sharer layer (with
 * BF16 numerics the projector rounds them to bf16 first, as the reference casts decoded values to the model dtype). */
typedef struct kw_fusion_transfer {
    int32_t sharer;            /* index into the sharer list */
    int32_t source_layer;      /* sharer layer */
    int32_t n_source_layers;   /* layers of the sharer model */
    int32_t layer_index;       /* this call is number layer_index (from 0) of the n_layers_sent calls that hand */
    int32_t n_layers_sent;     /* over this sharer's rows for this section, in increasing source_layer order */
    int32_t section;           /* section index */
    int64_t pos0;              /* first position of the section */
    int64_t n_tokens;          /* rows */
    int32_t n_heads;           /* sharer kv heads */
    int32_t head_dim;          /* sharer head_dim */
    enum kw_dtype cache_dtype; /* the sharer cache's dtype */
    float *k, *v;
    int64_t wire_bytes; /* set by the hook: bytes it transferred for this layer (e.g. a KVWire blob), 0 if none */
} kw_fusion_transfer;

/* kw_fusion_run's transfer hook. Called once per (fused section, selected sharer, needed sharer layer), in that order,
 * after the sharers' prefill and before projection; the layer_index / n_layers_sent pair lets a hook frame one message
 * (e.g. one KVWire blob) per section and sharer. A negative return aborts the run with that status. */
typedef int (*kw_fusion_hook_fn)(void *user, kw_fusion_transfer *t);

/* One sharer as the fusion sees it. */
typedef struct kw_fusion_sharer {
    kw_model *model;       /* borrowed, optional: kw_fusion_run prefills it in process (on the receiver's backend);
                              NULL for a sharer elsewhere (its rows come in through kw_fusion_put) */
    const kw_fuser *fuser; /* borrowed; its mapping targets the receiver and sources this sharer */
    int32_t n_layers, n_kv_heads, head_dim; /* the sharer's cache geometry; 0: taken from model */
} kw_fusion_sharer;

typedef struct kw_fusion kw_fusion; /* opaque: the models (borrowed), projector bindings and scratch (owned) */

/* Binds every projector of every sharer's fuser on the receiver's backend and checks the fusers against the models
 * (kw_fuser_check_models). All models must share one backend. Models and fusers are borrowed and must outlive the
 * fusion. A fusion holds scratch and serves one thread at a time; threads that fuse at once each create their own on
 * their own model fork (kw_model_fork on a stream context, as the daemons' compute threads do), sharing the read-only
 * fuser. max_rows: positions per projector GEMM chunk (0: 256). *out is owned by the caller (kw_fusion_free).
 * Errors: KW_E_INVALID_ARG, KW_E_FUSER_CONFIG (dims or layers that do not fit the models), kw_projector_create's. */
int kw_fusion_create(kw_model *receiver, const kw_fusion_sharer *sharers, int32_t n_sharers, int64_t max_rows,
                     kw_fusion **out);

/* Releases the bindings and scratch. NULL is a no-op. */
void kw_fusion_free(kw_fusion *f);

/* The number of sharers, and sharer i's cache geometry (any output may be NULL). */
int32_t kw_fusion_n_sharers(const kw_fusion *f);
int kw_fusion_sharer_geometry(const kw_fusion *f, int32_t sharer, int32_t *n_layers, int32_t *n_kv_heads,
                              int32_t *head_dim);

/* The sharer layers whose rows fusion uses (some receiver layer with an open gate maps to them), ascending, into
 * layers (cap entries); *n receives the count (KW_E_LIMIT if cap is short). */
int kw_fusion_needed_layers(const kw_fusion *f, int32_t sharer, int32_t *layers, int32_t cap, int32_t *n);

/* The receiver layers with an open gate that take their rows from layer source_layer of the sharer, ascending, into
 * targets (cap entries); *n receives the count (KW_E_LIMIT if cap is short). */
int kw_fusion_layer_targets(const kw_fusion *f, int32_t sharer, int32_t source_layer, int32_t *targets, int32_t cap,
                            int32_t *n);

/* Runs receiver layer target's projector of the sharer on n host rows, outside any session (what the receiver-aware
 * selection scores, c2c/kw_rscore.h): src_k, src_v (n, sharer kv heads, sharer head_dim) and base_k, base_v (n,
 * receiver kv heads, receiver head_dim) f32, borrowed; writes the fused V rows (n, receiver kv heads, head_dim) to
 * out_v. Synchronizes the backend. Uses the fusion's projector workspace: not while a session of this fusion fuses
 * on another thread. Errors: KW_E_INVALID_ARG (no such sharer or mapped layer), the projector's. */
int kw_fusion_project_v(kw_fusion *f, int32_t sharer, int32_t target, enum kw_projector_numerics numerics, int64_t n,
                        const float *src_k, const float *src_v, const float *base_k, const float *base_v, float *out_v);

typedef struct kw_fusion_options {
    const kw_fusion_section *sections; /* borrowed; lengths sum to the prompt length */
    int32_t n_sections;
    enum kw_fusion_mode mode;
    enum kw_projector_numerics numerics;
    kw_generate_options gen; /* max_new_tokens, EOS ids (NULL: the receiver's), logits rounding */
    /* kw_fusion_run only (the in-process sharers): */
    enum kw_dtype sharer_cache_dtype; /* KW_DTYPE_BF16 (as HF bf16 caches) or KW_DTYPE_F32 */
    kw_fusion_hook_fn hook;           /* NULL: no transfer step */
    void *hook_user;
    const int32_t *const *sharer_ids; /* NULL, or per sharer NULL / its own n ids (token alignment); else ids */
    const uint8_t *const *sharer_pad; /* NULL, or per sharer NULL / n flags: 1 = padding, hidden from its attention */
} kw_fusion_options;

typedef struct kw_fusion_stats {
    double receiver_prefill_ms; /* receiver forward over the non-last sections */
    double sharer_prefill_ms;   /* kw_fusion_run: every sharer over the non-last sections */
    double transfer_ms;         /* kw_fusion_run: reading the sharer rows to the host and the hook; both: staging
                                   the rows that kw_fusion_put received on the backend */
    double projection_ms;       /* projector forwards and cache reads/writes, synchronized */
    double last_prompt_ms;      /* the last section up to the first token's logits */
    double decode_ms;           /* the decode steps after the first token */
    int64_t n_decode;           /* decode steps timed in decode_ms */
    int64_t tokens_fused;       /* positions of fused sections that received rows from at least one sharer */
    int32_t layers_fused;       /* (sharer, receiver layer) pairs projected at least once */
    int32_t layers_skipped;     /* pairs of selected sharers skipped: both gates closed or layer not mapped */
    int64_t sharer_kv_bytes;    /* bytes of the sharer K/V rows handed to projection, at the sharer cache's dtype */
    int64_t wire_bytes;         /* sum of the hook's wire_bytes */
    int32_t hook_calls;
} kw_fusion_stats;

typedef struct kw_fusion_result {
    kw_generate_result gen; /* the new tokens (owned: kw_fusion_result_free) and the generate timings */
    kw_fusion_stats stats;
} kw_fusion_result;

/* ------------------------------------------------------------------------------------------------------------
 * The receiver half, step by step: begin, then for each section but the last prefill it, put the sharer rows that
 * arrive (fused sections only) and end it; then generate. A session is used by one thread.
 */

typedef struct kw_fusion_session kw_fusion_session; /* opaque */

/* Starts a request on prompt ids[0..n) (the receiver's ids; borrowed, must outlive the session) with an empty
 * receiver cache (capacity >= n + max_new_tokens; its validity mask is respected, so padding rows may be marked
 * before). opt and its sections are copied. *out is owned by the caller (kw_fusion_session_free). Errors:
 * KW_E_INVALID_ARG (sections, masks, cache). */
int kw_fusion_begin(kw_fusion *f, kw_kvcache *cache, const int32_t *ids, int64_t n, const kw_fusion_options *opt,
                    kw_fusion_session **out);

/* Prefills the next section (section must be the next one, not the last) on the receiver. */
int kw_fusion_prefill(kw_fusion_session *s, int32_t section);

/* The rows of one sharer layer for one section, as the sharer sent them. */
typedef struct kw_fusion_rows {
    int32_t sharer;           /* index into the sharer list; must be selected by the section's mask */
    int32_t section;          /* the section prefilled last and not yet ended */
    int32_t source_layer;     /* a sharer layer that kw_fusion_needed_layers lists, at most once per section */
    int64_t n_rows;           /* >= 1 */
    const int64_t *positions; /* n_rows strictly increasing cache positions inside the section; NULL: all of it */
    const float *k, *v;       /* (n_rows, sharer kv heads, sharer head_dim) f32 host arrays, borrowed for the call */
    /* or, with k and v NULL: the rows already on the fusion's backend (n_rows, heads, head_dim) f32 tensors (the
     * receiver's device decode), copied there without a host round trip; borrowed for the call (target subsets below
     * gather from the staged copy there, either way) */
    const kw_tensor *dk, *dv;
    /* a selection per (sharer layer, receiver layer) pair (the receiver-aware selections): receiver layer
     * target_layers[j] fuses only the rows whose position p has bit p - (section start) of target_masks[j] set (LSB
     * first, one bit per position of the section); a receiver layer not listed fuses every row. n_targets 0: every
     * receiver layer every row. Borrowed for the call; sequential mode only (KW_E_UNSUPPORTED in parallel mode). */
    int32_t n_targets;
    const int32_t *target_layers;
    const uint8_t *const *target_masks;
} kw_fusion_rows;

/* Stages the rows on the backend and fuses every receiver layer they make ready (sequential mode: sharer i at
 * layer t once its rows and those of every earlier selected sharer at t are there; parallel mode: once every
 * selected sharer's are). Errors: KW_E_INVALID_ARG (order, ranges, positions, a layer sent twice),
 * KW_E_UNSUPPORTED (parallel mode with other positions per sharer). */
int kw_fusion_put(kw_fusion_session *s, const kw_fusion_rows *rows);

/* Opens the fused section right before the last again, after it was ended, for more rows (round two of a
 * refinement, docs/PROTOCOL.md §5.1): the cache must hold exactly the sections before the last (a trial run of the
 * last section rolled back). The rows put then must be at positions that got no rows in that layer before (the
 * caller checks it: receiver/kw_receive.c); they are projected with the receiver's own rows there, so with a
 * per-token projector the cache ends as if both rounds' rows had come at once. End it with kw_fusion_end_section.
 * Errors: KW_E_STATE. */
int kw_fusion_reopen(kw_fusion_session *s, int32_t section);

/* Declares that no more rows come for the section: what can still be fused is (sequential: skipping sharers whose
 * rows never came), the rest counts as skipped, the staged rows are released. */
int kw_fusion_end_section(kw_fusion_session *s, int32_t section);

/* Runs the last section on the fused cache and decodes greedily; every other section must have been prefilled and
 * ended. *out (the tokens, owned: kw_fusion_result_free, and the session's stats) is zeroed on failure. */
int kw_fusion_generate(kw_fusion_session *s, kw_fusion_result *out);

/* The statistics so far (owned by the session). */
const kw_fusion_stats *kw_fusion_session_stats(const kw_fusion_session *s);

/* Releases the staged rows and scratch. NULL is a no-op. */
void kw_fusion_session_free(kw_fusion_session *s);

/* ------------------------------------------------------------------------------------------------------------
 * In process: the sharers run here (every sharer needs its model)
 */

/* Runs the pipeline on prompt ids[0..n) (the receiver's token ids; the sharers get the same ids unless
 * opt->sharer_ids) with an empty receiver cache (created by kw_model_create_cache for the receiver; capacity >= n +
 * max_new_tokens; its validity mask is respected, so padding rows may be marked before the run). On return the
 * cache holds the prompt (fused rows included) and the generated tokens but the last; sharer caches are internal.
 * On failure *out is zeroed. Errors: KW_E_INVALID_ARG (sections, masks, cache), the model's and the hook's. */
int kw_fusion_run(kw_fusion *f, kw_kvcache *cache, const int32_t *ids, int64_t n, const kw_fusion_options *opt,
                  kw_fusion_result *out);

/* Releases out->gen.ids and zeroes *out. NULL is a no-op. */
void kw_fusion_result_free(kw_fusion_result *out);

#endif /* KW_FUSION_H */

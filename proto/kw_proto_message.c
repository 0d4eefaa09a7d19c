/* kw_proto_message.c: packing control messages into frames, and unpacking and validating them (docs/PROTOCOL.md
 * §4, §5).
 *
 * Unpacking is protobuf-c's, under a memory budget (a counting allocator refuses to go past max_unpacked_bytes, so
 * a small frame cannot make a large allocation). Validation has two passes: a generic walk over the message
 * descriptors (unknown fields, enum values, UTF-8 of strings) and the per-message rules (lengths, ranges, order),
 * which a sender can run on what it is about to send (kw_proto_message_check).
 * Not here: frames and the streaming decoder (kw_proto_frame.c).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "common/kw_bytes.h"
#include "common/kw_status.h"
#include "proto/kw_proto.h"

/* Per-message limits (PROTOCOL.md §5); the shape limits are KVWire's (FORMAT.md §9.1). */
#define KW__PROTO_MAX_NAME_BYTES    128
#define KW__PROTO_MAX_LIST          64
#define KW__PROTO_MAX_LAYERS        1024
#define KW__PROTO_MAX_HEADS         256
#define KW__PROTO_MAX_HEAD_DIM      1024
#define KW__PROTO_MAX_TEXT_BYTES    (1u << 20)
#define KW__PROTO_MAX_ERROR_BYTES   4096
#define KW__PROTO_DIGEST_BYTES      32
#define KW__PROTO_MAX_SECTIONS      1024
#define KW__PROTO_MAX_BUDGET_CODECS 8 /* KW_WIRE_ALLOC_MAX_CODECS; proto/ does not depend on wire/ */

// ---------------------------------------------------------------------------------------------------------------
// Packing

int kw_proto_message_frame_size(uint32_t type, const ProtobufCMessage *msg, size_t *out) {
    const ProtobufCMessageDescriptor *desc = kw_proto_frame_descriptor(type);
    KW_RETURN_IF(!desc || !msg || msg->descriptor != desc, KW_E_INVALID_ARG, "a %s message cannot travel in a %s frame",
                 msg && msg->descriptor ? msg->descriptor->short_name : "NULL", kw_proto_frame_type_name(type));
    const size_t n = protobuf_c_message_get_packed_size(msg) + KW_PROTO_MESSAGE_CHECKSUM_BYTES;
    KW_RETURN_IF(n > UINT32_MAX, KW_E_PROTO_FRAME_SIZE, "a %zu-byte %s does not fit a frame", n, desc->short_name);
    *out = KW_PROTO_FRAME_HEADER_BYTES + n;
    return 0;
}

int kw_proto_message_frame_write(uint32_t type, const ProtobufCMessage *msg, void *dst, size_t cap, size_t *written) {
    size_t size;
    KW_FORWARD(kw_proto_message_frame_size(type, msg, &size));
    KW_RETURN_IF(cap < size, KW_E_BUFFER_TOO_SMALL, "a %s frame needs %zu bytes, %zu given",
                 msg->descriptor->short_name, size, cap);
    uint8_t *p = dst;
    KW_FORWARD(kw_proto_frame_header_write(type, size - KW_PROTO_FRAME_HEADER_BYTES, p));
    uint8_t *body = p + KW_PROTO_FRAME_HEADER_BYTES;
    const size_t body_len = size - KW_PROTO_FRAME_HEADER_BYTES - KW_PROTO_MESSAGE_CHECKSUM_BYTES;
    const size_t packed = protobuf_c_message_pack(msg, body);
    KW_RETURN_IF(packed != body_len, KW_E_INTERNAL, "protobuf-c packed %zu bytes, sized %zu", packed, body_len);
    kw_store_le32(body + body_len, kw_proto_message_checksum(type, body, body_len));
    *written = size;
    return 0;
}

int kw_proto_message_frame_pack(uint32_t type, const ProtobufCMessage *msg, uint8_t **out, size_t *out_len) {
    size_t size;
    KW_FORWARD(kw_proto_message_frame_size(type, msg, &size));
    uint8_t *buf = malloc(size);
    KW_RETURN_IF(!buf, KW_E_NOMEM, "cannot allocate a %zu-byte frame", size);
    const int rc = kw_proto_message_frame_write(type, msg, buf, size, out_len);
    if (rc < 0) {
        free(buf);
        return rc;
    }
    *out = buf;
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// Generic validation: unknown fields, enum values, UTF-8

/* Strict UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing above U+10FFFF. */
static bool kw__proto_utf8_valid(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        const uint8_t c = s[i];
        if (c < 0x80) {
            ++i;
            continue;
        }
        size_t len;
        uint32_t cp, min;
        if ((c & 0xe0) == 0xc0) {
            len = 2, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            len = 3, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            len = 4, cp = c & 0x07, min = 0x10000;
        } else {
            return false;
        }
        if (n - i < len) return false;
        for (size_t k = 1; k < len; ++k) {
            if ((s[i + k] & 0xc0) != 0x80) return false;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
        i += len;
    }
    return true;
}

/* Walks msg and everything nested in it. allow_unknown: unknown fields are tolerated (Hello, HelloReply). */
static int kw__proto_walk(const ProtobufCMessage *msg, bool allow_unknown) {
    const ProtobufCMessageDescriptor *desc = msg->descriptor;
    KW_RETURN_IF(!allow_unknown && msg->n_unknown_fields, KW_E_PROTO_FIELD, "%s: unknown field number %u",
                 desc->short_name, msg->unknown_fields[0].tag);
    for (unsigned i = 0; i < desc->n_fields; ++i) {
        const ProtobufCFieldDescriptor *f = &desc->fields[i];
        const char *member = (const char *)msg + f->offset;
        size_t count = 1;
        const char *elems = member;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            count = *(const size_t *)((const char *)msg + f->quantifier_offset);
            elems = *(const char *const *)member;
        }
        for (size_t k = 0; k < count; ++k) {
            switch (f->type) {
            case PROTOBUF_C_TYPE_ENUM: {
                const int v = ((const int *)elems)[k];
                KW_RETURN_IF(!protobuf_c_enum_descriptor_get_value(f->descriptor, v), KW_E_PROTO_FIELD,
                             "%s.%s: %d is not a %s value", desc->short_name, f->name, v,
                             ((const ProtobufCEnumDescriptor *)f->descriptor)->short_name);
                break;
            }
            case PROTOBUF_C_TYPE_STRING: {
                const char *s = ((const char *const *)elems)[k];
                KW_RETURN_IF(s && !kw__proto_utf8_valid((const uint8_t *)s, strlen(s)), KW_E_PROTO_FIELD,
                             "%s.%s: not valid UTF-8", desc->short_name, f->name);
                break;
            }
            case PROTOBUF_C_TYPE_MESSAGE: {
                const ProtobufCMessage *sub = ((const ProtobufCMessage *const *)elems)[k];
                if (sub) KW_FORWARD(kw__proto_walk(sub, allow_unknown));
                break;
            }
            default:
                break;
            }
        }
    }
    return 0;
}

/* Drops the unknown fields of msg and of everything nested in it (Hello and HelloReply tolerate them: a later
 * version's additions are ignored, not kept, so what is unpacked packs back to exactly the fields this version
 * knows). The memory came from malloc through the budget allocator. */
static void kw__proto_drop_unknown(ProtobufCMessage *msg) {
    for (unsigned i = 0; i < msg->n_unknown_fields; ++i)
        free(msg->unknown_fields[i].data);
    free(msg->unknown_fields);
    msg->unknown_fields = NULL;
    msg->n_unknown_fields = 0;
    const ProtobufCMessageDescriptor *desc = msg->descriptor;
    for (unsigned i = 0; i < desc->n_fields; ++i) {
        const ProtobufCFieldDescriptor *f = &desc->fields[i];
        if (f->type != PROTOBUF_C_TYPE_MESSAGE) continue;
        char *member = (char *)msg + f->offset;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            const size_t count = *(const size_t *)((const char *)msg + f->quantifier_offset);
            ProtobufCMessage **subs = *(ProtobufCMessage ***)member;
            for (size_t k = 0; k < count; ++k)
                kw__proto_drop_unknown(subs[k]);
        } else if (*(ProtobufCMessage **)member) {
            kw__proto_drop_unknown(*(ProtobufCMessage **)member);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Per-message rules

#define KW__FIELD_IF(cond, ...) KW_RETURN_IF(cond, KW_E_PROTO_FIELD, __VA_ARGS__)

static int kw__proto_check_digest(const char *what, const ProtobufCBinaryData *b) {
    KW__FIELD_IF(b->len != 0 && b->len != KW__PROTO_DIGEST_BYTES, "%s: a SHA-256 digest has 32 bytes, not %zu", what,
                 b->len);
    return 0;
}

static int kw__proto_check_model_digest(const char *what, const Kwctl__ModelDigest *d) {
    if (!d) return 0;
    KW_FORWARD(kw__proto_check_digest(what, &d->config_sha256));
    return kw__proto_check_digest(what, &d->weights_sha256);
}

static int kw__proto_check_name(const char *what, const char *s, bool required) {
    const size_t n = strlen(s);
    KW__FIELD_IF(required && n == 0, "%s: empty", what);
    KW__FIELD_IF(n > KW__PROTO_MAX_NAME_BYTES, "%s: %zu bytes, at most %d", what, n, KW__PROTO_MAX_NAME_BYTES);
    return 0;
}

static int kw__proto_check_kv(const char *what, const Kwctl__KvShape *kv) {
    KW__FIELD_IF(!kv, "%s.kv: missing", what);
    KW__FIELD_IF(kv->n_layers < 1 || kv->n_layers > KW__PROTO_MAX_LAYERS, "%s.kv.n_layers: %u not in 1..%d", what,
                 kv->n_layers, KW__PROTO_MAX_LAYERS);
    KW__FIELD_IF(kv->n_kv_heads < 1 || kv->n_kv_heads > KW__PROTO_MAX_HEADS, "%s.kv.n_kv_heads: %u not in 1..%d", what,
                 kv->n_kv_heads, KW__PROTO_MAX_HEADS);
    KW__FIELD_IF(kv->head_dim < 1 || kv->head_dim > KW__PROTO_MAX_HEAD_DIM, "%s.kv.head_dim: %u not in 1..%d", what,
                 kv->head_dim, KW__PROTO_MAX_HEAD_DIM);
    return 0;
}

static int kw__proto_check_models(const char *what, Kwctl__ModelIdentity *const *models, size_t n) {
    KW__FIELD_IF(n > KW__PROTO_MAX_LIST, "%s.models: %zu entries, at most %d", what, n, KW__PROTO_MAX_LIST);
    for (size_t i = 0; i < n; ++i) {
        const Kwctl__ModelIdentity *m = models[i];
        KW_FORWARD(kw__proto_check_name("ModelIdentity.name", m->name, true));
        KW_FORWARD(kw__proto_check_name("ModelIdentity.architecture", m->architecture, false));
        KW_FORWARD(kw__proto_check_model_digest("ModelIdentity.digest", m->digest));
        KW_FORWARD(kw__proto_check_kv("ModelIdentity", m->kv));
        for (size_t j = 0; j < i; ++j)
            KW__FIELD_IF(strcmp(models[j]->name, m->name) == 0, "%s.models: the name \"%s\" appears twice", what,
                         m->name);
    }
    return 0;
}

static int kw__proto_check_list(const char *what, size_t n) {
    KW__FIELD_IF(n > KW__PROTO_MAX_LIST, "%s: %zu entries, at most %d", what, n, KW__PROTO_MAX_LIST);
    return 0;
}

static int kw__proto_check_increasing(const char *what, const uint32_t *v, size_t n, uint32_t bound) {
    for (size_t i = 0; i < n; ++i) {
        KW__FIELD_IF(v[i] >= bound, "%s[%zu]: %u is not below %u", what, i, v[i], bound);
        KW__FIELD_IF(i > 0 && v[i] <= v[i - 1], "%s[%zu]: %u does not follow %u in increasing order", what, i, v[i],
                     v[i - 1]);
    }
    return 0;
}

/* A run of consecutive positions lo..hi (inclusive) of a token schedule entry. */
typedef struct kw__proto_run {
    uint32_t lo, hi;
} kw__proto_run;

/* The runs of consecutive positions of the strictly increasing v[0 .. n), the first cap of them into runs (may be
 * NULL when cap is 0). @return how many there are. */
static size_t kw__proto_runs(const uint32_t *v, size_t n, kw__proto_run *runs, size_t cap) {
    size_t m = 0;
    for (size_t i = 0; i < n; ++i) {
        if (i > 0 && v[i] == v[i - 1] + 1) {
            if (m <= cap) runs[m - 1].hi = v[i];
            continue;
        }
        if (m < cap) runs[m] = (kw__proto_run){v[i], v[i]};
        ++m;
    }
    return m;
}

/* 1 if the sorted, disjoint runs a[0 .. na) and b[0 .. nb) share a position: a merge, O(na + nb). */
static bool kw__proto_runs_meet(const kw__proto_run *a, size_t na, const kw__proto_run *b, size_t nb) {
    for (size_t i = 0, j = 0; i < na && j < nb;) {
        if (a[i].hi < b[j].lo)
            ++i;
        else if (b[j].hi < a[i].lo)
            ++j;
        else
            return true;
    }
    return false;
}

size_t kw_proto_token_runs(const Kwctl__TokenPolicy *t) {
    return t->n_positions == 0 ? 1 : kw__proto_runs(t->positions, t->n_positions, NULL, 0);
}

/* KVWire's channel granularity (v1.1, docs/FORMAT.md §5.8), whose group_size is a run of tokens. */
#define KW__PROTO_GRAN_CHANNEL 5u

static int kw__proto_check_codec(const char *what, const Kwctl__CodecSpec *c, bool required) {
    KW__FIELD_IF(required && !c, "%s: missing", what);
    if (!c) return 0;
    KW__FIELD_IF(c->codec == 0 || c->codec > 255, "%s.codec: %u is not a KVWire codec id", what, c->codec);
    KW__FIELD_IF(c->granularity > 255, "%s.granularity: %u is not a KVWire granularity id", what, c->granularity);
    KW__FIELD_IF(c->scale_dtype > 255, "%s.scale_dtype: %u is not a KVWire scale dtype id", what, c->scale_dtype);
    if (c->granularity == KW__PROTO_GRAN_CHANNEL) /* v1.1: the run length in tokens */
        KW__FIELD_IF(c->group_size == 0 || c->group_size > (1u << 24) || (c->group_size & (c->group_size - 1)) != 0,
                     "%s.group_size: %u is not a power of two in 1..2^24 (tokens per run)", what, c->group_size);
    else
        KW__FIELD_IF(c->group_size != 0 && (c->group_size < 4 || c->group_size > KW__PROTO_MAX_HEAD_DIM ||
                                            (c->group_size & (c->group_size - 1)) != 0),
                     "%s.group_size: %u is not 0 or a power of two in 4..%d", what, c->group_size,
                     KW__PROTO_MAX_HEAD_DIM);
    return 0;
}

/* The selections scored with the receiver's rows and the fuser. */
static bool kw__proto_receiver_aware(Kwctl__Selection s) {
    return s == KWCTL__SELECTION__SELECTION_PROJ_VNORM_TOPK || s == KWCTL__SELECTION__SELECTION_DELTA_PROJ_VNORM_TOPK;
}

int kw_proto_token_schedule_check(Kwctl__TokenPolicy *const *entries, size_t n) {
    KW__FIELD_IF(n > KW_PROTO_MAX_TOKEN_POLICIES, "SharePolicy.token_schedule: %zu entries, at most %d", n,
                 KW_PROTO_MAX_TOKEN_POLICIES);
    kw__proto_run runs[KW_PROTO_MAX_TOKEN_POLICIES][KW_PROTO_MAX_TOKEN_RUNS]; /* each entry's positions as runs */
    size_t n_runs[KW_PROTO_MAX_TOKEN_POLICIES];
    for (size_t i = 0; i < n; ++i) {
        const Kwctl__TokenPolicy *t = entries[i];
        KW__FIELD_IF((t->first > 0) + (t->last > 0) + (t->n_positions > 0) != 1,
                     "SharePolicy.token_schedule[%zu]: exactly one of first, last and positions is expected", i);
        KW_FORWARD(kw__proto_check_increasing("SharePolicy.token_schedule.positions", t->positions, t->n_positions,
                                              KW_PROTO_DEFAULT_MAX_TOKENS));
        KW__FIELD_IF(t->first > KW_PROTO_DEFAULT_MAX_TOKENS || t->last > KW_PROTO_DEFAULT_MAX_TOKENS,
                     "SharePolicy.token_schedule[%zu]: more than %u positions", i, KW_PROTO_DEFAULT_MAX_TOKENS);
        n_runs[i] = kw__proto_runs(t->positions, t->n_positions, runs[i], KW_PROTO_MAX_TOKEN_RUNS);
        KW__FIELD_IF(n_runs[i] > KW_PROTO_MAX_TOKEN_RUNS,
                     "SharePolicy.token_schedule[%zu].positions: %zu runs of consecutive positions, at most %d", i,
                     n_runs[i], KW_PROTO_MAX_TOKEN_RUNS);
        for (size_t j = 0; j < i; ++j) { /* on runs: O(runs), whatever the positions (a peer's request) */
            const Kwctl__TokenPolicy *u = entries[j];
            const bool overlap = (t->first && u->first) || (t->last && u->last) ||
                                 (t->n_positions && t->positions[0] < u->first) || /* increasing: the least */
                                 (u->n_positions && u->positions[0] < t->first) ||
                                 kw__proto_runs_meet(runs[i], n_runs[i], runs[j], n_runs[j]);
            KW__FIELD_IF(overlap, "SharePolicy.token_schedule[%zu]: overlaps entry %zu", i, j);
        }
    }
    return 0;
}

/* The token schedule of a policy: kw_proto_token_schedule_check, codecs, and not with a byte cap. */
static int kw__proto_check_token_schedule(const Kwctl__SharePolicy *p) {
    KW__FIELD_IF(p->n_token_schedule > 0 && p->budget_bytes > 0,
                 "SharePolicy.token_schedule: not with budget_bytes (the allocator chooses the codecs)");
    KW_FORWARD(kw_proto_token_schedule_check(p->token_schedule, p->n_token_schedule));
    for (size_t i = 0; i < p->n_token_schedule; ++i) {
        KW_FORWARD(kw__proto_check_codec("SharePolicy.token_schedule.k", p->token_schedule[i]->k, true));
        KW_FORWARD(kw__proto_check_codec("SharePolicy.token_schedule.v", p->token_schedule[i]->v, true));
    }
    return 0;
}

static int kw__proto_check_policy(const Kwctl__SharePolicy *p) {
    KW_FORWARD(kw__proto_check_codec("SharePolicy.k", p->k, true));
    KW_FORWARD(kw__proto_check_codec("SharePolicy.v", p->v, true));
    KW__FIELD_IF(p->selection == KWCTL__SELECTION__SELECTION_UNSPECIFIED, "SharePolicy.selection: unspecified");
    if (p->selection == KWCTL__SELECTION__SELECTION_FULL) {
        KW__FIELD_IF(p->proportion != 0 && p->proportion != 1, "SharePolicy.proportion: %g with full selection",
                     p->proportion);
    } else {
        KW__FIELD_IF(!isfinite(p->proportion) || p->proportion <= 0 || p->proportion > 1,
                     "SharePolicy.proportion: %g not in (0, 1]", p->proportion);
    }
    KW_FORWARD(kw__proto_check_increasing("SharePolicy.layers", p->layers, p->n_layers, KW__PROTO_MAX_LAYERS));
    for (size_t i = 0; i < p->n_schedule; ++i) {
        const Kwctl__LayerPolicy *l = p->schedule[i];
        KW__FIELD_IF(l->layer >= KW__PROTO_MAX_LAYERS, "SharePolicy.schedule[%zu].layer: %u is not below %d", i,
                     l->layer, KW__PROTO_MAX_LAYERS);
        KW__FIELD_IF(i > 0 && l->layer <= p->schedule[i - 1]->layer,
                     "SharePolicy.schedule[%zu].layer: %u does not follow %u in increasing order", i, l->layer,
                     p->schedule[i - 1]->layer);
        KW_FORWARD(kw__proto_check_codec("SharePolicy.schedule.k", l->k, true));
        KW_FORWARD(kw__proto_check_codec("SharePolicy.schedule.v", l->v, true));
        KW__FIELD_IF(l->hadamard_rotate > 3 || l->clip_scales > 3,
                     "SharePolicy.schedule[%zu]: hadamard_rotate %u, clip_scales %u (bit 0 K, bit 1 V, no others)", i,
                     l->hadamard_rotate, l->clip_scales);
        KW__FIELD_IF(l->code_limit_k > 255 || l->code_limit_v > 255,
                     "SharePolicy.schedule[%zu]: code_limit_k %u, code_limit_v %u (0..255)", i, l->code_limit_k,
                     l->code_limit_v);
        KW__FIELD_IF(!l->own_options && (l->hadamard_rotate || l->clip_scales || l->code_limit_k || l->code_limit_v),
                     "SharePolicy.schedule[%zu]: hadamard_rotate, clip_scales or a code limit without own_options", i);
    }
    KW__FIELD_IF(p->n_schedule > KW__PROTO_MAX_LAYERS, "SharePolicy.schedule: %zu entries", p->n_schedule);
    KW__FIELD_IF(p->min_tokens > KW_PROTO_DEFAULT_MAX_TOKENS, "SharePolicy.min_tokens: %u is over %u", p->min_tokens,
                 KW_PROTO_DEFAULT_MAX_TOKENS);
    KW__FIELD_IF(p->budget_bytes > 0 && (p->n_budget_codecs < 1 || p->n_budget_codecs > KW__PROTO_MAX_BUDGET_CODECS),
                 "SharePolicy.budget_codecs: %zu codecs with a cap, 1..%d expected", p->n_budget_codecs,
                 KW__PROTO_MAX_BUDGET_CODECS);
    KW__FIELD_IF(p->budget_bytes == 0 && p->n_budget_codecs > 0, "SharePolicy.budget_codecs: given without a cap");
    for (size_t i = 0; i < p->n_budget_codecs; ++i)
        KW_FORWARD(kw__proto_check_codec("SharePolicy.budget_codecs", p->budget_codecs[i], true));
    KW__FIELD_IF((unsigned)p->budget_mode > KWCTL__BUDGET_MODE__BUDGET_MODE_QKVCOMM_LIKE,
                 "SharePolicy.budget_mode: %d is not a mode", (int)p->budget_mode);
    KW__FIELD_IF(p->budget_mode != KWCTL__BUDGET_MODE__BUDGET_MODE_TOKENS && p->budget_bytes == 0,
                 "SharePolicy.budget_mode: given without a cap");
    KW__FIELD_IF(p->budget_mode == KWCTL__BUDGET_MODE__BUDGET_MODE_KVCOMM_LIKE && p->n_budget_codecs != 1,
                 "SharePolicy.budget_codecs: kvcomm_like takes 1 codec, not %zu", p->n_budget_codecs);
    KW__FIELD_IF(p->budget_mode == KWCTL__BUDGET_MODE__BUDGET_MODE_QKVCOMM_LIKE && p->n_budget_codecs != 2,
                 "SharePolicy.budget_codecs: qkvcomm_like takes 2 codecs, not %zu", p->n_budget_codecs);
    KW__FIELD_IF((unsigned)p->scoring > KWCTL__SCORING__SCORING_RECEIVER, "SharePolicy.scoring: %d is not a placement",
                 (int)p->scoring);
    KW__FIELD_IF(p->scoring != KWCTL__SCORING__SCORING_LOCAL && !kw__proto_receiver_aware(p->selection),
                 "SharePolicy.scoring: only for the receiver-aware selections");
    KW__FIELD_IF(p->preview && p->scoring != KWCTL__SCORING__SCORING_RECEIVER,
                 "SharePolicy.preview: only with scoring SCORING_RECEIVER");
    KW_FORWARD(kw__proto_check_codec("SharePolicy.preview", p->preview, false));
    KW__FIELD_IF(p->outlier_ppm > 1000000u, "SharePolicy.outlier_ppm: %u is over a million", p->outlier_ppm);
    KW__FIELD_IF((p->outlier_ppm || p->pre_rope_keys) && p->budget_bytes > 0,
                 "SharePolicy.outlier_ppm, pre_rope_keys: not with budget_bytes");
    KW__FIELD_IF(p->hadamard_rotate > 3, "SharePolicy.hadamard_rotate: %u (bit 0 K, bit 1 V, no others)",
                 p->hadamard_rotate);
    KW__FIELD_IF(p->hadamard_rotate && p->budget_bytes > 0, "SharePolicy.hadamard_rotate: not with budget_bytes");
    KW__FIELD_IF(p->clip_scales > 3, "SharePolicy.clip_scales: %u (bit 0 K, bit 1 V, no others)", p->clip_scales);
    KW__FIELD_IF(p->clip_scales && p->budget_bytes > 0, "SharePolicy.clip_scales: not with budget_bytes");
    KW__FIELD_IF(p->code_limit_k > 255 || p->code_limit_v > 255,
                 "SharePolicy.code_limit_k %u, code_limit_v %u: 0..255 expected", p->code_limit_k, p->code_limit_v);
    KW__FIELD_IF((p->code_limit_k || p->code_limit_v) && p->budget_bytes > 0,
                 "SharePolicy.code_limit_k, code_limit_v: not with budget_bytes");
    KW_FORWARD(kw__proto_check_token_schedule(p));
    return 0;
}

/* SharePolicy.skip_ranked (round two of a refinement): empty, or one entry per sent section, each in [1, its length)
 * (the sharer checks it against the selection's count, which needs the selection's rules); never with a full
 * selection or a byte cap. */
static int kw__proto_check_skip_ranked(const Kwctl__ShareRequest *m) {
    const Kwctl__SharePolicy *p = m->policy;
    if (p == NULL || p->n_skip_ranked == 0) return 0;
    KW__FIELD_IF(p->selection == KWCTL__SELECTION__SELECTION_FULL, "SharePolicy.skip_ranked: with full selection");
    KW__FIELD_IF(p->selection == KWCTL__SELECTION__SELECTION_PROJ_VNORM_TOPK ||
                     p->selection == KWCTL__SELECTION__SELECTION_DELTA_PROJ_VNORM_TOPK,
                 "SharePolicy.skip_ranked: with a receiver-aware selection");
    KW__FIELD_IF(p->budget_bytes > 0, "SharePolicy.skip_ranked: with budget_bytes");
    size_t next = 0;
    for (size_t i = 0; i < m->n_sections; ++i) {
        if (!m->sections[i]->sent) continue;
        KW__FIELD_IF(next >= p->n_skip_ranked, "SharePolicy.skip_ranked: %zu entries for more sent sections",
                     p->n_skip_ranked);
        const uint32_t skip = p->skip_ranked[next++];
        KW__FIELD_IF(skip == 0 || skip >= m->sections[i]->length,
                     "SharePolicy.skip_ranked[%zu]: %u is not in [1, %u) (the section's length)", next - 1, skip,
                     m->sections[i]->length);
    }
    KW__FIELD_IF(next != p->n_skip_ranked, "SharePolicy.skip_ranked: %zu entries for %zu sent sections",
                 p->n_skip_ranked, next);
    return 0;
}

/* ShareRequest.sections: 1..1024 sections of at least one token covering the token ids, at least one sent. */
static int kw__proto_check_sections(const Kwctl__ShareRequest *m) {
    KW__FIELD_IF(m->n_sections == 0, "ShareRequest.sections: none for a mode that sends KV");
    KW__FIELD_IF(m->n_sections > KW__PROTO_MAX_SECTIONS, "ShareRequest.sections: %zu, at most %d", m->n_sections,
                 KW__PROTO_MAX_SECTIONS);
    uint64_t total = 0;
    bool sent = false;
    for (size_t i = 0; i < m->n_sections; ++i) {
        KW__FIELD_IF(m->sections[i]->length == 0, "ShareRequest.sections[%zu].length: 0", i);
        total += m->sections[i]->length;
        sent |= m->sections[i]->sent != 0;
    }
    KW__FIELD_IF(total != m->n_token_ids, "ShareRequest.sections: %llu tokens for %zu token ids",
                 (unsigned long long)total, m->n_token_ids);
    KW__FIELD_IF(!sent, "ShareRequest.sections: none is sent");
    return kw__proto_check_skip_ranked(m);
}

static int kw__proto_check_hello(const Kwctl__Hello *m) {
    KW__FIELD_IF(m->protocol_version == 0, "Hello.protocol_version: 0");
    KW__FIELD_IF(m->role == KWCTL__ROLE__ROLE_UNSPECIFIED, "Hello.role: unspecified");
    KW_FORWARD(kw__proto_check_name("Hello.software", m->software, false));
    KW_FORWARD(kw__proto_check_models("Hello", m->models, m->n_models));
    KW_FORWARD(kw__proto_check_list("Hello.codecs", m->n_codecs));
    KW_FORWARD(kw__proto_check_list("Hello.fusers", m->n_fusers));
    for (size_t i = 0; i < m->n_fusers; ++i) {
        const Kwctl__FuserIdentity *f = m->fusers[i];
        KW_FORWARD(kw__proto_check_name("FuserIdentity.name", f->name, true));
        KW_FORWARD(kw__proto_check_digest("FuserIdentity.weights_sha256", &f->weights_sha256));
        KW_FORWARD(kw__proto_check_model_digest("FuserIdentity.sharer", f->sharer));
        KW_FORWARD(kw__proto_check_model_digest("FuserIdentity.receiver", f->receiver));
        if (f->sharer_kv) KW_FORWARD(kw__proto_check_kv("FuserIdentity.sharer", f->sharer_kv));
    }
    return 0;
}

static int kw__proto_check_hello_reply(const Kwctl__HelloReply *m) {
    KW__FIELD_IF(m->protocol_version == 0, "HelloReply.protocol_version: 0");
    if (m->accepted) {
        KW__FIELD_IF(m->status != 0, "HelloReply.status: %d in an acceptance", m->status);
        KW__FIELD_IF(m->role == KWCTL__ROLE__ROLE_UNSPECIFIED, "HelloReply.role: unspecified");
    } else {
        KW__FIELD_IF(m->status >= 0, "HelloReply.status: a refusal needs a negative kw_status, not %d", m->status);
    }
    KW__FIELD_IF(strlen(m->reason) > KW__PROTO_MAX_ERROR_BYTES, "HelloReply.reason: over %d bytes",
                 KW__PROTO_MAX_ERROR_BYTES);
    KW_FORWARD(kw__proto_check_name("HelloReply.software", m->software, false));
    KW_FORWARD(kw__proto_check_models("HelloReply", m->models, m->n_models));
    return kw__proto_check_list("HelloReply.codecs", m->n_codecs);
}

static int kw__proto_check_share_request(const kw_proto_limits *lim, const Kwctl__ShareRequest *m) {
    KW__FIELD_IF(m->request_id == 0, "ShareRequest.request_id: 0");
    KW__FIELD_IF(m->mode == KWCTL__MODE__MODE_UNSPECIFIED, "ShareRequest.mode: unspecified");
    const bool receiver_only = m->mode == KWCTL__MODE__MODE_RECEIVER_ONLY;
    const bool relay = m->mode == KWCTL__MODE__MODE_TEXT_RELAY;
    const bool kv = m->mode == KWCTL__MODE__MODE_C2C || m->mode == KWCTL__MODE__MODE_KV_DIRECT;
    const char *mode = protobuf_c_enum_descriptor_get_value(&kwctl__mode__descriptor, m->mode)->name;
    KW_FORWARD(kw__proto_check_name("ShareRequest.sharer_model", m->sharer_model, !receiver_only));
    KW__FIELD_IF(m->n_token_ids > lim->max_tokens, "ShareRequest.token_ids: %zu tokens, the limit is %u",
                 m->n_token_ids, lim->max_tokens);
    KW__FIELD_IF(kv && m->n_token_ids == 0, "ShareRequest.token_ids: empty for mode %s", mode);
    KW__FIELD_IF(m->n_positions != 0, "ShareRequest.positions: reserved, must be empty in version 1");
    KW__FIELD_IF(kv && !m->policy, "ShareRequest.policy: missing for mode %s", mode);
    if (m->policy) KW_FORWARD(kw__proto_check_policy(m->policy));
    if (kv) {
        KW_FORWARD(kw__proto_check_sections(m));
        KW__FIELD_IF(m->cache_dtype == KWCTL__CACHE_DTYPE__CACHE_DTYPE_UNSPECIFIED,
                     "ShareRequest.cache_dtype: unspecified for mode %s", mode);
    } else {
        KW__FIELD_IF(m->n_sections != 0, "ShareRequest.sections: %zu in mode %s", m->n_sections, mode);
    }
    KW__FIELD_IF(m->pad.len != 0 && m->pad.len != m->n_token_ids, "ShareRequest.pad: %zu flags for %zu token ids",
                 m->pad.len, m->n_token_ids);
    for (size_t i = 0; i < m->pad.len; ++i)
        KW__FIELD_IF(m->pad.data[i] > 1, "ShareRequest.pad[%zu]: %u is not 0 or 1", i, m->pad.data[i]);
    const bool local_scores = m->mode == KWCTL__MODE__MODE_C2C && m->policy &&
                              kw__proto_receiver_aware(m->policy->selection) &&
                              m->policy->scoring == KWCTL__SCORING__SCORING_LOCAL;
    KW__FIELD_IF(local_scores && m->n_receiver_token_ids != m->n_token_ids,
                 "ShareRequest.receiver_token_ids: %zu ids for %zu token ids", m->n_receiver_token_ids, m->n_token_ids);
    KW__FIELD_IF(!local_scores && m->n_receiver_token_ids != 0,
                 "ShareRequest.receiver_token_ids: only for a receiver-aware selection scored at the sharer");
    KW__FIELD_IF(m->policy && kw__proto_receiver_aware(m->policy->selection) && m->mode != KWCTL__MODE__MODE_C2C,
                 "SharePolicy.selection: the receiver-aware selections are for mode MODE_C2C");
    KW__FIELD_IF(m->policy && m->policy->pre_rope_keys && m->mode != KWCTL__MODE__MODE_KV_DIRECT,
                 "SharePolicy.pre_rope_keys: only for mode MODE_KV_DIRECT (the receiver runs the sharer's model)");
    KW__FIELD_IF(relay && m->relay_question[0] == '\0', "ShareRequest.relay_question: empty for mode %s", mode);
    KW__FIELD_IF(strlen(m->relay_question) > KW__PROTO_MAX_TEXT_BYTES, "ShareRequest.relay_question: over %u bytes",
                 KW__PROTO_MAX_TEXT_BYTES);
    KW_FORWARD(kw__proto_check_name("ShareRequest.chat_date", m->chat_date, false));
    KW__FIELD_IF(!protobuf_c_enum_descriptor_get_value(&kwctl__relay_style__descriptor, m->relay_style),
                 "ShareRequest.relay_style: %d is not a style", (int)m->relay_style);
    KW__FIELD_IF(!relay && m->relay_style != KWCTL__RELAY_STYLE__RELAY_STYLE_GENERATED,
                 "ShareRequest.relay_style: only for mode MODE_TEXT_RELAY");
    KW__FIELD_IF(m->text_relay_max_bytes > KW__PROTO_MAX_TEXT_BYTES,
                 "ShareRequest.text_relay_max_bytes: %u, at most %u", m->text_relay_max_bytes,
                 KW__PROTO_MAX_TEXT_BYTES);
    return 0;
}

static int kw__proto_check_share_header(const Kwctl__ShareHeader *m) {
    KW__FIELD_IF(m->request_id == 0, "ShareHeader.request_id: 0");
    KW__FIELD_IF(m->mode == KWCTL__MODE__MODE_UNSPECIFIED, "ShareHeader.mode: unspecified");
    KW__FIELD_IF(m->tokens_kept > m->tokens_prefilled, "ShareHeader.tokens_kept: %u of %u prefilled", m->tokens_kept,
                 m->tokens_prefilled);
    if (m->mode == KWCTL__MODE__MODE_C2C || m->mode == KWCTL__MODE__MODE_KV_DIRECT) {
        KW_FORWARD(kw__proto_check_kv("ShareHeader", m->kv));
        KW_FORWARD(kw__proto_check_increasing("ShareHeader.layers", m->layers, m->n_layers, m->kv->n_layers));
    } else {
        KW__FIELD_IF(m->n_layers != 0, "ShareHeader.layers: %zu layers in a mode without KV", m->n_layers);
    }
    return 0;
}

static int kw__proto_check_share_text(const Kwctl__ShareText *m) {
    KW__FIELD_IF(m->request_id == 0, "ShareText.request_id: 0");
    KW__FIELD_IF(m->text.len > KW__PROTO_MAX_TEXT_BYTES, "ShareText.text: %zu bytes, at most %u", m->text.len,
                 KW__PROTO_MAX_TEXT_BYTES);
    KW__FIELD_IF(!kw__proto_utf8_valid(m->text.data, m->text.len), "ShareText.text: not valid UTF-8");
    return 0;
}

static int kw__proto_check_share_end(const Kwctl__ShareEnd *m) {
    KW__FIELD_IF(m->request_id == 0, "ShareEnd.request_id: 0");
    KW__FIELD_IF(m->compressed_sections > m->sections, "ShareEnd.compressed_sections: %u of %u sections",
                 m->compressed_sections, m->sections);
    KW__FIELD_IF(m->device_sections > m->sections, "ShareEnd.device_sections: %u of %u sections", m->device_sections,
                 m->sections);
    KW__FIELD_IF(m->tokens_kept > m->tokens_prefilled, "ShareEnd.tokens_kept: %u of %u prefilled", m->tokens_kept,
                 m->tokens_prefilled);
    KW__FIELD_IF(m->rows_sent > m->rows_total, "ShareEnd.rows_sent: %llu of %llu rows",
                 (unsigned long long)m->rows_sent, (unsigned long long)m->rows_total);
    const Kwctl__BudgetReport *b = m->budget;
    if (b) {
        KW__FIELD_IF(!(b->distortion >= 0) || !isfinite(b->distortion), "ShareEnd.budget.distortion: %g",
                     b->distortion);
        KW__FIELD_IF(b->tokens_dropped > b->tokens_candidate, "ShareEnd.budget.tokens_dropped: %llu of %llu",
                     (unsigned long long)b->tokens_dropped, (unsigned long long)b->tokens_candidate);
        KW__FIELD_IF(b->n_tokens_per_codec > KW__PROTO_MAX_BUDGET_CODECS,
                     "ShareEnd.budget.tokens_per_codec: %zu entries, at most %d", b->n_tokens_per_codec,
                     KW__PROTO_MAX_BUDGET_CODECS);
    }
    const Kwctl__ScoringReport *r = m->scoring;
    if (r && r->placement != KWCTL__SCORING__SCORING_RECEIVER)
        KW__FIELD_IF(r->preview_bytes != 0 || r->selection_bytes != 0 || r->wait_ns != 0,
                     "ShareEnd.scoring: preview or selection fields with placement SCORING_LOCAL");
    return 0;
}

static int kw__proto_check_share_preview(const Kwctl__SharePreview *m) {
    KW__FIELD_IF(m->request_id == 0, "SharePreview.request_id: 0");
    KW__FIELD_IF(m->blob >= KW__PROTO_MAX_SECTIONS, "SharePreview.blob: %u is not below %d", m->blob,
                 KW__PROTO_MAX_SECTIONS);
    return 0;
}

/* The selection's bytes are only bounded here (the frame's limit bounds them too); kw_rselect_decode checks their
 * content against the sharer's own sections and layers. */
static int kw__proto_check_share_selection(const Kwctl__ShareSelection *m) {
    KW__FIELD_IF(m->request_id == 0, "ShareSelection.request_id: 0");
    KW__FIELD_IF(m->selection.len == 0 || m->selection.len > KW_PROTO_DEFAULT_MAX_MESSAGE_BYTES,
                 "ShareSelection.selection: %zu bytes, 1..%u expected", m->selection.len,
                 KW_PROTO_DEFAULT_MAX_MESSAGE_BYTES);
    return 0;
}

static int kw__proto_check_share_targets(const Kwctl__ShareTargets *m) {
    KW__FIELD_IF(m->request_id == 0, "ShareTargets.request_id: 0");
    KW__FIELD_IF(m->n_targets < 1 || m->n_targets > 64, "ShareTargets.targets: %zu, 1..64 expected", m->n_targets);
    KW_FORWARD(kw__proto_check_increasing("ShareTargets.targets", m->targets, m->n_targets, KW__PROTO_MAX_LAYERS));
    KW__FIELD_IF(m->layer >= KW__PROTO_MAX_LAYERS, "ShareTargets.layer: %u is not below %d", m->layer,
                 KW__PROTO_MAX_LAYERS);
    KW__FIELD_IF(m->n_masks != m->n_targets, "ShareTargets.masks: %zu for %zu targets", m->n_masks, m->n_targets);
    for (size_t i = 0; i < m->n_masks; ++i)
        KW__FIELD_IF(m->masks[i].len == 0 || m->masks[i].len != m->masks[0].len,
                     "ShareTargets.masks[%zu]: %zu bytes (all the same, at least 1)", i, m->masks[i].len);
    return 0;
}

static int kw__proto_check_error(const Kwctl__Error *m) {
    KW__FIELD_IF(m->status >= 0, "Error.status: %d is not a failure status", m->status);
    KW__FIELD_IF(strlen(m->message) > KW__PROTO_MAX_ERROR_BYTES, "Error.message: over %d bytes",
                 KW__PROTO_MAX_ERROR_BYTES);
    return 0;
}

int kw_proto_message_check(const kw_proto_limits *lim_in, const ProtobufCMessage *msg) {
    kw_proto_limits lim;
    kw_proto_limits_default(&lim);
    if (lim_in && lim_in->max_tokens) lim.max_tokens = lim_in->max_tokens;
    const ProtobufCMessageDescriptor *d = msg->descriptor;
    const bool negotiation = d == &kwctl__hello__descriptor || d == &kwctl__hello_reply__descriptor;
    KW_FORWARD(kw__proto_walk(msg, negotiation));
    if (d == &kwctl__hello__descriptor) return kw__proto_check_hello((const Kwctl__Hello *)msg);
    if (d == &kwctl__hello_reply__descriptor) return kw__proto_check_hello_reply((const Kwctl__HelloReply *)msg);
    if (d == &kwctl__share_request__descriptor)
        return kw__proto_check_share_request(&lim, (const Kwctl__ShareRequest *)msg);
    if (d == &kwctl__share_header__descriptor) return kw__proto_check_share_header((const Kwctl__ShareHeader *)msg);
    if (d == &kwctl__share_text__descriptor) return kw__proto_check_share_text((const Kwctl__ShareText *)msg);
    if (d == &kwctl__share_end__descriptor) return kw__proto_check_share_end((const Kwctl__ShareEnd *)msg);
    if (d == &kwctl__error__descriptor) return kw__proto_check_error((const Kwctl__Error *)msg);
    if (d == &kwctl__share_targets__descriptor) return kw__proto_check_share_targets((const Kwctl__ShareTargets *)msg);
    if (d == &kwctl__share_preview__descriptor) return kw__proto_check_share_preview((const Kwctl__SharePreview *)msg);
    if (d == &kwctl__share_selection__descriptor)
        return kw__proto_check_share_selection((const Kwctl__ShareSelection *)msg);
    if (d == &kwctl__cancel__descriptor)
        KW__FIELD_IF(((const Kwctl__Cancel *)msg)->request_id == 0, "Cancel.request_id: 0");
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// Unpacking

/* protobuf-c allocates through this while unpacking: it refuses once the budget is spent, so a crafted frame (e.g.
 * thousands of empty nested messages, two bytes each on the wire) cannot make the unpacker allocate without bound.
 * Freeing goes through protobuf-c's default allocator (free()), which matches. */
typedef struct kw__proto_budget {
    uint64_t used, budget;
    bool exceeded;
} kw__proto_budget;

static void *kw__proto_budget_alloc(void *data, size_t size) {
    kw__proto_budget *b = data;
    if (size > b->budget - b->used) {
        b->exceeded = true;
        return NULL;
    }
    void *p = malloc(size);
    if (p) b->used += size;
    return p;
}

static void kw__proto_budget_free(void *data, void *p) {
    (void)data;
    free(p);
}

uint32_t kw_proto_message_checksum(uint32_t type, const uint8_t *body, size_t len) {
    return XXH32(len ? body : (const uint8_t *)"", len, type);
}

int kw_proto_message_unpack(const kw_proto_limits *lim, uint32_t type, const uint8_t *payload, size_t len,
                            ProtobufCMessage **out) {
    KW_RETURN_IF(!kw_proto_frame_descriptor(type), KW_E_PROTO_FRAME_TYPE,
                 "frame type %u (%s) carries no control message", type, kw_proto_frame_type_name(type));
    KW_RETURN_IF(len < KW_PROTO_MESSAGE_CHECKSUM_BYTES, KW_E_PROTO_CHECKSUM,
                 "a %zu-byte %s payload is too short for its %d-byte checksum", len, kw_proto_frame_type_name(type),
                 KW_PROTO_MESSAGE_CHECKSUM_BYTES);
    const size_t body_len = len - KW_PROTO_MESSAGE_CHECKSUM_BYTES;
    const uint32_t want = kw_load_le32(payload + body_len), got = kw_proto_message_checksum(type, payload, body_len);
    KW_RETURN_IF(want != got, KW_E_PROTO_CHECKSUM,
                 "%s: the checksum of its %zu bytes is %08x, the frame says %08x (corrupted in flight?)",
                 kw_proto_frame_type_name(type), body_len, (unsigned)got, (unsigned)want);
    return kw_proto_message_unpack_body(lim, type, payload, body_len, out);
}

int kw_proto_message_unpack_body(const kw_proto_limits *lim_in, uint32_t type, const uint8_t *payload, size_t len,
                                 ProtobufCMessage **out) {
    kw_proto_limits lim;
    kw_proto_limits_default(&lim);
    if (lim_in) {
        if (lim_in->max_message_bytes) lim.max_message_bytes = lim_in->max_message_bytes;
        if (lim_in->max_unpacked_bytes) lim.max_unpacked_bytes = lim_in->max_unpacked_bytes;
        if (lim_in->max_tokens) lim.max_tokens = lim_in->max_tokens;
    }
    const ProtobufCMessageDescriptor *desc = kw_proto_frame_descriptor(type);
    KW_RETURN_IF(!desc, KW_E_PROTO_FRAME_TYPE, "frame type %u (%s) carries no control message", type,
                 kw_proto_frame_type_name(type));
    KW_RETURN_IF(len > lim.max_message_bytes, KW_E_PROTO_FRAME_SIZE, "%s of %zu bytes exceeds the %u-byte limit",
                 desc->short_name, len, lim.max_message_bytes);
    kw__proto_budget budget = {0, lim.max_unpacked_bytes, false};
    ProtobufCAllocator alloc = {kw__proto_budget_alloc, kw__proto_budget_free, &budget};
    ProtobufCMessage *msg = protobuf_c_message_unpack(desc, &alloc, len, len ? payload : (const uint8_t *)"");
    if (!msg) {
        KW_RETURN_IF(budget.exceeded, KW_E_LIMIT, "%s of %zu bytes needs more than %llu bytes to unpack",
                     desc->short_name, len, (unsigned long long)lim.max_unpacked_bytes);
        KW_FAIL(KW_E_PROTO_MESSAGE, "%s: %zu bytes are not a valid protobuf encoding", desc->short_name, len);
    }
    /* validate, then forget what this version does not know */
    const int rc = kw_proto_message_check(&lim, msg);
    if (rc == 0 && (desc == &kwctl__hello__descriptor || desc == &kwctl__hello_reply__descriptor))
        kw__proto_drop_unknown(msg);
    if (rc < 0) {
        protobuf_c_message_free_unpacked(msg, NULL);
        return rc;
    }
    *out = msg;
    return 0;
}

void kw_proto_message_free(ProtobufCMessage *msg) {
    if (msg) protobuf_c_message_free_unpacked(msg, NULL);
}

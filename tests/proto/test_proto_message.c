/* test_proto_message.c: control messages (docs/PROTOCOL.md §4, §5): every message type survives pack -> frame ->
 * unpack with its fields intact, and the decoder's rules reject what they must: bad protobuf, unknown fields (but
 * not inside Hello, which a later version may extend), unknown enum values, bad UTF-8, oversized payloads, a
 * payload that would unpack into more memory than the budget, and the per-message field rules (the receiver-aware
 * selections: scoring, receiver_token_ids, SHARE_TARGETS). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_bytes.h"
#include "common/kw_status.h"
#include "proto/kw_proto.h"

/* Packs m as a frame of type, checks the frame, unpacks its payload; returns the unpack status (*out on 0). */
static int roundtrip(uint32_t type, const ProtobufCMessage *m, ProtobufCMessage **out) {
    uint8_t *frame = NULL;
    size_t n = 0;
    assert_int_equal(kw_proto_message_frame_pack(type, m, &frame, &n), 0);
    kw_proto_frame f;
    assert_int_equal(kw_proto_frame_parse(NULL, frame, n, &f), 0);
    assert_int_equal(f.type, type);
    const int rc = kw_proto_message_unpack(NULL, f.type, f.data, f.data_len, out);
    free(frame);
    return rc;
}

static uint8_t digest_a[32] = {1, 2, 3};
static uint8_t digest_b[32] = {9, 8, 7};

static void fill_identity(Kwctl__ModelIdentity *id, Kwctl__ModelDigest *dg, Kwctl__KvShape *kv, const char *name) {
    kwctl__model_identity__init(id);
    kwctl__model_digest__init(dg);
    kwctl__kv_shape__init(kv);
    dg->config_sha256 = (ProtobufCBinaryData){32, digest_a};
    dg->weights_sha256 = (ProtobufCBinaryData){32, digest_b};
    kv->n_layers = 28;
    kv->n_kv_heads = 8;
    kv->head_dim = 128;
    id->name = (char *)name;
    id->architecture = "qwen3";
    id->digest = dg;
    id->kv = kv;
}

static void test_hello_roundtrip(void **state) {
    (void)state;
    Kwctl__ModelIdentity id;
    Kwctl__ModelDigest dg;
    Kwctl__KvShape kv;
    fill_identity(&id, &dg, &kv, "qwen3-0.6b");
    Kwctl__ModelIdentity *models[] = {&id};
    Kwctl__FuserIdentity fu = KWCTL__FUSER_IDENTITY__INIT;
    fu.name = "qwen3_0.6b+qwen2.5_0.5b";
    fu.sharer = &dg;
    fu.receiver = &dg;
    Kwctl__FuserIdentity *fusers[] = {&fu};
    uint32_t codecs[] = {1, 3, 4};
    Kwctl__Hello h = KWCTL__HELLO__INIT;
    h.protocol_version = 1;
    h.role = KWCTL__ROLE__ROLE_RECEIVER;
    h.software = "kvwire 0.1.0 \xc3\xa9"; /* UTF-8 */
    h.models = models;
    h.n_models = 1;
    h.codecs = codecs;
    h.n_codecs = 3;
    h.fusers = fusers;
    h.n_fusers = 1;
    h.max_frame_bytes = 1 << 20;
    ProtobufCMessage *m = NULL;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_HELLO, &h.base, &m), 0);
    const Kwctl__Hello *g = (const Kwctl__Hello *)m;
    assert_int_equal(g->protocol_version, 1);
    assert_int_equal(g->role, KWCTL__ROLE__ROLE_RECEIVER);
    assert_string_equal(g->software, h.software);
    assert_int_equal(g->n_models, 1);
    assert_string_equal(g->models[0]->name, "qwen3-0.6b");
    assert_int_equal(g->models[0]->kv->head_dim, 128);
    assert_memory_equal(g->models[0]->digest->weights_sha256.data, digest_b, 32);
    assert_int_equal(g->n_codecs, 3);
    assert_int_equal(g->codecs[2], 4);
    assert_string_equal(g->fusers[0]->name, fu.name);
    assert_int_equal(g->max_frame_bytes, 1 << 20);
    kw_proto_message_free(m);

    /* field rules */
    h.role = KWCTL__ROLE__ROLE_UNSPECIFIED;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_HELLO, &h.base, &m), KW_E_PROTO_FIELD);
    h.role = (Kwctl__Role)77; /* not a Role */
    assert_int_equal(roundtrip(KW_PROTO_FRAME_HELLO, &h.base, &m), KW_E_PROTO_FIELD);
    h.role = KWCTL__ROLE__ROLE_RECEIVER;
    dg.config_sha256.len = 31;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_HELLO, &h.base, &m), KW_E_PROTO_FIELD);
    dg.config_sha256.len = 32;
    kv.n_kv_heads = 0;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_HELLO, &h.base, &m), KW_E_PROTO_FIELD);
    kv.n_kv_heads = 8;
    h.software = "bad \xc3\x28 utf8";
    assert_int_equal(roundtrip(KW_PROTO_FRAME_HELLO, &h.base, &m), KW_E_PROTO_FIELD);
    h.software = "overlong \xc0\xaf";
    assert_int_equal(roundtrip(KW_PROTO_FRAME_HELLO, &h.base, &m), KW_E_PROTO_FIELD);
    h.software = "surrogate \xed\xa0\x80";
    assert_int_equal(roundtrip(KW_PROTO_FRAME_HELLO, &h.base, &m), KW_E_PROTO_FIELD);
    h.software = "ok";
    Kwctl__ModelIdentity *twice[] = {&id, &id};
    h.models = twice;
    h.n_models = 2;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_HELLO, &h.base, &m), KW_E_PROTO_FIELD);
}

static void test_hello_reply(void **state) {
    (void)state;
    Kwctl__HelloReply r = KWCTL__HELLO_REPLY__INIT;
    r.protocol_version = 1;
    r.accepted = 0;
    r.status = KW_E_PROTO_REFUSED;
    r.reason = "the fuser does not fit any model here";
    ProtobufCMessage *m = NULL;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_HELLO_REPLY, &r.base, &m), 0);
    assert_int_equal(((Kwctl__HelloReply *)m)->status, KW_E_PROTO_REFUSED);
    assert_string_equal(((Kwctl__HelloReply *)m)->reason, r.reason);
    kw_proto_message_free(m);
    r.status = 0; /* a refusal needs a status */
    assert_int_equal(roundtrip(KW_PROTO_FRAME_HELLO_REPLY, &r.base, &m), KW_E_PROTO_FIELD);
    r.accepted = 1;
    r.role = KWCTL__ROLE__ROLE_SHARER;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_HELLO_REPLY, &r.base, &m), 0);
    kw_proto_message_free(m);
    r.status = -1; /* an acceptance has none */
    assert_int_equal(roundtrip(KW_PROTO_FRAME_HELLO_REPLY, &r.base, &m), KW_E_PROTO_FIELD);
}

static void test_share_request(void **state) {
    (void)state;
    uint32_t ids[] = {151644, 872, 198, 3838, 374};
    uint32_t pos[] = {0, 1, 2, 3, 4};
    uint32_t layers[] = {0, 5, 27};
    Kwctl__CodecSpec k = KWCTL__CODEC_SPEC__INIT, v = KWCTL__CODEC_SPEC__INIT;
    k.codec = 3, k.granularity = 2, k.scale_dtype = 1;
    v.codec = 4, v.granularity = 4, v.scale_dtype = 1, v.group_size = 32;
    Kwctl__LayerPolicy lp = KWCTL__LAYER_POLICY__INIT;
    lp.layer = 5;
    lp.k = &k;
    lp.v = &k;
    Kwctl__LayerPolicy *sched[] = {&lp};
    Kwctl__SharePolicy p = KWCTL__SHARE_POLICY__INIT;
    p.k = &k;
    p.v = &v;
    p.selection = KWCTL__SELECTION__SELECTION_KNORM_TOPK;
    p.proportion = 0.5;
    p.seed = 7;
    p.zstd = 1;
    p.zstd_level = -3;
    p.layers = layers;
    p.n_layers = 3;
    p.schedule = sched;
    p.n_schedule = 1;
    p.min_tokens = 2;
    Kwctl__Section s0 = KWCTL__SECTION__INIT, s1 = KWCTL__SECTION__INIT;
    s0.length = 2;
    s1.length = 3, s1.sent = 1;
    Kwctl__Section *sections[] = {&s0, &s1};
    uint8_t pad[5] = {0, 1, 0, 0, 0};
    Kwctl__ShareRequest r = KWCTL__SHARE_REQUEST__INIT;
    r.request_id = 0xfedcba9876543210ull;
    r.mode = KWCTL__MODE__MODE_C2C;
    r.sharer_model = "qwen2.5-0.5b";
    r.token_ids = ids;
    r.n_token_ids = 5;
    r.policy = &p;
    r.timeout_ms = 30000;
    r.sections = sections;
    r.n_sections = 2;
    r.pad = (ProtobufCBinaryData){5, pad};
    r.cache_dtype = KWCTL__CACHE_DTYPE__CACHE_DTYPE_BF16;
    ProtobufCMessage *m = NULL;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), 0);
    const Kwctl__ShareRequest *g = (const Kwctl__ShareRequest *)m;
    assert_int_equal(g->request_id, r.request_id);
    assert_int_equal(g->n_token_ids, 5);
    assert_memory_equal(g->token_ids, ids, sizeof ids);
    assert_int_equal(g->policy->selection, KWCTL__SELECTION__SELECTION_KNORM_TOPK);
    assert_true(g->policy->proportion == 0.5);
    assert_int_equal(g->policy->zstd_level, -3);
    assert_false(g->policy->rans); /* absent: zstd alone */
    assert_int_equal(g->policy->v->group_size, 32);
    assert_int_equal(g->policy->schedule[0]->layer, 5);
    assert_int_equal(g->policy->min_tokens, 2);
    assert_int_equal(g->n_sections, 2);
    assert_int_equal(g->sections[1]->length, 3);
    assert_true(g->sections[1]->sent && !g->sections[0]->sent);
    assert_int_equal(g->pad.len, 5);
    assert_int_equal(g->pad.data[1], 1);
    assert_int_equal(g->cache_dtype, KWCTL__CACHE_DTYPE__CACHE_DTYPE_BF16);
    kw_proto_message_free(m);

    /* the rules, one at a time */
    r.request_id = 0;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    r.request_id = 1;
    r.positions = pos; /* reserved in version 1 */
    r.n_positions = 5;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    r.n_positions = 0;
    s1.length = 4; /* the sections do not cover the ids */
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    s1.length = 3;
    s1.sent = 0; /* nothing sent */
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    s1.sent = 1;
    s0.length = 0;
    s1.length = 5;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    s0.length = 2;
    s1.length = 3;
    r.n_sections = 0;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    r.n_sections = 2;
    pad[2] = 2; /* a flag is 0 or 1 */
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    pad[2] = 0;
    r.pad.len = 4;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    r.pad.len = 5;
    r.cache_dtype = KWCTL__CACHE_DTYPE__CACHE_DTYPE_UNSPECIFIED;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    r.cache_dtype = KWCTL__CACHE_DTYPE__CACHE_DTYPE_F32;
    p.proportion = 1.5;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    p.proportion = 0.25;
    layers[1] = 0;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    layers[1] = 5;
    v.group_size = 24;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    v.group_size = 32;
    /* KVWire v1.1: zero points, channel runs of 1..2^24 tokens, outliers, pre-RoPE keys for kv_direct only */
    v.zero_points = true;
    v.granularity = 5;
    v.group_size = 1u << 24;
    p.outlier_ppm = 10000;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), 0);
    assert_true(((Kwctl__ShareRequest *)m)->policy->v->zero_points);
    assert_int_equal(((Kwctl__ShareRequest *)m)->policy->v->group_size, 1u << 24);
    assert_int_equal(((Kwctl__ShareRequest *)m)->policy->outlier_ppm, 10000);
    kw_proto_message_free(m);
    v.group_size = 3;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    v.group_size = 0;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    v.group_size = 1;
    p.outlier_ppm = 1000001;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    p.outlier_ppm = 0;
    p.pre_rope_keys = true;
    const Kwctl__Mode was = r.mode;
    r.mode = KWCTL__MODE__MODE_C2C;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    r.mode = KWCTL__MODE__MODE_KV_DIRECT;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), 0);
    assert_true(((Kwctl__ShareRequest *)m)->policy->pre_rope_keys);
    kw_proto_message_free(m);
    r.mode = was;
    p.pre_rope_keys = false;
    p.hadamard_rotate = 3; /* KVWire v1.1 rotation: bits 0 and 1 only, any mode */
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), 0);
    assert_int_equal(((Kwctl__ShareRequest *)m)->policy->hadamard_rotate, 3);
    kw_proto_message_free(m);
    p.hadamard_rotate = 4;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    p.hadamard_rotate = 0;
    p.clip_scales = 2; /* clipped scales, an encoder choice: bits 0 and 1 only (not with a byte cap: below) */
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), 0);
    assert_int_equal(((Kwctl__ShareRequest *)m)->policy->clip_scales, 2);
    kw_proto_message_free(m);
    p.clip_scales = 4;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    p.clip_scales = 0;
    /* a layer's own rotation and clipping: bits 0 and 1, and only with own_options */
    lp.hadamard_rotate = 2;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    lp.own_options = true;
    lp.clip_scales = 3;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), 0);
    assert_true(((Kwctl__ShareRequest *)m)->policy->schedule[0]->own_options);
    assert_int_equal(((Kwctl__ShareRequest *)m)->policy->schedule[0]->hadamard_rotate, 2);
    assert_int_equal(((Kwctl__ShareRequest *)m)->policy->schedule[0]->clip_scales, 3);
    kw_proto_message_free(m);
    lp.clip_scales = 4;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    lp.clip_scales = 0, lp.hadamard_rotate = 0;
    lp.code_limit_k = 10, lp.code_limit_v = 255; /* a layer's own code limits: 0..255 */
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), 0);
    assert_int_equal(((Kwctl__ShareRequest *)m)->policy->schedule[0]->code_limit_k, 10);
    assert_int_equal(((Kwctl__ShareRequest *)m)->policy->schedule[0]->code_limit_v, 255);
    kw_proto_message_free(m);
    lp.code_limit_v = 256;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    lp.code_limit_v = 0, lp.own_options = false; /* and only with own_options */
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    lp.code_limit_k = 0;
    p.code_limit_k = 12, p.code_limit_v = 3; /* the policy's code limits (FORMAT.md §5.14): 0..255 */
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), 0);
    assert_int_equal(((Kwctl__ShareRequest *)m)->policy->code_limit_k, 12);
    assert_int_equal(((Kwctl__ShareRequest *)m)->policy->code_limit_v, 3);
    kw_proto_message_free(m);
    p.code_limit_k = 300;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    p.code_limit_k = 0, p.code_limit_v = 0;
    p.rans = true; /* the rANS body coder (FORMAT.md §5.15), beside zstd: field 24 */
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), 0);
    assert_true(((Kwctl__ShareRequest *)m)->policy->rans);
    assert_int_equal(((Kwctl__ShareRequest *)m)->policy->zstd_level, -3);
    kw_proto_message_free(m);
    p.zstd = 0, p.zstd_level = 0; /* or alone */
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), 0);
    assert_true(((Kwctl__ShareRequest *)m)->policy->rans && !((Kwctl__ShareRequest *)m)->policy->zstd);
    kw_proto_message_free(m);
    p.zstd = 1, p.zstd_level = -3, p.rans = false;
    /* the token schedule: one of first, last, positions per entry; no entries that always overlap; codecs needed */
    Kwctl__TokenPolicy t0 = KWCTL__TOKEN_POLICY__INIT, t1 = KWCTL__TOKEN_POLICY__INIT, t2 = KWCTL__TOKEN_POLICY__INIT;
    uint32_t tpos[] = {4, 5, 9};
    t0.first = 2, t0.k = &k, t0.v = &v;
    t1.last = 3, t1.k = &k, t1.v = &k;
    t2.positions = tpos, t2.n_positions = 3, t2.k = &v, t2.v = &v;
    Kwctl__TokenPolicy *ts[] = {&t0, &t1, &t2};
    p.token_schedule = ts;
    p.n_token_schedule = 3;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), 0);
    const Kwctl__SharePolicy *gp = ((Kwctl__ShareRequest *)m)->policy;
    assert_int_equal(gp->n_token_schedule, 3);
    assert_int_equal(gp->token_schedule[0]->first, 2);
    assert_int_equal(gp->token_schedule[1]->last, 3);
    assert_int_equal(gp->token_schedule[2]->positions[2], 9);
    assert_int_equal(gp->token_schedule[2]->k->group_size, v.group_size);
    assert_int_equal(kw_proto_token_runs(gp->token_schedule[2]), 2);
    kw_proto_message_free(m);
    t0.first = 5; /* position 4 is both entries' */
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    assert_non_null(strstr(kw_error_detail(), "token_schedule[2]: overlaps entry 0"));
    t0.first = 4;
    tpos[0] = 5; /* positions 5, 5: not increasing */
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    tpos[0] = 4;
    t1.first = 1; /* two selectors */
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    t1.first = 0, t1.last = 0; /* none */
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    t1.last = 3;
    t1.v = NULL; /* a codec missing */
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    t1.v = &k;
    ts[1] = &t0; /* two "first" entries always overlap */
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    ts[1] = &t1;
    p.n_token_schedule = 0;
    v.zero_points = false;
    v.granularity = 4;
    v.group_size = 32;
    /* a byte cap comes with 1..8 codecs, and codecs only with a cap */
    Kwctl__CodecSpec *budget_codecs[9] = {&k, &v, &k, &v, &k, &v, &k, &v, &k};
    p.budget_bytes = 4096;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    p.budget_codecs = budget_codecs;
    p.n_budget_codecs = 2;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), 0);
    assert_int_equal(((Kwctl__ShareRequest *)m)->policy->budget_bytes, 4096);
    assert_int_equal(((Kwctl__ShareRequest *)m)->policy->budget_codecs[1]->group_size, 32);
    kw_proto_message_free(m);
    p.clip_scales = 1; /* clipped scales are not for a byte cap */
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    p.clip_scales = 0;
    p.code_limit_v = 4; /* nor code limits */
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    p.code_limit_v = 0;
    p.rans = true; /* a byte cap takes the rANS body coder, as it takes zstd: the allocator's bodies are coded */
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), 0);
    assert_true(((Kwctl__ShareRequest *)m)->policy->rans);
    kw_proto_message_free(m);
    p.rans = false;
    p.n_token_schedule = 1; /* nor a token schedule */
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    p.n_token_schedule = 0;
    p.n_budget_codecs = 9;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    p.n_budget_codecs = 2;
    /* the whole-layer baselines: qkvcomm_like with 2 codecs, kvcomm_like with 1, nothing else */
    p.budget_mode = KWCTL__BUDGET_MODE__BUDGET_MODE_QKVCOMM_LIKE;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), 0);
    assert_int_equal(((Kwctl__ShareRequest *)m)->policy->budget_mode, KWCTL__BUDGET_MODE__BUDGET_MODE_QKVCOMM_LIKE);
    kw_proto_message_free(m);
    p.budget_mode = KWCTL__BUDGET_MODE__BUDGET_MODE_KVCOMM_LIKE;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    p.n_budget_codecs = 1;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), 0);
    kw_proto_message_free(m);
    p.budget_mode = (Kwctl__BudgetMode)3;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    p.budget_mode = KWCTL__BUDGET_MODE__BUDGET_MODE_QKVCOMM_LIKE;
    p.n_budget_codecs = 0;
    p.budget_bytes = 0; /* a mode without a cap */
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    p.budget_mode = KWCTL__BUDGET_MODE__BUDGET_MODE_TOKENS;
    p.n_budget_codecs = 2;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    p.n_budget_codecs = 0;
    r.policy = NULL;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    r.mode = KWCTL__MODE__MODE_RECEIVER_ONLY; /* no policy needed, and sections are out of place */
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    r.n_sections = 0;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), 0);
    kw_proto_message_free(m);
    r.mode = (Kwctl__Mode)9;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);

    /* the text relay asks a question */
    r.mode = KWCTL__MODE__MODE_TEXT_RELAY;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    r.relay_question = "Which planet is known as the red planet?";
    r.chat_date = "23 Nov 2026";
    r.n_token_ids = 0; /* the sharer builds its own prompt */
    r.pad.len = 0;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), 0);
    assert_string_equal(((Kwctl__ShareRequest *)m)->relay_question, r.relay_question);
    kw_proto_message_free(m);
    r.n_token_ids = 5;
    r.pad.len = 5;

    /* the token limit */
    uint8_t *frame;
    size_t n;
    assert_int_equal(kw_proto_message_frame_pack(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &frame, &n), 0);
    const kw_proto_limits lim = {.max_tokens = 4};
    assert_int_equal(kw_proto_message_unpack(&lim, KW_PROTO_FRAME_SHARE_REQUEST, frame + 5, n - 5, &m),
                     KW_E_PROTO_FIELD);
    assert_int_equal(kw_proto_message_check(&lim, &r.base), KW_E_PROTO_FIELD);
    const kw_proto_limits lim5 = {.max_tokens = 5};
    assert_int_equal(kw_proto_message_check(&lim5, &r.base), 0);
    free(frame);
}

/* SharePolicy.skip_ranked (round two of a refinement): one entry per sent section, each in [1, its length), never
 * with a full selection or a byte cap; the sharer then checks each against the selection's count. */
static void test_share_request_skip_ranked(void **state) {
    (void)state;
    uint32_t ids[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    uint32_t skip[] = {2, 1};
    Kwctl__CodecSpec c = KWCTL__CODEC_SPEC__INIT;
    c.codec = 3, c.granularity = 2, c.scale_dtype = 1;
    Kwctl__SharePolicy p = KWCTL__SHARE_POLICY__INIT;
    p.k = p.v = &c;
    p.selection = KWCTL__SELECTION__SELECTION_VNORM_TOPK;
    p.proportion = 0.8;
    p.skip_ranked = skip;
    p.n_skip_ranked = 1;
    Kwctl__Section s0 = KWCTL__SECTION__INIT, s1 = KWCTL__SECTION__INIT;
    s0.length = 4;
    s1.length = 6, s1.sent = 1;
    Kwctl__Section *sections[] = {&s0, &s1};
    Kwctl__ShareRequest r = KWCTL__SHARE_REQUEST__INIT;
    r.request_id = 1ull << 63 | 5; /* a round two's id */
    r.mode = KWCTL__MODE__MODE_KV_DIRECT;
    r.sharer_model = "m";
    r.token_ids = ids;
    r.n_token_ids = 10;
    r.policy = &p;
    r.sections = sections;
    r.n_sections = 2;
    r.cache_dtype = KWCTL__CACHE_DTYPE__CACHE_DTYPE_F32;
    ProtobufCMessage *m = NULL;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), 0);
    const Kwctl__ShareRequest *g = (const Kwctl__ShareRequest *)m;
    assert_int_equal(g->policy->n_skip_ranked, 1);
    assert_int_equal(g->policy->skip_ranked[0], 2);
    assert_true(g->request_id == (1ull << 63 | 5));
    kw_proto_message_free(m);
    skip[0] = 5; /* the largest below the sent section's 6 tokens */
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), 0);
    kw_proto_message_free(m);
    skip[0] = 6; /* must reject: round two would add nothing */
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    assert_non_null(strstr(kw_error_detail(), "skip_ranked"));
    skip[0] = 0;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    skip[0] = 2;
    p.n_skip_ranked = 2; /* more entries than sent sections */
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    s0.sent = 1; /* two sent sections, two entries: each against its own section (1 < 4, 2 < 6) */
    skip[0] = 1, skip[1] = 2;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), 0);
    kw_proto_message_free(m);
    skip[0] = 4; /* the first section's length */
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    skip[0] = 1;
    p.n_skip_ranked = 1; /* fewer entries than sent sections */
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    s0.sent = 0;
    p.selection = KWCTL__SELECTION__SELECTION_FULL;
    p.proportion = 1;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    p.proportion = 0.8;
    p.selection = KWCTL__SELECTION__SELECTION_PROJ_VNORM_TOPK; /* the receiver-aware rankings have no round two */
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    assert_non_null(strstr(kw_error_detail(), "receiver-aware"));
    p.selection = KWCTL__SELECTION__SELECTION_FRONT;
    Kwctl__CodecSpec *budget_codecs[] = {&c};
    p.budget_bytes = 100000;
    p.budget_codecs = budget_codecs;
    p.n_budget_codecs = 1;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    p.n_skip_ranked = 0; /* a plain capped request again */
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), 0);
    kw_proto_message_free(m);
}

/* The receiver-aware selections: SharePolicy.scoring, ShareRequest.receiver_token_ids (as many as token_ids, only
 * when scored at the sharer), SharePolicy.preview (only with SCORING_RECEIVER), c2c only; the SHARE_TARGETS frame's
 * rules. */
static void test_receiver_aware(void **state) {
    (void)state;
    uint32_t ids[] = {151644, 872, 198, 3838, 374}, rids[] = {1, 2, 3, 4, 5};
    Kwctl__CodecSpec k = KWCTL__CODEC_SPEC__INIT;
    k.codec = 3, k.granularity = 2, k.scale_dtype = 1;
    Kwctl__SharePolicy p = KWCTL__SHARE_POLICY__INIT;
    p.k = p.v = &k;
    p.selection = KWCTL__SELECTION__SELECTION_DELTA_PROJ_VNORM_TOPK;
    p.proportion = 0.5;
    Kwctl__Section s0 = KWCTL__SECTION__INIT;
    s0.length = 5, s0.sent = 1;
    Kwctl__Section *sections[] = {&s0};
    Kwctl__ShareRequest r = KWCTL__SHARE_REQUEST__INIT;
    r.request_id = 3;
    r.mode = KWCTL__MODE__MODE_C2C;
    r.sharer_model = "qwen2.5-0.5b";
    r.token_ids = ids;
    r.n_token_ids = 5;
    r.policy = &p;
    r.sections = sections;
    r.n_sections = 1;
    r.cache_dtype = KWCTL__CACHE_DTYPE__CACHE_DTYPE_BF16;
    ProtobufCMessage *m = NULL;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD); /* no receiver ids */
    r.receiver_token_ids = rids;
    r.n_receiver_token_ids = 4;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD); /* not as many */
    r.n_receiver_token_ids = 5;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), 0);
    const Kwctl__ShareRequest *got = (const Kwctl__ShareRequest *)m;
    assert_int_equal(got->policy->selection, KWCTL__SELECTION__SELECTION_DELTA_PROJ_VNORM_TOPK);
    assert_int_equal(got->n_receiver_token_ids, 5);
    assert_int_equal(got->receiver_token_ids[4], 5);
    kw_proto_message_free(m);
    p.scoring = KWCTL__SCORING__SCORING_RECEIVER; /* receiver ids only for scoring at the sharer */
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    r.n_receiver_token_ids = 0;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), 0);
    kw_proto_message_free(m);
    Kwctl__CodecSpec pv = KWCTL__CODEC_SPEC__INIT; /* the preview's codec (PROTOCOL.md §5.2) */
    pv.codec = 1, pv.granularity = 2, pv.scale_dtype = 1;
    p.preview = &pv;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), 0);
    assert_non_null(((const Kwctl__ShareRequest *)m)->policy->preview);
    assert_int_equal(((const Kwctl__ShareRequest *)m)->policy->preview->codec, 1);
    kw_proto_message_free(m);
    pv.codec = 0; /* checked as any codec */
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    pv.codec = 1;
    p.scoring = KWCTL__SCORING__SCORING_LOCAL; /* a preview only for scoring at the receiver */
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    p.preview = NULL;
    p.scoring = (Kwctl__Scoring)2;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    p.scoring = KWCTL__SCORING__SCORING_RECEIVER; /* scoring with another selection */
    p.selection = KWCTL__SELECTION__SELECTION_VNORM_TOPK;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);
    p.scoring = KWCTL__SCORING__SCORING_LOCAL;
    p.selection = KWCTL__SELECTION__SELECTION_PROJ_VNORM_TOPK; /* kv_direct has no fuser */
    r.mode = KWCTL__MODE__MODE_KV_DIRECT;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &m), KW_E_PROTO_FIELD);

    uint32_t targets[] = {0, 1};
    uint8_t m0[1] = {0x0f}, m1[1] = {0x1c};
    ProtobufCBinaryData masks[] = {{1, m0}, {1, m1}};
    Kwctl__ShareTargets t = KWCTL__SHARE_TARGETS__INIT;
    t.request_id = 3;
    t.layer = 0;
    t.targets = targets;
    t.n_targets = 2;
    t.masks = masks;
    t.n_masks = 2;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_TARGETS, &t.base, &m), 0);
    const Kwctl__ShareTargets *tg = (const Kwctl__ShareTargets *)m;
    assert_int_equal(tg->n_targets, 2);
    assert_int_equal(tg->masks[1].len, 1);
    assert_int_equal(tg->masks[1].data[0], 0x1c);
    kw_proto_message_free(m);
    t.n_masks = 1; /* a mask per target */
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_TARGETS, &t.base, &m), KW_E_PROTO_FIELD);
    t.n_masks = 2;
    targets[1] = 0; /* strictly increasing */
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_TARGETS, &t.base, &m), KW_E_PROTO_FIELD);
    targets[1] = 1;
    masks[1].len = 0; /* all the same length, not empty */
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_TARGETS, &t.base, &m), KW_E_PROTO_FIELD);
    masks[1].len = 1;
    t.request_id = 0;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_TARGETS, &t.base, &m), KW_E_PROTO_FIELD);
}

/* Scoring at the receiver (docs/PROTOCOL.md §5.2): the SHARE_PREVIEW and SHARE_SELECTION frames' rules; ShareEnd's
 * scoring report of either placement (SharePolicy.preview: test_receiver_aware). */
static void test_receiver_scoring(void **state) {
    (void)state;
    ProtobufCMessage *m = NULL;
    Kwctl__SharePreview v = KWCTL__SHARE_PREVIEW__INIT;
    v.request_id = 3;
    v.blob = 1;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_PREVIEW, &v.base, &m), 0);
    assert_int_equal(((const Kwctl__SharePreview *)m)->blob, 1);
    kw_proto_message_free(m);
    v.blob = 1024; /* a section ordinal */
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_PREVIEW, &v.base, &m), KW_E_PROTO_FIELD);
    v.blob = 0;
    v.request_id = 0;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_PREVIEW, &v.base, &m), KW_E_PROTO_FIELD);

    uint8_t sel[] = {1, 0, 2, 5, 0x1f, 0};
    Kwctl__ShareSelection q = KWCTL__SHARE_SELECTION__INIT;
    q.request_id = 3;
    q.selection.data = sel;
    q.selection.len = sizeof sel;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_SELECTION, &q.base, &m), 0);
    const Kwctl__ShareSelection *gq = (const Kwctl__ShareSelection *)m;
    assert_int_equal(gq->selection.len, sizeof sel);
    assert_memory_equal(gq->selection.data, sel, sizeof sel);
    kw_proto_message_free(m);
    q.selection.len = 0; /* not empty */
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_SELECTION, &q.base, &m), KW_E_PROTO_FIELD);
    q.selection.len = sizeof sel;
    q.request_id = 0;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_SELECTION, &q.base, &m), KW_E_PROTO_FIELD);

    Kwctl__ScoringReport sr = KWCTL__SCORING_REPORT__INIT;
    sr.placement = KWCTL__SCORING__SCORING_RECEIVER;
    sr.preview_bytes = 4096, sr.selection_bytes = 6, sr.wait_ns = 1000;
    Kwctl__ShareEnd e = KWCTL__SHARE_END__INIT;
    e.request_id = 3;
    e.scoring = &sr;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_END, &e.base, &m), 0);
    const Kwctl__ShareEnd *ge = (const Kwctl__ShareEnd *)m;
    assert_int_equal(ge->scoring->placement, KWCTL__SCORING__SCORING_RECEIVER);
    assert_int_equal(ge->scoring->preview_bytes, 4096);
    assert_int_equal(ge->scoring->selection_bytes, 6);
    kw_proto_message_free(m);
    sr.placement = KWCTL__SCORING__SCORING_LOCAL; /* the round trip's fields only with placement receiver */
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_END, &e.base, &m), KW_E_PROTO_FIELD);
    sr.preview_bytes = sr.selection_bytes = sr.wait_ns = 0;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_END, &e.base, &m), 0);
    kw_proto_message_free(m);
}

static void test_share_flow_messages(void **state) {
    (void)state;
    ProtobufCMessage *m = NULL;
    uint32_t layers[] = {1, 2};
    Kwctl__KvShape kv = KWCTL__KV_SHAPE__INIT;
    kv.n_layers = 4, kv.n_kv_heads = 2, kv.head_dim = 64;
    Kwctl__ShareHeader h = KWCTL__SHARE_HEADER__INIT;
    h.request_id = 3;
    h.mode = KWCTL__MODE__MODE_KV_DIRECT;
    h.layers = layers;
    h.n_layers = 2;
    h.tokens_prefilled = 100;
    h.tokens_kept = 50;
    h.blob_bytes_max = 123456;
    h.section_bytes_max = 60000;
    h.kv = &kv;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_HEADER, &h.base, &m), 0);
    assert_int_equal(((Kwctl__ShareHeader *)m)->blob_bytes_max, 123456);
    kw_proto_message_free(m);
    layers[1] = 4; /* not a layer of a 4-layer model */
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_HEADER, &h.base, &m), KW_E_PROTO_FIELD);
    layers[1] = 2;
    h.tokens_kept = 101;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_HEADER, &h.base, &m), KW_E_PROTO_FIELD);

    Kwctl__ShareText t = KWCTL__SHARE_TEXT__INIT;
    t.request_id = 3;
    t.text = (ProtobufCBinaryData){5, (uint8_t *)"hello"};
    t.n_tokens = 2;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_TEXT, &t.base, &m), 0);
    kw_proto_message_free(m);
    t.text = (ProtobufCBinaryData){2, (uint8_t *)"\xff\xfe"};
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_TEXT, &t.base, &m), KW_E_PROTO_FIELD);

    Kwctl__ShareEnd e = KWCTL__SHARE_END__INIT;
    e.request_id = 3;
    e.blob_bytes = 99999;
    e.sections = 2;
    e.compressed_sections = 1;
    e.prefill_ns = 1234567;
    e.frames_sent = 4;
    e.rows_total = 200, e.rows_sent = 100, e.layers_sent = 2, e.kv_bytes = 4096;
    Kwctl__WireBreakdown bd = KWCTL__WIRE_BREAKDOWN__INIT;
    bd.header = 200, bd.payload = 99000, bd.checksums = 799;
    e.breakdown = &bd;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_END, &e.base, &m), 0);
    assert_int_equal(((Kwctl__ShareEnd *)m)->prefill_ns, 1234567);
    assert_int_equal(((Kwctl__ShareEnd *)m)->breakdown->payload, 99000);
    assert_int_equal(((Kwctl__ShareEnd *)m)->rows_sent, 100);
    kw_proto_message_free(m);
    e.compressed_sections = 3;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_END, &e.base, &m), KW_E_PROTO_FIELD);
    e.compressed_sections = 1;
    e.rows_sent = 201;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_END, &e.base, &m), KW_E_PROTO_FIELD);
    e.rows_sent = 100;
    /* a capped request's report */
    uint64_t per_codec[9] = {40, 60};
    Kwctl__BudgetReport br = KWCTL__BUDGET_REPORT__INIT;
    br.cap_bytes = 100000, br.min_bytes = 300, br.tokens_candidate = 150, br.tokens_dropped = 50;
    br.tokens_per_codec = per_codec, br.n_tokens_per_codec = 2, br.distortion = 12.5;
    e.budget = &br;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_END, &e.base, &m), 0);
    assert_int_equal(((Kwctl__ShareEnd *)m)->budget->tokens_per_codec[1], 60);
    kw_proto_message_free(m);
    br.tokens_dropped = 151;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_END, &e.base, &m), KW_E_PROTO_FIELD);
    br.tokens_dropped = 50;
    br.n_tokens_per_codec = 9;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_END, &e.base, &m), KW_E_PROTO_FIELD);
    br.n_tokens_per_codec = 2;
    br.distortion = -1;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_SHARE_END, &e.base, &m), KW_E_PROTO_FIELD);

    Kwctl__Error err = KWCTL__ERROR__INIT;
    err.request_id = 3;
    err.status = KW_E_WIRE_CHECKSUM;
    err.message = "section 2: checksum";
    assert_int_equal(roundtrip(KW_PROTO_FRAME_ERROR, &err.base, &m), 0);
    assert_int_equal(((Kwctl__Error *)m)->status, KW_E_WIRE_CHECKSUM);
    kw_proto_message_free(m);
    err.status = 0;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_ERROR, &err.base, &m), KW_E_PROTO_FIELD);

    Kwctl__Cancel c = KWCTL__CANCEL__INIT;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_CANCEL, &c.base, &m), KW_E_PROTO_FIELD);
    c.request_id = 3;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_CANCEL, &c.base, &m), 0);
    kw_proto_message_free(m);

    Kwctl__Stats s = KWCTL__STATS__INIT;
    s.requests_ok = 10;
    s.bytes_out = 1ull << 40;
    s.queue_depth = 3;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_STATS, &s.base, &m), 0);
    assert_int_equal(((Kwctl__Stats *)m)->bytes_out, 1ull << 40);
    kw_proto_message_free(m);
    Kwctl__Pong pong = KWCTL__PONG__INIT;
    pong.nonce = 5;
    assert_int_equal(roundtrip(KW_PROTO_FRAME_PONG, &pong.base, &m), 0);
    kw_proto_message_free(m);
}

static void test_unpack_rejections(void **state) {
    (void)state;
    ProtobufCMessage *m = NULL;
    /* a raw frame type carries no message */
    assert_int_equal(kw_proto_message_unpack_body(NULL, KW_PROTO_FRAME_WIRE, (const uint8_t *)"", 0, &m),
                     KW_E_PROTO_FRAME_TYPE);
    assert_int_equal(kw_proto_message_unpack_body(NULL, 99, (const uint8_t *)"", 0, &m), KW_E_PROTO_FRAME_TYPE);
    /* not protobuf: a truncated varint, a length past the end, wire type 7 */
    const uint8_t trunc[] = {0x08, 0x80};
    assert_int_equal(kw_proto_message_unpack_body(NULL, KW_PROTO_FRAME_PING, trunc, sizeof trunc, &m),
                     KW_E_PROTO_MESSAGE);
    const uint8_t past[] = {0x1a, 0x10, 'a'};
    assert_int_equal(kw_proto_message_unpack_body(NULL, KW_PROTO_FRAME_HELLO, past, sizeof past, &m),
                     KW_E_PROTO_MESSAGE);
    const uint8_t wt7[] = {0x0f, 0x00};
    assert_int_equal(kw_proto_message_unpack_body(NULL, KW_PROTO_FRAME_PING, wt7, sizeof wt7, &m), KW_E_PROTO_MESSAGE);
    /* an unknown field (number 15, varint) after a valid Ping: rejected... */
    const uint8_t unknown[] = {0x08, 0x05, 0x78, 0x01};
    assert_int_equal(kw_proto_message_unpack_body(NULL, KW_PROTO_FRAME_PING, unknown, sizeof unknown, &m),
                     KW_E_PROTO_FIELD);
    /* ...but tolerated in a Hello (field 15 is not defined there either) */
    const uint8_t hello_ext[] = {0x08, 0x01, 0x10, 0x01, 0x78, 0x01};
    assert_int_equal(kw_proto_message_unpack_body(NULL, KW_PROTO_FRAME_HELLO, hello_ext, sizeof hello_ext, &m), 0);
    assert_int_equal(((Kwctl__Hello *)m)->role, KWCTL__ROLE__ROLE_RECEIVER);
    kw_proto_message_free(m);
    /* the size limit applies to the payload given */
    const kw_proto_limits small = {.max_message_bytes = 3};
    assert_int_equal(kw_proto_message_unpack_body(&small, KW_PROTO_FRAME_PING, unknown, sizeof unknown, &m),
                     KW_E_PROTO_FRAME_SIZE);
    /* an empty payload is a message with every field at its default */
    assert_int_equal(kw_proto_message_unpack_body(NULL, KW_PROTO_FRAME_PING, NULL, 0, &m), 0);
    assert_int_equal(((Kwctl__Ping *)m)->nonce, 0);
    kw_proto_message_free(m);
    kw_proto_message_free(NULL);
}

/* The checksum that ends every message frame: any flipped bit of the payload, a missing or short checksum, or a
 * payload moved to a frame of another type is KW_E_PROTO_CHECKSUM; nothing is unpacked. */
static void test_checksum(void **state) {
    (void)state;
    Kwctl__Ping ping = KWCTL__PING__INIT;
    ping.nonce = 7;
    uint8_t *frame = NULL;
    size_t n = 0;
    assert_int_equal(kw_proto_message_frame_pack(KW_PROTO_FRAME_PING, &ping.base, &frame, &n), 0);
    /* PING nonce 7 (PROTOCOL.md §3.1): header, 08 07, then the XXH32 of 08 07 seeded with 12 */
    assert_int_equal(n, KW_PROTO_FRAME_HEADER_BYTES + 2 + KW_PROTO_MESSAGE_CHECKSUM_BYTES);
    const uint8_t head[] = {0x06, 0x00, 0x00, 0x00, 0x0c, 0x08, 0x07};
    assert_memory_equal(frame, head, sizeof head);
    const uint8_t *payload = frame + KW_PROTO_FRAME_HEADER_BYTES;
    const size_t len = n - KW_PROTO_FRAME_HEADER_BYTES;
    assert_int_equal(kw_load_le32(payload + 2), kw_proto_message_checksum(KW_PROTO_FRAME_PING, payload, 2));
    ProtobufCMessage *m = NULL;
    assert_int_equal(kw_proto_message_unpack(NULL, KW_PROTO_FRAME_PING, payload, len, &m), 0);
    assert_int_equal(((Kwctl__Ping *)m)->nonce, 7);
    kw_proto_message_free(m);
    uint8_t copy[16];
    for (size_t bit = 0; bit < len * 8; ++bit) {
        memcpy(copy, payload, len);
        copy[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        m = NULL;
        assert_int_equal(kw_proto_message_unpack(NULL, KW_PROTO_FRAME_PING, copy, len, &m), KW_E_PROTO_CHECKSUM);
        assert_null(m);
    }
    for (size_t short_len = 0; short_len < KW_PROTO_MESSAGE_CHECKSUM_BYTES; ++short_len)
        assert_int_equal(kw_proto_message_unpack(NULL, KW_PROTO_FRAME_PING, payload, short_len, &m),
                         KW_E_PROTO_CHECKSUM);
    assert_int_equal(kw_proto_message_unpack(NULL, KW_PROTO_FRAME_PONG, payload, len, &m), KW_E_PROTO_CHECKSUM);
    free(frame);
}

static void test_unpack_memory_budget(void **state) {
    (void)state;
    /* 20000 empty LayerPolicy entries: two bytes each on the wire, a struct and a pointer each once unpacked */
    const size_t n = 20000;
    uint8_t *policy = malloc(2 * n);
    for (size_t i = 0; i < n; ++i)
        policy[2 * i] = 0x4a, policy[2 * i + 1] = 0x00; /* field 9, length 0 */
    /* ShareRequest{request_id: 1, mode: 2, policy(6): {...}} */
    uint8_t *msg = malloc(2 * n + 16);
    size_t at = 0;
    msg[at++] = 0x08, msg[at++] = 0x01, msg[at++] = 0x10, msg[at++] = 0x02, msg[at++] = 0x32;
    uint32_t len = (uint32_t)(2 * n);
    while (len >= 0x80)
        msg[at++] = (uint8_t)(len | 0x80), len >>= 7;
    msg[at++] = (uint8_t)len;
    memcpy(msg + at, policy, 2 * n);
    at += 2 * n;
    ProtobufCMessage *m = NULL;
    const kw_proto_limits tight = {.max_unpacked_bytes = 64 << 10};
    assert_int_equal(kw_proto_message_unpack_body(&tight, KW_PROTO_FRAME_SHARE_REQUEST, msg, at, &m), KW_E_LIMIT);
    /* with room, it unpacks, and the field rules then reject it (no codecs, no selection) */
    assert_int_equal(kw_proto_message_unpack_body(NULL, KW_PROTO_FRAME_SHARE_REQUEST, msg, at, &m), KW_E_PROTO_FIELD);
    free(msg);
    free(policy);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hello_roundtrip),      cmocka_unit_test(test_hello_reply),
        cmocka_unit_test(test_share_request),        cmocka_unit_test(test_share_flow_messages),
        cmocka_unit_test(test_unpack_rejections),    cmocka_unit_test(test_checksum),
        cmocka_unit_test(test_unpack_memory_budget), cmocka_unit_test(test_share_request_skip_ranked),
        cmocka_unit_test(test_receiver_aware),       cmocka_unit_test(test_receiver_scoring),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

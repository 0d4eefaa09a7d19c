/* kw_receiverd_compute.c: receiverd's compute threads (compute.workers, kw_rd_worker), each one request at a time, the
 * receiver half of the pipeline as `kvwire c2c` runs it (the same plan from c2c/kw_request.h, the same kw_receive
 * calls), with the sharer's blob bytes taken from the request's inbox as the link delivers them: the ShareRequest goes
 * out first, the receiver prefills its own sections meanwhile, each KVWire section is applied as soon as it is
 * verified, then the receiver generates (streaming tokens, stop strings, logprobs and teacher forcing through the
 * generation callbacks).
 *
 * Not here: sockets (kw_receiverd_link.c), HTTP and JSON (kw_receiverd.c, kw_receiverd_api.c).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "c2c/kw_request.h"
#include "c2c/kw_rscore.h"
#include "c2c/kw_rselect.h"
#include "common/kw_half.h"
#include "common/kw_log.h"
#include "common/kw_status.h"
#include "common/kw_time.h"
#include "model/kw_generate.h"
#include "receiver/kw_receive.h"
#include "receiver/kw_receive_preview.h"
#include "receiver/kw_receiverd_internal.h"

// ---------------------------------------------------------------------------------------------------------------
// Fusers

int32_t kw_rd_find_fuser(const kw_receiverd *d, int32_t sharer, const Kwctl__ModelIdentity *m, char *why, size_t cap) {
    snprintf(why, cap, "no fuser is configured for sharer %s", d->cfg->sharers[sharer].name);
    for (int32_t i = 0; i < d->n_fusers; ++i) {
        const kw_rd_fuser *f = &d->fusers[i];
        if (f->sharer_index != sharer) continue;
        if (f->cfg->sharer_model && strcmp(f->cfg->sharer_model, m->name) != 0) {
            snprintf(why, cap, "fuser %s is for sharer model %s, not %s", f->cfg->name, f->cfg->sharer_model, m->name);
            continue;
        }
        if (kw_proto_fuser_fits(&f->id, m, why, cap)) return i;
    }
    return -1;
}

/* The worker's fusion of fuser i for a sharer of this geometry, bound on first use (and again if the geometry
 * changes). */
static int kw__rd_fusion(kw_rd_worker *w, int32_t i, int32_t layers, int32_t heads, int32_t dim, kw_fusion **out) {
    const kw_rd_fuser *f = &w->d->fusers[i];
    if (w->fusion[i] && (w->fusion_layers[i] != layers || w->fusion_heads[i] != heads || w->fusion_dim[i] != dim)) {
        kw_fusion_free(w->fusion[i]);
        w->fusion[i] = NULL;
    }
    if (!w->fusion[i]) {
        const kw_fusion_sharer sh = {.fuser = f->fuser, .n_layers = layers, .n_kv_heads = heads, .head_dim = dim};
        KW_FORWARD(kw_fusion_create(w->model, &sh, 1, 0, &w->fusion[i]));
        w->fusion_layers[i] = layers, w->fusion_heads[i] = heads, w->fusion_dim[i] = dim;
    }
    *out = w->fusion[i];
    return 0;
}

int kw_rd_workers_create(kw_receiverd *d, int32_t n) {
    KW_RETURN_IF(n < 1, KW_E_INVALID_ARG, "receiverd: compute.workers %d", (int)n);
    d->workers = calloc((size_t)n, sizeof *d->workers);
    KW_RETURN_IF(!d->workers, KW_E_NOMEM, "receiverd: out of memory");
    d->n_workers = n;
    for (int32_t i = 0; i < n; ++i) {
        kw_rd_worker *w = &d->workers[i];
        w->d = d;
        w->index = i;
        if (i == 0) {
            w->be = d->be, w->model = d->model;
            continue;
        }
        KW_FORWARD(kw_backend_create_stream(d->be, &w->be));
        KW_FORWARD(kw_model_fork(d->model, w->be, &w->model));
    }
    return 0;
}

void kw_rd_workers_free(kw_receiverd *d) {
    for (int32_t i = 0; d->workers && i < d->n_workers; ++i) {
        kw_rd_worker *w = &d->workers[i];
        for (int32_t f = 0; f < KW_RECEIVERD_MAX_FUSERS; ++f)
            kw_fusion_free(w->fusion[f]);
        if (i == 0) continue; /* the daemon's own backend and model */
        kw_model_free(w->model);
        kw_backend_destroy(w->be);
    }
    free(d->workers);
    d->workers = NULL;
    d->n_workers = 0;
}

// ---------------------------------------------------------------------------------------------------------------
// The inbox and the share

static int kw__rd_check(kw_rd_job *j) {
    const int c = atomic_load(&j->cancel);
    if (c) KW_FAIL(c, "the request was stopped (%s)", kw_status_name(c));
    return 0;
}

/* The share's failure as the request's (with its HTTP status). Called with j->mu held. */
static int kw__rd_share_failed(kw_rd_job *j) {
    j->http_status = j->share.http_status;
    return kw_error_set(j->share.status, "%s", j->share.error);
}

/* Waits for the next chunk of blob bytes (*c, left at the head of the inbox) or for the end of the share. @return 1
 * with a chunk, 0 when the share ended with nothing more to read, or the failure. */
static int kw__rd_next_chunk(kw_rd_job *j, kw_rd_chunk **c) {
    int rc = 0;
    uv_mutex_lock(&j->mu);
    while (!j->inbox_head && !j->share.ended && !atomic_load(&j->cancel))
        uv_cond_wait(&j->cond, &j->mu);
    if (j->inbox_head) {
        *c = j->inbox_head;
        rc = 1;
    } else if (atomic_load(&j->cancel)) {
        rc = kw__rd_check(j);
    } else if (j->share.status < 0) {
        rc = kw__rd_share_failed(j);
    }
    uv_mutex_unlock(&j->mu);
    return rc;
}

/* Drops the head chunk once read; lets the link read again when it had stopped for this inbox. */
static void kw__rd_pop_chunk(kw_rd_job *j) {
    uv_mutex_lock(&j->mu);
    kw_rd_chunk *c = j->inbox_head;
    j->inbox_head = c->next;
    if (!j->inbox_head) j->inbox_tail = NULL;
    j->inbox_bytes -= c->len;
    const bool resume = j->paused && j->inbox_bytes <= (size_t)j->d->cfg->sharer_inbox_bytes / 2;
    if (resume) j->paused = false;
    uv_mutex_unlock(&j->mu);
    kw_rd_chunk_free(c);
    if (resume) kw_rd_post_send(j->d, KW_RD_POST_RESUME, j, NULL, 0);
}

/* A sharer layer's per-target subsets (SHARE_TARGETS) for blob number blob, handed to the receiver half. */
static int kw__rd_targets(kw_receive *r, int32_t blob, const Kwctl__ShareTargets *m) {
    KW_RETURN_IF(m->blob != (uint32_t)blob || m->n_targets > KW_RECEIVE_MAX_TARGETS, KW_E_PROTO_SEQUENCE,
                 "SHARE_TARGETS for blob %u layer %u while blob %d streams", m->blob, m->layer, (int)blob);
    int32_t layers[KW_RECEIVE_MAX_TARGETS];
    const uint8_t *masks[KW_RECEIVE_MAX_TARGETS];
    for (size_t i = 0; i < m->n_targets; ++i) {
        layers[i] = (int32_t)m->targets[i];
        masks[i] = m->masks[i].data;
    }
    return kw_receive_targets(r, 0, (int32_t)m->layer, (int32_t)m->n_targets, layers, masks, (int64_t)m->masks[0].len);
}

/* Feeds the sharer's blob for the current (sent) section (blob number blob) from the inbox until its trailer is
 * verified, with the per-target subsets that come before its layers. */
static int kw__rd_feed_section(kw_rd_job *j, kw_receive *r, int32_t blob) {
    for (;;) {
        kw_rd_chunk *c = NULL;
        const int got = kw__rd_next_chunk(j, &c);
        if (got < 0) return got;
        KW_RETURN_IF(got == 0, KW_E_SHARE_INCOMPLETE, "the sharer ended the share before the section's blob did");
        KW_RETURN_IF(c->preview, KW_E_PROTO_SEQUENCE, "a SHARE_PREVIEW frame in the final blobs");
        if (c->targets) {
            const int rc = kw__rd_targets(r, blob, c->targets);
            kw__rd_pop_chunk(j);
            KW_FORWARD(rc);
            continue;
        }
        size_t used = 0;
        int done = 0;
        KW_FORWARD(kw_receive_feed_some(r, 0, c->data + c->off, c->len - c->off, &used, &done));
        c->off += used;
        if (c->off == c->len) kw__rd_pop_chunk(j);
        if (done) return 0;
    }
}

/* Waits for the end of the share: nothing may follow the last blob. */
static int kw__rd_share_end(kw_rd_job *j) {
    kw_rd_chunk *c = NULL;
    const int got = kw__rd_next_chunk(j, &c);
    if (got < 0) return got;
    KW_RETURN_IF(got > 0, KW_E_WIRE_TRAILING, "the sharer sent %zu bytes after the last blob", c->len - c->off);
    return 0;
}

/* Waits for the relay's text (the share's end). */
static int kw__rd_relay_text(kw_rd_job *j) {
    kw_rd_chunk *c = NULL;
    const int got = kw__rd_next_chunk(j, &c);
    if (got < 0) return got;
    KW_RETURN_IF(got > 0 || !j->share.text, KW_E_PROTO_SEQUENCE, "the sharer answered a text relay without a text");
    return 0;
}

static Kwctl__CodecSpec kw__rd_codec(const kw_wire_codec_spec *s) {
    Kwctl__CodecSpec c = KWCTL__CODEC_SPEC__INIT;
    c.codec = s->codec, c.granularity = s->granularity, c.scale_dtype = kw_wire_spec_scale(s);
    c.zero_points = kw_wire_spec_asym(s) != 0;
    c.group_size =
        s->granularity == KW_WIRE_GRAN_GROUP || s->granularity == KW_WIRE_GRAN_CHANNEL ? 1u << s->group_log2 : 0;
    return c;
}

/* Whether the request's byte cap holds the smallest blobs it can make (the sharer checks it too; here it is a 400):
 * n_blobs blobs of n_layers sections of the sharer's cache shape over the shared tokens. */
static int kw__rd_check_budget(const kw_rd_job *j, int32_t n_blobs, int32_t n_layers) {
    const kw_rd_spec *s = &j->spec;
    const kw_wire_header hdr = {.n_layers = (uint16_t)j->sharer_layers,
                                .n_sections = (uint16_t)n_layers,
                                .n_kv_heads = (uint16_t)j->sharer_heads,
                                .head_dim = (uint16_t)j->sharer_dim,
                                .n_positions = (uint32_t)j->shared_tokens,
                                .src_dtype = KW_WIRE_DTYPE_F32};
    const kw_wire_alloc_options ao = {.codecs = s->budget_codecs, .n_codecs = (uint32_t)s->n_budget_codecs};
    const int rc = kw_wire_alloc_check_cap(&hdr, &ao, (uint32_t)n_blobs, (uint64_t)s->budget_bytes);
    if (rc < 0) KW_FAIL(rc, "kvwire.policy.budget_bytes: %s", kw_error_detail());
    return 0;
}

/* A whole-layer baseline's plan (receiver/kw_receive.h kw_receive_plan_layers) over the job's sharer layers: with
 * kvcomm_like they become the layers the cap holds (*n_layers too), the others counted as unsent. mine: the sharer's
 * sections. */
static int kw__rd_plan_budget(kw_rd_job *j, const kw_fusion_section *mine, int32_t *n_layers) {
    const kw_rd_spec *s = &j->spec;
    const kw_wire_header shape = {.n_kv_heads = (uint16_t)j->sharer_heads,
                                  .head_dim = (uint16_t)j->sharer_dim,
                                  .n_positions = (uint32_t)j->shared_tokens,
                                  .src_dtype = KW_WIRE_DTYPE_F32};
    const int32_t candidates = *n_layers;
    uint64_t min_bytes = 0;
    const int rc = kw_receive_plan_layers((enum kw_wire_budget_mode)s->budget_mode, &shape, mine, j->n_sections,
                                          &s->select, s->budget_codecs, (uint32_t)s->n_budget_codecs,
                                          (uint64_t)s->budget_bytes, j->layers_sent, n_layers, &min_bytes);
    if (rc < 0) KW_FAIL(rc, "kvwire.policy.budget_bytes: %s", kw_error_detail());
    j->n_layers_sent = *n_layers;
    j->layers_unsent = candidates - *n_layers;
    return 0;
}

/* Packs the job's ShareRequest and hands it to the loop. sharer_sections: the sharer's view (index 1 = sent), the
 * last one included; ids[0..prefix). sel: the selection (the spec's, or a refinement's round two with its
 * skip_ranked[0..n_skip)). */
static int kw__rd_send_request(kw_receiverd *d, kw_rd_job *j, const char *question, const int32_t *ids, int64_t prefix,
                               const kw_fusion_section *sharer_sections, int32_t n_sections, const int32_t *layers,
                               int32_t n_layers, const kw_select_policy *sel, uint32_t *skip, size_t n_skip) {
    const kw_rd_spec *s = &j->spec;
    const enum kw_dtype cache_dtype = d->cfg->numerics ? KW_DTYPE_F32 : KW_DTYPE_BF16;
    Kwctl__ShareRequest r = KWCTL__SHARE_REQUEST__INIT;
    Kwctl__SharePolicy p = KWCTL__SHARE_POLICY__INIT;
    Kwctl__CodecSpec codec = kw__rd_codec(&s->spec), codec_v = kw__rd_codec(&s->spec_v),
                     preview = KWCTL__CODEC_SPEC__INIT;
    Kwctl__Section *secs = calloc((size_t)n_sections, sizeof *secs);
    Kwctl__Section **sec_ptrs = calloc((size_t)n_sections, sizeof *sec_ptrs);
    uint32_t *uids = malloc((size_t)(prefix > 0 ? prefix : 1) * sizeof *uids);
    uint32_t *ulayers = malloc((size_t)(n_layers > 0 ? n_layers : 1) * sizeof *ulayers);
    Kwctl__LayerPolicy *sched = NULL, **sched_ptrs = NULL;
    Kwctl__CodecSpec *sched_codecs = NULL;
    Kwctl__TokenPolicy tok[KW_PROTO_MAX_TOKEN_POLICIES], *tok_ptrs[KW_PROTO_MAX_TOKEN_POLICIES];
    Kwctl__CodecSpec tok_codecs[2 * KW_PROTO_MAX_TOKEN_POLICIES];
    Kwctl__CodecSpec budget_codecs[KW_WIRE_ALLOC_MAX_CODECS], *budget_ptrs[KW_WIRE_ALLOC_MAX_CODECS];
    size_t n_sched = 0;
    int rc = 0;
    KW_CHECK_IF(!secs || !sec_ptrs || !uids || !ulayers, KW_E_NOMEM, "out of memory");
    r.request_id = j->share_id; /* unique in the daemon, so on the connection too */
    r.mode = s->mode == KW_RD_MODE_KV_DIRECT    ? KWCTL__MODE__MODE_KV_DIRECT
             : s->mode == KW_RD_MODE_TEXT_RELAY ? KWCTL__MODE__MODE_TEXT_RELAY
                                                : KWCTL__MODE__MODE_C2C;
    r.sharer_model = j->sharer_model;
    r.cache_dtype =
        cache_dtype == KW_DTYPE_F32 ? KWCTL__CACHE_DTYPE__CACHE_DTYPE_F32 : KWCTL__CACHE_DTYPE__CACHE_DTYPE_BF16;
    r.timeout_ms = (uint32_t)d->cfg->sharer_request_timeout_ms;
    if (s->mode == KW_RD_MODE_TEXT_RELAY) {
        r.relay_question = (char *)question;
        r.text_relay_max_tokens = (uint32_t)s->relay_max_tokens;
        r.text_relay_capped = s->relay_max_bytes >= 0;
        r.text_relay_max_bytes = s->relay_max_bytes >= 0 ? (uint32_t)s->relay_max_bytes : 0;
        r.relay_style = (Kwctl__RelayStyle)s->relay_style;
    } else {
        for (int64_t i = 0; i < prefix; ++i)
            uids[i] = (uint32_t)ids[i];
        r.token_ids = uids;
        r.n_token_ids = (size_t)prefix;
        for (int32_t i = 0; i + 1 < n_sections; ++i) {
            kwctl__section__init(&secs[i]);
            secs[i].length = (uint32_t)sharer_sections[i].length;
            secs[i].sent = sharer_sections[i].index > 0;
            sec_ptrs[i] = &secs[i];
        }
        r.sections = sec_ptrs;
        r.n_sections = (size_t)(n_sections - 1);
        p.k = &codec;
        p.v = &codec_v;
        p.outlier_ppm = (uint32_t)(s->outliers * 1e6 + 0.5);
        p.pre_rope_keys = s->pre_rope_keys;
        p.hadamard_rotate = s->rotate;
        p.clip_scales = s->clip;
        p.code_limit_k = s->qmax_k;
        p.code_limit_v = s->qmax_v;
        p.selection = (Kwctl__Selection)(sel->mode + 1);
        p.proportion = sel->mode == KW_SELECT_FULL ? 0 : sel->proportion;
        p.seed = sel->seed;
        p.min_tokens = (uint32_t)sel->min_tokens;
        p.skip_ranked = skip;
        p.n_skip_ranked = n_skip;
        p.zstd = s->zstd_level != 0;
        p.zstd_level = s->zstd_level;
        p.rans = s->rans;
        p.budget_bytes = (uint64_t)s->budget_bytes;
        for (int i = 0; i < s->n_budget_codecs; ++i) {
            budget_codecs[i] = kw__rd_codec(&s->budget_codecs[i]);
            budget_ptrs[i] = &budget_codecs[i];
        }
        p.budget_codecs = budget_ptrs;
        p.n_budget_codecs = (size_t)s->n_budget_codecs;
        p.budget_mode = (Kwctl__BudgetMode)s->budget_mode;                      /* the same numbers */
        if (kw_select_mode_receiver_aware(s->select.mode) && s->scoring == 1) { /* scored here (PROTOCOL.md §5.2) */
            p.scoring = KWCTL__SCORING__SCORING_RECEIVER;
            preview = kw__rd_codec(&s->preview);
            p.preview = &preview;
        } else if (kw_select_mode_receiver_aware(s->select.mode)) { /* scored at the sharer: the receiver's ids (the */
            p.scoring = KWCTL__SCORING__SCORING_LOCAL;              /* same as token_ids here: no token alignment) */
            r.receiver_token_ids = uids;
            r.n_receiver_token_ids = (size_t)prefix;
        }
        for (int32_t i = 0; i < n_layers; ++i)
            ulayers[i] = (uint32_t)layers[i];
        p.layers = ulayers;
        p.n_layers = (size_t)n_layers;
        /* the schedule: per sent layer, the last entry covering it wins */
        if (s->n_schedule) {
            sched = calloc((size_t)n_layers, sizeof *sched);
            sched_ptrs = calloc((size_t)n_layers, sizeof *sched_ptrs);
            sched_codecs = calloc(2 * (size_t)n_layers, sizeof *sched_codecs); /* K, V */
            KW_CHECK_IF(!sched || !sched_ptrs || !sched_codecs, KW_E_NOMEM, "out of memory");
            for (int32_t i = 0; i < n_layers; ++i) {
                int hit = -1;
                for (int k = 0; k < s->n_schedule; ++k)
                    if (layers[i] >= s->schedule[k].first && layers[i] <= s->schedule[k].last) hit = k;
                if (hit < 0) continue;
                kwctl__layer_policy__init(&sched[n_sched]);
                const kw_rd_schedule *e = &s->schedule[hit];
                sched_codecs[2 * n_sched] = kw__rd_codec(&e->spec);
                sched_codecs[2 * n_sched + 1] = kw__rd_codec(&e->spec_v);
                sched[n_sched].layer = (uint32_t)layers[i];
                sched[n_sched].k = &sched_codecs[2 * n_sched];
                sched[n_sched].v = &sched_codecs[2 * n_sched + 1];
                sched[n_sched].own_options = e->own_options;
                sched[n_sched].hadamard_rotate = e->own_options ? e->rotate : 0;
                sched[n_sched].clip_scales = e->own_options ? e->clip : 0;
                sched[n_sched].code_limit_k = e->own_options ? e->qmax_k : 0;
                sched[n_sched].code_limit_v = e->own_options ? e->qmax_v : 0;
                sched_ptrs[n_sched] = &sched[n_sched];
                ++n_sched;
            }
            p.schedule = sched_ptrs;
            p.n_schedule = n_sched;
        }
        for (int i = 0; i < s->n_token_schedule; ++i) { /* the API's entries as they are */
            const kw_rd_token_schedule *t = &s->token_schedule[i];
            kwctl__token_policy__init(&tok[i]);
            tok_codecs[2 * i] = kw__rd_codec(&t->spec);
            tok_codecs[2 * i + 1] = kw__rd_codec(&t->spec_v);
            tok[i].first = t->first;
            tok[i].last = t->last;
            tok[i].positions = (uint32_t *)t->positions; /* not written: packing only reads it */
            tok[i].n_positions = (size_t)t->n_positions;
            tok[i].k = &tok_codecs[2 * i];
            tok[i].v = &tok_codecs[2 * i + 1];
            tok_ptrs[i] = &tok[i];
        }
        p.token_schedule = tok_ptrs;
        p.n_token_schedule = (size_t)s->n_token_schedule;
        r.policy = &p;
    }
    KW_CHECK(kw_proto_message_check(NULL, &r.base));
    KW_CHECK(kw_proto_message_frame_pack(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &j->request_frame, &j->request_len));
    KW_CHECK(kw_rd_post_send(d, KW_RD_POST_SEND, j, NULL, 0));
out:
    free(secs), free(sec_ptrs), free(uids), free(ulayers), free(sched), free(sched_ptrs), free(sched_codecs);
    return rc;
}

/* scoring receiver (docs/PROTOCOL.md §5.2): reads the n_sent preview blobs (each after its SHARE_PREVIEW marker;
 * a blob ends with its verified trailer), scores each with the receiver's own prefill of the shared tokens and the
 * fuser (kw_receive_preview_score, as kvwire c2c does), sends the selection back as SHARE_SELECTION and leaves it in
 * *chosen (the caller's, kw_rselect_free) for the final blobs' per-target subsets. */
static int kw__rd_previews(kw_rd_worker *w, kw_rd_job *j, kw_fusion *fusion, int32_t n_sent, kw_rselect *chosen) {
    kw_receiverd *d = w->d;
    const kw_rd_spec *s = &j->spec;
    const bool fp32 = d->cfg->numerics != 0;
    const kw_wire_policy qpol = {.k = s->spec, .v = s->spec}; /* the delta's round trip: the request's codec */
    const kw_rscore_options ro = {.mode = s->select.mode,
                                  .numerics = fp32 ? KW_PROJECTOR_FP32 : KW_PROJECTOR_BF16,
                                  .cache_dtype = fp32 ? KW_DTYPE_F32 : KW_DTYPE_BF16,
                                  .quantize = kw_wire_roundtrip_rows_hook,
                                  .quantize_user = (void *)&qpol};
    kw_rscore *scorer = NULL;
    kw_wire_decoder *dec = NULL;
    uint8_t *blob = NULL, *msg = NULL;
    size_t cap = 0, have = 0, msg_len = 0;
    kw_rselect sel = {0};
    kw_receive_preview_stats ps = {0};
    int rc = 0;
    KW_CHECK(kw_rscore_create(w->model, fusion, 0, j->prompt_ids, j->shared_tokens, &ro, &scorer));
    KW_CHECK(kw_wire_decoder_create(NULL, &dec));
    for (int32_t b = 0; b < n_sent; ++b) {
        kw_rd_chunk *c = NULL;
        int got = 0;
        KW_CHECK((got = kw__rd_next_chunk(j, &c)));
        KW_CHECK_IF(got == 0 || c->preview != b + 1, KW_E_PROTO_SEQUENCE,
                    "scoring receiver: preview blob %d does not start with its SHARE_PREVIEW frame", (int)b);
        kw__rd_pop_chunk(j);
        kw_wire_decoder_reset(dec);
        have = 0;
        for (bool end = false; !end;) { /* the blob's bytes up to its trailer */
            KW_CHECK((got = kw__rd_next_chunk(j, &c)));
            KW_CHECK_IF(got == 0 || c->preview || c->targets, KW_E_PROTO_SEQUENCE,
                        "scoring receiver: preview blob %d ends early", (int)b);
            size_t used = 0;
            int ev = 0;
            KW_CHECK((ev = kw_wire_decoder_feed(dec, c->data + c->off, c->len - c->off, &used)));
            end = ev == KW_WIRE_EVENT_END;
            if (have + used > cap) {
                const size_t ncap = (have + used) * 2;
                uint8_t *nb = realloc(blob, ncap);
                KW_CHECK_IF(!nb, KW_E_NOMEM, "out of memory for a preview blob");
                blob = nb, cap = ncap;
            }
            memcpy(blob + have, c->data + c->off, used);
            have += used;
            c->off += used;
            if (c->off == c->len) kw__rd_pop_chunk(j);
        }
        j->preview_bytes += have;
        KW_CHECK(kw_receive_preview_score(scorer, fusion, 0, &s->select, blob, have, &sel, &ps));
    }
    KW_CHECK(kw_rselect_encode(&sel, &msg, &msg_len));
    j->selection_bytes = msg_len;
    KW_CHECK(kw_rselect_decode(msg, msg_len, j->shared_tokens, chosen));
    {
        Kwctl__ShareSelection m = KWCTL__SHARE_SELECTION__INIT;
        m.request_id = j->share_id;
        m.selection.data = msg;
        m.selection.len = msg_len;
        uint8_t *frame = NULL;
        size_t len = 0;
        KW_CHECK(kw_proto_message_frame_pack(KW_PROTO_FRAME_SHARE_SELECTION, &m.base, &frame, &len));
        KW_CHECK(kw_rd_post_send(d, KW_RD_POST_SELECTION, j, (char *)frame, len));
    }
    j->receiver_scored = true;
    rc = 0;
out: /* the work, not the waits for the preview's bytes */
    j->ms_scoring = ps.decode_ms + ps.score_ms + (scorer ? kw_rscore_get_stats(scorer)->prefill_ms : 0.0);
    kw_rscore_free(scorer);
    kw_wire_decoder_destroy(dec);
    kw_rselect_free(&sel);
    free(blob), free(msg);
    return rc;
}

/* The receiver's own per-target subsets of the section at pos0 (scoring receiver), before its final blob. */
static int kw__rd_chosen_targets(kw_receive *r, const kw_rselect *chosen, int64_t pos0) {
    for (int32_t e = 0; e < chosen->n; ++e) {
        const kw_rselect_entry *x = &chosen->entries[e];
        if (x->pos0 != pos0 || x->n_targets == 0) continue;
        KW_FORWARD(kw_receive_targets(r, 0, x->layer, x->n_targets, x->targets, x->mask_ptrs, (x->length + 7) / 8));
    }
    return 0;
}

/* Two-round refinement (receiver/kw_receive.h): the first answer token's metric on round one's cache and, when it
 * asks for it, round two: the same policy at the refine proportion with skip_ranked, a second stateless share (the
 * sharer prefills again), its rows applied on top of round one. mine: the sharer's sections. */
static int kw__rd_refine(kw_receiverd *d, kw_rd_job *j, kw_receive *r, const kw_fusion_section *mine) {
    const kw_rd_spec *s = &j->spec;
    const kw_receive_stats *rs = kw_receive_get_stats(r);
    j->blob_bytes1 = rs->blob_bytes;
    j->rows1 = rs->rows;
    KW_FORWARD(kw_receive_probe(r, s->refine_metric, &j->refine_value));
    j->refine_measured = true;
    j->ms_probe = rs->probe_ms;
    if (!kw_refine_wanted(s->refine_metric, j->refine_value, s->refine_threshold)) return 0;
    const int32_t section = j->n_sections - 2; /* the standard split: the one sent section, then the last */
    kw_select_policy two = s->select;
    two.proportion = s->refine_proportion;
    uint32_t skip[KW_REQUEST_MAX_SECTIONS];
    int32_t n_skip = 0;
    int adds = 0;
    KW_FORWARD(kw_refine_skips(mine, j->n_sections, &s->select, &two, skip, &n_skip, &adds));
    if (section < 0 || n_skip != 1 || !kw_receive_section_sent(r, section)) {
        j->refine_skipped = "round two needs one sent section, right before the last";
        return 0;
    }
    if (!adds) {
        j->refine_skipped = "the refine proportion keeps no more tokens than round one";
        return 0;
    }
    uv_mutex_lock(&j->mu); /* round one's share is over: the link no longer writes it */
    kw_rd_share one = j->share;
    memset(&j->share, 0, sizeof j->share);
    uv_mutex_unlock(&j->mu);
    j->share_id = j->id | (UINT64_C(1) << 63);
    int rc = 0;
    KW_CHECK(kw__rd_send_request(d, j, NULL, j->prompt_ids, j->shared_tokens, mine, j->n_sections, j->layers_sent,
                                 j->n_layers_sent, &two, skip, (size_t)n_skip));
    KW_CHECK(kw_receive_reopen(r, section));
    KW_CHECK(kw__rd_feed_section(j, r, 0)); /* the one sent section: blob 0 */
    KW_CHECK(kw_receive_end_section(r, section));
    KW_CHECK(kw__rd_share_end(j));
    j->rows2 = rs->rows - j->rows1;
    j->refine_round2 = true;
out:
    /* round two's share is over (on a failure it may still run: the link then goes on counting into share) */
    uv_mutex_lock(&j->mu);
    j->share2 = j->share;
    j->share = one;
    j->share.frames_in += j->share2.frames_in;
    j->share.control_in += j->share2.control_in;
    j->share.wire_frames += j->share2.wire_frames;
    j->share.socket_in += j->share2.socket_in;
    j->share.socket_out += j->share2.socket_out;
    j->share.transport_in += j->share2.transport_in;
    j->share.transport_out += j->share2.transport_out;
    uv_mutex_unlock(&j->mu);
    return rc;
}

// ---------------------------------------------------------------------------------------------------------------
// Generation callbacks: stop strings, streaming, logprobs, teacher forcing

typedef struct kw__rd_gen {
    kw_receiverd *d;
    kw_rd_job *j;
    int32_t *ids;
    int64_t n, cap;
    size_t holdback; /* longest stop string - 1: text that may still become a stop string is not streamed yet */
    float *rounded;  /* vocab floats: the logits as the argmax saw them */
} kw__rd_gen;

/* The text of the tokens so far (specials skipped), cut before the first stop string. */
static int kw__rd_text(kw__rd_gen *g, bool *stopped) {
    kw_rd_job *j = g->j;
    free(j->text);
    j->text = NULL;
    KW_FORWARD(kw_tokenizer_decode(g->d->tok, g->ids, (size_t)g->n, 1, &j->text, &j->text_len));
    *stopped = false;
    size_t cut = j->text_len;
    for (int i = 0; i < j->spec.n_stop; ++i) {
        const char *hit = strstr(j->text, j->spec.stop[i]);
        if (hit && (size_t)(hit - j->text) < cut) cut = (size_t)(hit - j->text), *stopped = true;
    }
    j->text_len = cut;
    j->text[cut] = '\0';
    return 0;
}

/* Posts the text that can no longer change (no partial character at its end, no possible stop string prefix). */
static void kw__rd_stream(kw__rd_gen *g, bool final) {
    kw_rd_job *j = g->j;
    size_t end = j->text_len;
    if (!final) {
        end = end > g->holdback ? end - g->holdback : 0;
        /* a character the next token completes decodes as U+FFFD for now: hold it back */
        if (j->text_len >= 3 && memcmp(j->text + j->text_len - 3, "\xef\xbf\xbd", 3) == 0 && end > j->text_len - 3)
            end = j->text_len - 3;
        while (end > 0 && end < j->text_len && (j->text[end] & 0xc0) == 0x80) /* not inside a character */
            --end;
    }
    if (end <= j->stream_sent) return;
    char *delta = malloc(end - j->stream_sent + 1);
    if (!delta) return;
    memcpy(delta, j->text + j->stream_sent, end - j->stream_sent);
    delta[end - j->stream_sent] = '\0';
    if (kw_rd_post_send(g->d, KW_RD_POST_TOKEN, j, delta, end - j->stream_sent) == 0) j->stream_sent = end;
}

static int kw__rd_on_token(void *user, int32_t id) {
    kw__rd_gen *g = user;
    kw_rd_job *j = g->j;
    KW_FORWARD(kw__rd_check(j));
    if (g->n == g->cap) {
        const int64_t cap = g->cap ? 2 * g->cap : 64;
        int32_t *ids = realloc(g->ids, (size_t)cap * sizeof *ids);
        KW_RETURN_IF(!ids, KW_E_NOMEM, "out of memory");
        g->ids = ids, g->cap = cap;
    }
    g->ids[g->n++] = id;
    if (j->ms_first_token == 0) j->ms_first_token = kw_time_ms(j->t_arrival, kw_time_now_ns());
    if (!j->spec.n_stop && !j->spec.stream) return 0;
    bool stopped = false;
    KW_FORWARD(kw__rd_text(g, &stopped));
    if (j->spec.stream) kw__rd_stream(g, stopped);
    if (stopped) {
        j->finish_stop = true;
        return KW_GENERATE_STOP;
    }
    return 0;
}

static int kw__rd_on_logits(void *user, int64_t step, const float *logits, int32_t vocab, int32_t argmax) {
    kw__rd_gen *g = user;
    kw_rd_job *j = g->j;
    const float *x = logits;
    if (g->d->logits_bf16) { /* what the argmax compared */
        for (int32_t v = 0; v < vocab; ++v)
            g->rounded[v] = kw_bf16_to_f32(kw_f32_to_bf16(logits[v]));
        x = g->rounded;
    }
    double mx = -INFINITY;
    for (int32_t v = 0; v < vocab; ++v)
        if (x[v] > mx) mx = x[v];
    double sum = 0;
    for (int32_t v = 0; v < vocab; ++v)
        sum += exp((double)x[v] - mx);
    const double lse = mx + log(sum);
    const int32_t chosen = j->spec.force_ids ? j->spec.force_ids[step] : argmax;
    if (j->spec.force_ids && argmax == chosen) ++j->top1_agree;
    if (j->spec.logprobs >= 0 && step < j->n_lp) {
        kw_rd_token_stats *t = &j->lp[step];
        t->id = chosen;
        t->logprob = (double)x[chosen] - lse;
        t->n_top = j->spec.logprobs;
        int n_top = 0; /* the largest, kept sorted; scanning ids upwards with a strict > sends ties to the lower id */
        for (int32_t v = 0; v < vocab && t->n_top > 0; ++v) {
            if (n_top == t->n_top && !(x[v] > x[t->top_ids[n_top - 1]])) continue;
            int at = n_top < t->n_top ? n_top++ : n_top - 1;
            while (at > 0 && x[v] > x[t->top_ids[at - 1]]) {
                t->top_ids[at] = t->top_ids[at - 1];
                --at;
            }
            t->top_ids[at] = v;
        }
        for (int k = 0; k < t->n_top; ++k)
            t->top_lp[k] = (double)x[t->top_ids[k]] - lse;
    }
    if (j->spec.score_ids && step < j->spec.n_force) {
        int64_t off = 0;
        for (int64_t r = 0; r < step; ++r)
            off += j->spec.n_score[r];
        for (int32_t k = 0; k < j->spec.n_score[step]; ++k)
            j->scored[off + k] = (double)x[j->spec.score_ids[step][k]] - lse;
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// One request

/* The prompt's token ids: completions as given (raw text or ids), chat through the receiver's chat template. msgs
 * (chat) may be the relay's conversation. */
static int kw__rd_prompt(kw_receiverd *d, kw_rd_job *j, const kw_chat_message *msgs, size_t n_msgs) {
    const kw_rd_spec *s = &j->spec;
    char *text = NULL;
    size_t text_len = 0, n = 0;
    int rc = 0;
    if (s->prompt_ids) {
        j->prompt_ids = malloc((size_t)s->n_prompt_ids * sizeof *j->prompt_ids);
        KW_CHECK_IF(!j->prompt_ids, KW_E_NOMEM, "out of memory");
        memcpy(j->prompt_ids, s->prompt_ids, (size_t)s->n_prompt_ids * sizeof *j->prompt_ids);
        j->n_prompt = s->n_prompt_ids;
        if (s->echo)
            KW_CHECK(kw_tokenizer_decode(d->tok, j->prompt_ids, (size_t)j->n_prompt, 0, &j->prompt_text, &text_len));
        goto out;
    }
    const char *input = s->prompt;
    if (s->chat) {
        char date[32];
        const time_t now = time(NULL);
        struct tm tm;
        localtime_r(&now, &tm);
        strftime(date, sizeof date, "%d %b %Y", &tm);
        const kw_chat_options co = {.add_generation_prompt = 1, .enable_thinking = 0, .date_string = date};
        KW_CHECK(kw_chat_render(d->family, msgs, n_msgs, &co, &text, &text_len));
        input = text;
    }
    KW_CHECK(kw_tokenizer_encode(d->tok, input, strlen(input), &j->prompt_ids, &n));
    KW_CHECK_IF(n == 0, KW_E_INVALID_ARG, "the prompt encodes to no tokens");
    if (!s->chat) /* raw text: BOS first, as `kvwire generate` and HF give it */
        KW_CHECK(kw_config_prepend_bos(kw_model_get_config(d->model), &j->prompt_ids, &n));
    j->n_prompt = (int64_t)n;
    if (s->echo) {
        j->prompt_text = strdup(s->prompt);
        KW_CHECK_IF(!j->prompt_text, KW_E_NOMEM, "out of memory");
    }
out:
    if (rc < 0 && rc == KW_E_INVALID_ARG) j->http_status = 400;
    free(text);
    return rc;
}

/* The text relay's first stage: ask the sharer for its message, then build the conversation around it. */
static int kw__rd_relay(kw_receiverd *d, kw_rd_job *j, kw_chat_message *msgs, size_t *n_msgs, char **bg) {
    const kw_rd_spec *s = &j->spec;
    const char *question = s->relay_question;
    for (size_t i = s->n_messages; !question && i > 0; --i)
        if (strcmp(s->messages[i - 1].role, "user") == 0) question = s->messages[i - 1].content;
    KW_RETURN_IF(!question, KW_E_INVALID_ARG, "text_relay: no question (kvwire.relay.question, or a user message)");
    const uint64_t t0 = kw_time_now_ns();
    KW_FORWARD(kw__rd_send_request(d, j, question, NULL, 0, NULL, 0, NULL, 0, &j->spec.select, NULL, 0));
    KW_FORWARD(kw__rd_relay_text(j));
    j->ms_relay_wait = kw_time_ms(t0, kw_time_now_ns());
    kw_chat_message *in = malloc(s->n_messages * sizeof *in);
    KW_RETURN_IF(!in, KW_E_NOMEM, "out of memory");
    for (size_t i = 0; i < s->n_messages; ++i)
        in[i] = (kw_chat_message){.role = s->messages[i].role, .content = s->messages[i].content};
    const int rc = kw_request_relay_conversation(in, s->n_messages, question, j->share.text, bg, msgs, n_msgs);
    free(in);
    return rc;
}

/* kw_rd_fit_context for the job, with the 400 status on a refusal. */
static int kw__rd_fit_context(kw_receiverd *d, kw_rd_job *j) {
    const int64_t context = kw_model_get_config(d->model)->max_positions;
    const int rc = kw_rd_fit_context(context, j->n_prompt, j->spec.max_tokens_given, &j->spec.max_tokens);
    if (rc < 0) j->http_status = 400;
    return rc;
}

int kw_rd_create_cache(const kw_receiverd_config *cfg, const kw_model *model, int64_t capacity,
                       enum kw_dtype auto_dtype, kw_kvcache **out) {
    *out = NULL;
    static const enum kw_kvq_codec codecs[] = {0, 0, 0, KW_KVQ_INT8, KW_KVQ_INT4, KW_KVQ_INT6};
    const enum kw_kvq_codec codec = cfg->cache_dtype >= 0 && cfg->cache_dtype < 6 ? codecs[cfg->cache_dtype] : 0;
    if (codec || cfg->cache_layers) {
        KW_RETURN_IF(cfg->cache_page_tokens % 16 != 0, KW_E_INVALID_ARG,
                     "cache.page_tokens %lld is not a multiple of 16", (long long)cfg->cache_page_tokens);
        KW_RETURN_IF(!codec && cfg->cache_dtype != 1, KW_E_INVALID_ARG,
                     "cache.layers needs cache.dtype int8, int6, int4 or bf16 (the layers not named), not %s",
                     cfg->cache_dtype == 2 ? "f32" : "auto");
    }
    if (!cfg->cache_layers) {
        if (codec) return kw_model_create_cache_quantized(model, capacity, codec, (int32_t)cfg->cache_page_tokens, out);
        const enum kw_dtype dtype = cfg->cache_dtype == 1   ? KW_DTYPE_BF16
                                    : cfg->cache_dtype == 2 ? KW_DTYPE_F32
                                                            : auto_dtype;
        return kw_model_create_cache(model, capacity, dtype, out);
    }
    return kw_model_create_cache_layers(model, capacity, codec, cfg->cache_layers, (int32_t)cfg->cache_page_tokens,
                                        out);
}

static int kw__rd_run(kw_rd_worker *w, kw_rd_job *j) {
    kw_receiverd *d = w->d;
    const kw_rd_spec *s = &j->spec;
    const uint64_t t0 = kw_time_now_ns();
    j->ms_queue = kw_time_ms(j->t_arrival, t0);
    kw_kvcache *cache = NULL;
    kw_receive *r = NULL;
    kw_fusion_result res = {0};
    kw_chat_message *msgs = NULL;
    char *bg = NULL;
    kw__rd_gen g = {.d = d, .j = j};
    int32_t *layers = NULL;
    kw_rselect chosen = {0};
    int rc = 0;
    KW_CHECK(kw__rd_check(j));
    /* the prompt (the relay's conversation first) */
    size_t n_msgs = s->n_messages;
    msgs = malloc((s->n_messages + 2) * sizeof *msgs);
    KW_CHECK_IF(!msgs, KW_E_NOMEM, "out of memory");
    for (size_t i = 0; i < s->n_messages; ++i)
        msgs[i] = (kw_chat_message){.role = s->messages[i].role, .content = s->messages[i].content};
    if (s->mode == KW_RD_MODE_TEXT_RELAY) KW_CHECK(kw__rd_relay(d, j, msgs, &n_msgs, &bg));
    const uint64_t t_tok = kw_time_now_ns();
    KW_CHECK(kw__rd_prompt(d, j, msgs, n_msgs));
    j->ms_tokenize = kw_time_ms(t_tok, kw_time_now_ns());
    const int64_t n = j->n_prompt;
    KW_CHECK(kw__rd_fit_context(d, j));

    /* generation: the same options as kvwire c2c, plus the API's callbacks */
    const int numerics_fp32 = d->cfg->numerics != 0;
    const enum kw_dtype cache_dtype = numerics_fp32 ? KW_DTYPE_F32 : KW_DTYPE_BF16;
    for (int i = 0; i < s->n_stop; ++i)
        if (strlen(s->stop[i]) > g.holdback + 1) g.holdback = strlen(s->stop[i]) - 1;
    kw_generate_options gen = {.max_new_tokens = (int32_t)s->max_tokens,
                               .round = numerics_fp32 ? KW_LOGITS_ROUND_NONE : KW_LOGITS_ROUND_AUTO,
                               .on_token = kw__rd_on_token,
                               .user = &g,
                               .force_ids = s->force_ids,
                               .n_force = s->n_force};
    static const int32_t no_eos[1] = {0};
    if (s->ignore_eos) gen.eos_ids = no_eos, gen.n_eos = 0; /* non-NULL and empty: no id ends it early */
    if (s->logprobs >= 0 || s->force_ids) {
        gen.on_logits = kw__rd_on_logits;
        g.rounded = malloc((size_t)d->vocab * sizeof *g.rounded);
        KW_CHECK_IF(!g.rounded, KW_E_NOMEM, "out of memory");
    }
    if (s->logprobs >= 0) {
        j->n_lp = s->max_tokens;
        j->lp = calloc((size_t)(j->n_lp ? j->n_lp : 1), sizeof *j->lp);
        KW_CHECK_IF(!j->lp, KW_E_NOMEM, "out of memory");
    }
    if (s->score_ids) {
        for (int32_t i = 0; i < s->n_force; ++i)
            j->scored_len += s->n_score[i];
        j->scored = calloc((size_t)(j->scored_len ? j->scored_len : 1), sizeof *j->scored);
        KW_CHECK_IF(!j->scored, KW_E_NOMEM, "out of memory");
    }
    const int64_t capacity = n + (s->max_tokens > 0 ? s->max_tokens : 1);
    KW_CHECK(kw_rd_create_cache(d->cfg, w->model, capacity, cache_dtype, &cache));

    if (s->mode == KW_RD_MODE_RECEIVER_ONLY || s->mode == KW_RD_MODE_TEXT_RELAY) {
        KW_CHECK(kw_generate_greedy(w->model, cache, j->prompt_ids, n, &gen, &res.gen));
        res.stats.last_prompt_ms = res.gen.prefill_ms;
        res.stats.decode_ms = res.gen.decode_ms;
    } else {
        const bool kv_direct = s->mode == KW_RD_MODE_KV_DIRECT;
        kw_fusion *fusion = NULL;
        if (!kv_direct)
            KW_CHECK(kw__rd_fusion(w, j->fuser_index, j->sharer_layers, j->sharer_heads, j->sharer_dim, &fusion));
        const double proportion = s->cache_proportion >= 1.0 ? -1.0 : s->cache_proportion;
        KW_CHECK(kw_request_sections(n, 1, proportion, s->order, j->sections, &j->n_sections));
        rc = kw_request_recompute_prefix(j->sections, &j->n_sections, KW_RD_MAX_SECTIONS, s->recompute_prefix);
        if (rc < 0) j->http_status = 400;
        KW_CHECK(rc);
        const int32_t cap = kv_direct ? kw_model_get_config(d->model)->n_layers : j->sharer_layers;
        layers = malloc((size_t)(cap > 0 ? cap : 1) * sizeof *layers);
        KW_CHECK_IF(!layers, KW_E_NOMEM, "out of memory");
        int32_t n_layers = 0;
        rc = kw_request_sharer_layers(fusion, 0, kw_model_get_config(d->model)->n_layers, s->layers, s->n_layers,
                                      layers, cap, &n_layers);
        if (rc < 0) j->http_status = 400;
        KW_CHECK(rc);
        kw_fusion_section mine[KW_RD_MAX_SECTIONS];
        int32_t n_sent = 0;
        KW_CHECK(
            kw_request_sharer_sections(j->sections, j->n_sections, 0, kv_direct, mine, &j->shared_tokens, &n_sent));
        j->layers_sent = layers, j->n_layers_sent = n_layers;
        layers = NULL;
        if (s->budget_bytes && s->budget_mode != KW_WIRE_BUDGET_TOKENS) { /* a whole-layer plan (kvcomm_like: which) */
            rc = kw__rd_plan_budget(j, mine, &n_layers);
            if (rc < 0) j->http_status = 400;
            KW_CHECK(rc);
        } else if (s->budget_bytes && n_sent > 0 && n_layers > 0) { /* a cap below the minimum is the client's error */
            rc = kw__rd_check_budget(j, n_sent, n_layers);
            if (rc < 0) j->http_status = 400;
            KW_CHECK(rc);
        }
        if (n_sent > 0 && n_layers > 0)
            KW_CHECK(kw__rd_send_request(d, j, NULL, j->prompt_ids, j->shared_tokens, mine, j->n_sections,
                                         j->layers_sent, n_layers, &s->select, NULL, 0));
        else
            n_sent = 0;
        kw_receive_options ro = {.mode = kv_direct ? KW_RECEIVE_KV_DIRECT : KW_RECEIVE_C2C,
                                 .fusion = {.sections = j->sections,
                                            .n_sections = j->n_sections,
                                            .mode = s->fusion,
                                            .numerics = numerics_fp32              ? KW_PROJECTOR_FP32
                                                        : d->cfg->rmsnorm_rounding ? KW_PROJECTOR_BF16_FUSED_NORM
                                                                                   : KW_PROJECTOR_BF16,
                                            .gen = gen}};
        if (!kv_direct) ro.layers[0] = j->layers_sent, ro.n_layers[0] = j->n_layers_sent;
        const bool receiver_scores = n_sent && s->scoring == 1 && kw_select_mode_receiver_aware(s->select.mode);
        if (receiver_scores) KW_CHECK(kw__rd_previews(w, j, fusion, n_sent, &chosen));
        KW_CHECK(kw_receive_begin(w->model, fusion, cache, j->prompt_ids, n, &ro, &r));
        int64_t pos0 = 0;
        for (int32_t sec = 0, blob = 0; sec + 1 < j->n_sections; pos0 += j->sections[sec++].length) {
            KW_CHECK(kw__rd_check(j));
            KW_CHECK(kw_receive_prefill(r, sec));
            if (receiver_scores && kw_receive_section_sent(r, sec)) KW_CHECK(kw__rd_chosen_targets(r, &chosen, pos0));
            if (n_sent && kw_receive_section_sent(r, sec)) KW_CHECK(kw__rd_feed_section(j, r, blob++));
            KW_CHECK(kw_receive_end_section(r, sec));
        }
        if (n_sent) KW_CHECK(kw__rd_share_end(j));
        if (n_sent && s->refine) KW_CHECK(kw__rd_refine(d, j, r, mine));
        KW_CHECK(kw_receive_generate(r, &res));
        const kw_receive_stats *rs = kw_receive_get_stats(r);
        j->blob_bytes = rs->blob_bytes + j->preview_bytes; /* every KVWire byte received (scoring receiver) */
        j->blobs = rs->blobs;
        j->ms_receiver_prefill = rs->prefill_ms;
        j->ms_decode_wire = rs->decode_ms;
        j->device_decoded = rs->device_sections;
        if (kv_direct) {
            j->ms_fuse = rs->apply_ms;
            j->kv_store = kw_receive_kv_store(rs);
            j->kv_store_why =
                rs->store_reason ? kw_kv_store_reason_name((enum kw_kv_store_reason)rs->store_reason) : NULL;
            j->kv_rows_direct = rs->rows_direct;
            j->kv_rows_tail = rs->rows_tail;
            j->kv_rows_requantized = rs->rows_requantized;
        } else {
            j->ms_project = res.stats.projection_ms;
            j->ms_fuse = res.stats.transfer_ms;
            j->tokens_fused = res.stats.tokens_fused;
            j->layers_fused = res.stats.layers_fused;
            j->layers_skipped = res.stats.layers_skipped;
        }
    }
    j->ms_decode = res.stats.decode_ms;
    /* the answer: every generated id, the text cut before a stop string */
    j->ids = res.gen.ids, j->n_ids = res.gen.n;
    res.gen.ids = NULL;
    free(g.ids);
    g.ids = malloc((size_t)(j->n_ids > 0 ? j->n_ids : 1) * sizeof *g.ids);
    KW_CHECK_IF(!g.ids, KW_E_NOMEM, "out of memory");
    if (j->n_ids) memcpy(g.ids, j->ids, (size_t)j->n_ids * sizeof *g.ids);
    g.n = g.cap = j->n_ids;
    bool stopped = false;
    KW_CHECK(kw__rd_text(&g, &stopped));
    j->finish_stop = stopped || res.gen.stopped_eos;
    if (s->stream) kw__rd_stream(&g, true);
    if (j->lp && j->n_lp > j->n_ids) j->n_lp = j->n_ids;
out:
    if (rc < 0) {
        snprintf(j->error, sizeof j->error, "%s", kw_error_detail()[0] ? kw_error_detail() : kw_strerror(rc));
        const int c = atomic_load(&j->cancel);
        if (c) rc = c;
    }
    kw_fusion_result_free(&res);
    kw_rselect_free(&chosen);
    kw_receive_free(r);
    kw_kvcache_free(cache);
    free(msgs), free(bg), free(g.ids), free(g.rounded), free(layers);
    return rc;
}

void kw_rd_compute_thread(void *arg) {
    kw_rd_worker *w = arg;
    kw_receiverd *d = w->d;
    for (kw_queue_item *it; (it = kw_queue_pop(&d->queue)) != NULL;) {
        kw_rd_job *j = (kw_rd_job *)it;
        kw_error_clear();
        atomic_fetch_add(&d->in_flight, 1);
        KW_LOG_DEBUG("receiverd: compute thread %d starts request %llu", (int)w->index, (unsigned long long)j->id);
        j->status = kw__rd_run(w, j);
        KW_LOG_DEBUG("receiverd: compute thread %d ends request %llu", (int)w->index, (unsigned long long)j->id);
        atomic_fetch_sub(&d->in_flight, 1);
        uv_mutex_lock(&j->mu);
        j->discard = true; /* bytes still coming for a share this request no longer reads */
        while (j->inbox_head) {
            kw_rd_chunk *c = j->inbox_head;
            j->inbox_head = c->next;
            kw_rd_chunk_free(c); /* a SHARE_TARGETS message of a failed share too */
        }
        j->inbox_tail = NULL;
        j->inbox_bytes = 0;
        const bool resume = j->paused;
        j->paused = false;
        uv_mutex_unlock(&j->mu);
        if (resume) kw_rd_post_send(d, KW_RD_POST_RESUME, j, NULL, 0);
        while (kw_rd_post_send(d, KW_RD_POST_DONE, j, NULL, 0) == KW_E_NOMEM)
            uv_sleep(10); /* the DONE must reach the loop: it answers the request and releases the job */
    }
    /* the last worker out: every DONE of the others was posted before they left */
    if (atomic_fetch_sub(&d->running, 1) == 1) kw_rd_post_send(d, KW_RD_POST_EXIT, NULL, NULL, 0);
}

/* kw_request.c: the request plan shared by `kvwire c2c` and the daemons (see kw_request.h). */
#include "c2c/kw_request.h"

#include <stdlib.h>
#include <string.h>

#include "c2c/kw_relay.h"
#include "common/kw_status.h"
#include "common/kw_time.h"
#include "model/kw_generate.h"

int kw_request_sections(int64_t n, int32_t mask, double proportion, enum kw_fusion_order order, kw_fusion_section *out,
                        int32_t *n_out) {
    if (proportion < 0) return kw_fusion_sections_standard(n, mask, out, n_out);
    return kw_fusion_sections_proportion(n, proportion, order, mask, out, n_out);
}

int kw_request_sharer_sections(const kw_fusion_section *sections, int32_t n, int32_t sharer, int kv_direct,
                               kw_fusion_section *out, int64_t *prefix, int32_t *n_sent) {
    KW_RETURN_IF(sections == NULL || out == NULL || prefix == NULL || n < 1 || n > KW_REQUEST_MAX_SECTIONS ||
                     sharer < 0 || sharer >= KW_FUSION_MAX_SHARERS,
                 KW_E_INVALID_ARG, "request: bad sections for sharer %d", (int)sharer);
    *prefix = 0;
    int32_t sent_count = 0;
    for (int32_t j = 0; j < n; ++j) {
        const int32_t idx = sections[j].index;
        const int sent = j + 1 < n && idx > 0 && (kv_direct || (idx & (1 << sharer)));
        out[j] = (kw_fusion_section){sections[j].length, sent ? 1 : -1};
        if (j + 1 < n) *prefix += sections[j].length;
        sent_count += sent;
    }
    if (n_sent) *n_sent = sent_count;
    return 0;
}

/* Appends a section before the last to out, merged into an unsent neighbour when it is unsent too. */
static void kw__request_push(kw_fusion_section *out, int32_t *m, kw_fusion_section s) {
    if (s.index <= 0 && *m > 0 && out[*m - 1].index <= 0)
        out[*m - 1].length += s.length;
    else
        out[(*m)++] = s;
}

int kw_request_recompute_prefix(kw_fusion_section *sections, int32_t *n, int32_t cap, int64_t prefix) {
    KW_RETURN_IF(sections == NULL || n == NULL || *n < 1 || *n > KW_REQUEST_MAX_SECTIONS || cap < *n || prefix < 0,
                 KW_E_INVALID_ARG, "request: bad sections for recompute_prefix");
    if (prefix == 0) return 0;
    kw_fusion_section out[KW_REQUEST_MAX_SECTIONS + 1];
    int32_t m = 0;
    int64_t pos = 0, sent = 0;
    for (int32_t j = 0; j + 1 < *n; pos += sections[j++].length) {
        const kw_fusion_section s = sections[j];
        const int64_t cut = pos >= prefix ? 0 : prefix - pos < s.length ? prefix - pos : s.length;
        if (cut > 0) kw__request_push(out, &m, (kw_fusion_section){cut, -1});
        if (cut < s.length) kw__request_push(out, &m, (kw_fusion_section){s.length - cut, s.index});
        if (s.index > 0) sent += s.length - cut;
    }
    KW_RETURN_IF(sent == 0, KW_E_INVALID_ARG,
                 "recompute_prefix %lld: leaves no shared token to send (the prompt shares %lld)", (long long)prefix,
                 (long long)pos);
    out[m++] = sections[*n - 1]; /* the final token's, never merged */
    KW_RETURN_IF(m > cap, KW_E_INVALID_ARG, "request: %d sections, room for %d", (int)m, (int)cap);
    memcpy(sections, out, (size_t)m * sizeof *out);
    *n = m;
    return 0;
}

int kw_request_sharer_layers(const kw_fusion *f, int32_t sharer, int32_t n_model_layers, const int32_t *subset,
                             int32_t n_subset, int32_t *out, int32_t cap, int32_t *n_out) {
    KW_RETURN_IF(out == NULL || n_out == NULL || n_subset < 0 || (n_subset > 0 && subset == NULL), KW_E_INVALID_ARG,
                 "request: bad layer arguments");
    for (int32_t i = 0; i < n_subset; ++i)
        KW_RETURN_IF(subset[i] < 0 || (i > 0 && subset[i] <= subset[i - 1]), KW_E_INVALID_ARG,
                     "request: the layer list must be ascending sharer layers (entry %d is %d)", (int)i,
                     (int)subset[i]);
    *n_out = 0;
    if (f == NULL) {
        KW_RETURN_IF(subset != NULL, KW_E_INVALID_ARG,
                     "request: kv_direct sends every layer (the receiver's own cache needs all %d)",
                     (int)n_model_layers);
        KW_RETURN_IF(n_model_layers > cap, KW_E_LIMIT, "request: %d layers, room for %d", (int)n_model_layers,
                     (int)cap);
        for (int32_t l = 0; l < n_model_layers; ++l)
            out[l] = l;
        *n_out = n_model_layers;
        return 0;
    }
    int32_t n = 0;
    KW_FORWARD(kw_fusion_needed_layers(f, sharer, out, cap, &n));
    if (subset == NULL) {
        *n_out = n;
        return 0;
    }
    int32_t sharer_layers = 0;
    KW_FORWARD(kw_fusion_sharer_geometry(f, sharer, &sharer_layers, NULL, NULL));
    for (int32_t i = 0; i < n_subset; ++i)
        KW_RETURN_IF(subset[i] >= sharer_layers, KW_E_INVALID_ARG,
                     "request: layer %d is not a layer of the %d-layer "
                     "sharer",
                     (int)subset[i], (int)sharer_layers);
    int32_t kept = 0;
    for (int32_t i = 0, j = 0; i < n; ++i) {
        while (j < n_subset && subset[j] < out[i])
            ++j;
        if (j < n_subset && subset[j] == out[i]) out[kept++] = out[i];
    }
    *n_out = kept;
    return 0;
}

int kw_request_relay_styled(enum kw_relay_style style, kw_model *sharer, const kw_tokenizer *tok,
                            enum kw_chat_family family, const char *question, const char *date, int64_t max_tokens,
                            int64_t cap, enum kw_dtype cache_dtype, int (*on_token)(void *user, int32_t id), void *user,
                            kw_request_relay *out) {
    if (style == KW_RELAY_GENERATED)
        return kw_request_relay_message(sharer, tok, family, question, date, max_tokens, cap, cache_dtype, on_token,
                                        user, out);
    KW_RETURN_IF(question == NULL || out == NULL, KW_E_INVALID_ARG, "relay: bad arguments");
    memset(out, 0, sizeof *out);
    const uint64_t t0 = kw_time_now_ns();
    KW_FORWARD(kw_relay_text(style, question, strlen(question), cap, &out->text, &out->len, &out->truncated));
    out->ms = kw_time_ms(t0, kw_time_now_ns());
    return 0;
}

void kw_request_relay_free(kw_request_relay *r) {
    if (r == NULL) return;
    free(r->text);
    memset(r, 0, sizeof *r);
}

int kw_request_relay_message(kw_model *sharer, const kw_tokenizer *tok, enum kw_chat_family family,
                             const char *question, const char *date, int64_t max_tokens, int64_t cap,
                             enum kw_dtype cache_dtype, int (*on_token)(void *user, int32_t id), void *user,
                             kw_request_relay *out) {
    KW_RETURN_IF(sharer == NULL || tok == NULL || question == NULL || out == NULL || max_tokens < 1 ||
                     max_tokens > INT32_MAX,
                 KW_E_INVALID_ARG, "relay: bad arguments");
    memset(out, 0, sizeof *out);
    char *bg = NULL, *text = NULL, *reply = NULL;
    int32_t *ids = NULL;
    size_t text_len = 0, n_ids = 0, reply_len = 0;
    kw_kvcache *cache = NULL;
    kw_generate_result g = {0};
    int rc;
    const uint64_t t0 = kw_time_now_ns();
    KW_CHECK(kw_relay_background_prompt(question, &bg));
    const kw_chat_message msg = {.role = "user", .content = bg};
    const kw_chat_options co = {.add_generation_prompt = 1, .enable_thinking = 0, .date_string = date};
    KW_CHECK(kw_chat_render(family, &msg, 1, &co, &text, &text_len));
    KW_CHECK(kw_tokenizer_encode(tok, text, text_len, &ids, &n_ids));
    KW_CHECK_IF(n_ids == 0, KW_E_INVALID_ARG, "relay: the background prompt encodes to no tokens");
    KW_CHECK(kw_model_create_cache(sharer, (int64_t)n_ids + max_tokens + 1, cache_dtype, &cache));
    const kw_generate_options go = {.max_new_tokens = (int32_t)max_tokens, .on_token = on_token, .user = user};
    KW_CHECK(kw_generate_greedy(sharer, cache, ids, (int64_t)n_ids, &go, &g));
    KW_CHECK(kw_tokenizer_decode(tok, g.ids, (size_t)g.n, 1, &reply, &reply_len));
    size_t start = 0, kept = 0;
    kw_relay_strip(reply, reply_len, &start, &kept);
    kw_relay_cap_utf8(reply + start, kept, cap, &out->len, &out->truncated);
    out->text = malloc(out->len + 1);
    KW_CHECK_IF(out->text == NULL, KW_E_NOMEM, "relay: out of memory");
    memcpy(out->text, reply + start, out->len);
    out->text[out->len] = '\0';
    out->n_tokens = g.n;
    out->ms = kw_time_ms(t0, kw_time_now_ns());
out:
    if (rc < 0) kw_request_relay_free(out);
    kw_generate_result_free(&g);
    kw_kvcache_free(cache);
    free(bg), free(text), free(reply), free(ids);
    return rc;
}

int kw_request_relay_conversation(const kw_chat_message *msgs, size_t n, const char *question, const char *relay,
                                  char **background, kw_chat_message *out, size_t *n_out) {
    KW_RETURN_IF(msgs == NULL || n < 1 || question == NULL || relay == NULL || background == NULL || out == NULL ||
                     n_out == NULL,
                 KW_E_INVALID_ARG, "relay: bad conversation arguments");
    KW_FORWARD(kw_relay_background_prompt(question, background));
    size_t k = 0;
    for (size_t i = 0; i + 1 < n; ++i)
        out[k++] = msgs[i];
    out[k++] = (kw_chat_message){.role = "user", .content = *background};
    out[k++] = (kw_chat_message){.role = "assistant", .content = relay};
    out[k++] = msgs[n - 1];
    *n_out = k;
    return 0;
}

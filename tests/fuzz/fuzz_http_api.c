/* fuzz_http_api.c: libFuzzer target for receiverd's request parser (receiver/kw_receiverd_api.c): the first byte
 * picks the endpoint (completions or chat completions), the rest is the body. Invariants: nothing makes it crash or
 * leak; a rejection is a 400 or 404 with a message and an OpenAI error type; an accepted request is inside every
 * limit of docs/HTTP_API.md (max_tokens, stop strings, logprobs, token ids below the vocabulary, forced tokens and
 * their scores, a codec the KVWire names know, a selection policy that checks, a byte cap only for c2c and kv_direct
 * with 1..8 budget codecs and no schedule, codec "cache" only for kv_direct into a quantized cache, budget_mode
 * kvcomm_like with one codec in c2c, qkvcomm_like with two, a refinement only where it can work). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_status.h"
#include "receiver/kw_receiverd_internal.h"
#include "tests/fuzz/fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_VOCAB 1000

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static kw_receiverd_config cfg;
    static int ready;
    if (!ready) { /* the server defaults, as receiverd starts with them */
        FUZZ_CHECK(kw_cfg_defaults(&kw_receiverd_config_table, &cfg) == 0);
        ready = 1;
    }
    if (size < 1) return 0;
    const bool chat = data[0] & 1;
    kw_rd_spec s;
    char err[512];
    const char *type = NULL;
    int http = 0;
    const int rc = kw_rd_spec_parse((const char *)data + 1, size - 1, chat, &cfg, FUZZ_VOCAB, "receiver", &s, err,
                                    sizeof err, &type, &http);
    if (rc < 0) {
        FUZZ_CHECK((http == 400 || http == 404 || (http == 500 && rc == KW_E_NOMEM)) && type && err[0]);
        return 0;
    }
    FUZZ_CHECK(s.chat == chat);
    FUZZ_CHECK(chat ? s.n_messages >= 1 : (s.prompt != NULL) != (s.prompt_ids != NULL));
    for (size_t i = 0; i < s.n_messages; ++i)
        FUZZ_CHECK(s.messages[i].role && s.messages[i].content);
    for (int64_t i = 0; i < s.n_prompt_ids; ++i)
        FUZZ_CHECK(s.prompt_ids[i] >= 0 && s.prompt_ids[i] < FUZZ_VOCAB);
    FUZZ_CHECK(s.max_tokens >= 0 && s.max_tokens <= KW_RD_MAX_MAX_TOKENS);
    FUZZ_CHECK(s.n_stop >= 0 && s.n_stop <= KW_RD_MAX_STOP);
    for (int i = 0; i < s.n_stop; ++i)
        FUZZ_CHECK(s.stop[i] && s.stop[i][0]);
    FUZZ_CHECK(s.logprobs >= -1 && s.logprobs <= KW_RD_MAX_TOP);
    FUZZ_CHECK((unsigned)s.mode <= KW_RD_MODE_TEXT_RELAY);
    if (s.cache_layout) { /* codec "cache": kv_direct into a quantized cache, its specs filled when resolved */
        FUZZ_CHECK(s.mode == KW_RD_MODE_KV_DIRECT && cfg.cache_dtype >= 3 && !s.value_codec && !s.budget_bytes &&
                   s.n_schedule == 0);
    } else {
        FUZZ_CHECK(s.spec.codec >= 1 && s.spec.codec < KW_WIRE_CODEC_COUNT_V11);
        FUZZ_CHECK(s.spec_v.codec >= 1 && s.spec_v.codec < KW_WIRE_CODEC_COUNT_V11);
    }
    FUZZ_CHECK(s.outliers >= 0 && s.outliers <= 1 && (!s.pre_rope_keys || s.mode == KW_RD_MODE_KV_DIRECT));
    FUZZ_CHECK(!s.budget_bytes || (s.outliers == 0 && !s.pre_rope_keys));
    FUZZ_CHECK(s.select.mode == KW_SELECT_FULL || kw_select_policy_check(&s.select) == 0);
    FUZZ_CHECK(s.cache_proportion >= 0 && s.cache_proportion <= 1);
    FUZZ_CHECK(s.n_schedule >= 0 && s.n_schedule <= KW_RD_MAX_SCHEDULE);
    for (int i = 0; i < s.n_schedule; ++i)
        FUZZ_CHECK(s.schedule[i].first >= 0 && s.schedule[i].first <= s.schedule[i].last && s.schedule[i].last < 1024);
    for (int32_t i = 1; i < s.n_layers; ++i)
        FUZZ_CHECK(s.layers[i] > s.layers[i - 1]);
    if (s.force_ids) {
        FUZZ_CHECK(s.n_force >= 1 && s.max_tokens == s.n_force && !s.stream);
        for (int32_t i = 0; i < s.n_force; ++i)
            FUZZ_CHECK(s.force_ids[i] >= 0 && s.force_ids[i] < FUZZ_VOCAB);
        for (int32_t i = 0; s.score_ids && i < s.n_force; ++i) {
            FUZZ_CHECK(s.n_score[i] >= 0 && s.n_score[i] <= KW_RD_MAX_TOP);
            for (int32_t k = 0; k < s.n_score[i]; ++k)
                FUZZ_CHECK(s.score_ids[i][k] >= 0 && s.score_ids[i][k] < FUZZ_VOCAB);
        }
    } else {
        FUZZ_CHECK(s.score_ids == NULL);
    }
    if (s.budget_bytes) /* a byte cap: c2c or kv_direct, 1..8 codecs, no schedule */
        FUZZ_CHECK(s.budget_bytes > 0 && (s.mode == KW_RD_MODE_C2C || s.mode == KW_RD_MODE_KV_DIRECT) &&
                   s.n_budget_codecs >= 1 && s.n_budget_codecs <= KW_WIRE_ALLOC_MAX_CODECS && s.n_schedule == 0);
    else
        FUZZ_CHECK(s.n_budget_codecs == 0 && s.budget_mode == KW_WIRE_BUDGET_TOKENS);
    if (s.budget_mode == KW_WIRE_BUDGET_KVCOMM_LIKE) /* whole layers: one codec, c2c only */
        FUZZ_CHECK(s.n_budget_codecs == 1 && s.mode == KW_RD_MODE_C2C);
    if (s.budget_mode == KW_WIRE_BUDGET_QKVCOMM_LIKE) FUZZ_CHECK(s.n_budget_codecs == 2);
    if (s.refine) /* two rounds: c2c or kv_direct, a ranking selection, a larger proportion, no cap, one section */
        FUZZ_CHECK((s.mode == KW_RD_MODE_C2C || s.mode == KW_RD_MODE_KV_DIRECT) && s.select.mode != KW_SELECT_FULL &&
                   s.refine_proportion > s.select.proportion && s.refine_proportion <= 1 && s.refine_threshold >= 0 &&
                   s.refine_threshold <= 1e6 && kw_refine_metric_name(s.refine_metric) && !s.budget_bytes &&
                   s.cache_proportion >= 1);
    FUZZ_CHECK(!(s.echo && s.logprobs >= 0));
    FUZZ_CHECK(s.mode != KW_RD_MODE_TEXT_RELAY || chat);
    kw_rd_spec_free(&s);
    return 0;
}

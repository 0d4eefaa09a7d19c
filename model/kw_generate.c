/* kw_generate.c: greedy decoding (see kw_generate.h). The argmax runs on the backend; only one id per step comes
 * back to the host. */
#include "model/kw_generate.h"

#include <stdlib.h>
#include <string.h>

#include "common/kw_status.h"
#include "common/kw_time.h"

static int generate_is_eos(const kw_model_config *cfg, const kw_generate_options *o, int32_t id) {
    if (!o->eos_ids) return kw_config_is_eos(cfg, id);
    for (int32_t i = 0; i < o->n_eos; ++i)
        if (o->eos_ids[i] == id) return 1;
    return 0;
}

int kw_generate_greedy(kw_model *model, kw_kvcache *cache, const int32_t *prompt, int64_t n_prompt,
                       const kw_generate_options *opts, kw_generate_result *out) {
    KW_RETURN_IF(!out, KW_E_INVALID_ARG, "generate: NULL result");
    memset(out, 0, sizeof *out);
    KW_RETURN_IF(!model || !cache || !prompt || n_prompt <= 0 || !opts || opts->max_new_tokens < 0 ||
                     (opts->eos_ids == NULL && opts->n_eos != 0) || opts->n_eos < 0,
                 KW_E_INVALID_ARG, "generate: bad arguments");
    const kw_model_config *cfg = kw_model_get_config(model);
    KW_RETURN_IF(opts->force_ids != NULL && opts->n_force != opts->max_new_tokens, KW_E_INVALID_ARG,
                 "generate: %d forced tokens for max_new_tokens %d", (int)opts->n_force, (int)opts->max_new_tokens);
    for (int32_t i = 0; opts->force_ids && i < opts->n_force; ++i)
        KW_RETURN_IF(opts->force_ids[i] < 0 || opts->force_ids[i] >= cfg->vocab, KW_E_TOKEN_ID,
                     "generate: forced token %d (%d) is outside the %d-id vocabulary", (int)i, (int)opts->force_ids[i],
                     (int)cfg->vocab);
    int flags = KW_ARGMAX_PLAIN;
    if (opts->round == KW_LOGITS_ROUND_BF16 ||
        (opts->round == KW_LOGITS_ROUND_AUTO && kw_model_logits_weight_dtype(model) == KW_DTYPE_BF16))
        flags = KW_ARGMAX_ROUND_BF16;
    if (opts->max_new_tokens == 0) return kw_model_prefill(model, cache, prompt, n_prompt);

    int rc = 0;
    kw_generate_result r = {0};
    float *logits = NULL;
    r.ids = malloc((size_t)opts->max_new_tokens * sizeof *r.ids);
    KW_RETURN_IF(!r.ids, KW_E_NOMEM, "generate: out of memory");
    if (opts->on_logits) {
        logits = malloc((size_t)cfg->vocab * sizeof *logits);
        KW_CHECK_IF(!logits, KW_E_NOMEM, "generate: out of memory");
    }

    uint64_t t0 = kw_time_now_ns();
    int32_t next = -1;
    const kw_forward_args a = {
        .ids = prompt, .n = n_prompt, .mode = KW_LOGITS_LAST, .logits = logits, .argmax = &next, .argmax_flags = flags};
    KW_CHECK(kw_model_forward(model, cache, &a));
    r.prefill_ms = kw_time_ms(t0, kw_time_now_ns());
    t0 = kw_time_now_ns();
    for (;;) {
        KW_CHECK_IF(next < 0 || next >= cfg->vocab, KW_E_INTERNAL, "generate: argmax %d out of range", (int)next);
        if (opts->on_logits) KW_CHECK(opts->on_logits(opts->user, r.n, logits, cfg->vocab, next));
        if (opts->force_ids) next = opts->force_ids[r.n];
        r.ids[r.n++] = next;
        if (opts->on_token) {
            KW_CHECK(opts->on_token(opts->user, next));
            if (rc == KW_GENERATE_STOP) {
                rc = 0;
                break;
            }
        }
        if (!opts->force_ids && generate_is_eos(cfg, opts, next)) {
            r.stopped_eos = 1;
            break;
        }
        if (r.n == opts->max_new_tokens) break;
        KW_CHECK(kw_model_decode_step(model, cache, next, logits, &next, flags));
        r.n_decode++;
    }
    r.decode_ms = kw_time_ms(t0, kw_time_now_ns());
    *out = r;
    r.ids = NULL;
out:
    free(r.ids);
    free(logits);
    return rc;
}

void kw_generate_result_free(kw_generate_result *out) {
    if (!out) return;
    free(out->ids);
    memset(out, 0, sizeof *out);
}

/* test_align.c: c2c/kw_align.h against the C2C reference TokenAligner (tools/make_align_fixtures.py ->
 * tests/data/c2c/align/), exactly: every id, mask, section and error.
 *   tokens_<recv>_<sharer>.jsonl  align_tokens of EVERY receiver id (FNV-1a 64 of the whole mapping) for both
 *                                 strategies, a written-out sample, and whole sequences
 *   chat_<recv>_<sharer>.jsonl    align_chat_messages: rendered texts, padded id streams (both strategies),
 *                                 message mask, padding masks, sections, the evaluator's kv_cache_index, or the
 *                                 reference's assertion (KW_E_ALIGN here)
 * Pairs: Qwen3 -> Llama-3.2 (the released pair), Llama-3.2 -> Qwen3, Qwen3 -> Qwen2.5 (one tokenizer, two templates).
 * Plus the API's own contract: special-token dict semantics on synthetic sides, argument errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "c2c/kw_align.h"
#include "common/kw_json.h"
#include "common/kw_status.h"

static kw_tokenizer *g_qwen, *g_llama;

static int setup(void **state) {
    (void)state;
    char path[1024];
    snprintf(path, sizeof path, "%s/models/tokenizers/qwen3", KW_SOURCE_DIR);
    if (kw_tokenizer_load(path, &g_qwen) < 0) return -1;
    snprintf(path, sizeof path, "%s/models/tokenizers/llama3", KW_SOURCE_DIR);
    if (kw_tokenizer_load(path, &g_llama) < 0) return -1;
    return 0;
}

static int teardown(void **state) {
    (void)state;
    kw_tokenizer_free(g_qwen);
    kw_tokenizer_free(g_llama);
    return 0;
}

static void side(const char *name, kw_align_side *out) {
    if (strcmp(name, "qwen3") == 0)
        assert_int_equal(kw_align_side_init(g_qwen, KW_CHAT_QWEN3, out), 0);
    else if (strcmp(name, "qwen25") == 0)
        assert_int_equal(kw_align_side_init(g_qwen, KW_CHAT_QWEN25, out), 0);
    else
        assert_int_equal(kw_align_side_init(g_llama, KW_CHAT_LLAMA32, out), 0);
}

static kw_aligner *make(const char *recv, const char *sharer, enum kw_align_strategy s) {
    kw_align_side r, sh;
    side(recv, &r);
    side(sharer, &sh);
    kw_aligner *al = NULL;
    assert_int_equal(kw_aligner_create(&r, &sh, s, &al), 0);
    return al;
}

static FILE *open_data(const char *name) {
    char path[1024];
    snprintf(path, sizeof path, "%s/c2c/align/%s", KW_TEST_DATA_DIR, name);
    FILE *f = fopen(path, "rb");
    if (!f) fprintf(stderr, "cannot open %s\n", path);
    assert_non_null(f);
    return f;
}

/* A JSON array of integers as int32 (malloc'd, at least one slot). */
static int32_t *int_array(const cJSON *a, size_t *n) {
    assert_true(cJSON_IsArray(a));
    *n = (size_t)cJSON_GetArraySize(a);
    int32_t *v = malloc((*n + 1) * sizeof *v);
    assert_non_null(v);
    size_t i = 0;
    for (const cJSON *it = a->child; it; it = it->next) {
        int64_t x;
        assert_int_equal(kw_json_to_i64(it, INT32_MIN, INT32_MAX, &x), 0);
        v[i++] = (int32_t)x;
    }
    return v;
}

static const cJSON *get(const cJSON *o, const char *key) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!it) fprintf(stderr, "missing key %s\n", key);
    assert_non_null(it);
    return it;
}

static uint64_t fnv_ids(const int32_t *v, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; ++i) {
        const uint32_t x = (uint32_t)v[i];
        for (int b = 0; b < 4; ++b)
            h = (h ^ ((x >> (8 * b)) & 0xFF)) * 0x100000001b3ull;
    }
    return h;
}

/* ------------------------------------------------------------------------------------------------------------ */

static void check_tokens(const char *recv, const char *sharer) {
    char name[128];
    snprintf(name, sizeof name, "tokens_%s_%s.jsonl", recv, sharer);
    FILE *f = open_data(name);
    kw_aligner *al[2] = {make(recv, sharer, KW_ALIGN_FIRST), make(recv, sharer, KW_ALIGN_LONGEST)};
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int hashes = 0, samples = 0, seqs = 0;
    while ((len = getline(&line, &cap, f)) > 0) {
        cJSON *row = NULL;
        assert_int_equal(kw_json_parse(line, (size_t)len, &row), 0);
        const char *strategy = get(row, "strategy")->valuestring;
        kw_aligner *a = al[strcmp(strategy, "longest") == 0];
        const cJSON *n_ids = cJSON_GetObjectItemCaseSensitive(row, "n_ids");
        if (n_ids) {
            /* the whole vocabulary */
            const int32_t n = (int32_t)n_ids->valuedouble;
            const kw_tokenizer *rt = strcmp(recv, "llama32") == 0 ? g_llama : g_qwen;
            assert_int_equal(n, kw_tokenizer_vocab_size(rt));
            int32_t *ids = malloc((size_t)n * sizeof *ids), *out = malloc((size_t)n * sizeof *out);
            assert_true(ids && out);
            for (int32_t i = 0; i < n; ++i)
                ids[i] = i;
            assert_int_equal(kw_aligner_align_tokens(a, ids, (size_t)n, out), 0);
            char hex[32];
            snprintf(hex, sizeof hex, "%016llx", (unsigned long long)fnv_ids(out, (size_t)n));
            if (strcmp(hex, get(row, "fnv1a64")->valuestring) != 0)
                fprintf(stderr, "%s %s: the mapping of all %d ids differs\n", name, strategy, (int)n);
            assert_string_equal(hex, get(row, "fnv1a64")->valuestring);
            free(ids);
            free(out);
            ++hashes;
        } else {
            const int is_seq = cJSON_GetObjectItemCaseSensitive(row, "seq") != NULL;
            size_t n = 0, m = 0;
            int32_t *ids = int_array(get(row, is_seq ? "seq" : "ids"), &n);
            int32_t *want = int_array(get(row, "aligned"), &m);
            assert_int_equal(n, m);
            int32_t *got = malloc((n + 1) * sizeof *got);
            assert_non_null(got);
            assert_int_equal(kw_aligner_align_tokens(a, ids, n, got), 0);
            for (size_t i = 0; i < n; ++i) {
                if (got[i] != want[i])
                    fprintf(stderr, "%s %s: receiver id %d -> %d, reference %d\n", name, strategy, ids[i], got[i],
                            want[i]);
                assert_int_equal(got[i], want[i]);
            }
            free(ids);
            free(want);
            free(got);
            is_seq ? ++seqs : ++samples;
        }
        cJSON_Delete(row);
    }
    free(line);
    fclose(f);
    printf("%s: %d whole-vocabulary hashes, %d samples, %d sequences\n", name, hashes, samples, seqs);
    assert_int_equal(hashes, 2);
    assert_int_equal(samples, 2);
    assert_true(seqs >= 40);
    kw_aligner_free(al[0]);
    kw_aligner_free(al[1]);
}

static void test_tokens_qwen3_llama32(void **state) {
    (void)state;
    check_tokens("qwen3", "llama32");
}

static void test_tokens_llama32_qwen3(void **state) {
    (void)state;
    check_tokens("llama32", "qwen3");
}

/* ------------------------------------------------------------------------------------------------------------ */

static void expect_ids(const char *what, const cJSON *a, const int32_t *got, int64_t n) {
    size_t m = 0;
    int32_t *want = int_array(a, &m);
    if ((int64_t)m != n) fprintf(stderr, "%s: %lld tokens, reference %zu\n", what, (long long)n, m);
    assert_int_equal((int64_t)m, n);
    for (size_t i = 0; i < m; ++i) {
        if (got[i] != want[i]) fprintf(stderr, "%s: token %zu is %d, reference %d\n", what, i, got[i], want[i]);
        assert_int_equal(got[i], want[i]);
    }
    free(want);
}

static void expect_bits(const char *what, const cJSON *s, const uint8_t *got, int64_t n) {
    assert_true(cJSON_IsString(s));
    assert_int_equal((int64_t)strlen(s->valuestring), n);
    for (int64_t i = 0; i < n; ++i) {
        if (got[i] != (s->valuestring[i] == '1')) fprintf(stderr, "%s: flag %lld differs\n", what, (long long)i);
        assert_int_equal(got[i], s->valuestring[i] == '1');
    }
}

static void check_chat(const char *recv, const char *sharer) {
    char name[128];
    snprintf(name, sizeof name, "chat_%s_%s.jsonl", recv, sharer);
    FILE *f = open_data(name);
    kw_aligner *al[2] = {make(recv, sharer, KW_ALIGN_FIRST), make(recv, sharer, KW_ALIGN_LONGEST)};
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int rows = 0, errors = 0, padded = 0;
    while ((len = getline(&line, &cap, f)) > 0) {
        cJSON *row = NULL;
        assert_int_equal(kw_json_parse(line, (size_t)len, &row), 0);
        const cJSON *msgs = get(row, "messages");
        const size_t n_msgs = (size_t)cJSON_GetArraySize(msgs);
        kw_chat_message *m = calloc(n_msgs + 1, sizeof *m);
        assert_non_null(m);
        size_t k = 0;
        for (const cJSON *it = msgs->child; it; it = it->next, ++k) {
            m[k].role = get(it, "role")->valuestring;
            m[k].content = get(it, "content")->valuestring;
        }
        const kw_align_chat_options opt = {.add_generation_prompt = cJSON_IsTrue(get(row, "add_generation_prompt")),
                                           .enable_thinking = cJSON_IsTrue(get(row, "enable_thinking")),
                                           .remove_last_suffix = cJSON_IsTrue(get(row, "remove_last_suffix")),
                                           .date_string = get(row, "date")->valuestring};
        const cJSON *err = cJSON_GetObjectItemCaseSensitive(row, "error");
        for (int s = 0; s < 2; ++s) {
            kw_align_result r;
            const int rc = kw_aligner_align_chat(al[s], m, n_msgs, &opt, &r);
            char what[256];
            snprintf(what, sizeof what, "%s row %d (%s)", name, rows, s ? "longest" : "first");
            if (err) {
                if (rc != KW_E_ALIGN)
                    fprintf(stderr, "%s: reference raised %s, C returned %d\n", what, err->valuestring, rc);
                assert_int_equal(rc, KW_E_ALIGN);
                assert_null(r.recv_ids);
                assert_int_equal(r.n, 0);
                continue;
            }
            if (rc != 0) fprintf(stderr, "%s: %s\n", what, kw_error_detail());
            assert_int_equal(rc, 0);
            assert_string_equal(r.recv_text, get(row, "recv_text")->valuestring);
            assert_string_equal(r.sharer_text, get(row, "sharer_text")->valuestring);
            expect_ids(what, get(row, "recv_ids"), r.recv_ids, r.n);
            expect_ids(what, get(row, s ? "sharer_ids_longest" : "sharer_ids_first"), r.sharer_ids, r.n);
            expect_bits(what, get(row, "message_mask"), r.message_mask, r.n);
            expect_bits(what, get(row, "recv_pad"), r.recv_pad, r.n);
            expect_bits(what, get(row, "sharer_pad"), r.sharer_pad, r.n);
            /* a pad carries the side's pad id */
            for (int64_t i = 0; i < r.n; ++i) {
                if (r.recv_pad[i]) assert_int_equal(r.recv_ids[i], kw_aligner_receiver_pad(al[s]));
                if (r.sharer_pad[i]) assert_int_equal(r.sharer_ids[i], kw_aligner_sharer_pad(al[s]));
                padded += s == 0 && (r.recv_pad[i] || r.sharer_pad[i]);
            }
            const cJSON *secs = get(row, "sections");
            assert_int_equal(r.n_sections, cJSON_GetArraySize(secs));
            int32_t i = 0;
            for (const cJSON *it = secs->child; it; it = it->next, ++i) {
                size_t five = 0;
                int32_t *v = int_array(it, &five);
                assert_int_equal(five, 5);
                assert_int_equal(r.sections[i].type, v[0]);
                assert_int_equal(r.sections[i].start, v[1]);
                assert_int_equal(r.sections[i].end, v[2]);
                assert_int_equal(r.sections[i].start, v[3]);
                assert_int_equal(r.sections[i].end, v[4]);
                free(v);
            }
            kw_fusion_section *fs = NULL;
            int32_t n_fs = 0;
            assert_int_equal(kw_align_fusion_sections(&r, 1, &fs, &n_fs), 0);
            const cJSON *kv = get(row, "kv");
            assert_int_equal(n_fs, cJSON_GetArraySize(kv));
            i = 0;
            for (const cJSON *it = kv->child; it; it = it->next, ++i) {
                size_t two = 0;
                int32_t *v = int_array(it, &two);
                assert_int_equal(fs[i].length, v[0]);
                assert_int_equal(fs[i].index, v[1]);
                free(v);
            }
            free(fs);
            kw_align_result_free(&r);
        }
        errors += err != NULL;
        free(m);
        cJSON_Delete(row);
        ++rows;
    }
    free(line);
    fclose(f);
    printf("%s: %d cases (%d where the reference raises), %d padded positions\n", name, rows, errors, padded);
    assert_true(rows >= 100);
    kw_aligner_free(al[0]);
    kw_aligner_free(al[1]);
}

static void test_chat_qwen3_llama32(void **state) {
    (void)state;
    check_chat("qwen3", "llama32");
}

static void test_chat_llama32_qwen3(void **state) {
    (void)state;
    check_chat("llama32", "qwen3");
}

static void test_chat_qwen3_qwen25(void **state) {
    (void)state;
    check_chat("qwen3", "qwen25");
}

/* ------------------------------------------------------------------------------------------------------------ */

/* _map_special_token is a Python dict: later keys overwrite earlier ones, a None value falls through to the string
 * lookup, and the fallback is `unk or 0`. */
static void test_special_semantics(void **state) {
    (void)state;
    kw_align_side r, s;
    side("qwen3", &r);
    side("llama32", &s);
    const int32_t endoftext = kw_tokenizer_token_id(g_qwen, "<|endoftext|>");
    const int32_t im_end = kw_tokenizer_token_id(g_qwen, "<|im_end|>");
    const int32_t im_start = kw_tokenizer_token_id(g_qwen, "<|im_start|>");
    const int32_t eot = kw_tokenizer_token_id(g_llama, "<|eot_id|>");
    int32_t out[3];
    kw_aligner *al = NULL;
    /* receiver pad == eos: the eos pair wins; the sharer's eos differs from its pad */
    r.pad = r.eos = im_end;
    s.pad = 5;
    s.eos = 7;
    assert_int_equal(kw_aligner_create(&r, &s, KW_ALIGN_FIRST, &al), 0);
    const int32_t ids[3] = {im_end, endoftext, im_start};
    assert_int_equal(kw_aligner_align_tokens(al, ids, 3, out), 0);
    assert_int_equal(out[0], 7);
    assert_int_equal(out[1], 0); /* no longer a pair key; "<|endoftext|>" is not a Llama token; no unk: 0 */
    assert_int_equal(out[2], 0);
    kw_aligner_free(al);
    /* a pair whose sharer value is None does not count: the text lookup decides; unk > 0 is the fallback */
    side("qwen3", &r);
    side("llama32", &s);
    r.bos = im_start;
    s.bos = -1;
    s.unk = 11;
    assert_int_equal(kw_aligner_create(&r, &s, KW_ALIGN_FIRST, &al), 0);
    assert_int_equal(kw_aligner_align_tokens(al, ids, 3, out), 0);
    assert_int_equal(out[0], eot);
    assert_int_equal(out[1], eot);
    assert_int_equal(out[2], 11);
    kw_aligner_free(al);
    /* a sharer token whose text is in the receiver's vocabulary is found by the lookup (Llama -> Qwen, bos) */
    side("llama32", &r);
    side("qwen3", &s);
    s.specials_from_tokenizer = 1;
    assert_int_equal(kw_aligner_create(&r, &s, KW_ALIGN_LONGEST, &al), 0);
    const int32_t l_ids[2] = {kw_tokenizer_token_id(g_llama, "<|begin_of_text|>"), eot};
    assert_int_equal(kw_aligner_align_tokens(al, l_ids, 2, out), 0);
    assert_int_equal(out[0], 0);      /* bos -> None -> text not a Qwen token -> 0 */
    assert_int_equal(out[1], im_end); /* pad -> pad, then eos -> eos overwrites */
    kw_aligner_free(al);
}

static void test_errors(void **state) {
    (void)state;
    kw_align_side r, s;
    side("qwen3", &r);
    side("llama32", &s);
    kw_aligner *al = NULL;
    assert_int_equal(kw_aligner_create(NULL, &s, KW_ALIGN_FIRST, &al), KW_E_INVALID_ARG);
    assert_int_equal(kw_aligner_create(&r, &s, (enum kw_align_strategy)7, &al), KW_E_INVALID_ARG);
    assert_null(al);
    kw_align_side bad = r;
    bad.pad = bad.eos = -1;
    assert_int_equal(kw_aligner_create(&bad, &s, KW_ALIGN_FIRST, &al), KW_E_INVALID_ARG);
    bad = r;
    bad.unk = 1 << 30;
    assert_int_equal(kw_aligner_create(&bad, &s, KW_ALIGN_FIRST, &al), KW_E_INVALID_ARG);
    bad = s;
    bad.tok = NULL;
    assert_int_equal(kw_aligner_create(&r, &bad, KW_ALIGN_FIRST, &al), KW_E_INVALID_ARG);
    /* no pad: eos is used */
    bad = s;
    bad.pad = -1;
    assert_int_equal(kw_aligner_create(&r, &bad, KW_ALIGN_FIRST, &al), 0);
    assert_int_equal(kw_aligner_sharer_pad(al), s.eos);
    kw_aligner_free(al);
    assert_int_equal(kw_align_side_init(g_qwen, KW_CHAT_LLAMA32, &bad), KW_E_NOT_FOUND);
    assert_int_equal(kw_align_side_init(g_qwen, (enum kw_chat_family)9, &bad), KW_E_INVALID_ARG);
    assert_int_equal(kw_align_side_init(g_qwen, KW_CHAT_GEMMA3, &bad), KW_E_UNSUPPORTED); /* no offsets yet */

    assert_int_equal(kw_aligner_create(&r, &s, KW_ALIGN_LONGEST, &al), 0);
    int32_t out[2];
    const int32_t ids[2] = {1, kw_tokenizer_vocab_size(g_qwen)};
    assert_int_equal(kw_aligner_align_tokens(al, ids, 2, out), KW_E_TOKEN_ID);
    const kw_chat_message user = {"user", "hi"}, asst = {"assistant", "yo"};
    kw_align_result res;
    kw_align_chat_options opt = {.add_generation_prompt = 1, .remove_last_suffix = 1, .date_string = "1 Jan 2025"};
    const kw_chat_message two[2] = {user, asst};
    assert_int_equal(kw_aligner_align_chat(al, two, 2, &opt, &res), KW_E_INVALID_ARG);
    opt.add_generation_prompt = 0;
    assert_int_equal(kw_aligner_align_chat(al, &user, 1, &opt, &res), KW_E_INVALID_ARG); /* last is not assistant */
    assert_int_equal(kw_aligner_align_chat(al, two, 2, &opt, &res), 0);
    /* the raw assistant content ends both texts and is the last (message) section */
    assert_int_equal(res.sections[res.n_sections - 1].type, KW_ALIGN_MESSAGE);
    assert_int_equal(res.sections[res.n_sections - 1].end, res.n);
    kw_fusion_section *fs = NULL;
    int32_t n_fs = 0;
    assert_int_equal(kw_align_fusion_sections(&res, 0, &fs, &n_fs), KW_E_INVALID_ARG);
    assert_int_equal(kw_align_fusion_sections(&res, 3, &fs, &n_fs), 0);
    assert_int_equal(fs[n_fs - 1].index, 3);
    free(fs);
    kw_align_result_free(&res);
    kw_align_result_free(&res); /* zeroed: a second free is harmless */
    kw_align_result_free(NULL);
    opt.remove_last_suffix = 0;
    opt.date_string = NULL; /* Llama-3.2 needs its date */
    assert_int_equal(kw_aligner_align_chat(al, &user, 1, &opt, &res), KW_E_INVALID_ARG);
    const kw_chat_message no_content = {"user", NULL};
    opt.date_string = "1 Jan 2025";
    assert_int_equal(kw_aligner_align_chat(al, &no_content, 1, &opt, &res), KW_E_INVALID_ARG);
    assert_int_equal(kw_aligner_align_chat(al, NULL, 0, &opt, &res), KW_E_TEMPLATE); /* empty list */
    assert_int_equal(kw_aligner_align_chat(NULL, &user, 1, &opt, &res), KW_E_INVALID_ARG);
    kw_aligner_free(al);
    kw_aligner_free(NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_special_semantics),    cmocka_unit_test(test_errors),
        cmocka_unit_test(test_chat_qwen3_llama32),   cmocka_unit_test(test_chat_llama32_qwen3),
        cmocka_unit_test(test_chat_qwen3_qwen25),    cmocka_unit_test(test_tokens_qwen3_llama32),
        cmocka_unit_test(test_tokens_llama32_qwen3),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

/* kw_load_dataset.c: JSONL dataset rows to items (id, prompt, gold answer or skip reason), and answer grading.
 *
 * The gold-answer rules are the reference evaluator's parse_answer (script/evaluation/unified_evaluator.py), rule for
 * rule, including how Python would fail on odd rows (those become "gold answer unparseable" skips, since the reference
 * counts an exception in skip_count). The prompt is built only for rows that are not skipped, in the reference's
 * order (parse_answer first). Not here: HTTP, chat templates (receiverd applies the receiver's template).
 */
#include "loadgen/kw_load_dataset.h"

#include "c2c/kw_answer.h"
#include "c2c/kw_prompt.h"
#include "common/kw_buf.h"
#include "common/kw_file.h"
#include "common/kw_json.h"
#include "common/kw_status.h"
#include "loadgen/kw_load_map.h"

#include <ctype.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

static const char *const kw_load_dataset_names[KW_LOAD_DATASET_COUNT] = {
    "prompts", "mmlu-redux", "openbookqa", "ai2-arc", "ceval", "gsm8k",
};

const char *kw_load_dataset_name(enum kw_load_dataset_kind kind) {
    return (unsigned)kind < KW_LOAD_DATASET_COUNT ? kw_load_dataset_names[kind] : "unknown";
}

int kw_load_dataset_parse_name(const char *name, enum kw_load_dataset_kind *out) {
    for (int k = 0; k < KW_LOAD_DATASET_COUNT; ++k) {
        if (strcmp(name, kw_load_dataset_names[k]) == 0) {
            *out = (enum kw_load_dataset_kind)k;
            return 0;
        }
    }
    KW_FAIL(KW_E_NOT_FOUND,
            "unknown dataset \"%s\" (expected prompts, mmlu-redux, openbookqa, ai2-arc, ceval or gsm8k)", name);
}

void kw_load_dataset_options_default(kw_load_dataset_options *opt) {
    memset(opt, 0, sizeof(*opt));
    opt->use_template = 1;
}

enum kw_load_answer_kind kw_load_dataset_answer_kind(enum kw_load_dataset_kind kind) {
    switch (kind) {
    case KW_LOAD_DATASET_MMLU_REDUX:
    case KW_LOAD_DATASET_OPENBOOKQA:
    case KW_LOAD_DATASET_ARC:
    case KW_LOAD_DATASET_CEVAL:
        return KW_LOAD_ANSWER_LETTER;
    case KW_LOAD_DATASET_GSM8K:
        return KW_LOAD_ANSWER_NUMBER;
    default:
        return KW_LOAD_ANSWER_TEXT;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Skip reasons (static texts, compared by pointer nowhere: summaries count them by text)

static const char kw_load_skip_no_correct[] = "mmlu-redux error_type no_correct_answer";
static const char kw_load_skip_expert[] = "mmlu-redux error_type expert";
static const char kw_load_skip_key[] = "answer key missing or not one of A, B, C, D";
static const char kw_load_skip_hashes[] = "gsm8k answer has no ####";
static const char kw_load_skip_unparseable[] = "gold answer unparseable (the reference raises and skips the row)";

// ---------------------------------------------------------------------------------------------------------------
// Small string helpers

static char *kw_load_strdup(const char *s, size_t n) {
    char *p = malloc(n + 1);
    if (!p) return NULL;
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

/* Python's str.isspace for the ASCII range (what str.strip() removes there). */
static int kw_load_is_py_space(unsigned char c) {
    return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f);
}

/* The code point cp as UTF-8 in out (at least 5 bytes). @return 0, or -1 when cp is not a Unicode scalar value. */
static int kw_load_utf8_encode(long cp, char *out) {
    if (cp < 0 || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return -1;
    if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = 0;
    } else if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        out[2] = 0;
    } else if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        out[3] = 0;
    } else {
        out[0] = (char)(0xF0 | (cp >> 18));
        out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[3] = (char)(0x80 | (cp & 0x3F));
        out[4] = 0;
    }
    return 0;
}

/* The code point of s when s is exactly one UTF-8 character (Python's ord(s) succeeds), else -1. */
static long kw_load_single_code_point(const char *s) {
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s);
    if (n == 0) return -1;
    long cp;
    size_t len;
    if (p[0] < 0x80)
        cp = p[0], len = 1;
    else if ((p[0] & 0xE0) == 0xC0)
        cp = p[0] & 0x1F, len = 2;
    else if ((p[0] & 0xF0) == 0xE0)
        cp = p[0] & 0x0F, len = 3;
    else if ((p[0] & 0xF8) == 0xF0)
        cp = p[0] & 0x07, len = 4;
    else
        return -1;
    if (n != len) return -1;
    for (size_t i = 1; i < len; ++i) {
        if ((p[i] & 0xC0) != 0x80) return -1;
        cp = (cp << 6) | (p[i] & 0x3F);
    }
    return cp;
}

/* Python's int(str) for the forms datasets hold: optional surrounding whitespace, an optional sign, decimal digits
 * with single underscores between them. @return 0 and *out, or -1 (Python would raise ValueError). */
static int kw_load_py_int(const char *s, long *out) {
    const char *p = s;
    while (*p && kw_load_is_py_space((unsigned char)*p))
        ++p;
    int neg = 0;
    if (*p == '+' || *p == '-') neg = *p++ == '-';
    long v = 0;
    int digits = 0, prev_underscore = 0;
    for (; *p && !kw_load_is_py_space((unsigned char)*p); ++p) {
        if (*p == '_') {
            if (!digits || prev_underscore) return -1;
            prev_underscore = 1;
            continue;
        }
        if (!isdigit((unsigned char)*p)) return -1;
        if (v > 100000000) return -1; /* far beyond any letter; avoids overflow */
        v = v * 10 + (*p - '0');
        digits = 1;
        prev_underscore = 0;
    }
    if (!digits || prev_underscore) return -1;
    while (*p && kw_load_is_py_space((unsigned char)*p))
        ++p;
    if (*p) return -1;
    *out = neg ? -v : v;
    return 0;
}

/* Python's int(x) on a JSON value: integers, truncated floats, booleans, numeric strings. @return 0 or -1. */
static int kw_load_py_int_of(const cJSON *v, long *out) {
    if (cJSON_IsBool(v)) {
        *out = cJSON_IsTrue(v) ? 1 : 0;
        return 0;
    }
    if (cJSON_IsNumber(v)) {
        const double d = v->valuedouble;
        if (!isfinite(d) || fabs(d) > 1e9) return -1;
        *out = (long)trunc(d);
        return 0;
    }
    if (cJSON_IsString(v)) return kw_load_py_int(v->valuestring, out);
    return -1;
}

// ---------------------------------------------------------------------------------------------------------------
// Gold answers (unified_evaluator.py parse_answer)

/* chr(65 + n) as a new string into *gold, or the unparseable skip. */
static int kw_load_gold_from_index(long n, char **gold, const char **skip) {
    char utf8[5];
    if (n < -65 || n > 0x10FFFF - 65 || kw_load_utf8_encode(65 + n, utf8) < 0) {
        *skip = kw_load_skip_unparseable;
        return 0;
    }
    *gold = kw_load_strdup(utf8, strlen(utf8));
    KW_RETURN_IF(!*gold, KW_E_NOMEM, "out of memory");
    return 0;
}

static int kw_load_gold_mmlu_redux(const cJSON *row, char **gold, const char **skip) {
    const cJSON *error_type = cJSON_GetObjectItemCaseSensitive(row, "error_type");
    const char *et = cJSON_IsString(error_type) ? error_type->valuestring : "";
    if (strcmp(et, "no_correct_answer") == 0) {
        *skip = kw_load_skip_no_correct;
        return 0;
    }
    if (strcmp(et, "expert") == 0) {
        *skip = kw_load_skip_expert;
        return 0;
    }
    long n = 0;
    const cJSON *correct = cJSON_GetObjectItemCaseSensitive(row, "correct_answer");
    if (strcmp(et, "wrong_groundtruth") == 0 && correct && !cJSON_IsNull(correct)) {
        /* `answer >= '0' and answer <= '3'` on a str (anything else raises TypeError), then int() or ord() - 65. */
        if (!cJSON_IsString(correct)) {
            *skip = kw_load_skip_unparseable;
            return 0;
        }
        const char *a = correct->valuestring;
        if (strcmp(a, "0") >= 0 && strcmp(a, "3") <= 0) {
            if (kw_load_py_int(a, &n) < 0) {
                *skip = kw_load_skip_unparseable;
                return 0;
            }
        } else {
            const long cp = kw_load_single_code_point(a);
            if (cp < 0) {
                *skip = kw_load_skip_unparseable;
                return 0;
            }
            n = cp - 'A';
        }
    } else {
        const cJSON *answer = cJSON_GetObjectItemCaseSensitive(row, "answer");
        if (!answer || kw_load_py_int_of(answer, &n) < 0) {
            *skip = kw_load_skip_unparseable;
            return 0;
        }
    }
    return kw_load_gold_from_index(n, gold, skip);
}

/* OpenBookQA, ARC (answerKey) and C-Eval (answer): a string among A, B, C, D, else skipped. */
static int kw_load_gold_key(const cJSON *row, const char *field, char **gold, const char **skip) {
    const cJSON *key = cJSON_GetObjectItemCaseSensitive(row, field);
    const char *k = cJSON_IsString(key) ? key->valuestring : NULL;
    if (!k || strlen(k) != 1 || k[0] < 'A' || k[0] > 'D') {
        *skip = kw_load_skip_key;
        return 0;
    }
    *gold = kw_load_strdup(k, 1);
    KW_RETURN_IF(!*gold, KW_E_NOMEM, "out of memory");
    return 0;
}

/* Length of the number [-+]?\d+(?:\.\d+)? at s (ASCII digits), or 0. */
static size_t kw_load_match_ref_number(const char *s) {
    size_t i = 0;
    if (s[i] == '+' || s[i] == '-') ++i;
    const size_t digits_at = i;
    while (isdigit((unsigned char)s[i]))
        ++i;
    if (i == digits_at) return 0;
    if (s[i] == '.' && isdigit((unsigned char)s[i + 1])) {
        ++i;
        while (isdigit((unsigned char)s[i]))
            ++i;
    }
    return i;
}

static int kw_load_gold_gsm8k(const cJSON *row, char **gold, const char **skip) {
    const cJSON *answer = cJSON_GetObjectItemCaseSensitive(row, "answer");
    /* str(non-string) can never hold "####": numbers, null and lists are skipped the same way. */
    const char *full = cJSON_IsString(answer) ? answer->valuestring : "";
    if (!strstr(full, "####")) {
        *skip = kw_load_skip_hashes;
        return 0;
    }
    /* full.split('####')[-1]: the text after the last non-overlapping "####" (for "#####" Python's split leaves
     * "#"-free tails the same way: scanning non-overlapping occurrences from the left). */
    const char *tail = full;
    for (const char *p = strstr(full, "####"); p; p = strstr(p + 4, "####"))
        tail = p + 4;
    while (*tail && kw_load_is_py_space((unsigned char)*tail))
        ++tail;
    size_t tail_len = strlen(tail);
    while (tail_len > 0 && kw_load_is_py_space((unsigned char)tail[tail_len - 1]))
        --tail_len;
    /* re.search: the first position where the number matches. */
    for (size_t i = 0; i < tail_len; ++i) {
        const size_t m = kw_load_match_ref_number(tail + i);
        if (m > 0 && i + m <= tail_len) {
            *gold = kw_load_strdup(tail + i, m);
            KW_RETURN_IF(!*gold, KW_E_NOMEM, "out of memory");
            return 0;
        }
    }
    *gold = kw_load_strdup(tail, tail_len);
    KW_RETURN_IF(!*gold, KW_E_NOMEM, "out of memory");
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// Rows

/* Per-subject running indices (the reference's question_id), for rows without an id. */
typedef struct kw_load_subject_count {
    kw_load_map map; /* subject -> slot in counts */
    char **names;    /* owned copies, the map's keys */
    size_t *counts, n, cap;
} kw_load_subject_count;

static int kw_load_subject_next(kw_load_subject_count *sc, const char *subject, size_t *index) {
    size_t slot = 0;
    if (kw_load_map_get(&sc->map, subject, &slot)) {
        *index = sc->counts[slot]++;
        return 0;
    }
    if (sc->n == sc->cap) {
        const size_t cap = sc->cap ? sc->cap * 2 : 16;
        char **names = realloc(sc->names, cap * sizeof(*names));
        KW_RETURN_IF(!names, KW_E_NOMEM, "out of memory");
        sc->names = names;
        size_t *counts = realloc(sc->counts, cap * sizeof(*counts));
        KW_RETURN_IF(!counts, KW_E_NOMEM, "out of memory");
        sc->counts = counts;
        sc->cap = cap;
    }
    char *copy = kw_load_strdup(subject, strlen(subject));
    KW_RETURN_IF(!copy, KW_E_NOMEM, "out of memory");
    sc->names[sc->n] = copy;
    sc->counts[sc->n] = 1;
    const int rc = kw_load_map_put(&sc->map, copy, sc->n, NULL);
    sc->n++;
    if (rc < 0) return rc;
    *index = 0;
    return 0;
}

static void kw_load_subject_free(kw_load_subject_count *sc) {
    for (size_t i = 0; i < sc->n; ++i)
        free(sc->names[i]);
    free(sc->names);
    free(sc->counts);
    kw_load_map_free(&sc->map);
}

static void kw_load_item_free(kw_load_item *it) {
    free(it->id);
    free(it->subject);
    free(it->prompt);
    free(it->gold);
}

/* One parsed row into *it (zeroed by the caller). */
static int kw_load_row(enum kw_load_dataset_kind kind, const cJSON *row, const kw_load_dataset_options *opt,
                       kw_load_subject_count *sc, kw_load_item *it) {
    const char *prompt_text = NULL;
    if (kind == KW_LOAD_DATASET_PROMPTS) {
        if (cJSON_IsString(row)) {
            prompt_text = row->valuestring;
        } else {
            KW_RETURN_IF(!cJSON_IsObject(row), KW_E_PARSE, "a prompt row must be a JSON string or object");
            const cJSON *p = cJSON_GetObjectItemCaseSensitive(row, "prompt");
            KW_RETURN_IF(!cJSON_IsString(p), KW_E_PARSE, "\"prompt\" must be a string");
            prompt_text = p->valuestring;
        }
    } else {
        KW_RETURN_IF(!cJSON_IsObject(row), KW_E_PARSE, "a %s row must be a JSON object", kw_load_dataset_name(kind));
    }

    /* Id: [subject/](id | index within the subject). */
    const cJSON *subject = cJSON_IsObject(row) ? cJSON_GetObjectItemCaseSensitive(row, "subject") : NULL;
    KW_RETURN_IF(subject && !cJSON_IsNull(subject) && !cJSON_IsString(subject), KW_E_PARSE,
                 "\"subject\" must be a string");
    const char *subj = cJSON_IsString(subject) ? subject->valuestring : NULL;
    size_t index = 0;
    KW_FORWARD(kw_load_subject_next(sc, subj ? subj : "", &index));
    const cJSON *id = cJSON_IsObject(row) ? cJSON_GetObjectItemCaseSensitive(row, "id") : NULL;
    char id_part[64];
    const char *idp = id_part;
    int64_t id_int = 0;
    if (cJSON_IsString(id) && id->valuestring[0]) {
        idp = id->valuestring;
    } else if (cJSON_IsNumber(id) && kw_json_to_i64(id, INT64_MIN, INT64_MAX, &id_int) == 0) {
        snprintf(id_part, sizeof(id_part), "%lld", (long long)id_int);
    } else {
        KW_RETURN_IF(id && !cJSON_IsNull(id), KW_E_PARSE, "\"id\" must be a non-empty string or an integer");
        snprintf(id_part, sizeof(id_part), "%zu", index);
    }
    kw_buf b = KW_BUF_INIT;
    if (subj) {
        kw_buf_append_str(&b, subj);
        kw_buf_append_str(&b, "/");
    }
    kw_buf_append_str(&b, idp);
    KW_FORWARD(kw_buf_take(&b, &it->id, NULL));
    if (subj) {
        it->subject = kw_load_strdup(subj, strlen(subj));
        KW_RETURN_IF(!it->subject, KW_E_NOMEM, "out of memory");
    }

    switch (kind) {
    case KW_LOAD_DATASET_PROMPTS:
        it->prompt = kw_load_strdup(prompt_text, strlen(prompt_text));
        KW_RETURN_IF(!it->prompt, KW_E_NOMEM, "out of memory");
        return 0;
    case KW_LOAD_DATASET_MMLU_REDUX:
        KW_FORWARD(kw_load_gold_mmlu_redux(row, &it->gold, &it->skip));
        break;
    case KW_LOAD_DATASET_OPENBOOKQA:
    case KW_LOAD_DATASET_ARC:
        KW_FORWARD(kw_load_gold_key(row, "answerKey", &it->gold, &it->skip));
        break;
    case KW_LOAD_DATASET_CEVAL:
        KW_FORWARD(kw_load_gold_key(row, "answer", &it->gold, &it->skip));
        break;
    case KW_LOAD_DATASET_GSM8K:
        KW_FORWARD(kw_load_gold_gsm8k(row, &it->gold, &it->skip));
        break;
    default:
        KW_FAIL(KW_E_INVALID_ARG, "unknown dataset kind %d", (int)kind);
    }
    if (it->skip) return 0;
    return kw_prompt_from_item(kw_load_dataset_name(kind), row, opt->use_cot, opt->use_template, &it->prompt);
}

static int kw_load_is_blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; ++i)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r') return 0;
    return 1;
}

int kw_load_dataset_parse(const char *text, size_t len, const char *what, enum kw_load_dataset_kind kind,
                          const kw_load_dataset_options *opt, kw_load_dataset *out) {
    KW_RETURN_IF((unsigned)kind >= KW_LOAD_DATASET_COUNT, KW_E_INVALID_ARG, "unknown dataset kind %d", (int)kind);
    kw_load_dataset_options defaults;
    if (!opt) {
        kw_load_dataset_options_default(&defaults);
        opt = &defaults;
    }
    kw_load_dataset ds = {.kind = kind, .bytes = len};
    kw_load_subject_count sc = {0};
    kw_load_map ids = {0};
    size_t cap = 0;
    int rc = 0;
    cJSON *row = NULL;
    size_t lineno = 0;
    const char *p = text, *end = text + len;
    while (p < end && (opt->limit == 0 || ds.n_items < opt->limit)) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *line_end = nl ? nl : end;
        ++lineno;
        const size_t n = (size_t)(line_end - p);
        const char *line = p;
        p = nl ? nl + 1 : end;
        if (kw_load_is_blank(line, n)) continue;
        if (ds.n_items == cap) {
            const size_t ncap = cap ? cap * 2 : 256;
            kw_load_item *items = realloc(ds.items, ncap * sizeof(*items));
            KW_CHECK_IF(!items, KW_E_NOMEM, "out of memory for %zu items", ncap);
            ds.items = items;
            cap = ncap;
        }
        rc = kw_json_parse(line, n, &row);
        if (rc < 0) {
            rc = kw_error_set(rc, "%s line %zu: %s", what, lineno, kw_error_detail());
            goto out;
        }
        kw_load_item *it = &ds.items[ds.n_items];
        memset(it, 0, sizeof(*it));
        it->line = lineno;
        ds.n_items++;
        rc = kw_load_row(kind, row, opt, &sc, it);
        cJSON_Delete(row);
        row = NULL;
        if (rc < 0) {
            rc = kw_error_set(rc, "%s line %zu: %s", what, lineno, kw_error_detail());
            goto out;
        }
        size_t first = 0;
        rc = kw_load_map_put(&ids, it->id, ds.n_items - 1, &first);
        if (rc < 0) goto out;
        KW_CHECK_IF(rc == 0, KW_E_PARSE, "%s line %zu: item id \"%s\" already used on line %zu", what, lineno, it->id,
                    ds.items[first].line);
        rc = 0;
        if (!it->skip) ds.n_eval++;
    }

    /* SHA-256 of the bytes read. */
    unsigned char md[32];
    unsigned int md_len = 0;
    KW_CHECK_IF(EVP_Digest(text, len, md, &md_len, EVP_sha256(), NULL) != 1 || md_len != 32, KW_E_INTERNAL,
                "SHA-256 failed");
    for (int i = 0; i < 32; ++i)
        snprintf(ds.sha256 + 2 * i, 3, "%02x", md[i]);
    *out = ds;
    memset(&ds, 0, sizeof(ds));
out:
    cJSON_Delete(row);
    kw_load_map_free(&ids);
    kw_load_subject_free(&sc);
    kw_load_dataset_free(&ds);
    return rc;
}

int kw_load_dataset_read(const char *path, enum kw_load_dataset_kind kind, const kw_load_dataset_options *opt,
                         kw_load_dataset *out) {
    const size_t max = opt && opt->max_bytes ? opt->max_bytes : ((size_t)1 << 30);
    char *text = NULL;
    size_t size = 0;
    KW_FORWARD(kw_file_read_all(path, max, &text, &size));
    const int rc = kw_load_dataset_parse(text, size, path, kind, opt, out);
    free(text);
    return rc;
}

void kw_load_dataset_free(kw_load_dataset *ds) {
    if (!ds) return;
    for (size_t i = 0; i < ds->n_items; ++i)
        kw_load_item_free(&ds->items[i]);
    free(ds->items);
    memset(ds, 0, sizeof(*ds));
}

// ---------------------------------------------------------------------------------------------------------------
// Answers

/* A number at s: [-+]?digits(,ddd)*(.digits)?; returns its length (0: none) and writes it without commas into buf
 * (room for cap bytes; longer numbers are cut, which only loses digits nobody compares). */
static size_t kw_load_scan_number(const char *s, const char *end, char *buf, size_t cap) {
    size_t i = 0, o = 0;
    const size_t n = (size_t)(end - s);
#define KW_LOAD_PUT(c)                                                                                                 \
    do {                                                                                                               \
        if (o + 1 < cap) buf[o++] = (c);                                                                               \
    } while (0)
    if (i < n && (s[i] == '-' || s[i] == '+')) {
        if (s[i] == '-') KW_LOAD_PUT('-');
        ++i;
    }
    const size_t digits_at = i;
    while (i < n && isdigit((unsigned char)s[i]))
        KW_LOAD_PUT(s[i++]);
    if (i == digits_at) return 0;
    /* ",ddd" groups only after 1-3 leading digits, each exactly three digits. */
    if (i - digits_at <= 3) {
        while (i + 3 < n && s[i] == ',' && isdigit((unsigned char)s[i + 1]) && isdigit((unsigned char)s[i + 2]) &&
               isdigit((unsigned char)s[i + 3]) && !(i + 4 < n && isdigit((unsigned char)s[i + 4]))) {
            KW_LOAD_PUT(s[i + 1]);
            KW_LOAD_PUT(s[i + 2]);
            KW_LOAD_PUT(s[i + 3]);
            i += 4;
        }
    }
    if (i + 1 < n && s[i] == '.' && isdigit((unsigned char)s[i + 1])) {
        KW_LOAD_PUT('.');
        ++i;
        while (i < n && isdigit((unsigned char)s[i]))
            KW_LOAD_PUT(s[i++]);
    }
#undef KW_LOAD_PUT
    buf[o] = '\0';
    return i;
}

/* The first number in [s, end) into buf; @return 1 found, 0 not. */
static int kw_load_first_number(const char *s, const char *end, char *buf, size_t cap) {
    for (const char *p = s; p < end; ++p) {
        /* A sign counts only right before a digit; a digit preceded by a digit is inside an earlier number. */
        if (!isdigit((unsigned char)*p) && !((*p == '-' || *p == '+') && p + 1 < end && isdigit((unsigned char)p[1])))
            continue;
        if (kw_load_scan_number(p, end, buf, cap) > 0) return 1;
    }
    return 0;
}

/* The last number in [s, end) into buf; @return 1 found, 0 not. */
static int kw_load_last_number(const char *s, const char *end, char *buf, size_t cap) {
    int found = 0;
    char tmp[64];
    for (const char *p = s; p < end;) {
        if (isdigit((unsigned char)*p) || ((*p == '-' || *p == '+') && p + 1 < end && isdigit((unsigned char)p[1]))) {
            const size_t m = kw_load_scan_number(p, end, tmp, sizeof(tmp));
            if (m > 0) {
                snprintf(buf, cap, "%s", tmp);
                found = 1;
                p += m;
                continue;
            }
        }
        ++p;
    }
    return found;
}

/* The last case-insensitive occurrence of needle (lowercase ASCII) in [s, end), or NULL. */
static const char *kw_load_last_ci(const char *s, const char *end, const char *needle) {
    const size_t n = strlen(needle);
    const char *last = NULL;
    for (const char *p = s; p + n <= end; ++p) {
        size_t i = 0;
        while (i < n && tolower((unsigned char)p[i]) == needle[i])
            ++i;
        if (i == n) last = p;
    }
    return last;
}

static int kw_load_extract_number(const char *text, size_t len, char **out) {
    const char *end = text + len;
    char num[64];
    int found = 0;
    const char *boxed = NULL;
    for (const char *p = text; p + 7 <= end; ++p)
        if (memcmp(p, "\\boxed{", 7) == 0) boxed = p;
    if (boxed) {
        const char *close = memchr(boxed + 7, '}', (size_t)(end - boxed - 7));
        found = kw_load_first_number(boxed + 7, close ? close : end, num, sizeof(num));
    }
    if (!found) {
        const char *anchor = kw_load_last_ci(text, end, "answer:");
        if (anchor) {
            const char *from = anchor + 7;
            const char *eol = memchr(from, '\n', (size_t)(end - from));
            found = kw_load_first_number(from, eol ? eol : end, num, sizeof(num));
        }
    }
    if (!found) found = kw_load_last_number(text, end, num, sizeof(num));
    if (!found) return 0;
    *out = kw_load_strdup(num, strlen(num));
    KW_RETURN_IF(!*out, KW_E_NOMEM, "out of memory");
    return 0;
}

int kw_load_answer_extract(enum kw_load_answer_kind kind, const char *text, size_t len, char **out) {
    *out = NULL;
    if (kind == KW_LOAD_ANSWER_NUMBER) return kw_load_extract_number(text, len, out);
    if (kind != KW_LOAD_ANSWER_LETTER) return 0;
    /* .strip("\n"), then the reference extractor (which strips whitespace itself). */
    while (len > 0 && text[0] == '\n')
        ++text, --len;
    while (len > 0 && text[len - 1] == '\n')
        --len;
    char letter = 0;
    KW_FORWARD(kw_answer_extract(text, len, &letter));
    if (!letter) return 0;
    *out = kw_load_strdup(&letter, 1);
    KW_RETURN_IF(!*out, KW_E_NOMEM, "out of memory");
    return 0;
}

/* strtod over the whole string; @return 1 and *v when s is a number. */
static int kw_load_parse_double(const char *s, double *v) {
    if (!s || !*s) return 0;
    char *e = NULL;
    *v = strtod(s, &e);
    return e && *e == '\0' && isfinite(*v);
}

int kw_load_answer_correct(enum kw_load_answer_kind kind, const char *answer, const char *gold) {
    if (!answer || !gold || !*answer) return 0;
    if (kind == KW_LOAD_ANSWER_NUMBER) {
        double a, g;
        if (kw_load_parse_double(answer, &a) && kw_load_parse_double(gold, &g)) return a == g;
    }
    return strcmp(answer, gold) == 0;
}

int kw_load_answer_agree(enum kw_load_answer_kind kind, const char *a, const char *b) {
    if (!a || !b) return !a && !b;
    return kw_load_answer_correct(kind, a, b);
}

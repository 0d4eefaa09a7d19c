/* kw_answer.c: extract_answer_from_content ported to C, step by step (c2c_spec.md §5.6).
 *
 * The text is decoded to code points first: Python's re works on code points, and \b, \s and `.` are defined per
 * code point. Each regex of the reference is replaced by a direct scan that accepts exactly the same matches:
 *
 *  - Anchors `LIT\s*(.*)` with re.search: the leftmost position where LIT matches case-insensitively. From there \s*
 *    is greedy and (.*) can always match (it may be empty), so the first path the backtracking matcher tries
 *    succeeds: group(1) runs from the end of the longest whitespace run to the next '\n' or the end. Only the first
 *    uppercase A-D in it matters, so its .strip() changes nothing.
 *  - `\b([A-D])(?:\s*[.,!?:)]?\s*$)` with findall: the tail after the letter must be whitespace, at most one of the
 *    punctuation characters, whitespace, then the end ('$' may also sit before a final '\n', which \s* already
 *    covers). Punctuation is not whitespace, so the only candidate is the last non-blank character, or the one before
 *    a trailing punctuation mark; findall gives at most this one match.
 *  - `\b([A-D])(?:\s*[.,!?:)]\s)` with findall: every letter with a word boundary before it and whitespace, one
 *    punctuation character and one whitespace character after it. A match consumes only the letter, whitespace and
 *    punctuation, which contain no other letter, so findall's non-overlapping scan reports every such letter.
 *  - `(?:^|\s)([A-D])(?:\s*$)`: the last non-blank character, preceded by whitespace or the start of the text.
 *  - `\b([A-D])\b` with findall: every letter with a non-word character (or an end of the text) on both sides.
 * IGNORECASE makes [A-D] match a-d as well (no other code point lowercases to a-d), and the literal letters of the
 * anchors match their other case plus CPython's extra equivalences: 'i' ~ U+0130 and U+0131, 's' ~ U+017F,
 * 'k' ~ U+212A. Python's \s is str.isspace (the 29 code points below); \w is a letter or number category or '_'.
 * tools/make_answer_fixtures.py checks these character facts exhaustively against the running Python before it
 * writes the vectors.
 */
#include "c2c/kw_answer.h"

#include "common/kw_size.h"
#include "common/kw_status.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <utf8proc.h>

// ---------------------------------------------------------------------------------------------------------------
// Python character classes

/* str.isspace() and re's \s: general category Zs or bidirectional class WS, B or S. */
static int kw_answer_is_space(uint32_t c) {
    if (c <= 0x20) return c == 0x20 || (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x1f);
    if (c < 0x85) return 0;
    return c == 0x85 || c == 0xa0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 ||
           c == 0x202f || c == 0x205f || c == 0x3000;
}

/* re's \w for str patterns: str.isalnum() or '_'; isalnum is exactly the L* and N* categories. */
static int kw_answer_is_word(uint32_t c) {
    if (c < 0x80) return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') || c == '_';
    const utf8proc_category_t cat = utf8proc_category((utf8proc_int32_t)c);
    return (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
           (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO);
}

/* [A-D] under IGNORECASE. */
static int kw_answer_is_letter_ci(uint32_t c) {
    return (c >= 'A' && c <= 'D') || (c >= 'a' && c <= 'd');
}

static int kw_answer_is_upper_letter(uint32_t c) {
    return c >= 'A' && c <= 'D';
}

static int kw_answer_is_punct(uint32_t c) {
    return c == '.' || c == ',' || c == '!' || c == '?' || c == ':' || c == ')';
}

/* One ASCII pattern character against a text code point under re.IGNORECASE. */
static int kw_answer_char_eq_ci(char p, uint32_t c) {
    const uint32_t lp = (uint32_t)((p >= 'A' && p <= 'Z') ? p + 32 : p);
    if (c < 0x80) return ((c >= 'A' && c <= 'Z') ? c + 32 : c) == lp;
    switch (lp) {
    case 'i':
        return c == 0x130 || c == 0x131;
    case 's':
        return c == 0x17f;
    case 'k':
        return c == 0x212a;
    default:
        return 0;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// UTF-8 decoding

/* Strict UTF-8 to code points; *n receives the count. cps has room for len entries. */
static int kw_answer_decode(const unsigned char *s, size_t len, uint32_t *cps, size_t *n) {
    size_t i = 0, k = 0;
    while (i < len) {
        const uint32_t b0 = s[i];
        uint32_t c = 0;
        size_t extra = 0;
        uint32_t min = 0;
        if (b0 < 0x80) {
            cps[k++] = b0;
            ++i;
            continue;
        } else if ((b0 & 0xe0) == 0xc0) {
            c = b0 & 0x1f, extra = 1, min = 0x80;
        } else if ((b0 & 0xf0) == 0xe0) {
            c = b0 & 0x0f, extra = 2, min = 0x800;
        } else if ((b0 & 0xf8) == 0xf0) {
            c = b0 & 0x07, extra = 3, min = 0x10000;
        } else {
            KW_FAIL(KW_E_UTF8, "invalid UTF-8 lead byte 0x%02x at byte %zu", b0, i);
        }
        KW_RETURN_IF(len - i <= extra, KW_E_UTF8, "truncated UTF-8 sequence at byte %zu", i);
        for (size_t j = 1; j <= extra; ++j) {
            const uint32_t b = s[i + j];
            KW_RETURN_IF((b & 0xc0) != 0x80, KW_E_UTF8, "invalid UTF-8 continuation byte at byte %zu", i + j);
            c = c << 6 | (b & 0x3f);
        }
        KW_RETURN_IF(c < min, KW_E_UTF8, "overlong UTF-8 sequence at byte %zu", i);
        KW_RETURN_IF(c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff), KW_E_UTF8, "invalid code point U+%04X at byte %zu",
                     c, i);
        cps[k++] = c;
        i += extra + 1;
    }
    *n = k;
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// The steps of the reference

/* The anchor patterns, in the reference's order. Several are the same under IGNORECASE; they are kept so the order
 * and the list read like the original. */
static const char *const kw_answer_anchors[] = {
    "Answer:",
    "answer:",
    "ANSWER:",
    "Your answer:",
    "your answer:",
    "YOUR ANSWER:",
    "The answer is",
    "the answer is",
    "THE ANSWER IS",
    "Correct answer is",
    "correct answer is",
    "Correct answer is:",
    "correct answer is:",
    "Correct answer:",
    "correct answer:",
    "CORRECT ANSWER:",
    "Jibu lako:",
    "jibu lako:",
    "JIBU LAKO:",
    "Jibu:",
    "jibu:",
    "JIBU:",
    "Jibu sahihi:",
    "jibu sahihi:",
    "JIBU SAHIHI:",
    "Response:",
    "response:",
    "RESPONSE:",
    "Choice:",
    "choice:",
    "CHOICE:",
    "Option:",
    "option:",
    "OPTION:",
};

/* Leftmost case-insensitive occurrence of lit in t[0..n); returns its index or n when absent. */
static size_t kw_answer_find_ci(const uint32_t *t, size_t n, const char *lit) {
    const size_t m = strlen(lit);
    for (size_t i = 0; i + m <= n; ++i) {
        size_t j = 0;
        while (j < m && kw_answer_char_eq_ci(lit[j], t[i + j]))
            ++j;
        if (j == m) return i;
    }
    return n;
}

/* Step 1: the first anchor whose captured line holds an uppercase A-D; returns that letter or 0. */
static char kw_answer_step_anchors(const uint32_t *t, size_t n) {
    for (size_t a = 0; a < sizeof kw_answer_anchors / sizeof kw_answer_anchors[0]; ++a) {
        const size_t at = kw_answer_find_ci(t, n, kw_answer_anchors[a]);
        if (at == n) continue;
        size_t j = at + strlen(kw_answer_anchors[a]);
        while (j < n && kw_answer_is_space(t[j]))
            ++j;                           /* \s* (greedy, crosses newlines) */
        for (; j < n && t[j] != '\n'; ++j) /* (.*) stops at the first newline */
            if (kw_answer_is_upper_letter(t[j])) return (char)t[j];
    }
    return 0;
}

/* \b before position p, for a word character at p. */
static int kw_answer_boundary_before(const uint32_t *t, size_t p) {
    return p == 0 || !kw_answer_is_word(t[p - 1]);
}

/* Index of the last non-blank character (t is stripped, so n - 1 when n > 0). */
static size_t kw_answer_last_nonblank(const uint32_t *t, size_t n) {
    size_t e = n;
    while (e > 0 && kw_answer_is_space(t[e - 1]))
        --e;
    return e == 0 ? n : e - 1;
}

/* Pattern 2a: the single findall match of \b([A-D])(?:\s*[.,!?:)]?\s*$), or 0. */
static char kw_answer_standalone_end(const uint32_t *t, size_t n) {
    size_t p = kw_answer_last_nonblank(t, n);
    if (p == n) return 0;
    if (kw_answer_is_punct(t[p])) {
        while (p > 0 && kw_answer_is_space(t[p - 1]))
            --p;
        if (p == 0) return 0;
        --p;
    }
    if (kw_answer_is_letter_ci(t[p]) && kw_answer_boundary_before(t, p)) return (char)t[p];
    return 0;
}

/* Pattern 2b: the last findall match of \b([A-D])(?:\s*[.,!?:)]\s), or 0. */
static char kw_answer_standalone_punct(const uint32_t *t, size_t n) {
    char last = 0;
    for (size_t p = 0; p < n; ++p) {
        if (!kw_answer_is_letter_ci(t[p]) || !kw_answer_boundary_before(t, p)) continue;
        size_t j = p + 1;
        while (j < n && kw_answer_is_space(t[j]))
            ++j;
        if (j + 1 < n && kw_answer_is_punct(t[j]) && kw_answer_is_space(t[j + 1])) last = (char)t[p];
    }
    return last;
}

/* Pattern 2c: the single findall match of (?:^|\s)([A-D])(?:\s*$), or 0. */
static char kw_answer_standalone_alone(const uint32_t *t, size_t n) {
    const size_t p = kw_answer_last_nonblank(t, n);
    if (p == n || !kw_answer_is_letter_ci(t[p])) return 0;
    return (p == 0 || kw_answer_is_space(t[p - 1])) ? (char)t[p] : 0;
}

/* Step 3: the last findall match of \b([A-D])\b, or 0. */
static char kw_answer_isolated_letter(const uint32_t *t, size_t n) {
    char last = 0;
    for (size_t p = 0; p < n; ++p) {
        if (kw_answer_is_letter_ci(t[p]) && kw_answer_boundary_before(t, p) &&
            (p + 1 == n || !kw_answer_is_word(t[p + 1])))
            last = (char)t[p];
    }
    return last;
}

/* Case-sensitive substring test of an ASCII word in t[0..n). */
static int kw_answer_contains(const uint32_t *t, size_t n, const char *word) {
    const size_t m = strlen(word);
    for (size_t i = 0; i + m <= n; ++i) {
        size_t j = 0;
        while (j < m && t[i + j] == (uint32_t)(unsigned char)word[j])
            ++j;
        if (j == m) return 1;
    }
    return 0;
}

/* has_math: any(indicator in text) with the reference's indicator list (x^, y^, z^ are implied by ^). */
static int kw_answer_has_math(const uint32_t *t, size_t n) {
    static const char *const ind[] = {"+", "-", "*", "/", "=", "^", "mod", "sqrt", "sin", "cos", "tan"};
    for (size_t i = 0; i < sizeof ind / sizeof ind[0]; ++i)
        if (kw_answer_contains(t, n, ind[i])) return 1;
    return 0;
}

/* has_answer_indicators: any(phrase in text.lower()). str.lower() maps ASCII A-Z to a-z, U+0130 to "i\u0307" and
 * U+212A to 'k'; every other code point lowercases to non-ASCII code points only, and the phrases are ASCII, so those
 * code points only need to stay non-ASCII (they are kept as they are). lower has room for 2 * n code points. */
static int kw_answer_has_indicator(const uint32_t *t, size_t n, uint32_t *lower) {
    static const char *const phrases[] = {"jibu", "answer", "choice", "option", "response", "correct", "sahihi"};
    size_t m = 0;
    for (size_t i = 0; i < n; ++i) {
        const uint32_t c = t[i];
        if (c >= 'A' && c <= 'Z') {
            lower[m++] = c + 32;
        } else if (c == 0x130) {
            lower[m++] = 'i';
            lower[m++] = 0x307;
        } else if (c == 0x212a) {
            lower[m++] = 'k';
        } else {
            lower[m++] = c;
        }
    }
    for (size_t i = 0; i < sizeof phrases / sizeof phrases[0]; ++i)
        if (kw_answer_contains(lower, m, phrases[i])) return 1;
    return 0;
}

static char kw_answer_upper(char c) {
    return (c >= 'a' && c <= 'd') ? (char)(c - 32) : c;
}

int kw_answer_extract(const char *text, size_t len, char *letter) {
    KW_RETURN_IF(!letter || (len && !text), KW_E_INVALID_ARG, "kw_answer_extract: NULL argument");
    *letter = 0;
    if (len == 0) return 0;
    size_t bytes = 0;
    KW_RETURN_IF(kw_size_mul(len, 3 * sizeof(uint32_t), &bytes) < 0, KW_E_OVERFLOW, "answer text too long");
    uint32_t *buf = malloc(bytes); /* len code points, then 2 * len for the lowered copy */
    KW_RETURN_IF(!buf, KW_E_NOMEM, "answer text of %zu bytes", len);
    size_t n = 0;
    const int rc = kw_answer_decode((const unsigned char *)text, len, buf, &n);
    if (rc < 0) {
        free(buf);
        return rc;
    }

    /* text = text.strip() */
    size_t lo = 0, hi = n;
    while (lo < hi && kw_answer_is_space(buf[lo]))
        ++lo;
    while (hi > lo && kw_answer_is_space(buf[hi - 1]))
        --hi;
    const uint32_t *t = buf + lo;
    n = hi - lo;

    char out = 0;
    if (n == 0) goto done;
    if ((out = kw_answer_step_anchors(t, n)) != 0) goto done;

    const int has_math = kw_answer_has_math(t, n);
    const int has_ind = kw_answer_has_indicator(t, n, buf + len);
    const int math_only = has_math && !has_ind;
    char (*const standalone[3])(const uint32_t *, size_t) = {kw_answer_standalone_end, kw_answer_standalone_punct,
                                                             kw_answer_standalone_alone};
    for (size_t s = 0; s < 3; ++s) {
        const char m = standalone[s](t, n);
        if (m && !math_only) {
            out = kw_answer_upper(m);
            goto done;
        }
    }
    const char iso = kw_answer_isolated_letter(t, n);
    if (iso) {
        out = math_only ? 0 : kw_answer_upper(iso);
        goto done;
    }
    for (size_t p = n; p > 0; --p) {
        if (kw_answer_is_upper_letter(t[p - 1])) {
            out = (char)t[p - 1];
            break;
        }
    }
done:
    free(buf);
    *letter = out;
    return 0;
}

/* kw_chat.c: the Qwen3, Qwen2.5-Instruct, Llama-3.2-Instruct, Gemma 3 and SmolLM2-Instruct chat templates, written
 * out in C.
 *
 * Each renderer follows its Jinja template statement by statement (the template text is kept in
 * tools/make_chat_fixtures.py, which renders the reference outputs with transformers' apply_chat_template), so the
 * output is byte-identical for messages with roles system/user/assistant. What it is not: a Jinja engine. The tool
 * branches (tools, tool calls, "tool"/"ipython" roles) are refused with KW_E_TEMPLATE, as are other roles, and so is
 * an empty message list, on which all five templates raise (transformers refuses it before rendering). Gemma 3's
 * multimodal branches (content as a list of text and image items) do not arise: a message's content is a string
 * here. */
#include "model/kw_chat.h"

#include "common/kw_buf.h"
#include "common/kw_status.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

// ---------------------------------------------------------------------------------------------------------------
// String building and the few Python string methods the templates use

/* A view of part of a string: Python slicing without copies. */
typedef struct kw_chat_str {
    const char *p;
    size_t n;
} kw_chat_str;

static kw_chat_str kw_chat_view(const char *s) {
    return (kw_chat_str){s, strlen(s)};
}

static int kw_chat_put_str(kw_buf *b, kw_chat_str s) {
    return kw_buf_append(b, s.p, s.n);
}

/* One ChatML turn as the Qwen templates write it: "<|im_start|>" role "\n" content "<|im_end|>\n". */
static int kw_chat_im_turn(kw_buf *b, const char *role, const char *content) {
    KW_FORWARD(kw_buf_append_str(b, "<|im_start|>"));
    KW_FORWARD(kw_buf_append_str(b, role));
    KW_FORWARD(kw_buf_append_str(b, "\n"));
    KW_FORWARD(kw_buf_append_str(b, content));
    return kw_buf_append_str(b, "<|im_end|>\n");
}

/* str.lstrip('\n') / str.rstrip('\n'). */
static kw_chat_str kw_chat_lstrip_nl(kw_chat_str s) {
    while (s.n > 0 && s.p[0] == '\n') {
        ++s.p;
        --s.n;
    }
    return s;
}

static kw_chat_str kw_chat_rstrip_nl(kw_chat_str s) {
    while (s.n > 0 && s.p[s.n - 1] == '\n')
        --s.n;
    return s;
}

/* First occurrence of needle in s at or after from, or SIZE_MAX. */
static size_t kw_chat_find(kw_chat_str s, const char *needle, size_t from) {
    const size_t k = strlen(needle);
    for (size_t i = from; i + k <= s.n; ++i)
        if (memcmp(s.p + i, needle, k) == 0) return i;
    return SIZE_MAX;
}

/* Last occurrence of needle in s, or SIZE_MAX. */
static size_t kw_chat_rfind(kw_chat_str s, const char *needle) {
    const size_t k = strlen(needle);
    if (k > s.n) return SIZE_MAX;
    for (size_t i = s.n - k + 1; i-- > 0;)
        if (memcmp(s.p + i, needle, k) == 0) return i;
    return SIZE_MAX;
}

static bool kw_chat_starts(kw_chat_str s, const char *prefix) {
    const size_t k = strlen(prefix);
    return s.n >= k && memcmp(s.p, prefix, k) == 0;
}

static bool kw_chat_ends(kw_chat_str s, const char *suffix) {
    const size_t k = strlen(suffix);
    return s.n >= k && memcmp(s.p + s.n - k, suffix, k) == 0;
}

/* Length of the Python whitespace character (str.isspace) at s[0..n), or 0. The set is fixed: bidi classes WS, B, S
 * and category Zs (U+0009-000D, U+001C-0020, U+0085, U+00A0, U+1680, U+2000-200A, U+2028-2029, U+202F, U+205F,
 * U+3000). */
static size_t kw_chat_py_space(const unsigned char *s, size_t n) {
    if (n >= 1 && ((s[0] >= 0x09 && s[0] <= 0x0D) || (s[0] >= 0x1C && s[0] <= 0x20))) return 1;
    if (n >= 2 && s[0] == 0xC2 && (s[1] == 0x85 || s[1] == 0xA0)) return 2;
    if (n >= 3 && s[0] == 0xE1 && s[1] == 0x9A && s[2] == 0x80) return 3; /* U+1680 */
    if (n >= 3 && s[0] == 0xE2 && s[1] == 0x80 &&
        ((s[2] >= 0x80 && s[2] <= 0x8A) || s[2] == 0xA8 || s[2] == 0xA9 || s[2] == 0xAF))
        return 3;                                                         /* U+2000-200A, U+2028, U+2029, U+202F */
    if (n >= 3 && s[0] == 0xE2 && s[1] == 0x81 && s[2] == 0x9F) return 3; /* U+205F */
    if (n >= 3 && s[0] == 0xE3 && s[1] == 0x80 && s[2] == 0x80) return 3; /* U+3000 */
    return 0;
}

/* Jinja's trim filter: Python str.strip() with no argument. */
static kw_chat_str kw_chat_trim(kw_chat_str s) {
    const unsigned char *u = (const unsigned char *)s.p;
    size_t a = 0, b = s.n, k;
    while (a < b && (k = kw_chat_py_space(u + a, b - a)) > 0)
        a += k;
    /* From the right: step back over one whitespace character at a time (1, 2 or 3 bytes). */
    for (;;) {
        if (b > a && kw_chat_py_space(u + b - 1, 1) == 1) {
            --b;
        } else if (b >= a + 2 && kw_chat_py_space(u + b - 2, 2) == 2) {
            b -= 2;
        } else if (b >= a + 3 && kw_chat_py_space(u + b - 3, 3) == 3) {
            b -= 3;
        } else {
            break;
        }
    }
    return (kw_chat_str){s.p + a, b - a};
}

// ---------------------------------------------------------------------------------------------------------------
// Templates

static int kw_chat_check(const kw_chat_message *messages, size_t n) {
    KW_RETURN_IF(n == 0, KW_E_TEMPLATE, "the chat template needs at least one message");
    for (size_t i = 0; i < n; ++i) {
        KW_RETURN_IF(!messages[i].role || !messages[i].content, KW_E_INVALID_ARG, "message %zu has a NULL field", i);
        const char *r = messages[i].role;
        KW_RETURN_IF(strcmp(r, "system") != 0 && strcmp(r, "user") != 0 && strcmp(r, "assistant") != 0, KW_E_TEMPLATE,
                     "message %zu: role \"%.32s\" is not supported (system, user or assistant)", i, r);
    }
    return 0;
}

/* Qwen3 (tokenizer_config.json of Qwen/Qwen3-*), tools absent. */
static int kw_chat_qwen3(kw_buf *b, const kw_chat_message *m, size_t n, const kw_chat_options *o) {
    size_t first = 0;
    if (strcmp(m[0].role, "system") == 0) {
        KW_FORWARD(kw_chat_im_turn(b, "system", m[0].content));
        first = 1;
    }
    /* ns.last_query_index: the last user message that is not a wrapped tool response (default: the last index). */
    size_t last_query = n - 1;
    for (size_t i = n; i-- > 0;) {
        const kw_chat_str c = kw_chat_view(m[i].content);
        if (strcmp(m[i].role, "user") == 0 &&
            !(kw_chat_starts(c, "<tool_response>") && kw_chat_ends(c, "</tool_response>"))) {
            last_query = i;
            break;
        }
    }
    for (size_t i = first; i < n; ++i) {
        if (strcmp(m[i].role, "assistant") != 0) { /* user, or system not first */
            KW_FORWARD(kw_chat_im_turn(b, m[i].role, m[i].content));
            continue;
        }
        kw_chat_str content = kw_chat_view(m[i].content), reasoning = {"", 0};
        const size_t close_last = kw_chat_rfind(content, "</think>");
        if (close_last != SIZE_MAX) {
            const kw_chat_str whole = content;
            /* content.split('</think>')[-1].lstrip('\n') */
            content = kw_chat_lstrip_nl((kw_chat_str){whole.p + close_last + 8, whole.n - close_last - 8});
            /* content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') */
            kw_chat_str head = {whole.p, kw_chat_find(whole, "</think>", 0)};
            head = kw_chat_rstrip_nl(head);
            const size_t open_last = kw_chat_rfind(head, "<think>");
            if (open_last != SIZE_MAX) head = (kw_chat_str){head.p + open_last + 7, head.n - open_last - 7};
            reasoning = kw_chat_lstrip_nl(head);
        }
        const bool is_last = i + 1 == n;
        if (i > last_query && (is_last || reasoning.n > 0)) {
            KW_FORWARD(kw_buf_append_str(b, "<|im_start|>assistant\n<think>\n"));
            KW_FORWARD(kw_chat_put_str(b, kw_chat_rstrip_nl(kw_chat_lstrip_nl(reasoning))));
            KW_FORWARD(kw_buf_append_str(b, "\n</think>\n\n"));
            KW_FORWARD(kw_chat_put_str(b, kw_chat_lstrip_nl(content)));
        } else {
            KW_FORWARD(kw_buf_append_str(b, "<|im_start|>assistant\n"));
            KW_FORWARD(kw_chat_put_str(b, content));
        }
        KW_FORWARD(kw_buf_append_str(b, "<|im_end|>\n"));
    }
    if (o->add_generation_prompt) {
        KW_FORWARD(kw_buf_append_str(b, "<|im_start|>assistant\n"));
        if (!o->enable_thinking) KW_FORWARD(kw_buf_append_str(b, "<think>\n\n</think>\n\n"));
    }
    return 0;
}

/* Qwen2.5-Instruct (tokenizer_config.json of Qwen/Qwen2.5-*-Instruct), tools absent and no tool_calls. */
static int kw_chat_qwen25(kw_buf *b, const kw_chat_message *m, size_t n, const kw_chat_options *o) {
    size_t first = 0;
    if (strcmp(m[0].role, "system") == 0) {
        KW_FORWARD(kw_chat_im_turn(b, "system", m[0].content));
        first = 1;
    } else {
        KW_FORWARD(kw_buf_append_str(
            b, "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"));
    }
    for (size_t i = first; i < n; ++i)
        KW_FORWARD(kw_chat_im_turn(b, m[i].role, m[i].content));
    if (o->add_generation_prompt) KW_FORWARD(kw_buf_append_str(b, "<|im_start|>assistant\n"));
    return 0;
}

/* Llama-3.2-Instruct (tokenizer_config.json of meta-llama/Llama-3.2-*-Instruct), tools absent. */
static int kw_chat_llama32(kw_buf *b, const kw_chat_message *m, size_t n, const kw_chat_options *o) {
    KW_RETURN_IF(!o->date_string, KW_E_INVALID_ARG, "the Llama-3.2 template needs options.date_string");
    kw_chat_str system = {"", 0};
    size_t first = 0;
    if (strcmp(m[0].role, "system") == 0) {
        system = kw_chat_trim(kw_chat_view(m[0].content));
        first = 1;
    }
    KW_FORWARD(kw_buf_append_str(b, "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                                    "Cutting Knowledge Date: December 2023\nToday Date: "));
    KW_FORWARD(kw_buf_append_str(b, o->date_string));
    KW_FORWARD(kw_buf_append_str(b, "\n\n"));
    KW_FORWARD(kw_chat_put_str(b, system));
    KW_FORWARD(kw_buf_append_str(b, "<|eot_id|>"));
    for (size_t i = first; i < n; ++i) {
        KW_FORWARD(kw_buf_append_str(b, "<|start_header_id|>"));
        KW_FORWARD(kw_buf_append_str(b, m[i].role));
        KW_FORWARD(kw_buf_append_str(b, "<|end_header_id|>\n\n"));
        KW_FORWARD(kw_chat_put_str(b, kw_chat_trim(kw_chat_view(m[i].content))));
        KW_FORWARD(kw_buf_append_str(b, "<|eot_id|>"));
    }
    if (o->add_generation_prompt) KW_FORWARD(kw_buf_append_str(b, "<|start_header_id|>assistant<|end_header_id|>\n\n"));
    return 0;
}

/* Gemma 3 (the chat_template of google/gemma-3-*'s tokenizer_config.json, models/tokenizers/gemma3), string
 * contents. A leading system message is not a turn: its text plus "\n\n" opens the first turn, untrimmed. The other
 * messages must alternate user (even positions) and anything else (odd positions), else the template raises;
 * assistant turns are written "model", other roles as named. Contents are trimmed (Jinja's trim). */
static int kw_chat_gemma3(kw_buf *b, const kw_chat_message *m, size_t n, const kw_chat_options *o) {
    size_t first = 0;
    kw_chat_str prefix = {"", 0};
    if (strcmp(m[0].role, "system") == 0) {
        prefix = kw_chat_view(m[0].content);
        first = 1;
    }
    KW_FORWARD(kw_buf_append_str(b, "<bos>"));
    for (size_t i = first; i < n; ++i) {
        const bool user = strcmp(m[i].role, "user") == 0;
        KW_RETURN_IF(user != ((i - first) % 2 == 0), KW_E_TEMPLATE,
                     "Conversation roles must alternate user/assistant/user/assistant/... (message %zu is %s)", i,
                     m[i].role);
        KW_FORWARD(kw_buf_append_str(b, "<start_of_turn>"));
        KW_FORWARD(kw_buf_append_str(b, strcmp(m[i].role, "assistant") == 0 ? "model" : m[i].role));
        KW_FORWARD(kw_buf_append_str(b, "\n"));
        if (i == first && first == 1) {
            KW_FORWARD(kw_chat_put_str(b, prefix));
            KW_FORWARD(kw_buf_append_str(b, "\n\n"));
        }
        KW_FORWARD(kw_chat_put_str(b, kw_chat_trim(kw_chat_view(m[i].content))));
        KW_FORWARD(kw_buf_append_str(b, "<end_of_turn>\n"));
    }
    if (o->add_generation_prompt) KW_FORWARD(kw_buf_append_str(b, "<start_of_turn>model\n"));
    return 0;
}

/* SmolLM2-Instruct (tokenizer.chat_template of HuggingFaceTB/SmolLM2-*-Instruct, kw_chat_smollm2_template below):
 * ChatML turns, and before the first one, when it is not a system message, the default system turn. */
static int kw_chat_smollm2(kw_buf *b, const kw_chat_message *m, size_t n, const kw_chat_options *o) {
    for (size_t i = 0; i < n; ++i) {
        if (i == 0 && strcmp(m[0].role, "system") != 0)
            KW_FORWARD(
                kw_chat_im_turn(b, "system", "You are a helpful AI assistant named SmolLM, trained by Hugging Face"));
        KW_FORWARD(kw_chat_im_turn(b, m[i].role, m[i].content));
    }
    if (o->add_generation_prompt) KW_FORWARD(kw_buf_append_str(b, "<|im_start|>assistant\n"));
    return 0;
}

/* The Jinja text of the templates above, as models carry them, for kw_chat_family_from_template. */
static const char kw_chat_smollm2_template[] =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' "
    "+ message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt "
    "%}{{ '<|im_start|>assistant\n' }}{% endif %}";

int kw_chat_family_from_template(const char *tmpl, size_t n, enum kw_chat_family *out) {
    KW_RETURN_IF(!tmpl || !out, KW_E_INVALID_ARG, "kw_chat_family_from_template: NULL argument");
    if (n == sizeof kw_chat_smollm2_template - 1 && memcmp(tmpl, kw_chat_smollm2_template, n) == 0) {
        *out = KW_CHAT_SMOLLM2;
        return 0;
    }
    KW_FAIL(KW_E_NOT_FOUND, "the chat template (%zu bytes) is not one kvwire renders", n);
}

int kw_chat_render(enum kw_chat_family family, const kw_chat_message *messages, size_t n_messages,
                   const kw_chat_options *options, char **out, size_t *out_len) {
    KW_RETURN_IF(!out || !out_len || (!messages && n_messages), KW_E_INVALID_ARG, "kw_chat_render: NULL argument");
    const kw_chat_options defaults = {.add_generation_prompt = 0, .enable_thinking = 1, .date_string = NULL};
    const kw_chat_options *o = options ? options : &defaults;
    KW_FORWARD(kw_chat_check(messages, n_messages));
    kw_buf b = KW_BUF_INIT;
    int rc;
    switch (family) {
    case KW_CHAT_QWEN3:
        rc = kw_chat_qwen3(&b, messages, n_messages, o);
        break;
    case KW_CHAT_QWEN25:
        rc = kw_chat_qwen25(&b, messages, n_messages, o);
        break;
    case KW_CHAT_LLAMA32:
        rc = kw_chat_llama32(&b, messages, n_messages, o);
        break;
    case KW_CHAT_GEMMA3:
        rc = kw_chat_gemma3(&b, messages, n_messages, o);
        break;
    case KW_CHAT_SMOLLM2:
        rc = kw_chat_smollm2(&b, messages, n_messages, o);
        break;
    default:
        rc = kw_error_set(KW_E_INVALID_ARG, "unknown chat family %d", (int)family);
        break;
    }
    if (rc < 0) {
        kw_buf_free(&b);
        return rc;
    }
    return kw_buf_take(&b, out, out_len);
}

const char *kw_chat_family_name(enum kw_chat_family family) {
    switch (family) {
    case KW_CHAT_QWEN3:
        return "qwen3";
    case KW_CHAT_QWEN25:
        return "qwen2.5";
    case KW_CHAT_LLAMA32:
        return "llama3.2";
    case KW_CHAT_GEMMA3:
        return "gemma3";
    case KW_CHAT_SMOLLM2:
        return "smollm2";
    }
    return "unknown";
}

int kw_chat_family_parse(const char *name, enum kw_chat_family *out) {
    KW_RETURN_IF(!name || !out, KW_E_INVALID_ARG, "kw_chat_family_parse: NULL argument");
    static const enum kw_chat_family all[] = {KW_CHAT_QWEN3, KW_CHAT_QWEN25, KW_CHAT_LLAMA32, KW_CHAT_GEMMA3,
                                              KW_CHAT_SMOLLM2};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; ++i)
        if (strcmp(name, kw_chat_family_name(all[i])) == 0) {
            *out = all[i];
            return 0;
        }
    KW_FAIL(KW_E_INVALID_ARG, "unknown chat template family \"%.40s\" (qwen3, qwen2.5, llama3.2, gemma3 or smollm2)",
            name);
}

int kw_chat_family_for_arch(enum kw_arch arch, enum kw_chat_family *out) {
    KW_RETURN_IF(!out, KW_E_INVALID_ARG, "kw_chat_family_for_arch: NULL argument");
    switch (arch) {
    case KW_ARCH_QWEN3:
        *out = KW_CHAT_QWEN3;
        return 0;
    case KW_ARCH_QWEN2:
        *out = KW_CHAT_QWEN25;
        return 0;
    case KW_ARCH_LLAMA:
        *out = KW_CHAT_LLAMA32;
        return 0;
    case KW_ARCH_GEMMA3:
        *out = KW_CHAT_GEMMA3;
        return 0;
    }
    KW_FAIL(KW_E_UNSUPPORTED, "no chat template for %s", kw_arch_name(arch));
}

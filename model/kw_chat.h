/* kw_chat.h: chat templates written in C, one per model family, byte-identical to
 * transformers.apply_chat_template(messages, tokenize=False, add_generation_prompt=..., enable_thinking=...) with the
 * real templates of Qwen3, Qwen2.5-Instruct, Llama-3.2-Instruct, Gemma 3 and SmolLM2-Instruct. No template engine. */
#ifndef KW_CHAT_H
#define KW_CHAT_H

#include <stddef.h>

#include "model/kw_config.h"

enum kw_chat_family {
    KW_CHAT_QWEN3 = 0,   /* Qwen3: no default system prompt; enable_thinking=false adds the empty think block */
    KW_CHAT_QWEN25 = 1,  /* Qwen2.5-Instruct: default system prompt "You are Qwen, created by Alibaba Cloud. ..." */
    KW_CHAT_LLAMA32 = 2, /* Llama-3.2-Instruct: system header with "Cutting Knowledge Date" and "Today Date" */
    KW_CHAT_GEMMA3 = 3,  /* Gemma 3: <bos>, <start_of_turn>user / model turns, the system text prefixed to the first
                            turn; roles must alternate user, assistant, ... */
    KW_CHAT_SMOLLM2 =
        4, /* SmolLM2-Instruct: ChatML, default system prompt "You are a helpful AI assistant named ..." */
};

typedef struct kw_chat_message {
    const char *role;    /* "system", "user" or "assistant" */
    const char *content; /* UTF-8, NUL-terminated */
} kw_chat_message;

typedef struct kw_chat_options {
    int add_generation_prompt; /* append the assistant header */
    int enable_thinking;       /* Qwen3 only; 0 renders the empty <think></think> block */
    const char *date_string;   /* Llama-3.2 only: "Today Date" text, e.g. "23 Nov 2026"; an explicit input */
} kw_chat_options;

/* Renders messages into a new NUL-terminated string (*out, owned by the caller, free()). KW_E_TEMPLATE for inputs
 * the real template rejects (an empty message list) and for what the C renderers do not implement: roles other than
 * system/user/assistant (the templates' tool branches). KW_E_INVALID_ARG for a NULL role or content, an unknown
 * family, or Llama-3.2 without options->date_string. options NULL = transformers' defaults: no generation prompt,
 * enable_thinking not passed (same as 1), no date. */
int kw_chat_render(enum kw_chat_family family, const kw_chat_message *messages, size_t n_messages,
                   const kw_chat_options *options, char **out, size_t *out_len);

/* The family whose template is exactly the Jinja text tmpl[0..n) (as a model carries it: a GGUF file's
 * tokenizer.chat_template). KW_E_NOT_FOUND when it is none of the templates written here. */
int kw_chat_family_from_template(const char *tmpl, size_t n, enum kw_chat_family *out);

/* The template to render a model's prompts with: for a GGUF file, the family whose template the file carries
 * (tokenizer.chat_template; KW_E_UNSUPPORTED for a template kvwire does not render); for an HF folder or a GGUF file
 * without a template, the family of its architecture (kw_chat_family_for_arch). */
int kw_chat_family_for_model(const char *model_path, enum kw_arch arch, enum kw_chat_family *out);

/* "qwen3", "qwen2.5", "llama3.2", "gemma3", "smollm2" <-> enum; parse returns KW_E_INVALID_ARG for unknown names. */
const char *kw_chat_family_name(enum kw_chat_family family);
int kw_chat_family_parse(const char *name, enum kw_chat_family *out);

/* The chat template of an architecture: Qwen3 -> qwen3, Qwen2 -> qwen2.5 (Instruct), Llama -> llama3.2 (Instruct),
 * Gemma3 -> gemma3. KW_E_UNSUPPORTED for an architecture without one. */
int kw_chat_family_for_arch(enum kw_arch arch, enum kw_chat_family *out);

#endif /* KW_CHAT_H */

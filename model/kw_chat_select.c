/* kw_chat_select.c: which C chat template renders a model's prompts (kw_chat_family_for_model): the one a GGUF file
 * names through its tokenizer.chat_template text, else the one of the model's architecture. Not here: the
 * templates themselves (kw_chat.c). */
#include "model/kw_chat.h"

#include "common/kw_file.h"
#include "common/kw_status.h"
#include "model/kw_gguf.h"

int kw_chat_family_for_model(const char *model_path, enum kw_arch arch, enum kw_chat_family *out) {
    KW_RETURN_IF(!model_path || !out, KW_E_INVALID_ARG, "kw_chat_family_for_model: NULL argument");
    if (!kw_path_is_file(model_path) || !kw_gguf_is_gguf(model_path)) return kw_chat_family_for_arch(arch, out);
    kw_gguf *g = NULL;
    KW_FORWARD(kw_gguf_open(model_path, &g));
    const char *tmpl = NULL;
    size_t n = 0;
    int rc = kw_gguf_get_str(g, "tokenizer.chat_template", &tmpl, &n);
    if (rc == KW_E_NOT_FOUND) {
        rc = kw_chat_family_for_arch(arch, out);
    } else if (rc == 0 && kw_chat_family_from_template(tmpl, n, out) < 0) {
        rc = kw_error_set(KW_E_UNSUPPORTED,
                          "%s: its chat template (tokenizer.chat_template, %zu bytes) is not one "
                          "kvwire renders (qwen3, qwen2.5, llama3.2, gemma3, smollm2)",
                          model_path, n);
    }
    kw_gguf_close(g);
    return rc;
}

/* cmd_tokenize.c: `kvwire tokenize --tokenizer DIR [--decode] [--skip-special] [--bos | --chat]`.
 *
 * Encode mode reads one JSON string per line on stdin and writes one JSON array of ids per line (no BOS/EOS); with
 * --pieces it writes the pre-tokenized pieces instead (a debugging aid, compared with HF by the fixture script).
 * --bos and --chat give a model's prompt ids as `kvwire kvstats` and `kvwire generate` build them: BOS first where
 * the model's raw-text prompts have it (kw_config_prepend_bos), or the string as one user turn of the model's chat
 * template with the generation prompt (kvstats --chat: the template writes BOS itself); both read the model's
 * configuration from the --tokenizer path, which must then be a model folder or a GGUF file.
 * Decode mode reads one JSON array of ids per line and writes one JSON string per line. The first bad line stops the
 * run with an error naming its number and a non-zero exit status; lines before it have been written.
 * Input strings are decoded with kw_json_decode_string, so texts holding U+0000 survive (cJSON strings end at the
 * first NUL). */
#include "kw_commands.h"

#include "common/kw_json.h"
#include "common/kw_status.h"
#include "model/kw_chat.h"
#include "model/kw_config.h"
#include "model/kw_tokenizer.h"
#include "model/kw_weights.h"
#include "tools/kw_cli.h"
#include "tools/kw_kvstats.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char kw_cmd_tokenize_summary[] =
    "encode JSON strings to token ids (or --decode ids) with a tokenizer.json or a GGUF file's tokenizer";

static void kw_tokenize_usage(FILE *f) {
    fprintf(f, "usage: kvwire tokenize --tokenizer DIR|FILE [--decode] [--skip-special] [--bos | --chat]\n"
               "  encode: stdin has one JSON string per line; stdout gets one JSON array of ids per line (no BOS)\n"
               "  --bos: prepend BOS where the model's raw-text prompts start with it (as kvwire generate does)\n"
               "  --chat: encode each string as one user turn of the model's chat template, generation prompt\n"
               "          appended (as kvwire kvstats --chat); --bos and --chat need a model folder or GGUF file\n"
               "  --decode: stdin has one JSON array of ids per line; stdout gets one JSON string per line\n"
               "  --skip-special: with --decode, drop special added tokens\n"
               "  --pieces: instead of ids, write the pre-tokenized pieces (normalized text) as a JSON array\n");
}

/* What every line is run with (the kw_cli_each_line user pointer). Output goes to stdout. */
typedef struct kw_tokenize_run {
    const kw_tokenizer *tok;
    int skip_special;
    const kw_model_config *cfg; /* --bos or --chat: the model's configuration; NULL: the text's ids alone */
    int chat;                   /* render the text as a user turn of family's template first */
    enum kw_chat_family family;
} kw_tokenize_run;

static int kw_tokenize_encode_line(void *user, const char *line, size_t len) {
    const kw_tokenize_run *r = user;
    FILE *out = stdout;
    int rc = 0;
    int32_t *ids = NULL;
    size_t n = 0, text_len = 0;
    char *text = NULL;
    KW_CHECK(kw_json_decode_string(line, len, &text, &text_len));
    KW_CHECK(kw_kvstats_prompt_ids(r->cfg, r->tok, r->chat, r->family, text, text_len, &ids, &n));
    fputc('[', out);
    for (size_t i = 0; i < n; ++i)
        fprintf(out, i ? ",%d" : "%d", ids[i]);
    fputs("]\n", out);
out:
    free(ids);
    free(text);
    return rc;
}

/* --pieces: the pre-tokenized pieces (normalized text) as a JSON array of strings. */
static int kw_tokenize_pieces_line(void *user, const char *line, size_t len) {
    const kw_tokenizer *tok = ((const kw_tokenize_run *)user)->tok;
    FILE *out = stdout;
    int rc = 0;
    size_t text_len = 0, norm_len = 0, n = 0, json_len = 0, json_cap = 0;
    char *norm = NULL, *json = NULL;
    size_t *bounds = NULL;
    char *text = NULL;
    KW_CHECK(kw_json_decode_string(line, len, &text, &text_len));
    KW_CHECK(kw_tokenizer_pre_tokenize(tok, text, text_len, &norm, &norm_len, &bounds, &n));
    fputc('[', out);
    for (size_t i = 0; i < n; ++i) {
        json_len = 0;
        KW_CHECK(kw_json_append_string(&json, &json_len, &json_cap, norm + bounds[2 * i],
                                       bounds[2 * i + 1] - bounds[2 * i]));
        if (i) fputc(',', out);
        fwrite(json, 1, json_len, out);
    }
    fputs("]\n", out);
out:
    free(json);
    free(bounds);
    free(norm);
    free(text);
    return rc;
}

static int kw_tokenize_decode_line(void *user, const char *line, size_t len) {
    const kw_tokenize_run *r = user;
    FILE *out = stdout;
    int rc = 0;
    cJSON *root = NULL;
    int32_t *ids = NULL;
    char *text = NULL, *json = NULL;
    size_t text_len = 0, json_len = 0, json_cap = 0;
    KW_CHECK(kw_json_parse(line, len, &root));
    KW_CHECK_IF(!cJSON_IsArray(root), KW_E_PARSE, "expected a JSON array of token ids");
    const int n = cJSON_GetArraySize(root);
    ids = malloc(((size_t)n + 1) * sizeof *ids);
    KW_CHECK_IF(!ids, KW_E_NOMEM, "out of memory");
    int k = 0;
    for (const cJSON *it = root->child; it; it = it->next, ++k) {
        int64_t v;
        KW_CHECK_IF(kw_json_to_i64(it, INT32_MIN, INT32_MAX, &v) < 0, KW_E_PARSE,
                    "element %d of the array is not a 32-bit integer", k);
        ids[k] = (int32_t)v;
    }
    KW_CHECK(kw_tokenizer_decode(r->tok, ids, (size_t)n, r->skip_special, &text, &text_len));
    KW_CHECK(kw_json_append_string(&json, &json_len, &json_cap, text, text_len));
    fwrite(json, 1, json_len, out);
    fputc('\n', out);
out:
    free(json);
    free(text);
    free(ids);
    cJSON_Delete(root);
    return rc;
}

int kw_cmd_tokenize(int argc, char **argv) {
    const char *dir = NULL;
    int decode = 0, skip_special = 0, pieces = 0, bos = 0, chat = 0;
    const kw_cli_option opts[] = {
        KW_CLI_STR_REQUIRED("--tokenizer", &dir),
        KW_CLI_FLAG("--decode", &decode),
        KW_CLI_FLAG("--pieces", &pieces),
        KW_CLI_FLAG("--skip-special", &skip_special),
        KW_CLI_FLAG("--bos", &bos),
        KW_CLI_FLAG("--chat", &chat),
    };
    const int st = KW_CLI_PARSE("kvwire tokenize", argc, argv, opts, kw_tokenize_usage);
    if (st != KW_CLI_RUN) return st;
    if (pieces && decode) {
        fprintf(stderr, "kvwire tokenize: --pieces and --decode exclude each other\n");
        return 2;
    }
    if (skip_special && !decode) {
        fprintf(stderr, "kvwire tokenize: --skip-special only applies to --decode\n");
        return 2;
    }
    if ((bos || chat) && (decode || pieces || (bos && chat))) {
        fprintf(stderr, "kvwire tokenize: --bos and --chat exclude each other, --decode and --pieces\n");
        return 2;
    }
    kw_tokenizer *tok = NULL;
    kw_weights *model = NULL; /* --bos, --chat: the configuration's owner */
    kw_tokenize_run run = {.skip_special = skip_special, .chat = chat};
    int rc = kw_tokenizer_load(dir, &tok);
    if (rc == 0 && (bos || chat)) rc = kw_weights_open(dir, NULL, &model);
    if (rc == 0 && model) run.cfg = kw_weights_config(model);
    if (rc == 0 && chat) rc = kw_chat_family_for_model(dir, run.cfg->arch, &run.family);
    if (rc < 0) {
        fprintf(stderr, "kvwire tokenize: %s: %s\n", kw_status_name(rc), kw_error_detail());
        kw_weights_close(model);
        kw_tokenizer_free(tok);
        return 1;
    }
    run.tok = tok;
    const int status = kw_cli_each_line("kvwire tokenize", stdin,
                                        decode   ? kw_tokenize_decode_line
                                        : pieces ? kw_tokenize_pieces_line
                                                 : kw_tokenize_encode_line,
                                        &run);
    kw_weights_close(model);
    kw_tokenizer_free(tok);
    return status;
}

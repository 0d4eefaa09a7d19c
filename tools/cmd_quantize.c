/* cmd_quantize.c: `kvwire quantize` writes a GGUF file with quantized matrices from an HF model folder or a GGUF file,
 * or a safetensors file with quantized matrices.
 * Option parsing and the summary line only; the work is kw_quantize_file (model/kw_quantize.h). */
#include "common/kw_status.h"
#include "model/kw_dequant.h"
#include "model/kw_quantize.h"
#include "tools/kw_cli.h"
#include "kw_commands.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char kw_cmd_quantize_summary[] = "write a GGUF or safetensors with Q8_0 / Q4_K / Q4_K_M / BF16 / F32 weights";

static void kw_quantize_usage(FILE *out) {
    fprintf(
        out,
        "usage: kvwire quantize --model DIR|FILE.gguf --out FILE.gguf|DIR2/model.safetensors\n"
        "                       --type q8_0|q4_k|q4_k_m|bf16|f32\n"
        "                       [--vocab-from FILE.gguf]\n"
        "Writes a GGUF file whose matrices are quantized (1-D tensors and norms stay f32). --model is an HF\n"
        "folder (config.json + safetensors) or a GGUF file (its metadata is copied; its tensors are dequantized\n"
        "and re-quantized). q4_k makes every matrix Q4_K; q4_k_m is llama.cpp's Q4_K_M mix (Q6_K for the output\n"
        "matrix and for attn_v / ffn_down in some layers); matrices whose rows are not whole 256-value blocks fall\n"
        "back to Q5_0 (Q4_K) or Q8_0 (Q6_K), as llama.cpp does. --vocab-from copies the tokenizer.* metadata of a\n"
        "GGUF file into the output of an HF folder (llama.cpp needs it; kvwire does not). The same input gives\n"
        "the same bytes.\n"
        "An --out ending in .safetensors writes the same types as a safetensors file in HF\n"
        "names and layout: each quantized matrix NAME as its codes NAME (I8, or U8 with two 4-bit codes per byte),\n"
        "NAME_scale and for Q4_K NAME_min (docs/FORMAT.md, appendix), and copies config.json and\n"
        "the tokenizer files beside it (from a GGUF input: config.json and generation_config.json written from its\n"
        "metadata; its tokenizer stays in the GGUF: generate --tokenizer FILE.gguf); kvwire loads that folder (name\n"
        "the file model.safetensors), and so does --model (its matrices dequantized, e.g. back to a GGUF).\n");
}

int kw_cmd_quantize(int argc, char **argv) {
    const char *model = NULL, *out = NULL, *vocab_from = NULL;
    static const char *const types[] = {"f32", "bf16", "q8_0", "q4_k", "q4_k_m", NULL};
    int type = -1;
    const kw_cli_option opts[] = {
        KW_CLI_STR_REQUIRED("--model", &model),
        KW_CLI_STR_REQUIRED("--out", &out),
        KW_CLI_CHOICE("--type", &type, types),
        KW_CLI_STR("--vocab-from", &vocab_from),
    };
    const int st = KW_CLI_PARSE("kvwire quantize", argc, argv, opts, kw_quantize_usage);
    if (st != KW_CLI_RUN) return st;
    if (type < 0) {
        fprintf(stderr, "kvwire quantize: --type is required (q8_0, q4_k, q4_k_m, bf16, f32)\n");
        return 2;
    }
    kw_quantize_stats stats;
    if (kw_quantize_file(model, out, (enum kw_quant_scheme)type, vocab_from, &stats) < 0) {
        fprintf(stderr, "kvwire quantize: %s\n", kw_error_detail());
        return 1;
    }
    if (vocab_from && stats.vocab_tokens != stats.embedding_rows)
        fprintf(stderr,
                "kvwire quantize: note: %s holds %lld tokens, the model %lld embedding rows (llama.cpp will "
                "refuse the file)\n",
                vocab_from, (long long)stats.vocab_tokens, (long long)stats.embedding_rows);
    fprintf(stderr, "kvwire quantize: wrote %s (%s):", out, types[type]);
    for (uint32_t t = 0; t < KW_QUANT_MAX_TYPES; ++t)
        if (stats.tensors[t] > 0) fprintf(stderr, " %lld %s", (long long)stats.tensors[t], kw_ggml_type_name(t));
    fprintf(stderr, "\n");
    return 0;
}

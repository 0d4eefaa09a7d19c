/* cmd_gen_model.c: `kvwire gen-model` writes a deterministic random HF model folder (model/kw_genmodel.h): the
 * embedded tiny demo models, test models, and real-shaped benchmark models. Option parsing only; the generator is in
 * the library. */
#include "common/kw_status.h"
#include "model/kw_config.h"
#include "model/kw_genmodel.h"
#include "tools/kw_cli.h"
#include "kw_commands.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char kw_cmd_gen_model_summary[] = "write a deterministic random HF model folder (tiny demo or real shapes)";

static void kw_gen_model_usage(FILE *out) {
    fprintf(out,
            "usage: kvwire gen-model --arch qwen2|qwen3|llama|gemma3 --out DIR [--seed N]\n"
            "                        [--preset tiny|qwen3-0.6b|qwen2.5-0.5b|llama-3.2-1b|gemma-3-270m]\n"
            "                        [--layers N] [--hidden N] [--heads N] [--kv-heads N] [--head-dim N]\n"
            "                        [--intermediate N] [--vocab N] [--tied 0|1] [--dtype bf16|f32|f16]\n"
            "                        [--sliding-window N] [--sliding-pattern N] [--tokenizer DIR]\n"
            "Writes config.json, generation_config.json and model.safetensors (HF names and layout) to DIR, and\n"
            "copies tokenizer.json and tokenizer_config.json from --tokenizer. The same options and seed give the\n"
            "same bytes on every machine. --preset defaults to tiny; --arch may be omitted for the real-shape\n"
            "presets. When --hidden or --heads change and --head-dim is not given, Qwen2 and Llama derive\n"
            "head_dim = hidden / heads (Qwen3 and Gemma3 keep their explicit head_dim). Special ids that do not fit a\n"
            "smaller --vocab are moved inside it. Gemma3: --sliding-window sets the window of the sliding layers and\n"
            "--sliding-pattern makes every N-th layer global (tiny: window 16, pattern 2; gemma-3-270m: 512, 6);\n"
            "query_pre_attn_scalar follows head_dim.\n");
}

int kw_cmd_gen_model(int argc, char **argv) {
    const char *arch_name = NULL, *out = NULL, *preset = "tiny", *tokenizer = NULL;
    int64_t seed = 0, layers = -1, hidden = -1, heads = -1, kv = -1, head_dim = -1, inter = -1, vocab = -1;
    int64_t tied = -1, window = -1, pattern = -1;
    static const char *const dtypes[] = {"bf16", "f32", "f16", NULL};
    static const enum kw_dtype dtype_values[] = {KW_DTYPE_BF16, KW_DTYPE_F32, KW_DTYPE_F16};
    int dtype = 0;
    const kw_cli_option opts[] = {
        KW_CLI_STR("--arch", &arch_name),
        KW_CLI_STR_REQUIRED("--out", &out),
        KW_CLI_STR("--preset", &preset),
        KW_CLI_CHOICE("--dtype", &dtype, dtypes),
        KW_CLI_STR("--tokenizer", &tokenizer),
        KW_CLI_INT("--seed", &seed, 0, INT64_MAX),
        KW_CLI_INT("--layers", &layers, 1, 1024),
        KW_CLI_INT("--hidden", &hidden, 1, 65536),
        KW_CLI_INT("--heads", &heads, 1, 1024),
        KW_CLI_INT("--kv-heads", &kv, 1, 1024),
        KW_CLI_INT("--head-dim", &head_dim, 2, 1024),
        KW_CLI_INT("--intermediate", &inter, 1, 1 << 18),
        KW_CLI_INT("--vocab", &vocab, 1, 1 << 24),
        KW_CLI_INT("--tied", &tied, 0, 1),
        KW_CLI_INT("--sliding-window", &window, 1, 1 << 30),
        KW_CLI_INT("--sliding-pattern", &pattern, 1, 1024),
    };
    const int st = KW_CLI_PARSE("kvwire gen-model", argc, argv, opts, kw_gen_model_usage);
    if (st != KW_CLI_RUN) return st;

    kw_genmodel_options opt;
    memset(&opt, 0, sizeof opt);
    enum kw_arch arch;
    if (arch_name && kw_arch_parse(arch_name, &arch) < 0) {
        fprintf(stderr, "kvwire gen-model: --arch must be qwen2, qwen3, llama or gemma3, got '%s'\n", arch_name);
        return 2;
    }
    int rc = kw_genmodel_preset(preset, arch_name ? &arch : NULL, &opt.cfg);
    if (rc < 0) {
        fprintf(stderr, "kvwire gen-model: %s\n", kw_error_detail());
        return 2;
    }
    kw_model_config *c = &opt.cfg;
    const int gemma = c->arch == KW_ARCH_GEMMA3;
    if (!gemma && (window > 0 || pattern > 0)) {
        fprintf(stderr, "kvwire gen-model: --sliding-window and --sliding-pattern are for gemma3\n");
        return 2;
    }
    if (gemma && pattern <= 0) { /* the preset's pattern: the first global layer's index + 1 */
        pattern = c->n_layers + 1;
        for (int32_t l = c->n_layers; l-- > 0;)
            if (!c->layer_sliding[l]) pattern = l + 1;
    }
    if (layers > 0) c->n_layers = (int32_t)layers;
    if (hidden > 0) c->hidden = (int32_t)hidden;
    if (heads > 0) c->n_heads = (int32_t)heads;
    if (kv > 0) c->n_kv_heads = (int32_t)kv;
    if (inter > 0) c->intermediate = (int32_t)inter;
    if (vocab > 0) c->vocab = (int32_t)vocab;
    if (tied >= 0) c->tie_embeddings = (int32_t)tied;
    if (head_dim > 0) {
        c->head_dim = (int32_t)head_dim;
    } else if ((hidden > 0 || heads > 0) && c->arch != KW_ARCH_QWEN3 && !gemma) {
        if (c->hidden % c->n_heads != 0) {
            fprintf(stderr, "kvwire gen-model: hidden %d is not a multiple of heads %d; give --head-dim\n",
                    (int)c->hidden, (int)c->n_heads);
            return 2;
        }
        c->head_dim = c->hidden / c->n_heads;
    }
    if (heads > 0 && kv <= 0 && c->n_kv_heads > c->n_heads) c->n_kv_heads = c->n_heads;
    c->rope.rotary_dim = c->head_dim;
    if (gemma) {
        c->rope_local.rotary_dim = c->head_dim;
        c->query_pre_attn_scalar = c->head_dim;
        if (window > 0) c->sliding_window = (int32_t)window;
        if (kw_config_set_sliding_pattern(c, (int32_t)pattern) < 0) {
            fprintf(stderr, "kvwire gen-model: %s\n", kw_error_detail());
            return 2;
        }
    }
    if (kw_genmodel_fit_special_ids(c))
        fprintf(stderr, "kvwire gen-model: special token ids moved inside the %d-token vocabulary\n", (int)c->vocab);

    opt.dtype = dtype_values[dtype];
    opt.seed = (uint64_t)seed;
    opt.tokenizer_dir = tokenizer;

    rc = kw_config_validate(c);
    if (rc < 0) {
        fprintf(stderr, "kvwire gen-model: invalid model shape: %s\n", kw_error_detail());
        return 2;
    }
    kw_cli_make_parents(out);
    rc = kw_genmodel_write(&opt, out);
    if (rc < 0) {
        fprintf(stderr, "kvwire gen-model: %s (%s)\n", kw_error_detail(), kw_status_name(rc));
        return 1;
    }
    printf("wrote %s: %s, %d layers, hidden %d, heads %d/%d x %d, intermediate %d, vocab %d, %s, seed %llu\n", out,
           kw_arch_name(c->arch), (int)c->n_layers, (int)c->hidden, (int)c->n_heads, (int)c->n_kv_heads,
           (int)c->head_dim, (int)c->intermediate, (int)c->vocab, dtypes[dtype], (unsigned long long)opt.seed);
    return 0;
}

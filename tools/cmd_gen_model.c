/* cmd_gen_model.c: `kvwire gen-model` writes a deterministic random HF model folder (model/kw_genmodel.h): the
 * embedded tiny demo models, test models, and real-shaped benchmark models. Option parsing only; the generator is in
 * the library. */
#include "common/kw_status.h"
#include "model/kw_config.h"
#include "model/kw_genmodel.h"
#include "kw_commands.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

const char kw_cmd_gen_model_summary[] = "write a deterministic random HF model folder (tiny demo or real shapes)";

static void kw_gen_model_usage(FILE *out) {
    fprintf(out,
            "usage: kvwire gen-model --arch qwen2|qwen3|llama --out DIR [--seed N]\n"
            "                        [--preset tiny|qwen3-0.6b|qwen2.5-0.5b|llama-3.2-1b]\n"
            "                        [--layers N] [--hidden N] [--heads N] [--kv-heads N] [--head-dim N]\n"
            "                        [--intermediate N] [--vocab N] [--tied 0|1] [--dtype bf16|f32|f16]\n"
            "                        [--tokenizer DIR]\n"
            "Writes config.json, generation_config.json and model.safetensors (HF names and layout) to DIR, and\n"
            "copies tokenizer.json and tokenizer_config.json from --tokenizer. The same options and seed give the\n"
            "same bytes on every machine. --preset defaults to tiny; --arch may be omitted for the real-shape\n"
            "presets. When --hidden or --heads change and --head-dim is not given, Qwen2 and Llama derive\n"
            "head_dim = hidden / heads (Qwen3 keeps its explicit head_dim). Special ids that do not fit a smaller\n"
            "--vocab are moved inside it.\n");
}

/* Parses a decimal integer in [min, max]. */
static int kw_gen_model_int(const char *opt, const char *s, long long min, long long max, long long *out) {
    char *end = NULL;
    errno = 0;
    const long long v = strtoll(s, &end, 10);
    if (errno || !end || *end || end == s || v < min || v > max) {
        fprintf(stderr, "kvwire gen-model: %s wants an integer in [%lld, %lld], got '%s'\n", opt, min, max, s);
        return -1;
    }
    *out = v;
    return 0;
}

/* mkdir -p for the parents of dir (the generator creates dir itself). */
static void kw_gen_model_mkdirs(const char *dir) {
    char *p = strdup(dir);
    if (!p) return;
    for (char *s = p + 1; *s; ++s) {
        if (*s != '/') continue;
        *s = '\0';
        mkdir(p, 0755);
        *s = '/';
    }
    free(p);
}

int kw_cmd_gen_model(int argc, char **argv) {
    const char *arch_name = NULL, *out = NULL, *preset = "tiny", *dtype = "bf16", *tokenizer = NULL;
    long long seed = 0, layers = -1, hidden = -1, heads = -1, kv = -1, head_dim = -1, inter = -1, vocab = -1;
    long long tied = -1;
    for (int i = 1; i < argc; ++i) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            kw_gen_model_usage(stdout);
            return 0;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "kvwire gen-model: %s needs a value (or is unknown)\n\n", a);
            kw_gen_model_usage(stderr);
            return 2;
        }
        const char *v = argv[++i];
        int bad = 0;
        if (strcmp(a, "--arch") == 0)
            arch_name = v;
        else if (strcmp(a, "--out") == 0)
            out = v;
        else if (strcmp(a, "--preset") == 0)
            preset = v;
        else if (strcmp(a, "--dtype") == 0)
            dtype = v;
        else if (strcmp(a, "--tokenizer") == 0)
            tokenizer = v;
        else if (strcmp(a, "--seed") == 0)
            bad = kw_gen_model_int(a, v, 0, INT64_MAX, &seed);
        else if (strcmp(a, "--layers") == 0)
            bad = kw_gen_model_int(a, v, 1, 1024, &layers);
        else if (strcmp(a, "--hidden") == 0)
            bad = kw_gen_model_int(a, v, 1, 65536, &hidden);
        else if (strcmp(a, "--heads") == 0)
            bad = kw_gen_model_int(a, v, 1, 1024, &heads);
        else if (strcmp(a, "--kv-heads") == 0)
            bad = kw_gen_model_int(a, v, 1, 1024, &kv);
        else if (strcmp(a, "--head-dim") == 0)
            bad = kw_gen_model_int(a, v, 2, 1024, &head_dim);
        else if (strcmp(a, "--intermediate") == 0)
            bad = kw_gen_model_int(a, v, 1, 1 << 18, &inter);
        else if (strcmp(a, "--vocab") == 0)
            bad = kw_gen_model_int(a, v, 1, 1 << 24, &vocab);
        else if (strcmp(a, "--tied") == 0)
            bad = kw_gen_model_int(a, v, 0, 1, &tied);
        else {
            fprintf(stderr, "kvwire gen-model: unknown option %s\n\n", a);
            kw_gen_model_usage(stderr);
            return 2;
        }
        if (bad) return 2;
    }
    if (!out) {
        fprintf(stderr, "kvwire gen-model: --out DIR is required\n\n");
        kw_gen_model_usage(stderr);
        return 2;
    }

    kw_genmodel_options opt;
    memset(&opt, 0, sizeof opt);
    enum kw_arch arch;
    if (arch_name && kw_arch_parse(arch_name, &arch) < 0) {
        fprintf(stderr, "kvwire gen-model: --arch must be qwen2, qwen3 or llama, got '%s'\n", arch_name);
        return 2;
    }
    int rc = kw_genmodel_preset(preset, arch_name ? &arch : NULL, &opt.cfg);
    if (rc < 0) {
        fprintf(stderr, "kvwire gen-model: %s\n", kw_error_detail());
        return 2;
    }
    kw_model_config *c = &opt.cfg;
    if (layers > 0) c->n_layers = (int32_t)layers;
    if (hidden > 0) c->hidden = (int32_t)hidden;
    if (heads > 0) c->n_heads = (int32_t)heads;
    if (kv > 0) c->n_kv_heads = (int32_t)kv;
    if (inter > 0) c->intermediate = (int32_t)inter;
    if (vocab > 0) c->vocab = (int32_t)vocab;
    if (tied >= 0) c->tie_embeddings = (int32_t)tied;
    if (head_dim > 0) {
        c->head_dim = (int32_t)head_dim;
    } else if ((hidden > 0 || heads > 0) && c->arch != KW_ARCH_QWEN3) {
        if (c->hidden % c->n_heads != 0) {
            fprintf(stderr, "kvwire gen-model: hidden %d is not a multiple of heads %d; give --head-dim\n",
                    (int)c->hidden, (int)c->n_heads);
            return 2;
        }
        c->head_dim = c->hidden / c->n_heads;
    }
    if (heads > 0 && kv <= 0 && c->n_kv_heads > c->n_heads) c->n_kv_heads = c->n_heads;
    c->rope.rotary_dim = c->head_dim;
    if (kw_genmodel_fit_special_ids(c))
        fprintf(stderr, "kvwire gen-model: special token ids moved inside the %d-token vocabulary\n", (int)c->vocab);

    if (strcmp(dtype, "bf16") == 0)
        opt.dtype = KW_DTYPE_BF16;
    else if (strcmp(dtype, "f32") == 0)
        opt.dtype = KW_DTYPE_F32;
    else if (strcmp(dtype, "f16") == 0)
        opt.dtype = KW_DTYPE_F16;
    else {
        fprintf(stderr, "kvwire gen-model: --dtype must be bf16, f32 or f16, got '%s'\n", dtype);
        return 2;
    }
    opt.seed = (uint64_t)seed;
    opt.tokenizer_dir = tokenizer;

    rc = kw_config_validate(c);
    if (rc < 0) {
        fprintf(stderr, "kvwire gen-model: invalid model shape: %s\n", kw_error_detail());
        return 2;
    }
    kw_gen_model_mkdirs(out);
    rc = kw_genmodel_write(&opt, out);
    if (rc < 0) {
        fprintf(stderr, "kvwire gen-model: %s (%s)\n", kw_error_detail(), kw_status_name(rc));
        return 1;
    }
    printf("wrote %s: %s, %d layers, hidden %d, heads %d/%d x %d, intermediate %d, vocab %d, %s, seed %llu\n", out,
           kw_arch_name(c->arch), (int)c->n_layers, (int)c->hidden, (int)c->n_heads, (int)c->n_kv_heads,
           (int)c->head_dim, (int)c->intermediate, (int)c->vocab, dtype, (unsigned long long)opt.seed);
    return 0;
}

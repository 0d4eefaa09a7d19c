/* cmd_gen_fuser.c: `kvwire gen-fuser` writes a deterministic random C2C fuser folder in the released layout
 * (c2c/kw_genfuser.h) for a receiver/sharer pair of HF model folders, e.g. two made by `kvwire gen-model`. The
 * dimensions come from the two config.json files; option parsing only, the generator is in the library. */
#include "c2c/kw_genfuser.h"
#include "common/kw_status.h"
#include "model/kw_config.h"
#include "tools/kw_cli.h"
#include "kw_commands.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char kw_cmd_gen_fuser_summary[] = "write a deterministic random C2C fuser folder for a receiver/sharer pair";

static void kw_gen_fuser_usage(FILE *out) {
    fprintf(out,
            "usage: kvwire gen-fuser --receiver DIR --sharer DIR --out DIR [--seed N] [--dtype bf16|f32]\n"
            "                        [--hidden N] [--intermediate N] [--num-layers N] [--format pt|safetensors]\n"
            "                        [--closed-layers LIST] [--k-only-layers LIST] [--v-only-layers LIST]\n"
            "Writes OUT/config.json and OUT/final/{projector_config.json, projector_<i>.json, projector_<i>.pt}:\n"
            "one C2CProjector per receiver layer, layer mapping last_aligned, random weights (not a trained fuser).\n"
            "Dimensions: source = sharer (head_dim, num_key_value_heads), target = receiver; --hidden and\n"
            "--intermediate default to 1024 (the released fusers), --num-layers to 3.\n"
            "Gates: LIST is comma-separated receiver layers (\"\" for none). A closed layer has both gates <= 0\n"
            "(key logit exactly 0); k-only/v-only layers open one branch. Without any gate option the last layer\n"
            "is k-only and every layer t with t %% 3 == 2 is closed; with one, unlisted layers are open.\n"
            "The same inputs and seed give the same bytes.\n");
}

/* Marks the layers of a comma-separated list with kind; each must be below n and not already marked. */
static int kw_gen_fuser_list(const char *opt, const char *list, int32_t n, uint8_t kind, uint8_t *gates,
                             uint8_t *marked) {
    const char *p = list;
    while (*p) {
        char *end = NULL;
        errno = 0;
        const long v = strtol(p, &end, 10);
        if (errno || end == p || v < 0 || v >= n || (*end && *end != ',')) {
            fprintf(stderr, "kvwire gen-fuser: %s: bad layer list '%s' (layers 0..%d, comma-separated)\n", opt, list,
                    n - 1);
            return -1;
        }
        if (marked[v]) {
            fprintf(stderr, "kvwire gen-fuser: layer %ld is given two gate kinds\n", v);
            return -1;
        }
        marked[v] = 1;
        gates[v] = kind;
        p = *end ? end + 1 : end;
    }
    return 0;
}

int kw_cmd_gen_fuser(int argc, char **argv) {
    const char *recv_dir = NULL, *sharer_dir = NULL, *out = NULL;
    const char *lists[3] = {NULL, NULL, NULL}; /* closed, k-only, v-only */
    int64_t seed = 0, hidden = 1024, inter = 1024, num_layers = 3;
    static const char *const dtypes[] = {"bf16", "f32", NULL}, *const formats[] = {"pt", "safetensors", NULL};
    int dtype = 0, format = 0;
    const kw_cli_option opts[] = {
        KW_CLI_STR_REQUIRED("--receiver", &recv_dir),
        KW_CLI_STR_REQUIRED("--sharer", &sharer_dir),
        KW_CLI_STR_REQUIRED("--out", &out),
        KW_CLI_CHOICE("--dtype", &dtype, dtypes),
        KW_CLI_CHOICE("--format", &format, formats),
        KW_CLI_STR("--closed-layers", &lists[0]),
        KW_CLI_STR("--k-only-layers", &lists[1]),
        KW_CLI_STR("--v-only-layers", &lists[2]),
        KW_CLI_INT("--seed", &seed, 0, INT64_MAX),
        KW_CLI_INT("--hidden", &hidden, 1, 65536),
        KW_CLI_INT("--intermediate", &inter, 1, 65536),
        KW_CLI_INT("--num-layers", &num_layers, 3, 64),
    };
    const int st = KW_CLI_PARSE("kvwire gen-fuser", argc, argv, opts, kw_gen_fuser_usage);
    if (st != KW_CLI_RUN) return st;
    kw_genfuser_options o;
    memset(&o, 0, sizeof o);
    o.dtype = dtype == 0 ? KW_DTYPE_BF16 : KW_DTYPE_F32;
    o.safetensors = format == 1;

    kw_model_config rc_cfg, sc_cfg;
    int rc = kw_config_load(recv_dir, &rc_cfg);
    if (rc == 0) rc = kw_config_load(sharer_dir, &sc_cfg);
    if (rc < 0) {
        fprintf(stderr, "kvwire gen-fuser: %s (%s)\n", kw_error_detail(), kw_status_name(rc));
        return 1;
    }
    if (rc_cfg.n_layers > KW_GENFUSER_MAX_LAYERS) {
        fprintf(stderr, "kvwire gen-fuser: receiver has %d layers (at most %d)\n", (int)rc_cfg.n_layers,
                KW_GENFUSER_MAX_LAYERS);
        return 1;
    }
    o.recv_layers = rc_cfg.n_layers;
    o.sharer_layers = sc_cfg.n_layers;
    o.dims = (kw_fuser_dims){.source_dim = sc_cfg.head_dim,
                             .source_heads = sc_cfg.n_kv_heads,
                             .target_dim = rc_cfg.head_dim,
                             .target_heads = rc_cfg.n_kv_heads,
                             .hidden_dim = (int32_t)hidden,
                             .intermediate_dim = (int32_t)inter,
                             .num_layers = (int32_t)num_layers};
    o.seed = (uint64_t)seed;
    o.base_model = recv_dir;
    o.teacher_model = sharer_dir;
    /* Different tokenizer families need token alignment (c2c_spec.md §4): Qwen2/Qwen3 share one vocabulary. */
    const int recv_qwen = rc_cfg.arch == KW_ARCH_QWEN2 || rc_cfg.arch == KW_ARCH_QWEN3;
    const int sharer_qwen = sc_cfg.arch == KW_ARCH_QWEN2 || sc_cfg.arch == KW_ARCH_QWEN3;
    o.is_do_alignment = recv_qwen != sharer_qwen || rc_cfg.vocab != sc_cfg.vocab;

    uint8_t gates[KW_GENFUSER_MAX_LAYERS], marked[KW_GENFUSER_MAX_LAYERS] = {0};
    if (lists[0] || lists[1] || lists[2]) {
        memset(gates, KW_GENFUSER_GATE_OPEN, sizeof gates);
        static const uint8_t kinds[3] = {KW_GENFUSER_GATE_CLOSED, KW_GENFUSER_GATE_K_ONLY, KW_GENFUSER_GATE_V_ONLY};
        static const char *const names[3] = {"--closed-layers", "--k-only-layers", "--v-only-layers"};
        for (int k = 0; k < 3; ++k)
            if (lists[k] && kw_gen_fuser_list(names[k], lists[k], o.recv_layers, kinds[k], gates, marked) < 0) return 2;
        o.gates = gates;
    }

    kw_cli_make_parents(out);
    rc = kw_genfuser_write(&o, out);
    if (rc < 0) {
        fprintf(stderr, "kvwire gen-fuser: %s (%s)\n", kw_error_detail(), kw_status_name(rc));
        return 1;
    }
    uint8_t shown[KW_GENFUSER_MAX_LAYERS];
    if (o.gates)
        memcpy(shown, gates, (size_t)o.recv_layers);
    else
        kw_genfuser_default_gates(o.recv_layers, shown);
    printf("wrote %s: %d projectors (receiver %d layers x %d kv heads x %d, sharer %d layers x %d x %d), hidden %d, "
           "intermediate %d, num_layers %d, %s %s, seed %llu\ngates:",
           out, (int)o.recv_layers, (int)o.recv_layers, (int)o.dims.target_heads, (int)o.dims.target_dim,
           (int)o.sharer_layers, (int)o.dims.source_heads, (int)o.dims.source_dim, (int)hidden, (int)inter,
           (int)num_layers, dtypes[dtype], formats[format], (unsigned long long)o.seed);
    static const char *const kind_names[4] = {"open", "closed", "k-only", "v-only"};
    for (int32_t l = 0; l < o.recv_layers; ++l)
        printf(" %d:%s", (int)l, kind_names[shown[l]]);
    printf("\n");
    return 0;
}

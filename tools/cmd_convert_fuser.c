/* cmd_convert_fuser.c: `kvwire convert-fuser` rewrites a C2C fuser folder with its projector weights as safetensors
 * (default) or torch zip archives (c2c/kw_fuser_load.h kw_fuser_convert). Option parsing only. */
#include "c2c/kw_fuser_load.h"
#include "common/kw_status.h"
#include "tools/kw_cli.h"
#include "kw_commands.h"

#include <stdio.h>

const char kw_cmd_convert_fuser_summary[] = "rewrite a C2C fuser folder with safetensors (or .pt) projector weights";

static void kw_convert_fuser_usage(FILE *out) {
    fprintf(out, "usage: kvwire convert-fuser --in DIR --out DIR [--format safetensors|pt]\n"
                 "Loads the fuser in DIR (a released pair folder with final/, or a checkpoint folder), checks it, and\n"
                 "writes OUT/config.json (if any) and OUT/final/ with projector_config.json and projector_<i>.json\n"
                 "copied and one projector_<i>.safetensors (or .pt) per projector: the 32 learned tensors in bf16\n"
                 "(f32 inputs rounded to bf16), reference names and order; gate_temperature is dropped.\n");
}

int kw_cmd_convert_fuser(int argc, char **argv) {
    const char *in = NULL, *out = NULL;
    static const char *const formats[] = {"safetensors", "pt", NULL};
    int format = 0;
    const kw_cli_option opts[] = {
        KW_CLI_STR_REQUIRED("--in", &in),
        KW_CLI_STR_REQUIRED("--out", &out),
        KW_CLI_CHOICE("--format", &format, formats),
    };
    const int st = KW_CLI_PARSE("kvwire convert-fuser", argc, argv, opts, kw_convert_fuser_usage);
    if (st != KW_CLI_RUN) return st;
    const int rc = kw_fuser_convert(in, out, format == 0);
    if (rc < 0) {
        fprintf(stderr, "kvwire convert-fuser: %s (%s)\n", kw_error_detail(), kw_status_name(rc));
        return 1;
    }
    printf("wrote %s (%s weights)\n", out, formats[format]);
    return 0;
}

/* cmd_convert_fuser.c: `kvwire convert-fuser` rewrites a C2C fuser folder with its projector weights as safetensors
 * (default) or torch zip archives (c2c/kw_fuser_load.h kw_fuser_convert). Option parsing only. */
#include "c2c/kw_fuser_load.h"
#include "common/kw_status.h"
#include "kw_commands.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

const char kw_cmd_convert_fuser_summary[] = "rewrite a C2C fuser folder with safetensors (or .pt) projector weights";

static void kw_convert_fuser_usage(FILE *out) {
    fprintf(out, "usage: kvwire convert-fuser --in DIR --out DIR [--format safetensors|pt]\n"
                 "Loads the fuser in DIR (a released pair folder with final/, or a checkpoint folder), checks it, and\n"
                 "writes OUT/config.json (if any) and OUT/final/ with projector_config.json and projector_<i>.json\n"
                 "copied and one projector_<i>.safetensors (or .pt) per projector: the 32 learned tensors in bf16\n"
                 "(f32 inputs rounded to bf16), reference names and order; gate_temperature is dropped.\n");
}

int kw_cmd_convert_fuser(int argc, char **argv) {
    const char *in = NULL, *out = NULL, *format = "safetensors";
    for (int i = 1; i < argc; ++i) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            kw_convert_fuser_usage(stdout);
            return 0;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "kvwire convert-fuser: %s needs a value (or is unknown)\n\n", a);
            kw_convert_fuser_usage(stderr);
            return 2;
        }
        const char *v = argv[++i];
        if (strcmp(a, "--in") == 0)
            in = v;
        else if (strcmp(a, "--out") == 0)
            out = v;
        else if (strcmp(a, "--format") == 0)
            format = v;
        else {
            fprintf(stderr, "kvwire convert-fuser: unknown option %s\n\n", a);
            kw_convert_fuser_usage(stderr);
            return 2;
        }
    }
    if (!in || !out) {
        fprintf(stderr, "kvwire convert-fuser: --in and --out are required\n\n");
        kw_convert_fuser_usage(stderr);
        return 2;
    }
    if (strcmp(format, "safetensors") != 0 && strcmp(format, "pt") != 0) {
        fprintf(stderr, "kvwire convert-fuser: --format must be safetensors or pt, got '%s'\n", format);
        return 2;
    }
    const int rc = kw_fuser_convert(in, out, strcmp(format, "safetensors") == 0);
    if (rc < 0) {
        fprintf(stderr, "kvwire convert-fuser: %s (%s)\n", kw_error_detail(), kw_status_name(rc));
        return 1;
    }
    printf("wrote %s (%s weights)\n", out, format);
    return 0;
}

/* cmd_strerror.c: `kvwire strerror CODE...` explains status codes (as printed in logs and error replies). */
#include "common/kw_status.h"
#include "kw_commands.h"

#include <stdio.h>
#include <stdlib.h>

const char kw_cmd_strerror_summary[] = "explain kvwire status codes, e.g. kvwire strerror -100";

int kw_cmd_strerror(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: kvwire strerror CODE...\n");
        return 2;
    }
    int unknown = 0;
    for (int i = 1; i < argc; ++i) {
        char *end = NULL;
        const long code = strtol(argv[i], &end, 10);
        if (!end || *end || end == argv[i]) {
            fprintf(stderr, "kvwire strerror: '%s' is not a number\n", argv[i]);
            return 2;
        }
        printf("%ld %s: %s\n", code, kw_status_name((int)code), kw_strerror((int)code));
        unknown |= code < 0 && kw_status_name((int)code)[5] == 'U'; /* KW_E_UNKNOWN */
    }
    return unknown ? 1 : 0;
}

/* gen_wire_golden.c: writes the KVWire golden blobs and their .expect files (tests/wire/wire_golden.h has the
 * catalogue). Regenerating them is a deliberate act that goes with a format version bump (docs/FORMAT.md); the ctest
 * test_wire_golden checks that this program reproduces the committed bytes.
 *
 *   kw_wire_golden_gen [tests/golden]      writes <dir>/wire/<name>.{kvw,expect} and <dir>/wire-errors/...
 */
#include <stdio.h>

#include "common/kw_file.h"
#include "tests/wire/wire_golden.h"

static int write_pair(const char *dir, const char *name, const uint8_t *blob, size_t size, const char *text) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.kvw", dir, name);
    int rc = kw_file_write_all(path, blob, size);
    if (rc < 0) return rc;
    snprintf(path, sizeof path, "%s/%s.expect", dir, name);
    return kw_file_write_all(path, text, strlen(text));
}

int main(int argc, char **argv) {
    const char *root = argc > 1 ? argv[1] : KW_SOURCE_DIR "/tests/golden";
    char wire[4096], errors[4096];
    snprintf(wire, sizeof wire, "%s/wire", root);
    snprintf(errors, sizeof errors, "%s/wire-errors", root);
    if (kw_path_mkdir(root) < 0 || kw_path_mkdir(wire) < 0 || kw_path_mkdir(errors) < 0) {
        fprintf(stderr, "gen_wire_golden: %s\n", kw_error_detail());
        return 1;
    }
    for (size_t i = 0; i < WG_N_VALID + WG_N_EXTRA; ++i) {
        uint8_t *blob;
        size_t size;
        wg_build(i, &blob, &size);
        wg_text t = {0};
        const char *what =
            i < WG_N_VALID        ? wg_valid[i].what
            : i == WG_N_VALID     ? "three sections: bitmap, zstd range, varint with two token groups"
            : i == WG_N_VALID + 1 ? "no sections (header and trailer only)"
            : i == WG_N_VALID + 5
                ? "v1.1: one section whose body is coded by the static rANS byte coder (FORMAT.md 5.15), K and V int8 "
                  "per token"
            : i == WG_N_VALID + 4
                ? "v1.1: one section with K and V Hadamard-rotated (FORMAT.md 5.12) and pre-RoPE keys, K int4 per "
                  "token, V int8 per 8 channels"
            : i == WG_N_VALID + 3
                ? "v1.1: one section with an outlier table (6 bf16 values) and pre-RoPE keys, K int4 per "
                  "token, V int8 per 8 channels"
                : "v1.1: one section, two token groups: K int2 with zero points and "
                  "channel scales (L 4), V int3 per token; K int3 with zero points "
                  "per 8 channels, V int2 per head";
        if (wg_describe(what, blob, size, &t) < 0 || write_pair(wire, wg_name(i), blob, size, t.s) < 0) {
            fprintf(stderr, "gen_wire_golden: %s: %s\n", wg_name(i), kw_error_detail());
            return 1;
        }
        printf("wire/%s.kvw  %zu bytes\n", wg_name(i), size);
        free(t.s);
        free(blob);
    }
    for (size_t i = 0; i < WG_N_ERRORS; ++i) {
        uint8_t *blob;
        size_t size;
        const int expect = wg_build_error(i, &blob, &size);
        wg_text t = {0};
        const int v11 = strncmp(wg_errors[i], "v11", 3) == 0, v11o = strncmp(wg_errors[i], "v11o_", 5) == 0;
        const int v11r = strncmp(wg_errors[i], "v11r_", 5) == 0, v11z = strncmp(wg_errors[i], "v11z_", 5) == 0;
        wg_printf(&t, "# KVWire %s must-reject blob: %s (a single fault in %s)\nexpect %s\nzstd %u\n",
                  v11 ? "v1.1" : "v1", wg_errors[i],
                  v11o   ? "v11_outliers"
                  : v11r ? "v11_rotated"
                  : v11z ? "v11_rans"
                  : v11  ? "v11_base"
                         : "mixed_three_sections",
                  kw_status_name(expect), ZSTD_versionNumber());
        if (write_pair(errors, wg_errors[i], blob, size, t.s) < 0) {
            fprintf(stderr, "gen_wire_golden: %s: %s\n", wg_errors[i], kw_error_detail());
            return 1;
        }
        printf("wire-errors/%s.kvw  %zu bytes  %s\n", wg_errors[i], size, kw_status_name(expect));
        free(t.s);
        free(blob);
    }
    return 0;
}

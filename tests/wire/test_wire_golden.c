/* test_wire_golden.c: the committed golden blobs. Valid ones (tests/golden/wire/) must decode, one-shot and one byte
 * at a time, to exactly the description in their .expect file (header, sections, positions, hashes of the decoded
 * values, the values themselves for small blobs, the byte breakdown). Must-reject ones (tests/golden/wire-errors/)
 * must fail with the status their .expect names. Regenerating every blob in memory with the generator's code must
 * give the committed bytes (blobs with compressed sections: only with the libzstd version that made them). No stray
 * files may sit in the folders. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <dirent.h>
#include <math.h>

#include "common/kw_file.h"
#include "tests/wire/wire_golden.h"

static char *read_file(const char *dir, const char *name, const char *ext, size_t *size) {
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/golden/%s/%s.%s", KW_SOURCE_DIR, dir, name, ext);
    char *data;
    if (kw_file_read_all(path, 1 << 24, &data, size) < 0) fail_msg("cannot read %s: %s", path, kw_error_detail());
    return data;
}

/* The libzstd version named in an .expect file, 0 if none. */
static unsigned expect_zstd(const char *text) {
    const char *z = strstr(text, "\nzstd ");
    return z ? (unsigned)strtoul(z + 6, NULL, 10) : 0;
}

static void check_regen(const char *name, const uint8_t *committed, size_t size, const uint8_t *fresh, size_t fsize,
                        const char *expect) {
    const unsigned z = expect_zstd(expect);
    if (z && z != ZSTD_versionNumber()) {
        print_message("%s: made with libzstd %u, this is %u: byte comparison skipped\n", name, z, ZSTD_versionNumber());
        return;
    }
    if (fsize != size || memcmp(fresh, committed, size) != 0)
        fail_msg("%s: regenerating gives different bytes (%zu vs %zu): the format or encoder changed; bump the "
                 "version and regenerate deliberately (kw_wire_golden_gen)",
                 name, fsize, size);
}

static void test_valid(void **state) {
    (void)state;
    for (size_t i = 0; i < WG_N_VALID + WG_N_EXTRA; ++i) {
        const char *name = wg_name(i);
        size_t size, esize;
        uint8_t *blob = (uint8_t *)read_file("wire", name, "kvw", &size);
        char *expect = read_file("wire", name, "expect", &esize);
        /* the description from a fresh decode, with the committed file's first line (the human description) */
        wg_text t = {0};
        const char *nl = strchr(expect, '\n');
        const char *colon = strstr(expect, " golden blob: ");
        char what[512];
        assert_true(nl && colon && colon < nl && strncmp(expect, "# KVWire v1", 11) == 0);
        snprintf(what, sizeof what, "%.*s", (int)(nl - colon - 14), colon + 14);
        const int rc = wg_describe(what, blob, size, &t);
        if (rc < 0) fail_msg("%s: %s %s", name, kw_status_name(rc), kw_error_detail());
        if (strcmp(t.s, expect) != 0)
            fail_msg("%s: decode differs from .expect:\n--- got\n%s--- expected\n%s", name, t.s, expect);
        wt_blob_out a, b;
        assert_int_equal(wt_decode_oneshot(blob, size, NULL, &a), 0);
        assert_int_equal(wt_decode_stream(blob, size, NULL, 1, &b), 0);
        assert_true(wt_blob_out_equal(&a, &b));
        if (!strcmp(name, "int8_layer_f32_exact")) /* s = 1: integers come back exactly */
            for (size_t e = 0; e < 16; ++e)
                assert_true(a.layers[0].k[e] == rintf(a.layers[0].k[e]));
        if (!strcmp(name, "v11_int8z_channel_constant")) /* zero scales: each channel decodes to its zero point */
            for (size_t e = 0; e < 32; ++e)
                assert_true(a.layers[0].k[e] == (float)((e % 8) % 5) * 0.25f - 0.5f &&
                            a.layers[0].v[e] == a.layers[0].k[e]);
        if (!strcmp(name, "zeros_e8m0"))
            for (size_t e = 0; e < 32; ++e)
                assert_true(a.layers[0].k[e] == 0.0f && a.layers[0].v[e] == 0.0f);
        wt_blob_out_free(&a);
        wt_blob_out_free(&b);
        uint8_t *fresh = NULL;
        size_t fsize = 0;
        wg_build(i, &fresh, &fsize);
        check_regen(name, blob, size, fresh, fsize, expect);
        free(fresh);
        free(t.s);
        free(blob);
        free(expect);
    }
}

static void test_errors(void **state) {
    (void)state;
    for (size_t i = 0; i < WG_N_ERRORS; ++i) {
        const char *name = wg_errors[i];
        size_t size, esize;
        uint8_t *blob = (uint8_t *)read_file("wire-errors", name, "kvw", &size);
        char *expect = read_file("wire-errors", name, "expect", &esize);
        const char *e = strstr(expect, "\nexpect ");
        assert_non_null(e);
        char want[64];
        assert_int_equal(sscanf(e + 8, "%63s", want), 1);
        for (size_t chunk = 0; chunk < 3; ++chunk) {
            wt_blob_out o;
            const int rc = chunk == 0 ? wt_decode_oneshot(blob, size, NULL, &o)
                                      : wt_decode_stream(blob, size, NULL, chunk == 1 ? 1 : 7, &o);
            wt_blob_out_free(&o);
            if (strcmp(kw_status_name(rc), want) != 0)
                fail_msg("%s: got %s (%s), expected %s", name, kw_status_name(rc), kw_error_detail(), want);
        }
        uint8_t *fresh = NULL;
        size_t fsize = 0;
        const int code = wg_build_error(i, &fresh, &fsize);
        assert_string_equal(kw_status_name(code), want);
        check_regen(name, blob, size, fresh, fsize, expect);
        free(fresh);
        free(blob);
        free(expect);
    }
}

/* Every file in the golden folders belongs to the catalogue. */
static void test_no_strays(void **state) {
    (void)state;
    const char *dirs[2] = {"wire", "wire-errors"};
    for (int k = 0; k < 2; ++k) {
        char path[4096];
        snprintf(path, sizeof path, "%s/tests/golden/%s", KW_SOURCE_DIR, dirs[k]);
        DIR *dir = opendir(path);
        assert_non_null(dir);
        struct dirent *ent;
        size_t files = 0;
        while ((ent = readdir(dir))) {
            if (ent->d_name[0] == '.' || !strcmp(ent->d_name, "README.md")) continue;
            char stem[256];
            snprintf(stem, sizeof stem, "%s", ent->d_name);
            char *dot = strrchr(stem, '.');
            assert_non_null(dot);
            assert_true(!strcmp(dot, ".kvw") || !strcmp(dot, ".expect"));
            *dot = 0;
            int known = 0;
            const size_t n = k ? WG_N_ERRORS : WG_N_VALID + WG_N_EXTRA;
            for (size_t i = 0; i < n; ++i)
                known |= !strcmp(stem, k ? wg_errors[i] : wg_name(i));
            if (!known) fail_msg("stray golden file %s/%s", dirs[k], ent->d_name);
            ++files;
        }
        closedir(dir);
        assert_int_equal(files, 2 * (k ? WG_N_ERRORS : WG_N_VALID + WG_N_EXTRA));
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_no_strays),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* test_model_hugepages.c: large host allocations on transparent huge pages (common/kw_hugepage.h).
 *   advice: kw_hugepage_alloc's big blocks are 2 MiB-aligned and, once touched, show AnonHugePages in
 *           /proc/self/smaps, as do kw_hugepage_alloc_weight's slabs of small weights (outside ASan builds) and a
 *           model's packed weights; KW_HUGEPAGES=0 turns them off. Exit 77 (skipped) where the kernel has no THP
 *           (/sys/kernel/mm/transparent_hugepage/enabled missing or "never").
 *   logits: a model loaded with KW_HUGEPAGES=1 and with KW_HUGEPAGES=0 gives the same logits, bit for bit (runs
 *           everywhere: with or without THP the placement of memory must never change results); and the values
 *           KW_HUGEPAGES takes (0/off/no/false turn it off). */
#define _DEFAULT_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_hugepage.h"
#include "common/kw_status.h"
#include "kernels/kw_backend.h"
#include "model/kw_genmodel.h"
#include "model/kw_model.h"
#include "model_fixture.h"
#include "tests/kw_test_util.h"

/* kw_hugepage.c cuts small weights from slabs outside ASan builds */
#if defined(__SANITIZE_ADDRESS__)
#define KW_TEST_SLABS 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KW_TEST_SLABS 0
#endif
#endif
#ifndef KW_TEST_SLABS
#define KW_TEST_SLABS 1
#endif

static char g_dir[] = "/tmp/kw_hugepage_test_XXXXXX";
static int g_madvise_mode; /* THP is "madvise": memory nobody advised must stay on 4 KiB pages */

/* "always", "madvise" or "never" from the kernel's THP setting (the bracketed word), or "" when there is none. */
static const char *thp_mode(void) {
    static char mode[16];
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    char line[128] = "";
    if (f) {
        if (!fgets(line, sizeof line, f)) line[0] = '\0';
        fclose(f);
    }
    const char *a = strchr(line, '['), *b = a ? strchr(a, ']') : NULL;
    const size_t n = a && b && (size_t)(b - a - 1) < sizeof mode ? (size_t)(b - a - 1) : 0;
    memcpy(mode, a ? a + 1 : "", n);
    mode[n] = '\0';
    return mode;
}

/* kw_hugepage_smaps_kb over [p, p + size) (size 0: the whole process); /proc/self/smaps must be readable. */
static long smaps_kb(enum kw_smaps_field field, const void *p, size_t size) {
    const long kb = kw_hugepage_smaps_kb(field, p, size);
    assert_true(kb >= 0);
    return kb;
}
static long anon_huge_kb(const void *p, size_t size) {
    return smaps_kb(KW_SMAPS_ANON_HUGE, p, size);
}
static long advised_kb(const void *p, size_t size) {
    return smaps_kb(KW_SMAPS_ADVISED, p, size);
}

/* The kernel's huge pages for advised memory: asserted where this process could be given them, but a fragmented host
 * may have none at that moment (defrag settings), which says nothing about kvwire: then a note, not a failure. */
static void expect_huge(long huge_kb, long want_kb, const char *what) {
    if (huge_kb < want_kb)
        fprintf(stderr,
                "test_model_hugepages: %s advised, but the kernel gave %ld kB of huge pages (%ld expected): "
                "memory fragmented? not a failure\n",
                what, huge_kb, want_kb);
}

/* A Qwen3-shaped tiny model whose MLP weights are 4 MiB each (intermediate 32768 x hidden 64, bf16), so that they, the
 * lm_head and the embedding take the huge-page path. */
static int setup(void **state) {
    (void)state;
    if (!mkdtemp(g_dir)) return -1;
    kw_genmodel_options go = {.dtype = KW_DTYPE_BF16, .seed = 3};
    const enum kw_arch arch = KW_ARCH_QWEN3;
    if (kw_genmodel_preset("tiny", &arch, &go.cfg) < 0) return -1;
    go.cfg.intermediate = 32768;
    return kw_genmodel_write(&go, g_dir) < 0 ? -1 : 0;
}

static int teardown(void **state) {
    (void)state;
    kw_test_remove_tree(g_dir);
    return 0;
}

static void test_alloc_advice(void **state) {
    (void)state;
    /* a 16 MiB block malloc'ed and freed first raises glibc's mmap threshold, so that later big mallocs come from the
     * heap, where a freed advised range would be handed out again with its advice (review rev8) */
    char *warm = malloc((size_t)16 << 20);
    assert_non_null(warm);
    memset(warm, 0, (size_t)16 << 20);
    free(warm);
    const size_t size = KW_HUGEPAGE_MIN * 2;
    setenv("KW_HUGEPAGES", "1", 1);
    assert_true(kw_hugepages_enabled());
    char *p = kw_hugepage_alloc(size);
    assert_non_null(p);
    assert_int_equal((uintptr_t)p % KW_HUGEPAGE_SIZE, 0);
    memset(p, 1, size);
    assert_true(advised_kb(p, size) >= (long)(size / 1024));
    expect_huge(anon_huge_kb(p, size), 2048, "a large block");
    kw_hugepage_free(p);
    assert_int_equal(advised_kb(p, size), 0); /* the advice left with the block (review rev8: free() kept it) */

    setenv("KW_HUGEPAGES", "0", 1);
    assert_false(kw_hugepages_enabled());
    p = kw_hugepage_alloc(size);
    assert_non_null(p);
    assert_int_equal((uintptr_t)p % 64, 0);
    memset(p, 1, size);
    assert_int_equal(advised_kb(p, size), 0);
    if (g_madvise_mode) assert_int_equal(anon_huge_kb(p, size), 0);
    kw_hugepage_free(p);

    /* small blocks: 64-byte aligned, never advised */
    setenv("KW_HUGEPAGES", "1", 1);
    p = kw_hugepage_alloc(100);
    assert_non_null(p);
    assert_int_equal((uintptr_t)p % 64, 0);
    kw_hugepage_free(p);
    unsetenv("KW_HUGEPAGES");
}

/* kw_hugepage_alloc_weight: distinct 64-byte aligned blocks that keep their bytes, on huge pages when cut from slabs
 * (outside ASan builds), released in any order; with KW_HUGEPAGES=0 never advised. */
static void test_weight_slabs(void **state) {
    (void)state;
    enum { N = 40 };
    char *b[N];
    size_t sz[N];
    setenv("KW_HUGEPAGES", "1", 1);
    for (int i = 0; i < N; ++i) {
        sz[i] = ((size_t)1 << 20) - (size_t)i * 64 * 97; /* 40 MiB in all: more than one slab */
        b[i] = kw_hugepage_alloc_weight(sz[i]);
        assert_non_null(b[i]);
        assert_int_equal((uintptr_t)b[i] % 64, 0);
        memset(b[i], i + 1, sz[i]);
    }
    for (int i = 0; i < N; ++i) /* no block overlaps another: each still holds its own byte at both ends */
        assert_true(b[i][0] == (char)(i + 1) && b[i][sz[i] - 1] == (char)(i + 1));
    if (KW_TEST_SLABS) {
        assert_true(advised_kb(b[0], sz[0]) >= (long)(KW_HUGEPAGE_SLAB / 1024));
        expect_huge(anon_huge_kb(b[0], sz[0]), 2048, "a weight slab");
    }
    for (int i = 0; i < N; i += 2) /* every other block first: slabs stay while any block of theirs lives */
        kw_hugepage_free(b[i]);
    for (int i = 1; i < N; i += 2)
        assert_true(b[i][0] == (char)(i + 1) && b[i][sz[i] - 1] == (char)(i + 1));
    for (int i = 1; i < N; i += 2)
        kw_hugepage_free(b[i]);
    for (int i = 0; i < N; ++i) /* every slab went with its last block, and its advice with it */
        assert_int_equal(advised_kb(b[i], sz[i]), 0);
    kw_hugepage_free(NULL);

    setenv("KW_HUGEPAGES", "0", 1);
    char *p = kw_hugepage_alloc_weight((size_t)1 << 20);
    assert_non_null(p);
    memset(p, 1, (size_t)1 << 20);
    assert_int_equal(advised_kb(p, (size_t)1 << 20), 0);
    if (g_madvise_mode) assert_int_equal(anon_huge_kb(p, (size_t)1 << 20), 0);
    kw_hugepage_free(p);
    unsetenv("KW_HUGEPAGES");
}

/* The advised kB (advised_kb) and AnonHugePages of the whole process with a model loaded under KW_HUGEPAGES=value,
 * minus before. */
static void model_huge_kb(kw_backend *be, const char *value, long *advised, long *huge) {
    setenv("KW_HUGEPAGES", value, 1);
    const long advised_before = advised_kb(NULL, 0), huge_before = anon_huge_kb(NULL, 0);
    kw_model *m = NULL;
    const int rc = kw_model_load(be, g_dir, NULL, &m);
    if (rc < 0) fail_msg("load: %s", kw_error_detail());
    *advised = advised_kb(NULL, 0) - advised_before;
    *huge = anon_huge_kb(NULL, 0) - huge_before;
    kw_model_free(m);
    unsetenv("KW_HUGEPAGES");
}

static void test_model_advice(void **state) {
    (void)state;
    kw_backend *be = NULL;
    long advised, huge;
    assert_int_equal(kw_backend_create_cpu(2, &be), 0);
    model_huge_kb(be, "1", &advised, &huge);
    assert_true(advised >= 3 * 4096); /* at least the three 4 MiB MLP weights of one layer */
    expect_huge(huge, 3 * 4096, "a model");
    model_huge_kb(be, "0", &advised, &huge);
    assert_int_equal(advised, 0);
    if (g_madvise_mode) assert_int_equal(huge, 0);
    kw_backend_destroy(be);
}

static void test_same_logits(void **state) {
    (void)state;
    kw_backend *be = NULL;
    assert_int_equal(kw_backend_create_cpu(2, &be), 0);
    int32_t ids[12];
    for (int i = 0; i < 12; ++i)
        ids[i] = (int32_t)((uint32_t)i * 2654435761u % 151000u);
    int64_t v_on = 0, v_off = 0;
    setenv("KW_HUGEPAGES", "1", 1);
    float *on = kwfx_model_logits(be, g_dir, NULL, ids, 12, &v_on, NULL);
    setenv("KW_HUGEPAGES", "0", 1);
    float *off = kwfx_model_logits(be, g_dir, NULL, ids, 12, &v_off, NULL);
    unsetenv("KW_HUGEPAGES");
    assert_int_equal(v_on, v_off);
    assert_memory_equal(on, off, (size_t)(12 * v_on) * sizeof *on);
    free(on);
    free(off);
    kw_backend_destroy(be);
}

/* The values KW_HUGEPAGES takes: off for 0/off/no/false in any case, on for unset, empty, 1/on/yes/true and (with a
 * warning) anything else. */
static void test_env_values(void **state) {
    (void)state;
    static const char *const off[] = {"0", "off", "OFF", "no", "No", "false", "FALSE"};
    static const char *const on[] = {"", "1", "on", "yes", "TRUE", "2", "maybe"};
    for (size_t i = 0; i < sizeof off / sizeof off[0]; i++) {
        setenv("KW_HUGEPAGES", off[i], 1);
        if (kw_hugepages_enabled() != 0) fail_msg("KW_HUGEPAGES=%s left huge pages on", off[i]);
    }
    for (size_t i = 0; i < sizeof on / sizeof on[0]; i++) {
        setenv("KW_HUGEPAGES", on[i], 1);
        if (kw_hugepages_enabled() != 1) fail_msg("KW_HUGEPAGES=%s turned huge pages off", on[i]);
    }
    unsetenv("KW_HUGEPAGES");
    assert_int_equal(kw_hugepages_enabled(), 1);
}

int main(int argc, char **argv) {
    const int advice = argc == 2 && strcmp(argv[1], "advice") == 0;
    if (argc != 2 || (!advice && strcmp(argv[1], "logits") != 0)) {
        fprintf(stderr, "usage: test_model_hugepages advice|logits\n");
        return 2;
    }
    const char *mode = thp_mode();
    if (advice && (mode[0] == '\0' || strcmp(mode, "never") == 0)) {
        fprintf(stderr, "test_model_hugepages: no transparent huge pages here (THP \"%s\"): skipped\n", mode);
        return 77;
    }
    g_madvise_mode = strcmp(mode, "madvise") == 0;
    const struct CMUnitTest advice_tests[] = {
        cmocka_unit_test(test_alloc_advice),
        cmocka_unit_test(test_weight_slabs),
        cmocka_unit_test(test_model_advice),
    };
    const struct CMUnitTest logits_tests[] = {
        cmocka_unit_test(test_env_values),
        cmocka_unit_test(test_same_logits),
    };
    return advice ? cmocka_run_group_tests(advice_tests, setup, teardown)
                  : cmocka_run_group_tests(logits_tests, setup, teardown);
}

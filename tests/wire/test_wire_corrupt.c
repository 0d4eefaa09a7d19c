/* test_wire_corrupt.c: handcrafted corruption of a valid three-section blob (tests/wire/wire_mutate.h). Every
 * single-fault mutation must be rejected with its expected status by the one-shot reader and by the streaming decoder
 * in several chunkings; truncation at every byte must be KW_E_WIRE_TRUNCATED with exactly the complete sections
 * delivered; trailing bytes KW_E_WIRE_TRAILING; declared sizes beyond a limit must be rejected before anything is
 * allocated for them (a counting allocator proves it) and a large declared section must cost memory only in
 * proportion to the bytes received; every allocation failure must surface as KW_E_NOMEM without leaks (ASan). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "tests/wire/wire_mutate.h"

static wm_blob g_base;

static int setup(void **state) {
    (void)state;
    wm_base(&g_base);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    free(g_base.data);
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// A counting allocator that can fail the n-th allocation

typedef struct counting {
    size_t calls, fail_at; /* fail_at 0: never */
    size_t live, peak, largest;
} counting;

static void *count_realloc(void *user, void *ptr, size_t size) {
    counting *c = user;
    if (++c->calls == c->fail_at) return NULL;
    size_t old = 0;
    uint8_t *base = ptr ? (uint8_t *)ptr - 16 : NULL;
    if (base) memcpy(&old, base, sizeof old);
    uint8_t *p = realloc(base, size + 16);
    if (!p) return NULL;
    memcpy(p, &size, sizeof size);
    c->live = c->live - old + size;
    c->peak = c->live > c->peak ? c->live : c->peak;
    c->largest = size > c->largest ? size : c->largest;
    return p + 16;
}

static void count_free(void *user, void *ptr) {
    counting *c = user;
    if (!ptr) return;
    size_t old;
    memcpy(&old, (uint8_t *)ptr - 16, sizeof old);
    c->live -= old;
    free((uint8_t *)ptr - 16);
}

// ---------------------------------------------------------------------------------------------------------------

static void test_base_is_valid(void **state) {
    (void)state;
    wt_blob_out a, b;
    assert_int_equal(wt_decode_oneshot(g_base.data, g_base.size, NULL, &a), 0);
    assert_int_equal(wt_decode_stream(g_base.data, g_base.size, NULL, 1, &b), 0);
    assert_int_equal(a.n, 3);
    assert_true(wt_blob_out_equal(&a, &b));
    assert_int_equal(a.layers[0].index_encoding, KW_WIRE_INDEX_BITMAP);
    assert_int_equal(a.layers[1].compressed, 1);
    assert_int_equal(a.layers[2].index_encoding, KW_WIRE_INDEX_VARINT);
    wt_blob_out_free(&a);
    wt_blob_out_free(&b);
}

static void test_catalogue(void **state) {
    (void)state;
    for (size_t i = 0; i < WM_N_CASES; ++i) {
        const wm_case *c = &wm_cases[i];
        size_t size;
        uint8_t *p = wm_apply(&g_base, c, &size);
        assert_memory_not_equal(p, g_base.data, size);
        static const size_t chunks[] = {0, 1, 13};
        for (size_t k = 0; k < 4; ++k) {
            wt_blob_out o;
            const int rc =
                k == 3 ? wt_decode_oneshot(p, size, NULL, &o) : wt_decode_stream(p, size, NULL, chunks[k], &o);
            if (rc != c->expect)
                fail_msg("%s (chunking %zu): got %s (%s), expected %s", c->name, k, kw_status_name(rc),
                         kw_error_detail(), kw_status_name(c->expect));
            wt_blob_out_free(&o);
        }
        free(p);
    }
}

/* The v1.1 catalogues on their own base blobs (which must themselves decode): the codecs and zero points, the
 * outlier table with the pre-RoPE flag, the rotation flags and the rANS-coded body. */
static void test_catalogue_v11(void **state) {
    (void)state;
    void (*const bases[4])(wm_blob *) = {wm_base11, wm_base11o, wm_base11r, wm_base11z};
    const wm_case *const catalogues[4] = {wm_cases11, wm_cases11o, wm_cases11r, wm_cases11z};
    const size_t n_catalogue[4] = {WM_N_CASES11, WM_N_CASES11O, WM_N_CASES11R, WM_N_CASES11Z};
    for (int which = 0; which < 4; ++which) {
        wm_blob b;
        bases[which](&b);
        const wm_case *cases = catalogues[which];
        const size_t n_cases = n_catalogue[which];
        wt_blob_out ok;
        assert_int_equal(wt_decode_oneshot(b.data, b.size, NULL, &ok), 0);
        assert_int_equal(ok.n, 1);
        wt_blob_out_free(&ok);
        for (size_t i = 0; i < n_cases; ++i) {
            const wm_case *c = &cases[i];
            size_t size;
            uint8_t *p = wm_apply(&b, c, &size);
            assert_memory_not_equal(p, b.data, size);
            for (size_t chunk = 0; chunk < 3; ++chunk) {
                wt_blob_out o;
                const int rc = chunk == 0 ? wt_decode_oneshot(p, size, NULL, &o)
                                          : wt_decode_stream(p, size, NULL, chunk == 1 ? 1 : 13, &o);
                if (rc != c->expect)
                    fail_msg("%s (chunking %zu): got %s (%s), expected %s", c->name, chunk, kw_status_name(rc),
                             kw_error_detail(), kw_status_name(c->expect));
                wt_blob_out_free(&o);
            }
            free(p);
        }
        free(b.data);
    }
}

static void test_truncation_every_byte(void **state) {
    (void)state;
    wt_blob_out full;
    assert_int_equal(wt_decode_oneshot(g_base.data, g_base.size, NULL, &full), 0);
    for (size_t len = 0; len < g_base.size; ++len) {
        uint8_t *p = wt_xmalloc(len); /* exactly len bytes: ASan catches any read past them */
        memcpy(p, g_base.data, len);
        for (int k = 0; k < 2; ++k) {
            wt_blob_out o;
            const int rc = k ? wt_decode_oneshot(p, len, NULL, &o) : wt_decode_stream(p, len, NULL, 5, &o);
            if (rc != KW_E_WIRE_TRUNCATED) fail_msg("length %zu: %s", len, kw_status_name(rc));
            /* the sections that were complete came out, and nothing else */
            uint32_t complete = 0;
            for (int s = 0; s < 3; ++s)
                if (len >= (s < 2 ? g_base.sec[s + 1] : g_base.trailer)) complete = (uint32_t)s + 1;
            assert_int_equal(o.n, complete);
            for (uint32_t s = 0; s < o.n; ++s)
                assert_memory_equal(o.layers[s].k, full.layers[s].k, (size_t)WM_H * WM_D * full.layers[s].n_tokens * 4);
            wt_blob_out_free(&o);
        }
        free(p);
    }
    wt_blob_out_free(&full);
}

static void test_trailing(void **state) {
    (void)state;
    uint8_t *p = wt_xmalloc(2 * g_base.size);
    memcpy(p, g_base.data, g_base.size);
    memcpy(p + g_base.size, g_base.data, g_base.size);
    const size_t sizes[] = {g_base.size + 1, 2 * g_base.size};
    for (int i = 0; i < 2; ++i) {
        wt_blob_out o;
        assert_int_equal(wt_decode_oneshot(p, sizes[i], NULL, &o), KW_E_WIRE_TRAILING);
        wt_blob_out_free(&o);
        assert_int_equal(wt_decode_stream(p, sizes[i], NULL, 1, &o), KW_E_WIRE_TRAILING);
        assert_int_equal(o.n, 3);
        wt_blob_out_free(&o);
    }
    /* a finished decoder accepts empty feeds, rejects bytes, and the error is sticky */
    kw_wire_decoder *d;
    assert_int_equal(kw_wire_decoder_create(NULL, &d), 0);
    size_t used, at = 0;
    int ev;
    while ((ev = kw_wire_decoder_feed(d, p + at, g_base.size - at, &used)) != KW_WIRE_EVENT_END) {
        assert_true(ev > 0);
        at += used;
    }
    assert_int_equal(kw_wire_decoder_feed(d, p, 0, &used), KW_WIRE_EVENT_END);
    assert_int_equal(kw_wire_decoder_finish(d), 0);
    assert_int_equal(kw_wire_decoder_feed(d, p, 1, &used), KW_E_WIRE_TRAILING);
    assert_int_equal(kw_wire_decoder_feed(d, p, 0, &used), KW_E_WIRE_TRAILING);
    assert_int_equal(kw_wire_decoder_finish(d), KW_E_WIRE_TRAILING);
    kw_wire_decoder_destroy(d);
    free(p);
}

/* Lower caller limits are enforced with KW_E_WIRE_LIMIT too. */
static void test_caller_limits(void **state) {
    (void)state;
    struct {
        kw_wire_limits lim;
    } cases[7];
    for (int i = 0; i < 7; ++i)
        kw_wire_limits_default(&cases[i].lim);
    cases[0].lim.max_layers = 7;
    cases[1].lim.max_heads = 1;
    cases[2].lim.max_head_dim = 8;
    cases[3].lim.max_positions = 60;
    cases[4].lim.max_tokens = 19; /* section 1 has 20 */
    cases[5].lim.max_groups = 1;  /* section 2 has 2 */
    cases[6].lim.max_section_bytes = 400;
    for (int i = 0; i < 7; ++i) {
        const kw_wire_decoder_options opt = {.limits = cases[i].lim};
        wt_blob_out o;
        assert_int_equal(wt_decode_oneshot(g_base.data, g_base.size, &opt, &o), KW_E_WIRE_LIMIT);
        wt_blob_out_free(&o);
    }
    kw_wire_decoder_options opt = {0};
    kw_wire_limits_default(&opt.limits);
    opt.limits.max_blob_bytes = g_base.size - 1;
    wt_blob_out o;
    assert_int_equal(wt_decode_stream(g_base.data, g_base.size, &opt, 1, &o), KW_E_WIRE_LIMIT);
    wt_blob_out_free(&o);
    opt.limits.max_blob_bytes = g_base.size;
    assert_int_equal(wt_decode_stream(g_base.data, g_base.size, &opt, 1, &o), 0);
    wt_blob_out_free(&o);
}

/* Every LIMIT rejection happens before the decoder allocates for the declared size. */
static void test_limits_before_allocation(void **state) {
    (void)state;
    for (size_t i = 0; i < WM_N_CASES; ++i) {
        if (wm_cases[i].expect != KW_E_WIRE_LIMIT) continue;
        size_t size;
        uint8_t *p = wm_apply(&g_base, &wm_cases[i], &size);
        counting c = {0};
        const kw_wire_allocator a = {count_realloc, count_free, &c};
        const kw_wire_decoder_options opt = {.alloc = &a};
        wt_blob_out o;
        assert_int_equal(wt_decode_oneshot(p, size, &opt, &o), KW_E_WIRE_LIMIT);
        wt_blob_out_free(&o);
        /* the decoder and reader structs, plus buffers for the sections before the bad one: never the size the bad
         * field declares (>= 2000 layers, 5000 groups, 4 GiB) */
        if (c.largest > 8192) fail_msg("%s: an allocation of %zu bytes", wm_cases[i].name, c.largest);
        assert_int_equal(c.live, 0);
        free(p);
    }
}

/* A section that declares 512 MB and sends 100 KB costs about 100 KB. */
static void test_memory_follows_bytes(void **state) {
    (void)state;
    const uint32_t H = 256, D = 1024, T = 500;
    const uint32_t raw = 2u * H * T * D * 2; /* K and V bf16 passthrough: 524,288,000 bytes */
    uint8_t head[KW_WIRE_HEADER_BYTES + KW_WIRE_SECTION_HEAD_BYTES + KW_WIRE_GROUP_DESC_BYTES] = {0};
    uint8_t *h = head;
    memcpy(h, kw__wire_magic, 8);
    kw_store_le16(h + KW__HDR_VERSION, 1);
    kw_store_le16(h + KW__HDR_HEADER_BYTES, 64);
    kw_store_le16(h + KW__HDR_N_LAYERS, 1);
    kw_store_le16(h + KW__HDR_N_SECTIONS, 1);
    kw_store_le16(h + KW__HDR_N_HEADS, (uint16_t)H);
    kw_store_le16(h + KW__HDR_HEAD_DIM, (uint16_t)D);
    kw_store_le32(h + KW__HDR_N_POSITIONS, T);
    h[KW__HDR_SRC_DTYPE] = KW_WIRE_DTYPE_BF16;
    wm_seal_header(h);
    uint8_t *s = h + KW_WIRE_HEADER_BYTES;
    memcpy(s, kw__wire_section_marker, 4);
    s[KW__SEC_INDEX_ENC] = KW_WIRE_INDEX_FULL;
    kw_store_le32(s + KW__SEC_N_TOKENS, T);
    kw_store_le32(s + KW__SEC_RAW_BYTES, raw);
    kw_store_le32(s + KW__SEC_STORED_BYTES, raw);
    kw_store_le16(s + KW__SEC_N_GROUPS, 1);
    kw_store_le32(s + 32, T);
    s[36] = KW_WIRE_CODEC_BF16;
    s[40] = KW_WIRE_CODEC_BF16;
    counting c = {0};
    const kw_wire_allocator a = {count_realloc, count_free, &c};
    const kw_wire_decoder_options opt = {.alloc = &a};
    kw_wire_decoder *d;
    assert_int_equal(kw_wire_decoder_create(&opt, &d), 0);
    size_t used;
    assert_int_equal(kw_wire_decoder_feed(d, head, KW_WIRE_HEADER_BYTES, &used), KW_WIRE_EVENT_HEADER);
    assert_int_equal(kw_wire_decoder_feed(d, head + 64, sizeof head - 64, &used), KW_WIRE_EVENT_NEED_MORE);
    uint8_t chunk[1000] = {0};
    size_t received = sizeof head - 64;
    for (int i = 0; i < 100; ++i) {
        assert_int_equal(kw_wire_decoder_feed(d, chunk, sizeof chunk, &used), KW_WIRE_EVENT_NEED_MORE);
        received += sizeof chunk;
        assert_true(c.peak <= 2 * received + 16384);
    }
    assert_true(c.largest < 300000);
    assert_int_equal(kw_wire_decoder_finish(d), KW_E_WIRE_TRUNCATED);
    kw_wire_decoder_destroy(d);
    assert_int_equal(c.live, 0);
}

/* Allocation failure at every point: KW_E_NOMEM or success, never a crash or a leak. */
static void test_allocation_failures(void **state) {
    (void)state;
    for (int mode = 0; mode < 2; ++mode) {
        int succeeded = 0;
        for (size_t n = 1; n < 64 && !succeeded; ++n) {
            counting c = {.fail_at = n};
            const kw_wire_allocator a = {count_realloc, count_free, &c};
            const kw_wire_decoder_options opt = {.alloc = &a};
            wt_blob_out o;
            const int rc = mode ? wt_decode_oneshot(g_base.data, g_base.size, &opt, &o)
                                : wt_decode_stream(g_base.data, g_base.size, &opt, 3, &o);
            wt_blob_out_free(&o);
            assert_true(rc == 0 || rc == KW_E_NOMEM);
            assert_int_equal(c.live, 0);
            succeeded = rc == 0;
        }
        assert_true(succeeded);
    }
}

/* Position blocks crafted byte by byte (FORMAT.md §6). */
static void test_index_blocks(void **state) {
    (void)state;
    uint32_t out[8];
    const uint8_t overlong[] = {0x81, 0x00, 0x05};
    assert_int_equal(kw__wire_index_decode(KW_WIRE_INDEX_VARINT, overlong, 3, 2, 100, out), KW_E_WIRE_INDICES);
    const uint8_t ok[] = {0x81, 0x01, 0x05}; /* 129, then 129 + 1 + 5 */
    assert_int_equal(kw__wire_index_decode(KW_WIRE_INDEX_VARINT, ok, 3, 2, 200, out), 0);
    assert_int_equal(out[0], 129);
    assert_int_equal(out[1], 135);
    const uint8_t big[] = {0xff, 0xff, 0xff, 0xff, 0x1f}; /* > 32 bits */
    assert_int_equal(kw__wire_index_decode(KW_WIRE_INDEX_VARINT, big, 5, 1, 1u << 24, out), KW_E_WIRE_INDICES);
    const uint8_t max32[] = {0xff, 0xff, 0xff, 0xff, 0x0f}; /* 2^32 - 1: valid varint, position out of range */
    assert_int_equal(kw__wire_index_decode(KW_WIRE_INDEX_VARINT, max32, 5, 1, 1u << 24, out), KW_E_WIRE_INDICES);
    const uint8_t extra[] = {0x01, 0x01, 0x01}; /* 3 varints for 2 tokens */
    assert_int_equal(kw__wire_index_decode(KW_WIRE_INDEX_VARINT, extra, 3, 2, 100, out), KW_E_WIRE_INDICES);
    const uint8_t delta_overflow[] = {0xfe, 0xff, 0xff, 0xff, 0x0f, 0x05}; /* 2^32-2, then +6: no wrap-around */
    assert_int_equal(kw__wire_index_decode(KW_WIRE_INDEX_VARINT, delta_overflow, 6, 2, 1u << 24, out),
                     KW_E_WIRE_INDICES);
    const uint8_t u16_equal[] = {5, 0, 5, 0};
    assert_int_equal(kw__wire_index_decode(KW_WIRE_INDEX_U16, u16_equal, 4, 2, 100, out), KW_E_WIRE_INDICES);
    const uint8_t u32_far[] = {1, 0, 0, 0, 100, 0, 0, 0};
    assert_int_equal(kw__wire_index_decode(KW_WIRE_INDEX_U32, u32_far, 8, 2, 100, out), KW_E_WIRE_INDICES);
    assert_int_equal(kw__wire_index_decode(KW_WIRE_INDEX_U32, u32_far, 8, 2, 101, out), 0);
    const uint8_t range_wrap[] = {0xff, 0xff, 0xff, 0xff};
    assert_int_equal(kw__wire_index_decode(KW_WIRE_INDEX_RANGE, range_wrap, 4, 2, 100, out), KW_E_WIRE_INDICES);
    assert_int_equal(kw__wire_index_decode(KW_WIRE_INDEX_FULL, NULL, 0, 101, 100, out), KW_E_WIRE_INDICES);
    const uint8_t bitmap[] = {0x05, 0x01}; /* positions 0, 2, 8 of 9 */
    assert_int_equal(kw__wire_index_decode(KW_WIRE_INDEX_BITMAP, bitmap, 2, 3, 9, out), 0);
    assert_int_equal(out[2], 8);
    assert_int_equal(kw__wire_index_decode(KW_WIRE_INDEX_BITMAP, bitmap, 2, 2, 9, out), KW_E_WIRE_INDICES);
    const uint8_t bitmap_pad[] = {0x05, 0x03};
    assert_int_equal(kw__wire_index_decode(KW_WIRE_INDEX_BITMAP, bitmap_pad, 2, 4, 9, out), KW_E_WIRE_RESERVED);
    assert_int_equal(kw__wire_index_decode(KW_WIRE_INDEX_U16, u16_equal, 3, 2, 100, out), KW_E_WIRE_CORRUPT);
}

static void test_api_misuse(void **state) {
    (void)state;
    kw_wire_decoder *d;
    assert_int_equal(kw_wire_decoder_create(NULL, &d), 0);
    size_t used;
    assert_int_equal(kw_wire_decoder_feed(d, NULL, 5, &used), KW_E_INVALID_ARG);
    assert_null(kw_wire_decoder_header(d));
    assert_null(kw_wire_decoder_section(d));
    assert_int_equal(kw_wire_decoder_finish(d), KW_E_WIRE_TRUNCATED);
    kw_wire_decoder_reset(d); /* reusable after an error */
    assert_int_equal(kw_wire_decoder_feed(d, g_base.data, g_base.size, &used), KW_WIRE_EVENT_HEADER);
    kw_wire_decoder_destroy(d);
    kw_wire_decoder_destroy(NULL);
    kw_wire_reader_close(NULL);
    const kw_wire_allocator half = {count_realloc, NULL, NULL};
    const kw_wire_decoder_options opt = {.alloc = &half};
    assert_int_equal(kw_wire_decoder_create(&opt, &d), KW_E_INVALID_ARG);
    /* a magic mismatch is reported from the first wrong byte, without waiting for the header */
    assert_int_equal(kw_wire_decoder_create(NULL, &d), 0);
    const uint8_t wrong = 0x88;
    assert_int_equal(kw_wire_decoder_feed(d, &wrong, 1, &used), KW_E_WIRE_MAGIC);
    kw_wire_decoder_destroy(d);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_base_is_valid),
        cmocka_unit_test(test_catalogue),
        cmocka_unit_test(test_catalogue_v11),
        cmocka_unit_test(test_truncation_every_byte),
        cmocka_unit_test(test_trailing),
        cmocka_unit_test(test_caller_limits),
        cmocka_unit_test(test_limits_before_allocation),
        cmocka_unit_test(test_memory_follows_bytes),
        cmocka_unit_test(test_allocation_failures),
        cmocka_unit_test(test_index_blocks),
        cmocka_unit_test(test_api_misuse),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

#!/usr/bin/env bash
# codec_floor.sh [ROUNDS]: the memory traffic of `kvwire bench codec`'s int8 per-token row without its arithmetic, on
# 56 MiB of input (the bench's 58.7 MB bf16 K and V): glibc memcpy (the bench's baseline), a copy with non-temporal
# stores, reading the input alone, writing it alone (regular and non-temporal stores), and one pass of each codec's
# traffic with nothing computed: encode-like (read n bytes, write n/2: the int8 codes) and decode-like (read n/2,
# write n: bf16 out of int8 codes; regular and non-temporal stores). Best of ROUNDS by thread CPU time, in ms and as
# the ratio memcpy time / time (the bench's "x mcpy" for a codec that did only this). Issue 10 item 5's tenth pass
# (docs/BENCHMARKS.md): the floors, against which the codecs' arithmetic is what is left. Not part of CI; Linux
# x86-64 with AVX2, needs cc.
set -euo pipefail
. "$(dirname "$0")/bench_lib.sh" codec_floor.sh "${1:-}" 15
cat >"$dir/f.c" <<'C'
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "thread_clock.h"
static void store(void *p, __m256i v, int nt) {
    if (nt)
        _mm256_stream_si256((__m256i *)p, v);
    else
        _mm256_storeu_si256((__m256i *)p, v);
}
static void copy_nt(uint8_t *d, const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n; i += 64) {
        store(d + i, _mm256_loadu_si256((const __m256i *)(s + i)), 1);
        store(d + i + 32, _mm256_loadu_si256((const __m256i *)(s + i + 32)), 1);
    }
    _mm_sfence();
}
static uint64_t read_all(const uint8_t *s, size_t n) {
    __m256i a = _mm256_setzero_si256(), b = a;
    for (size_t i = 0; i < n; i += 64) {
        a = _mm256_xor_si256(a, _mm256_loadu_si256((const __m256i *)(s + i)));
        b = _mm256_xor_si256(b, _mm256_loadu_si256((const __m256i *)(s + i + 32)));
    }
    return (uint64_t)_mm256_extract_epi64(_mm256_xor_si256(a, b), 0);
}
static void write_all(uint8_t *d, size_t n, int nt) {
    const __m256i v = _mm256_set1_epi8(3);
    for (size_t i = 0; i < n; i += 64) {
        store(d + i, v, nt);
        store(d + i + 32, v, nt);
    }
    if (nt) _mm_sfence();
}
/* 64 bytes in, 32 out: bf16 pairs to their high bytes (int8 codes' traffic) */
static void enc_like(uint8_t *d, const uint8_t *s, size_t n) {
    const __m256i hi = _mm256_set1_epi16((short)0xff00);
    for (size_t i = 0; i < n; i += 64) {
        const __m256i a = _mm256_srli_epi16(_mm256_and_si256(_mm256_loadu_si256((const __m256i *)(s + i)), hi), 8);
        const __m256i b =
            _mm256_srli_epi16(_mm256_and_si256(_mm256_loadu_si256((const __m256i *)(s + i + 32)), hi), 8);
        store(d + i / 2, _mm256_packus_epi16(a, b), 0);
    }
}
/* 32 bytes in, 64 out: codes widened to 16 bits (bf16 out of int8 codes' traffic) */
static void dec_like(uint8_t *d, const uint8_t *s, size_t n_out, int nt) {
    for (size_t i = 0; i < n_out; i += 64) {
        store(d + i, _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(s + i / 2))), nt);
        store(d + i + 32, _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(s + i / 2 + 16))), nt);
    }
    if (nt) _mm_sfence();
}
int main(int argc, char **argv) {
    const int rounds = atoi(argv[1]);
    const size_t n = (size_t)56 << 20;
    uint8_t *a = aligned_alloc(64, n), *b = aligned_alloc(64, n);
    if (!a || !b) return 1;
    memset(a, 1, n);
    memset(b, 2, n);
    enum { K = 9 };
    const char *names[K] = {"memcpy (glibc)",       "copy, NT stores",        "read n",
                            "write n",              "write n, NT stores",     "encode-like: read n, write n/2",
                            "decode-like: read n/2, write n", "decode-like, NT stores", "write n/2"};
    double best[K];
    for (int k = 0; k < K; ++k)
        best[k] = 1e30;
    uint64_t sink = 0;
    for (int r = 0; r < rounds; ++r)
        for (int k = 0; k < K; ++k) {
            const double t0 = now();
            switch (k) {
            case 0: memcpy(b, a, n); break;
            case 1: copy_nt(b, a, n); break;
            case 2: sink += read_all(a, n); break;
            case 3: write_all(b, n, 0); break;
            case 4: write_all(b, n, 1); break;
            case 5: enc_like(b, a, n); break;
            case 6: dec_like(b, a, n, 0); break;
            case 7: dec_like(b, a, n, 1); break;
            default: write_all(b, n / 2, 0); break;
            }
            const double t = now() - t0;
            best[k] = t < best[k] ? t : best[k];
        }
    for (int k = 0; k < K; ++k)
        printf("  %-32s %6.2f ms  %5.2fx memcpy\n", names[k], best[k] * 1e3, best[0] / best[k]);
    volatile uint64_t keep = sink + b[n / 2];
    (void)keep;
    return 0;
}
C
cc -O2 -mavx2 "$dir/f.c" -o "$dir/f"
echo "56 MiB, best of $rounds by thread CPU time, load average $(cut -d' ' -f1-3 /proc/loadavg):"
"$dir/f" "$rounds"

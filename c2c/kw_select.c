/* kw_select.c: token selection for the sharer (see kw_select.h for the modes and the rules). */
#include "c2c/kw_select.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_status.h"
#include "kernels/kw_select_math.h"

static const char *const kw_select_names[KW_SELECT_COUNT] = {
    "full", "front", "back", "random", "knorm_topk", "vnorm_topk", "proj_vnorm_topk", "delta_proj_vnorm_topk"};

const char *kw_select_mode_name(enum kw_select_mode mode) {
    return (unsigned)mode < KW_SELECT_COUNT ? kw_select_names[mode] : NULL;
}

int kw_select_mode_parse(const char *name, enum kw_select_mode *out) {
    KW_RETURN_IF(name == NULL || out == NULL, KW_E_INVALID_ARG, "selection: NULL argument");
    for (int i = 0; i < KW_SELECT_COUNT; ++i)
        if (strcmp(name, kw_select_names[i]) == 0) {
            *out = (enum kw_select_mode)i;
            return 0;
        }
    KW_FAIL(KW_E_INVALID_ARG,
            "unknown selection \"%s\" (full, front, back, random, knorm_topk, vnorm_topk, proj_vnorm_topk, "
            "delta_proj_vnorm_topk)",
            name);
}

int kw_select_mode_receiver_aware(enum kw_select_mode mode) {
    return mode == KW_SELECT_PROJ_VNORM || mode == KW_SELECT_DELTA_PROJ_VNORM;
}

int kw_select_policy_check(const kw_select_policy *pol) {
    KW_RETURN_IF(pol == NULL, KW_E_INVALID_ARG, "selection: NULL policy");
    KW_RETURN_IF((unsigned)pol->mode >= KW_SELECT_COUNT, KW_E_INVALID_ARG, "selection: unknown mode %d",
                 (int)pol->mode);
    KW_RETURN_IF(!(pol->proportion >= 0.0 && pol->proportion <= 1.0), KW_E_INVALID_ARG,
                 "selection: proportion %g is outside [0, 1]", pol->proportion);
    KW_RETURN_IF(pol->min_tokens < 1, KW_E_INVALID_ARG, "selection: min_tokens %lld must be >= 1",
                 (long long)pol->min_tokens);
    KW_RETURN_IF(pol->skip < 0, KW_E_INVALID_ARG, "selection: skip %lld is negative", (long long)pol->skip);
    return 0;
}

int kw_select_check_skip(const kw_select_policy *pol, int64_t T) {
    if (pol->skip == 0) return 0;
    const int64_t k = kw_select_count(pol, T);
    KW_RETURN_IF(pol->skip < 0 || pol->skip >= k, KW_E_INVALID_ARG,
                 "selection: skip %lld is not below the %lld tokens %s keeps of %lld", (long long)pol->skip,
                 (long long)k, kw_select_mode_name(pol->mode), (long long)T);
    return 0;
}

int64_t kw_select_count(const kw_select_policy *pol, int64_t T) {
    if (pol->mode == KW_SELECT_FULL || T <= 0) return T > 0 ? T : 0;
    int64_t k = (int64_t)nearbyint((double)T * pol->proportion); /* round half to even, as Python's round */
    if (k < pol->min_tokens) k = pol->min_tokens;
    return k < T ? k : T;
}

/* ------------------------------------------------------------------------------------------------------------
 * Random: a partial Fisher-Yates shuffle driven by splitmix64
 */

static uint64_t kw_mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

#define KW_GOLDEN 0x9e3779b97f4a7c15ull

static int kw_cmp_i64(const void *a, const void *b) {
    const int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* The shuffle's first k entries are the first k of the ranking whatever k is (step i never touches entries below i);
 * ranks [skip, k) are moved to the front and sorted. */
static void kw_select_random(const kw_select_policy *pol, int64_t T, int64_t k, int32_t section, int32_t layer,
                             int64_t *out) {
    uint64_t state = kw_mix64(pol->seed ^ kw_mix64(((uint64_t)(uint32_t)section << 32) | (uint32_t)layer));
    for (int64_t i = 0; i < T; ++i)
        out[i] = i;
    for (int64_t i = 0; i < k; ++i) {
        state += KW_GOLDEN;
        const uint64_t r = kw_mix64(state), range = (uint64_t)(T - i);
        const int64_t j = i + (int64_t)(((unsigned __int128)r * range) >> 64); /* uniform in [i, T) up to 2^-64 */
        const int64_t tmp = out[i];
        out[i] = out[j];
        out[j] = tmp;
    }
    memmove(out, out + pol->skip, (size_t)(k - pol->skip) * sizeof *out);
    qsort(out, (size_t)(k - pol->skip), sizeof *out, kw_cmp_i64);
}

/* ------------------------------------------------------------------------------------------------------------
 * Norm top-k: a min-heap of the k best (the root is the worst kept), better = larger score, then lower position
 */

/* finite scores only (the key order of kernels/kw_select_math.h, shared with the CUDA top-k) */
static int kw_better(const float *score, int64_t a, int64_t b) {
    return kw_selm_key(score[a], (uint32_t)a) > kw_selm_key(score[b], (uint32_t)b);
}

static void kw_sift_down(int64_t *heap, int64_t n, int64_t i, const float *score) {
    for (;;) {
        const int64_t l = 2 * i + 1, r = l + 1;
        int64_t worst = i;
        if (l < n && kw_better(score, heap[worst], heap[l])) worst = l;
        if (r < n && kw_better(score, heap[worst], heap[r])) worst = r;
        if (worst == i) return;
        const int64_t tmp = heap[i];
        heap[i] = heap[worst];
        heap[worst] = tmp;
        i = worst;
    }
}

static void kw_sift_up(int64_t *heap, int64_t i, const float *score) {
    while (i > 0) {
        const int64_t parent = (i - 1) / 2;
        if (!kw_better(score, heap[parent], heap[i])) return;
        const int64_t tmp = heap[i];
        heap[i] = heap[parent];
        heap[parent] = tmp;
        i = parent;
    }
}

void kw_select_scores(enum kw_select_mode mode, int64_t T, int32_t H, int32_t D, const float *k, const float *v,
                      float *out) {
    const float *x = mode == KW_SELECT_KNORM ? k : mode == KW_SELECT_VNORM ? v : NULL;
    for (int64_t t = 0; t < T; ++t) {
        if (x == NULL) {
            out[t] = 1.0f;
            continue;
        }
        float sum = 0.0f;
        for (int32_t h = 0; h < H; ++h)
            sum += kw_selm_row_norm(x, KW_DTYPE_F32, (t * H + h) * (int64_t)D, D);
        out[t] = kw_selm_score(sum, H);
    }
}

/* The k best finite scores, then ranks [skip, k) of them: popping the heap's root (the worst kept) until skip are
 * left puts the worst n - skip at the end in order. */
static int64_t kw_select_norm(int64_t T, int64_t k, int64_t skip, const float *score, int64_t *out) {
    int64_t n = 0;
    for (int64_t t = 0; t < T; ++t) {
        if (!isfinite(score[t])) continue;
        if (n < k) {
            out[n] = t;
            kw_sift_up(out, n++, score);
        } else if (k > 0 && kw_better(score, t, out[0])) {
            out[0] = t;
            kw_sift_down(out, n, 0, score);
        }
    }
    if (skip > 0) {
        if (n <= skip) return 0;
        for (int64_t m = n; m > skip; --m) {
            const int64_t worst = out[0];
            out[0] = out[m - 1];
            kw_sift_down(out, m - 1, 0, score);
            out[m - 1] = worst;
        }
        memmove(out, out + skip, (size_t)(n - skip) * sizeof *out);
        n -= skip;
    }
    qsort(out, (size_t)n, sizeof *out, kw_cmp_i64);
    return n;
}

int kw_select_positions(const kw_select_policy *pol, int64_t T, int32_t H, int32_t D, const float *k, const float *v,
                        int32_t section, int32_t layer, float *scratch, int64_t *out, int64_t *n_out) {
    KW_FORWARD(kw_select_policy_check(pol));
    KW_RETURN_IF(T < 1 || T > (int64_t)UINT32_MAX || H < 1 || D < 1 || out == NULL || n_out == NULL, KW_E_INVALID_ARG,
                 "selection: bad arguments (T %lld, H %d, D %d)", (long long)T, (int)H, (int)D);
    KW_FORWARD(kw_select_check_skip(pol, T));
    const int64_t n = kw_select_count(pol, T), skip = pol->skip;
    switch (pol->mode) {
    case KW_SELECT_FULL:
    case KW_SELECT_FRONT: /* ranks [skip, n) are positions skip .. n - 1 */
        for (int64_t i = 0; i < n - skip; ++i)
            out[i] = skip + i;
        *n_out = n - skip;
        return 0;
    case KW_SELECT_BACK: /* ranks [skip, n) are positions T - n .. T - 1 - skip */
        for (int64_t i = 0; i < n - skip; ++i)
            out[i] = T - n + i;
        *n_out = n - skip;
        return 0;
    case KW_SELECT_RANDOM:
        kw_select_random(pol, T, n, section, layer, out);
        *n_out = n - skip;
        return 0;
    case KW_SELECT_KNORM:
    case KW_SELECT_VNORM: {
        const float *x = pol->mode == KW_SELECT_KNORM ? k : v;
        KW_RETURN_IF(x == NULL || scratch == NULL, KW_E_INVALID_ARG, "selection: %s needs the rows and scratch",
                     kw_select_mode_name(pol->mode));
        kw_select_scores(pol->mode, T, H, D, k, v, scratch);
        *n_out = kw_select_norm(T, n, skip, scratch, out);
        return 0;
    }
    case KW_SELECT_PROJ_VNORM:
    case KW_SELECT_DELTA_PROJ_VNORM:
        KW_FAIL(KW_E_INVALID_ARG, "selection: %s scores need the receiver's rows and the fuser (c2c/kw_rscore.h)",
                kw_select_mode_name(pol->mode));
    case KW_SELECT_COUNT:
        break;
    }
    KW_FAIL(KW_E_INVALID_ARG, "selection: unknown mode %d", (int)pol->mode);
}

int kw_select_top_scores(const kw_select_policy *pol, int64_t T, const float *scores, int64_t *out, int64_t *n_out) {
    KW_FORWARD(kw_select_policy_check(pol));
    KW_RETURN_IF(T < 1 || T > (int64_t)UINT32_MAX || scores == NULL || out == NULL || n_out == NULL, KW_E_INVALID_ARG,
                 "selection: bad arguments (T %lld)", (long long)T);
    KW_FORWARD(kw_select_check_skip(pol, T));
    *n_out = kw_select_norm(T, kw_select_count(pol, T), pol->skip, scores, out);
    return 0;
}

/* kw_load_rng.c: xoshiro256** (Blackman and Vigna), splitmix64 seeding, and the variates kvload needs. */
#include "loadgen/kw_load_rng.h"

#include "common/kw_status.h"

#include <math.h>

static uint64_t kw_load_splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void kw_load_rng_seed(kw_load_rng *r, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; ++i)
        r->s[i] = kw_load_splitmix64(&x);
}

uint64_t kw_load_rng_derive(uint64_t seed, const char *name) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (const unsigned char *p = (const unsigned char *)name; *p; ++p)
        h = (h ^ *p) * 0x100000001b3ull;
    uint64_t x = seed ^ h;
    return kw_load_splitmix64(&x);
}

static inline uint64_t kw_load_rotl(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
}

uint64_t kw_load_rng_next(kw_load_rng *r) {
    uint64_t *s = r->s;
    const uint64_t result = kw_load_rotl(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = kw_load_rotl(s[3], 45);
    return result;
}

double kw_load_rng_uniform(kw_load_rng *r) {
    return (double)(kw_load_rng_next(r) >> 11) * 0x1.0p-53;
}

uint64_t kw_load_rng_below(kw_load_rng *r, uint64_t n) {
    if (n == 0) return 0;
    unsigned __int128 m = (unsigned __int128)kw_load_rng_next(r) * n;
    uint64_t low = (uint64_t)m;
    if (low < n) {
        const uint64_t threshold = -n % n;
        while (low < threshold) {
            m = (unsigned __int128)kw_load_rng_next(r) * n;
            low = (uint64_t)m;
        }
    }
    return (uint64_t)(m >> 64);
}

double kw_load_rng_normal(kw_load_rng *r) {
    for (;;) {
        const double u = 2.0 * kw_load_rng_uniform(r) - 1.0;
        const double v = 2.0 * kw_load_rng_uniform(r) - 1.0;
        const double s = u * u + v * v;
        if (s > 0.0 && s < 1.0) return u * sqrt(-2.0 * log(s) / s);
    }
}

double kw_load_rng_gamma(kw_load_rng *r, double shape, double scale) {
    if (shape < 1.0) {
        /* Gamma(a) = Gamma(a + 1) * U^(1/a); 1 - uniform is in (0, 1]. */
        const double g = kw_load_rng_gamma(r, shape + 1.0, 1.0);
        return g * pow(1.0 - kw_load_rng_uniform(r), 1.0 / shape) * scale;
    }
    const double d = shape - 1.0 / 3.0;
    const double c = 1.0 / sqrt(9.0 * d);
    for (;;) {
        double x, v;
        do {
            x = kw_load_rng_normal(r);
            v = 1.0 + c * x;
        } while (v <= 0.0);
        v = v * v * v;
        const double u = 1.0 - kw_load_rng_uniform(r);
        if (u < 1.0 - 0.0331 * (x * x) * (x * x)) return d * v * scale;
        if (log(u) < 0.5 * x * x + d * (1.0 - v + log(v))) return d * v * scale;
    }
}

void kw_load_rng_shuffle(kw_load_rng *r, size_t *a, size_t n) {
    for (size_t i = n; i > 1; --i) {
        const size_t j = (size_t)kw_load_rng_below(r, i);
        const size_t t = a[i - 1];
        a[i - 1] = a[j];
        a[j] = t;
    }
}

double kw_load_arrival_gap(kw_load_rng *r, double rate, double burstiness) {
    return kw_load_rng_gamma(r, burstiness, 1.0 / (rate * burstiness));
}

int kw_load_arrivals_make(size_t n, double rate, double burstiness, uint64_t seed, double *offsets) {
    KW_RETURN_IF(!(rate > 0.0), KW_E_INVALID_ARG, "the request rate must be > 0 (got %g)", rate);
    KW_RETURN_IF(!(burstiness > 0.0) || isinf(burstiness), KW_E_INVALID_ARG,
                 "the burstiness must be a finite number > 0 (got %g)", burstiness);
    if (isinf(rate)) {
        for (size_t i = 0; i < n; ++i)
            offsets[i] = 0.0;
        return 0;
    }
    kw_load_rng r;
    kw_load_rng_seed(&r, seed);
    double t = 0.0;
    for (size_t i = 0; i < n; ++i) {
        t += kw_load_arrival_gap(&r, rate, burstiness);
        offsets[i] = t;
    }
    if (n > 0 && offsets[n - 1] > 0.0) {
        const double factor = ((double)n / rate) / offsets[n - 1];
        for (size_t i = 0; i < n; ++i)
            offsets[i] *= factor;
    }
    return 0;
}

/* kw_cpu_math.c: bulk fp32 exp for the CPU backend's softmax-like loops.
 *
 * The AVX-512 path reduces x = n ln2 + r with a two-constant Cody-Waite split (exact n ln2_hi), evaluates e^r on
 * |r| <= ln2/2 with Cephes' degree-6 minimax polynomial in Horner form with FMAs, and scales by 2^n with VSCALEFPS,
 * which also produces the correct overflow to +Inf and gradual underflow to subnormals and zero. Its error is
 * checked over a dense sweep of the whole input range by test_kernels_backend_ops (at most 2 ulp against the
 * correctly rounded exp); the other ISAs call libm's expf. NaN inputs give NaN.
 */
#include "kernels/cpu/kw_cpu.h"

#include <math.h>

#if KW_CPU_X86
#include <immintrin.h>

KW_TARGET_AVX512 static void kw_exp_avx512(float *y, const float *x, int64_t n) {
    const __m512 log2e = _mm512_set1_ps(1.44269504088896341f);
    const __m512 ln2_hi = _mm512_set1_ps(0.693359375f), ln2_lo = _mm512_set1_ps(-2.12194440e-4f);
    const __m512 hi = _mm512_set1_ps(88.8f), lo = _mm512_set1_ps(-104.0f);
    const __m512 c6 = _mm512_set1_ps(1.9875691500e-4f), c5 = _mm512_set1_ps(1.3981999507e-3f);
    const __m512 c4 = _mm512_set1_ps(8.3334519073e-3f), c3 = _mm512_set1_ps(4.1665795894e-2f);
    const __m512 c2 = _mm512_set1_ps(1.6666665459e-1f), c1 = _mm512_set1_ps(5.0000001201e-1f);
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1u);
        const __m512 xin = _mm512_maskz_loadu_ps(m, x + i);
        const __mmask16 nan = _mm512_cmp_ps_mask(xin, xin, _CMP_UNORD_Q);
        const __m512 xc = _mm512_max_ps(_mm512_min_ps(xin, hi), lo);
        const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(xc, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m512 r = _mm512_fnmadd_ps(k, ln2_hi, xc);
        r = _mm512_fnmadd_ps(k, ln2_lo, r);
        __m512 p = _mm512_fmadd_ps(c6, r, c5);
        p = _mm512_fmadd_ps(p, r, c4);
        p = _mm512_fmadd_ps(p, r, c3);
        p = _mm512_fmadd_ps(p, r, c2);
        p = _mm512_fmadd_ps(p, r, c1);
        /* e^r = (r + r^2 P(r)) + 1, as Cephes orders it: the small part first, then the 1 */
        p = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), one);
        __m512 e = _mm512_scalef_ps(p, k);
        e = _mm512_mask_mov_ps(e, nan, xin);
        _mm512_mask_storeu_ps(y + i, m, e);
    }
}
#endif

void kw__cpu_exp_f32(enum kw_cpu_isa isa, float *y, const float *x, int64_t n) {
#if KW_CPU_X86
    if (isa == KW_CPU_ISA_AVX512) {
        kw_exp_avx512(y, x, n);
        return;
    }
#endif
    (void)isa;
    for (int64_t i = 0; i < n; ++i)
        y[i] = expf(x[i]);
}

/* exp(x) of 16 float32 lanes for x <= 0, for the CPU kernels (AVX-512F): range reduction to
 * 2^n * exp(f), |f| <= ln(2) / 2, a degree-6 polynomial (relative error ~2e-7); lanes at or
 * below -87 give 0. */
#ifndef SGLC_EXP512_H
#define SGLC_EXP512_H
#include <immintrin.h>

/* exp(x) of 16 lanes, x <= 0 (exp_neg's steps; lanes at or below -87 give 0) */
static inline __m512 exp512_neg(__m512 x) {
    __mmask16 tiny = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_LE_OQ);
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
    __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_mul_ps(_mm512_sub_ps(t, n), _mm512_set1_ps(0.69314718055994531f));
    __m512 p = _mm512_set1_ps(0.0013888889f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.0083333338f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.041666668f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.16666667f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_maskz_mov_ps(~tiny, _mm512_scalef_ps(p, n));
}
#endif

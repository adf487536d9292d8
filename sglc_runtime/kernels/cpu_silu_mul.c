/* SwiGLU's silu(gate) * up for bfloat16 rows of a fused gate/up projection, as torch computes
 * it: s = bf16(g / (1 + exp(-g))) in float32, out = bf16(s * up). (Another exp than torch's
 * Sleef: a value can differ by one bf16 step; results below bf16's normal range flush to 0.) Built by cpu_kernels.py with the other CPU
 * kernels. gu: (T, 2 F) with row stride gu_stride (gate then up); out: (T, F). */
#include <immintrin.h>
#include <stdint.h>

#include "exp512.h"

static inline __m512 load_bf16(const uint16_t *p, __mmask16 m) {
    __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}

static inline __m512 round_bf16(__m512 x) { /* to bf16 (nearest even) and back */
    __m256i b = (__m256i)_mm512_cvtneps_pbh(x);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16));
}

void bf16_silu_mul(const uint16_t *gu, int64_t gu_stride, int64_t T, int64_t F, uint16_t *out,
                   int num_threads) {
#pragma omp parallel for num_threads(num_threads) if (T * F >= 65536)
    for (int64_t t = 0; t < T; t++) {
        const uint16_t *g = gu + t * gu_stride, *u = g + F;
        uint16_t *o = out + t * F;
        for (int64_t i = 0; i < F; i += 16) {
            __mmask16 m = F - i >= 16 ? 0xffff : (__mmask16)((1u << (F - i)) - 1);
            __m512 x = load_bf16(g + i, m);
            /* e = exp(-|x|) <= 1; silu = x / (1 + e) for x >= 0, x e / (1 + e) below */
            __m512 e = exp512_neg(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(x)));
            __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
            __m512 num = _mm512_mask_mul_ps(x, neg, x, e);
            __m512 s = round_bf16(_mm512_div_ps(num, _mm512_add_ps(_mm512_set1_ps(1.0f), e)));
            __m256i y = (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(s, load_bf16(u + i, m)));
            _mm256_mask_storeu_epi16(o + i, m, y);
        }
    }
}

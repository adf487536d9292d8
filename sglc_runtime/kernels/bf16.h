/* bfloat16 <-> float32 for the CPU kernels (bf16 values travel as their uint16 bits). */
#ifndef SGLC_BF16_H
#define SGLC_BF16_H
#include <stdint.h>
#include <string.h>

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f) { /* round to nearest even, as torch does */
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN */
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

#ifdef __AVX512F__
#include <immintrin.h>

/* 16 lanes of each (AVX-512F; the rounding is f32_to_bf16's, NaN and subnormals included,
 * where vcvtneps2bf16 would flush subnormals) */
static inline __m512 bf16x16_load(const uint16_t *p) {
    __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}

static inline __m512i bf16x16_round_bits(__m512 f) { /* f32_to_bf16 << 16, as 32-bit lanes */
    __m512i u = _mm512_castps_si512(f);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb);
    __mmask16 nan = _mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q);
    r = _mm512_mask_or_epi32(r, nan, u, _mm512_set1_epi32(0x400000));
    return _mm512_and_si512(r, _mm512_set1_epi32((int)0xffff0000u));
}

static inline __m512 bf16x16_round(__m512 f) { /* to bf16 and back to float32 */
    return _mm512_castsi512_ps(bf16x16_round_bits(f));
}

static inline void bf16x16_store(uint16_t *p, __m512 f) {
    _mm256_storeu_si256((__m256i *)p,
                        _mm512_cvtepi32_epi16(_mm512_srli_epi32(bf16x16_round_bits(f), 16)));
}
#endif
#endif

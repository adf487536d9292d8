/* The 4-bit / 8-bit linear's shared part (cpu_q4_linear.c's contract and packing): a group's
 * B rows dequantized to bf16 pairs, and a row of float32 sums stored to y. Included by the AMX
 * path (cpu_q4_linear.c) and the AVX-512 path (cpu_q4_avx512.c). */
#ifndef SGLC_Q4_DEQUANT_H
#define SGLC_Q4_DEQUANT_H
#include <immintrin.h>
#include <stdint.h>

#define GROUP_BYTES 320
#define Q8_GROUP_BYTES 544 /* 8-bit: 16 d (float16), then 16 B rows of 32 codes */

/* B row kk of a group: 32 bf16, pair j = column n0 + j */
static inline __m512bh dequant_brow(const uint8_t *codes, __m512 dlo, __m512 mlo, __m512 dhi,
                                    __m512 mhi) {
    /* a code's float is a lookup (vpermps reads an index's low 4 bits): the shuffle port does
     * what int-to-float conversions would do on the port the FMAs need */
    const __m512 values = _mm512_set_ps(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    __m128i b = _mm_loadu_si128((const __m128i *)codes);
    __m512i clo = _mm512_cvtepu8_epi32(b);  /* low nibbles in bits 0-3 */
    __m512i chi = _mm512_srli_epi32(clo, 4); /* high nibbles there (one shuffle, not two) */
    __m512 lo = _mm512_fmadd_ps(_mm512_permutexvar_ps(clo, values), dlo, mlo);
    __m512 hi = _mm512_fmadd_ps(_mm512_permutexvar_ps(chi, values), dhi, mhi);
    return _mm512_cvtne2ps_pbh(hi, lo);
}

/* 8-bit B row kk (Q8_0: W = d * c, c a signed byte): bytes 2 j + e hold column j's code of
 * input 2 kk + e for j < 8, bytes 16 + 2 j + e column 8 + j's */
static inline __m512bh dequant_brow_q8(const uint8_t *codes, __m512 dlo, __m512 dhi) {
    __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)codes)));
    __m512 hi = _mm512_cvtepi32_ps(
        _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(codes + 16))));
    return _mm512_cvtne2ps_pbh(_mm512_mul_ps(hi, dhi), _mm512_mul_ps(lo, dlo));
}

/* a group's scales and offsets spread over B-row lanes: lane i of *lo is column i / 2's,
 * lane i of *hi is column 8 + i / 2's */
static inline void spread16(const uint8_t *p, __m512 *lo, __m512 *hi) {
    const __m512i ilo = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
    __m512 v = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); /* 16 float16 */
    *lo = _mm512_permutexvar_ps(ilo, v);
    *hi = _mm512_permutexvar_ps(_mm512_add_epi32(ilo, _mm512_set1_epi32(8)), v);
}

static inline void group_scales(const uint8_t *grp, __m512 *dlo, __m512 *mlo, __m512 *dhi,
                                __m512 *mhi) {
    spread16(grp, dlo, dhi);
    spread16(grp + 32, mlo, mhi);
}

/* a group's 16 B rows dequantized into bg (a 1 KB tile's bf16 pairs) */
static inline void dequant_group(const uint8_t *blk, int64_t g, int bits, uint16_t *bg) {
    if (bits == 4) {
        const uint8_t *grp = blk + g * GROUP_BYTES;
        __m512 dlo, mlo, dhi, mhi;
        group_scales(grp, &dlo, &mlo, &dhi, &mhi);
        for (int kk = 0; kk < 16; kk++)
            _mm512_store_si512((void *)(bg + 32 * kk), (__m512i)dequant_brow(
                                   grp + 64 + 16 * kk, dlo, mlo, dhi, mhi));
    } else {
        const uint8_t *grp = blk + g * Q8_GROUP_BYTES;
        __m512 dlo, dhi;
        spread16(grp, &dlo, &dhi);
        for (int kk = 0; kk < 16; kk++)
            _mm512_store_si512((void *)(bg + 32 * kk),
                               (__m512i)dequant_brow_q8(grp + 32 + 32 * kk, dlo, dhi));
    }
}

/* a C tile row (16 float32) to y: float32 when out_f32, else bf16 (nearest even) */
static inline void store_row(void *y, int64_t at, const float *c, int out_f32) {
    __m512 v = _mm512_load_ps(c);
    if (out_f32)
        _mm512_storeu_ps((float *)y + at, v);
    else
        _mm256_storeu_si256((__m256i *)((uint16_t *)y + at), (__m256i)_mm512_cvtneps_pbh(v));
}

#endif

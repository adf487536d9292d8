/* RMSNorm of bfloat16 rows as HF's LlamaRMSNorm computes it: in float32,
 * y = bf16(x * rsqrt(mean(x^2) + eps)), then out = bf16(y * w) (a bf16 product, as torch
 * multiplies two bf16 tensors). Built with cpu_decode_attention.c into one library by
 * cpu_kernels.py.
 * x, out: (rows, dim) with row strides x_stride / out_stride; w: (dim,).
 * With res (rows, dim, contiguous; else NULL), the rows normalized are s = bf16(x + res),
 * written to sum (rows, dim, contiguous): the decoder's residual add in the same call. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "bf16.h"

/* one row, dim a multiple of 16 (the sum of squares in 16 lanes, then across them) */
static void row16(const uint16_t *xr, const uint16_t *w, uint16_t *o, int dim, float eps,
                  const uint16_t *rr, uint16_t *sr) {
    __m512 ss = _mm512_setzero_ps();
    for (int d = 0; d < dim; d += 16) {
        __m512 x = bf16x16_load(xr + d);
        if (rr) {
            x = bf16x16_round(_mm512_add_ps(x, bf16x16_load(rr + d)));
            bf16x16_store(sr + d, x);
        }
        ss = _mm512_fmadd_ps(x, x, ss);
    }
    if (rr) xr = sr;
    __m512 inv = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(ss) / (float)dim + eps));
    for (int d = 0; d < dim; d += 16) {
        __m512 y = bf16x16_round(_mm512_mul_ps(bf16x16_load(xr + d), inv)); /* bf16(x * r) */
        bf16x16_store(o + d, _mm512_mul_ps(y, bf16x16_load(w + d)));
    }
}

void bf16_rms_norm(const uint16_t *x, int64_t x_stride, const uint16_t *w, uint16_t *out,
                   int64_t out_stride, int64_t rows, int dim, float eps, const uint16_t *res,
                   uint16_t *sum, int num_threads) {
#pragma omp parallel for num_threads(num_threads) if (rows * dim >= 65536)
    for (int64_t r = 0; r < rows; r++) {
        const uint16_t *xr = x + r * x_stride;
        uint16_t *o = out + r * out_stride;
        if (dim % 16 == 0) {
            row16(xr, w, o, dim, eps, res ? res + r * dim : NULL, res ? sum + r * dim : NULL);
            continue;
        }
        if (res) { /* s = bf16(x + res), as torch adds two bf16 tensors */
            const uint16_t *rr = res + r * dim;
            uint16_t *sr = sum + r * dim;
#pragma omp simd
            for (int d = 0; d < dim; d++) sr[d] = f32_to_bf16(bf16_to_f32(xr[d]) + bf16_to_f32(rr[d]));
            xr = sr;
        }
        float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
        for (int d = 0; d < dim; d++) ss += bf16_to_f32(xr[d]) * bf16_to_f32(xr[d]);
        float inv = 1.0f / sqrtf(ss / (float)dim + eps);
#pragma omp simd
        for (int d = 0; d < dim; d++) {
            float y = bf16_to_f32(f32_to_bf16(bf16_to_f32(xr[d]) * inv));  /* bf16(x * r) */
            o[d] = f32_to_bf16(y * bf16_to_f32(w[d]));
        }
    }
}

/* RMSNorm of bfloat16 rows as HF's LlamaRMSNorm computes it: in float32,
 * y = bf16(x * rsqrt(mean(x^2) + eps)), then out = bf16(y * w) (a bf16 product, as torch
 * multiplies two bf16 tensors). Built with cpu_decode_attention.c into one library by cpu_kernels.py.
 * x, out: (rows, dim) with row strides x_stride / out_stride; w: (dim,). */
#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float bf(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t to_bf(float f) { /* round to nearest even */
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

void bf16_rms_norm(const uint16_t *x, int64_t x_stride, const uint16_t *w, uint16_t *out,
                   int64_t out_stride, int64_t rows, int dim, float eps, int num_threads) {
#pragma omp parallel for num_threads(num_threads) if (rows >= 64)
    for (int64_t r = 0; r < rows; r++) {
        const uint16_t *xr = x + r * x_stride;
        uint16_t *o = out + r * out_stride;
        float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
        for (int d = 0; d < dim; d++) ss += bf(xr[d]) * bf(xr[d]);
        float inv = 1.0f / sqrtf(ss / (float)dim + eps);
#pragma omp simd
        for (int d = 0; d < dim; d++) o[d] = to_bf(bf(to_bf(bf(xr[d]) * inv)) * bf(w[d]));
    }
}

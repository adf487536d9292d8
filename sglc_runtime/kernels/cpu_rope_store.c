/* RoPE on the new tokens' queries and keys, and the keys and values stored into the paged KV
 * pool, in one pass over a layer's fused q/k/v projection (bfloat16): what LlamaAttention does
 * with LlamaRotaryEmbedding.apply and TokenToKVPool.set_kv, op for op in the same roundings:
 * r = bf16(bf16(x * cos) + roll(x, hd / 2) * signed_sin), the products in float32 (a bf16
 * product is exact there) and one rounding of the sum, as torch's mul and addcmul round.
 * Built by cpu_kernels.py with the other CPU kernels.
 *
 * qkv: (T, (n_q + 2 n_kv) hd), row stride qkv_stride; cos, ssin: (T, hd); q_out: (T, n_q, hd);
 * k, v: pool rows of slot_stride elements ((n_kv, hd) each), n_slots of them; slots: (T,) the
 * new tokens' slots. hd must be even. Returns -1 (writing nothing) when a slot is outside
 * 0 .. n_slots - 1, else 0. */
#include <immintrin.h>
#include <stdint.h>

#include "bf16.h"

static inline void rotate(const uint16_t *x, const uint16_t *cos, const uint16_t *ssin,
                          uint16_t *out, int hd) {
    int half = hd / 2;
    if (half % 16 == 0) { /* 16 lanes of each half at a time */
        for (int d = 0; d < half; d += 16) {
            __m512 lo = bf16x16_load(x + d), hi = bf16x16_load(x + half + d);
            bf16x16_store(out + d, _mm512_fmadd_ps(hi, bf16x16_load(ssin + d), bf16x16_round(
                _mm512_mul_ps(lo, bf16x16_load(cos + d)))));
            bf16x16_store(out + half + d, _mm512_fmadd_ps(lo, bf16x16_load(ssin + half + d),
                bf16x16_round(_mm512_mul_ps(hi, bf16x16_load(cos + half + d)))));
        }
        return;
    }
    for (int d = 0; d < hd; d++) {
        float a = bf16_to_f32(f32_to_bf16(bf16_to_f32(x[d]) * bf16_to_f32(cos[d])));
        float r = bf16_to_f32(x[d < half ? d + half : d - half]) * bf16_to_f32(ssin[d]);
        out[d] = f32_to_bf16(a + r);
    }
}

int bf16_rope_store(const uint16_t *qkv, int64_t qkv_stride, int64_t T, int n_q, int n_kv,
                    int hd, const uint16_t *cos, const uint16_t *ssin, uint16_t *q_out,
                    uint16_t *k, uint16_t *v, int64_t slot_stride, int64_t n_slots,
                    const int64_t *slots, int num_threads) {
    for (int64_t t = 0; t < T; t++)
        if (slots[t] < 0 || slots[t] >= n_slots) return -1;
#pragma omp parallel for num_threads(num_threads) if (T >= 64)
    for (int64_t t = 0; t < T; t++) {
        const uint16_t *row = qkv + t * qkv_stride, *c = cos + t * hd, *s = ssin + t * hd;
        for (int h = 0; h < n_q; h++)
            rotate(row + h * hd, c, s, q_out + (t * n_q + h) * hd, hd);
        for (int h = 0; h < n_kv; h++) {
            rotate(row + (n_q + h) * hd, c, s, k + slots[t] * slot_stride + h * hd, hd);
            const uint16_t *vs = row + (n_q + n_kv + h) * hd;
            uint16_t *vd = v + slots[t] * slot_stride + h * hd;
            for (int d = 0; d < hd; d++) vd[d] = vs[d];
        }
    }
    return 0;
}

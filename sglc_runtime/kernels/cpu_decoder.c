/* A Llama decoder's layers in one C call for a small step (1-128 rows, decode rows and short
 * extends, every row a padded one-query attention row): the other kernels in the order
 * LlamaModel.forward calls them (model/llama.py), with no Python between them. The same
 * kernels on the same inputs, so the same bits as that path (model/fused_decoder.py runs it
 * and says when it applies). Built with cpu_q4_linear.c into the AMX library.
 *
 * x0: (T, D) embeddings; weights: per layer the addresses of its packed qkv, o, gate_up and
 * down projections (kernels/q4_linear.py's packing) and its two RMSNorm weights (bf16);
 * bits: per layer those projections' code widths (4 or 8); kv: per layer the K and V pool
 * buffers (rows of kv_row elements, n_slots of them); cos, ssin: (T, hd) RoPE tables; slots:
 * (T,) the new tokens' KV slots; idx (T, idx_stride), lens (T,): each row's padded KV slots
 * and how many it attends; out: (T, D), the final norm of the last residual stream.
 * scratch: bf16 elements for the intermediates, decoder_scratch_elems() of them.
 * times: NULL, or DECODER_PARTS doubles to which each part's seconds are added (norms, q/k/v
 * projection, RoPE + store, attention, output projection, gate/up projection, SwiGLU, down
 * projection: benchmarks/profile_step.py prints them).
 * Returns 0, or the first failing kernel's code: 1 a projection's shapes, 2 a slot outside
 * the pool (nothing of that layer written), 3 attention head shapes. */
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "cpu_kernels.h"

enum { W_QKV, W_O, W_GU, W_DOWN, W_NORM1, W_NORM2, W_PER_LAYER };
enum { T_NORM, T_QKV, T_ROPE, T_ATTN, T_O, T_GU, T_SILU, T_DOWN, DECODER_PARTS };

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* (adds the seconds since *t to times[part] and restarts *t; nothing without times) */
static inline void lap(double *times, int part, double *t) {
    if (!times) return;
    double n = now();
    times[part] += n - *t;
    *t = n;
}

int decoder_parts(void) { return DECODER_PARTS; }

int64_t decoder_scratch_elems(int64_t T, int D, int n_q, int n_kv, int hd, int F) {
    return T * (3 * (int64_t)D + (int64_t)(n_q + 2 * n_kv) * hd + 2 * (int64_t)n_q * hd +
                3 * (int64_t)F);
}

int bf16_decoder_forward(const uint16_t *x0, int64_t T, int n_layers, int D, int n_q, int n_kv,
                         int hd, int F, const int64_t *weights, const int32_t *bits,
                         const int64_t *kv, int64_t kv_row, int64_t n_slots,
                         const uint16_t *cos, const uint16_t *ssin, const int64_t *slots,
                         const int64_t *idx, int64_t idx_stride, const int64_t *lens,
                         const uint16_t *final_norm, float eps, float scale, uint16_t *out,
                         uint16_t *scratch, double *times, int num_threads) {
    int nqkv = (n_q + 2 * n_kv) * hd, nqh = n_q * hd;
    uint16_t *x = scratch, *res = x + T * D, *h = res + T * D, *qkv = h + T * D,
             *q = qkv + T * nqkv, *o = q + T * nqh, *gu = o + T * nqh, *m = gu + T * 2 * F;
    double t = times ? now() : 0.0;
    memcpy(res, x0, sizeof(uint16_t) * T * D); /* the first layer's residual is its input */
    for (int l = 0; l < n_layers; l++) {
        const int64_t *w = weights + (int64_t)l * W_PER_LAYER;
        const int32_t *b = bits + 4 * l;
        uint16_t *k = (uint16_t *)(intptr_t)kv[2 * l], *v = (uint16_t *)(intptr_t)kv[2 * l + 1];
        if (l == 0) /* h = norm(x) */
            bf16_rms_norm(x0, D, (const uint16_t *)(intptr_t)w[W_NORM1], h, D, T, D, eps, NULL,
                          NULL, num_threads);
        else /* res = x + res, h = norm(res) */
            bf16_rms_norm(x, D, (const uint16_t *)(intptr_t)w[W_NORM1], h, D, T, D, eps, res,
                          res, num_threads);
        lap(times, T_NORM, &t);
        if (bf16_q4_linear(h, D, (const uint8_t *)(intptr_t)w[W_QKV], qkv, nqkv, T, nqkv, D,
                           b[0], 0, num_threads))
            return 1;
        lap(times, T_QKV, &t);
        if (bf16_rope_store(qkv, nqkv, T, n_q, n_kv, hd, cos, ssin, q, k, v, kv_row, n_slots,
                            slots, num_threads))
            return 2;
        lap(times, T_ROPE, &t);
        if (bf16_decode_attention(q, k, v, idx, idx_stride, lens, o, (int)T, n_q, n_kv, hd,
                                  kv_row, scale, num_threads))
            return 3;
        lap(times, T_ATTN, &t);
        if (bf16_q4_linear(o, nqh, (const uint8_t *)(intptr_t)w[W_O], x, D, T, D, nqh, b[1], 0,
                           num_threads))
            return 1;
        lap(times, T_O, &t);
        bf16_rms_norm(x, D, (const uint16_t *)(intptr_t)w[W_NORM2], h, D, T, D, eps, res, res,
                      num_threads);
        lap(times, T_NORM, &t);
        if (bf16_q4_linear(h, D, (const uint8_t *)(intptr_t)w[W_GU], gu, 2 * F, T, 2 * F, D,
                           b[2], 0, num_threads))
            return 1;
        lap(times, T_GU, &t);
        bf16_silu_mul(gu, 2 * F, T, F, m, num_threads);
        lap(times, T_SILU, &t);
        if (bf16_q4_linear(m, F, (const uint8_t *)(intptr_t)w[W_DOWN], x, D, T, D, F, b[3], 0,
                           num_threads))
            return 1;
        lap(times, T_DOWN, &t);
    }
    bf16_rms_norm(x, D, final_norm, out, D, T, D, eps, res, res, num_threads);
    lap(times, T_NORM, &t);
    return 0;
}

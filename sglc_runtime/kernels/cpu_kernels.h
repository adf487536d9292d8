/* The CPU kernels' entry points (one per .c file; the contracts are in each file's header
 * comment), for cpu_decoder.c, which runs them in sequence. */
#ifndef SGLC_CPU_KERNELS_H
#define SGLC_CPU_KERNELS_H
#include <stdint.h>

int bf16_decode_attention(const uint16_t *q, const uint16_t *k, const uint16_t *v,
                          const int64_t *idx, int64_t idx_stride, const int64_t *lens,
                          uint16_t *out, int b, int n_q, int n_kv, int hd, int64_t kv_row,
                          float scale, int num_threads);
void bf16_rms_norm(const uint16_t *x, int64_t x_stride, const uint16_t *w, uint16_t *out,
                   int64_t out_stride, int64_t rows, int dim, float eps, const uint16_t *res,
                   uint16_t *sum, int num_threads);
int bf16_rope_store(const uint16_t *qkv, int64_t qkv_stride, int64_t T, int n_q, int n_kv,
                    int hd, const uint16_t *cos, const uint16_t *ssin, uint16_t *q_out,
                    uint16_t *k, uint16_t *v, int64_t slot_stride, int64_t n_slots,
                    const int64_t *slots, int num_threads);
void bf16_silu_mul(const uint16_t *gu, int64_t gu_stride, int64_t T, int64_t F, uint16_t *out,
                   int num_threads);
int bf16_q4_linear(const uint16_t *x, int64_t x_stride, const uint8_t *w, void *y,
                   int64_t y_stride, int64_t rows, int64_t n, int64_t k, int bits, int out_f32,
                   int num_threads);
/* bf16_q4_linear's AVX-512 path (cpu_q4_avx512.c): nblocks = n / 16, blk_bytes one column
 * block's packed bytes */
int q4_linear_avx512(const uint16_t *x, int64_t x_stride, const uint8_t *w, void *y,
                     int64_t y_stride, int64_t rows, int64_t nblocks, int64_t k, int64_t blk_bytes,
                     int bits, int out_f32, int num_threads);
#endif

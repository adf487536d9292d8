/* The 4-bit / 8-bit linear on AVX-512-BF16 without AMX (Zen 4/5, Ice Lake and later): the
 * contract and the packing are cpu_q4_linear.c's; bf16_q4_linear calls q4_linear_avx512 where
 * AMX is not granted or q4_use_amx(0) turned it off. */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "cpu_kernels.h"
#include "q4_dequant.h"

/* ---- AVX-512 (no AMX): one float32 vector per row and block of 16 columns, one vdpbf16ps per
 * input pair with that row's pair broadcast, the pairs in order. Up to V_ROWS rows a group's B
 * rows are dequantized into registers as they are used; past that a column panel (V_NB blocks
 * over all k) is dequantized once into a thread's buffer and the rows read it V_ROWS at a
 * time. Both make the same operations in the same order for each output, so a row's result
 * does not depend on how many rows share the call. */
#define V_NB 2   /* column blocks side by side: independent accumulations for a single row */
#define V_ROWS 6 /* rows per pass: V_NB * V_ROWS accumulators stay in registers */
#define V_NB_STREAM 4 /* blocks side by side for 1-2 rows streamed: more chains in flight */

/* B row kk of group g of a block, dequantized (4 or 8 bits; sc: the group's spread scales) */
static inline __attribute__((always_inline)) __m512bh brow_at(const uint8_t *grp, int kk, int bits,
                                                             const __m512 sc[4]) {
    if (bits == 4) return dequant_brow(grp + 64 + 16 * kk, sc[0], sc[1], sc[2], sc[3]);
    return dequant_brow_q8(grp + 32 + 32 * kk, sc[0], sc[2]);
}

static inline __attribute__((always_inline)) void scales_at(const uint8_t *grp, int bits,
                                                           __m512 sc[4]) {
    if (bits == 4)
        group_scales(grp, &sc[0], &sc[1], &sc[2], &sc[3]);
    else {
        spread16(grp, &sc[0], &sc[2]);
        sc[1] = sc[3] = sc[0];
    }
}

static inline __attribute__((always_inline)) __m512bh bcast_pair(const uint16_t *x) {
    int32_t xp;
    memcpy(&xp, x, 4);
    return (__m512bh)_mm512_set1_epi32(xp);
}

static inline __attribute__((always_inline)) void store_acc(void *y, int64_t at, __m512 a,
                                                           int out_f32) {
    float c[16] __attribute__((aligned(64)));
    _mm512_store_ps(c, a);
    store_row(y, at, c, out_f32);
}

/* nr (<= V_ROWS) rows times nb (<= V_NB_STREAM) blocks starting at blk (blk_bytes apart),
 * dequantizing as it goes */
static inline __attribute__((always_inline)) void stream_avx512(
    const uint16_t *x, int64_t x_stride, const uint8_t *blk, int64_t blk_bytes, int64_t k,
    int nb, void *y, int64_t y_at, int64_t y_stride, int nr, int bits, int out_f32) {
    __m512 acc[V_NB_STREAM][V_ROWS];
    for (int b = 0; b < V_NB_STREAM; b++)
        for (int r = 0; r < V_ROWS; r++) acc[b][r] = _mm512_setzero_ps();
    int64_t gbytes = bits == 4 ? GROUP_BYTES : Q8_GROUP_BYTES;
    for (int64_t g = 0; g < k / 32; g++) {
        __m512 sc[V_NB_STREAM][4];
        for (int b = 0; b < nb; b++) scales_at(blk + b * blk_bytes + g * gbytes, bits, sc[b]);
        for (int kk = 0; kk < 16; kk++) {
            for (int b = 0; b < nb; b++) {
                __m512bh w = brow_at(blk + b * blk_bytes + g * gbytes, kk, bits, sc[b]);
                for (int r = 0; r < V_ROWS && r < nr; r++)
                    acc[b][r] = _mm512_dpbf16_ps(acc[b][r],
                                                 bcast_pair(x + r * x_stride + 32 * g + 2 * kk), w);
            }
        }
    }
    for (int r = 0; r < nr; r++)
        for (int b = 0; b < nb; b++) store_acc(y, y_at + r * y_stride + 16 * b, acc[b][r], out_f32);
}

/* nr (<= V_ROWS) rows times nb blocks of a dequantized panel (block b's pair p at
 * panel + 32 * (b * k / 2 + p)) */
static inline __attribute__((always_inline)) void rows_avx512(
    const uint16_t *x, int64_t x_stride, const uint16_t *panel, int64_t k, int nb, void *y,
    int64_t y_at, int64_t y_stride, int nr, int out_f32) {
    __m512 acc[V_NB][V_ROWS];
    for (int b = 0; b < V_NB; b++)
        for (int r = 0; r < V_ROWS; r++) acc[b][r] = _mm512_setzero_ps();
    int64_t pairs = k / 2;
    for (int64_t p = 0; p < pairs; p++) {
        __m512bh w0 = (__m512bh)_mm512_load_si512((const void *)(panel + 32 * p));
        __m512bh w1 =
            nb > 1 ? (__m512bh)_mm512_load_si512((const void *)(panel + 32 * (pairs + p))) : w0;
        for (int r = 0; r < V_ROWS && r < nr; r++) {
            __m512bh xb = bcast_pair(x + r * x_stride + 2 * p);
            acc[0][r] = _mm512_dpbf16_ps(acc[0][r], xb, w0);
            if (nb > 1) acc[1][r] = _mm512_dpbf16_ps(acc[1][r], xb, w1);
        }
    }
    for (int r = 0; r < nr; r++)
        for (int b = 0; b < nb; b++) store_acc(y, y_at + r * y_stride + 16 * b, acc[b][r], out_f32);
}

/* (one copy per row count, block count and code width: the accumulators stay in registers) */
#define V_CASES(CALL) CALL(1) CALL(2) CALL(3) CALL(4) CALL(5) CALL(6)

static void stream_avx512_n(const uint16_t *x, int64_t x_stride, const uint8_t *blk,
                            int64_t blk_bytes, int64_t k, int nb, void *y, int64_t y_at,
                            int64_t y_stride, int nr, int bits, int out_f32) {
#define S_NB(N, NB)                                                                         \
    if (nb == NB) {                                                                         \
        if (bits == 4)                                                                      \
            stream_avx512(x, x_stride, blk, blk_bytes, k, NB, y, y_at, y_stride, N, 4, out_f32); \
        else                                                                                \
            stream_avx512(x, x_stride, blk, blk_bytes, k, NB, y, y_at, y_stride, N, 8, out_f32); \
    }
#define S_CASE(N) \
    case N: S_NB(N, 1) S_NB(N, 2) S_NB(N, 3) S_NB(N, 4) break;
    switch (nr) { V_CASES(S_CASE) }
#undef S_CASE
#undef S_NB
}

static void rows_avx512_n(const uint16_t *x, int64_t x_stride, const uint16_t *panel, int64_t k,
                          int nb, void *y, int64_t y_at, int64_t y_stride, int nr,
                          int out_f32) {
#define R_CASE(N)                                                                       \
    case N:                                                                             \
        if (nb == 2)                                                                    \
            rows_avx512(x, x_stride, panel, k, 2, y, y_at, y_stride, N, out_f32);       \
        else                                                                            \
            rows_avx512(x, x_stride, panel, k, 1, y, y_at, y_stride, N, out_f32);       \
        break;
    switch (nr) { V_CASES(R_CASE) }
#undef R_CASE
}

/* columns 16 * b0 .. of y for every row, nb (1 or 2) blocks: streamed for a few rows, else
 * through the dequantized panel (nb * k * 16 bf16) in passes of V_ROWS rows */
static void panel_avx512(const uint16_t *x, int64_t x_stride, const uint8_t *w, int64_t blk_bytes,
                         int64_t b0, int nb, int64_t k, void *y, int64_t y_stride, int64_t rows,
                         int bits, int out_f32, uint16_t *panel) {
    if (rows <= V_ROWS) {
        stream_avx512_n(x, x_stride, w + b0 * blk_bytes, blk_bytes, k, nb, y, 16 * b0, y_stride,
                        (int)rows, bits, out_f32);
        return;
    }
    for (int b = 0; b < nb; b++)
        for (int64_t g = 0; g < k / 32; g++)
            dequant_group(w + (b0 + b) * blk_bytes, g, bits, panel + (int64_t)b * 16 * k + 512 * g);
    for (int64_t r = 0; r < rows; r += V_ROWS) {
        int nr = (int)(rows - r < V_ROWS ? rows - r : V_ROWS);
        rows_avx512_n(x + r * x_stride, x_stride, panel, k, nb, y, r * y_stride + 16 * b0,
                      y_stride, nr, out_f32);
    }
}

int q4_linear_avx512(const uint16_t *x, int64_t x_stride, const uint8_t *w, void *y,
                     int64_t y_stride, int64_t rows, int64_t nblocks, int64_t k, int64_t blk_bytes,
                     int bits, int out_f32, int num_threads) {
    int per = rows <= 2 ? V_NB_STREAM : V_NB; /* blocks per task */
    int64_t tasks = (nblocks + per - 1) / per;
    int failed = 0;
#pragma omp parallel num_threads(num_threads)
    {
        /* (streamed rows need no panel) */
        uint16_t *panel = rows > V_ROWS ? _mm_malloc(sizeof(uint16_t) * V_NB * 16 * k, 64) : NULL;
        int lost = rows > V_ROWS && !panel;
        if (lost) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t t = 0; t < tasks; t++) {
            if (lost) continue;
            int64_t b0 = t * per;
            int nb = nblocks - b0 < per ? (int)(nblocks - b0) : per;
            panel_avx512(x, x_stride, w, blk_bytes, b0, nb, k, y, y_stride, rows, bits, out_f32,
                         panel);
        }
        _mm_free(panel); /* (NULL: nothing) */
    }
    return failed ? 4 : 0;
}

/* 1 where bf16_q4_linear multiplies with AMX (q4_amx_init() granted it and q4_use_amx did not
 * turn it off), 0 where with AVX-512 */

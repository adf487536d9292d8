/* y = x . W^T for bfloat16 rows x and 4-bit group-32 weights W on CPUs with AVX-512-BF16,
 * through AMX where Linux grants it: the decode linear at 1-128 rows. There a CPU's linears
 * are bound by reading the weights; this reads 5 bits per weight where a bf16 linear reads 16,
 * dequantizes them with AVX-512 into bf16 pairs and multiplies them with AMX's tdpbf16ps
 * (Sapphire Rapids and later) or AVX-512's vdpbf16ps (Zen 4/5, Ice Lake ...). Built by
 * cpu_kernels.py; the contract and the packing are q4_linear.py's (`pack_q4`, `q4_linear_ref`).
 *
 * W[n, k] = d * c + m in float32, c the weight's 4-bit code and d, m (float16) its group's
 * (32 weights along k) scale and offset, as GGUF's Q4_0/Q4_1 blocks store them: d * c is
 * exact, so W is the float32 dequantization's value. W is rounded to bf16 (nearest even)
 * as a bf16 model's weight is; products of bf16 pairs are summed in float32; y is rounded to
 * bf16. On either instruction set an output's sum runs over k in one fixed order whatever
 * the number of rows, so a row's result does not depend on the rows beside it.
 *
 * The packing streams each thread's weights in one pass: for each block of 16 output columns
 * n0.. and each group g of 32 inputs, 320 bytes: d[n0 + j] for j < 16 (float16), then m,
 * then 16 "B rows" of 16 bytes, row kk holding the codes of inputs 32 g + 2 kk and + 1: byte i
 * has column n0 + i / 2 (input 2 kk + i % 2) in its low nibble and column n0 + 8 + i / 2 in
 * its high nibble. Dequantized, a B row is 16 pairs of bf16, pair j from column n0 + j: AMX's
 * tdpbf16ps operand layout, and vdpbf16ps's with one row's input pair broadcast.
 *
 * x: (rows, k), row stride x_stride; y: (rows, n), row stride y_stride; n a multiple of 16,
 * k a multiple of 32. Call q4_amx_init() (or check q4_amx_selftest()) first to use AMX;
 * without it (or after q4_use_amx(0)) the AVX-512 path runs. */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "cpu_kernels.h"
#include "q4_dequant.h"

/* ---- AMX: a group's 16 B rows are dequantized into a 1 KB tile, x's rows are the A tile,
 * tdpbf16ps accumulates a 16 x 16 float32 C tile per 16 rows of x ---- */
#define AMX_ROWS 64 /* rows per pass: four C tiles share each B tile */
#define AMX_TARGET __attribute__((target("amx-tile,amx-bf16")))
/* gcc's _tile_loadd asm does not say it reads memory: without this barrier the compiler may
 * drop or sink the stores that fill a buffer just before it is loaded as a tile */
#define TILE_LOADD(t, base, stride)            \
    do {                                       \
        __asm__ volatile("" ::: "memory");     \
        _tile_loadd(t, base, stride);          \
    } while (0)

struct tile_config {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

/* tiles: 0-3 = C for rows 0-15, 16-31, 32-47, 48-63 (rows[t] each, 0: unused); 4 = B;
 * 5 = A of a full 16-row C tile, 6 = A of the last one when partial (an A tile's rows must be
 * its C tile's: tdpbf16ps faults otherwise), loaded for each C tile in turn */
static AMX_TARGET void amx_config(const int rows[4]) {
    struct tile_config c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = 0; t < 4; t++) {
        c.rows[t] = (uint8_t)(rows[t] ? rows[t] : 1);
        c.colsb[t] = 64;
    }
    c.rows[4] = 16;
    c.colsb[4] = 64;
    c.rows[5] = 16;
    c.rows[6] = 1;
    for (int t = 0; t < 4; t++)
        if (rows[t] && rows[t] < 16) c.rows[6] = (uint8_t)rows[t];
    c.colsb[5] = c.colsb[6] = 64;
    /* (own asm: gcc 12's _tile_loadconfig tells the compiler it reads 8 bytes of c) */
    __asm__ volatile("ldtilecfg %0" ::"m"(c));
}

static AMX_TARGET void amx_release(void) { _tile_release(); }

/* (tile numbers are instruction immediates: one line per C tile) */
#define AMX_TILE_STEP(T)                                                                  \
    if (rows[T] == 16) {                                                                  \
        TILE_LOADD(5, x + 16 * (T) * x_stride + 32 * g, x_stride * 2);                    \
        _tile_dpbf16ps(T, 5, 4);                                                           \
    } else if (rows[T]) {                                                                 \
        TILE_LOADD(6, x + 16 * (T) * x_stride + 32 * g, x_stride * 2);                    \
        _tile_dpbf16ps(T, 6, 4);                                                           \
    }

static AMX_TARGET void block_amx(const uint16_t *x, int64_t x_stride, const uint8_t *blk,
                                 int64_t k, void *y, int64_t y_at, int64_t y_stride,
                                 const int rows[4], int bits, int out_f32) {
    uint16_t b[2][16 * 32] __attribute__((aligned(64)));
    float c[4][16 * 16] __attribute__((aligned(64)));
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t g = 0; g < k / 32; g++) {
        uint16_t *bg = b[g & 1];
        dequant_group(blk, g, bits, bg);
        TILE_LOADD(4, bg, 64);
        AMX_TILE_STEP(0)
        AMX_TILE_STEP(1)
        AMX_TILE_STEP(2)
        AMX_TILE_STEP(3)
    }
    _tile_stored(0, c[0], 64);
    _tile_stored(1, c[1], 64);
    _tile_stored(2, c[2], 64);
    _tile_stored(3, c[3], 64);
    for (int t = 0; t < 4; t++)
        for (int r = 0; r < rows[t]; r++)
            store_row(y, y_at + (16 * t + r) * y_stride, c[t] + 16 * r, out_f32);
}

/* up to 16 rows: tiles 0 and 1 = C of two column blocks, 4 and 7 = their B, 5 = A */
static AMX_TARGET void amx_config_pair(int rows) {
    struct tile_config c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    c.rows[0] = c.rows[1] = c.rows[5] = (uint8_t)rows;
    c.rows[4] = c.rows[7] = 16;
    c.colsb[0] = c.colsb[1] = c.colsb[4] = c.colsb[5] = c.colsb[7] = 64;
    __asm__ volatile("ldtilecfg %0" ::"m"(c));
}

/* two column blocks side by side over one A tile: two independent accumulations (a single
 * block's tdpbf16ps chain waits on itself) and two groups dequantized per A load */
static AMX_TARGET void pair_amx(const uint16_t *x, int64_t x_stride, const uint8_t *blk0,
                                const uint8_t *blk1, int64_t k, void *y, int64_t y_at,
                                int64_t y_stride, int rows, int bits, int out_f32) {
    uint16_t b[2][2][16 * 32] __attribute__((aligned(64)));
    float c[2][16 * 16] __attribute__((aligned(64)));
    _tile_zero(0);
    _tile_zero(1);
    for (int64_t g = 0; g < k / 32; g++) {
        uint16_t *b0 = b[g & 1][0], *b1 = b[g & 1][1];
        dequant_group(blk0, g, bits, b0);
        dequant_group(blk1, g, bits, b1);
        TILE_LOADD(5, x + 32 * g, x_stride * 2);
        TILE_LOADD(4, b0, 64);
        _tile_dpbf16ps(0, 5, 4);
        TILE_LOADD(7, b1, 64);
        _tile_dpbf16ps(1, 5, 7);
    }
    _tile_stored(0, c[0], 64);
    _tile_stored(1, c[1], 64);
    for (int t = 0; t < 2; t++)
        for (int r = 0; r < rows; r++)
            store_row(y, y_at + r * y_stride + 16 * t, c[t] + 16 * r, out_f32);
}

static AMX_TARGET float amx_ones_product(void) {
    uint16_t ones[16 * 32] __attribute__((aligned(64)));
    float c[16 * 16] __attribute__((aligned(64)));
    for (int i = 0; i < 16 * 32; i++) ones[i] = 0x3f80; /* bf16 1.0 */
    const int rows[4] = {16, 0, 0, 0};
    amx_config(rows);
    _tile_zero(0);
    TILE_LOADD(4, ones, 64);
    TILE_LOADD(5, ones, 64);
    _tile_dpbf16ps(0, 5, 4);
    _tile_stored(0, c, 64);
    amx_release();
    float lo = c[0];
    for (int i = 1; i < 16 * 16; i++) lo = c[i] < lo ? c[i] : lo;
    return lo;
}

/* Linux grants a process AMX's tile state on request; 0 when granted (then AMX runs) */
int q4_amx_init(void) {
    unsigned long features = 0;
    if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */)) return 1;
    if (syscall(SYS_arch_prctl, 0x1022 /* ARCH_GET_XCOMP_PERM */, &features)) return 1;
    return (features >> 18) & 1 ? 0 : 1;
}

/* 0 when a 16 x 32 by 32 x 16 product of ones gives 32 everywhere (run in a child process
 * by cpu_kernels.py before AMX is used: a VM that advertises AMX but faults on it kills only
 * the child) */
int q4_amx_selftest(void) {
    if (q4_amx_init()) return 1;
    return amx_ones_product() == 32.0f ? 0 : 2;
}

static int use_amx = 0;

/* on: 1 to use AMX where q4_amx_init() grants it, 0 for the AVX-512 path, -1 to leave it.
 * Returns the path now taken (1 AMX, 0 AVX-512). */
int q4_use_amx(int on) {
    if (on >= 0) use_amx = on && q4_amx_init() == 0;
    return use_amx;
}

/* bits: 4 (the packing above) or 8 (Q8_0: 544 bytes per 16 columns x 32 inputs, see
 * dequant_brow_q8). y: bf16, or float32 when out_f32 (the LM head's logits: no rounding and
 * no conversion after). */
int bf16_q4_linear(const uint16_t *x, int64_t x_stride, const uint8_t *w, void *y,
                   int64_t y_stride, int64_t rows, int64_t n, int64_t k, int bits, int out_f32,
                   int num_threads) {
    if (k % 32 || n % 16 || rows < 0 || (bits != 4 && bits != 8)) return 1;
    int64_t nblocks = n / 16, blk_bytes = (k / 32) * (bits == 4 ? GROUP_BYTES : Q8_GROUP_BYTES);
    if (rows == 0) return 0;
    if (!use_amx)
        return q4_linear_avx512(x, x_stride, w, y, y_stride, rows, nblocks, k, blk_bytes, bits,
                                 out_f32, num_threads);
    if (rows > 0 && rows <= 16 && nblocks % 2 == 0) { /* (-10% time at 8-16 rows) */
#pragma omp parallel num_threads(num_threads)
        {
            amx_config_pair((int)rows);
#pragma omp for schedule(static)
            for (int64_t p = 0; p < nblocks / 2; p++)
                pair_amx(x, x_stride, w + 2 * p * blk_bytes, w + (2 * p + 1) * blk_bytes, k, y,
                         32 * p, y_stride, (int)rows, bits, out_f32);
            amx_release();
        }
        return 0;
    }
#pragma omp parallel num_threads(num_threads)
    {
        for (int64_t r = 0; r < rows; r += AMX_ROWS) {
            int chunk = (int)(rows - r < AMX_ROWS ? rows - r : AMX_ROWS), tr[4];
            for (int t = 0; t < 4; t++) {
                int left = chunk - 16 * t;
                tr[t] = left <= 0 ? 0 : left < 16 ? left : 16;
            }
            amx_config(tr);
#pragma omp for schedule(static)
            for (int64_t b = 0; b < nblocks; b++)
                block_amx(x + r * x_stride, x_stride, w + b * blk_bytes, k, y,
                          r * y_stride + 16 * b, y_stride, tr, bits, out_f32);
        }
        amx_release();
    }
    return 0;
}

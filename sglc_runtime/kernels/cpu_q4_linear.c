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
    __m512i chi = _mm512_cvtepu8_epi32(_mm_srli_epi16(b, 4));  /* high nibbles there */
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

static int linear_avx512(const uint16_t *x, int64_t x_stride, const uint8_t *w, void *y,
                         int64_t y_stride, int64_t rows, int64_t nblocks, int64_t k,
                         int64_t blk_bytes, int bits, int out_f32, int num_threads) {
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
        return linear_avx512(x, x_stride, w, y, y_stride, rows, nblocks, k, blk_bytes, bits,
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

/* Paged decode attention for bfloat16 KV pools on AVX-512-BF16 CPUs: each request's one query
 * per head attends its KV slots read straight from the pool (no gathered copy). One task per
 * request reads each key row once for all its heads; q.k products are bf16 pairs summed in
 * float32 (vdpbf16ps), the softmax and the weighted sum of values are float32. Built by
 * cpu_kernels.py; the contract is decode_attention_ref's in decode_attention.py.
 *
 * q: (b, n_q, hd); k, v: pool rows of `kv_row` elements ((n_kv, hd) each, head h at h * hd);
 * idx: (b, idx_stride) slot of each position, the first lens[i] used; out: (b, n_q, hd).
 * hd must be a multiple of 32 and at most 256; n_q at most 64. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "bf16.h"

#define BLOCK 64   /* keys scored before their values are summed */
#define MAX_HEADS 64
#define MAX_HD 256

static inline float exp_neg(float x) { /* exp(x), x <= 0; branch-free, rel. error ~2e-7 */
    x = x < -87.0f ? -87.0f : x;
    float t = x * 1.44269504088896341f;
    float n = floorf(t + 0.5f);
    float f = (t - n) * 0.69314718055994531f;
    float p = 1.0f + f * (1.0f + f * (0.5f + f * (0.16666667f + f * (0.041666668f +
              f * (0.0083333338f + f * 0.0013888889f)))));
    int32_t bits = ((int32_t)n + 127) << 23;
    float s;
    memcpy(&s, &bits, 4);
    return x <= -87.0f ? 0.0f : p * s;
}

static inline __m512 bf16x16_to_f32(const uint16_t *p) {
    __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}

/* the sums of four vectors' lanes: [sum(a), sum(b), sum(c), sum(d)] */
static inline __m128 reduce4(__m512 a, __m512 b, __m512 c, __m512 d) {
    __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    __m512 abcd = _mm512_add_ps(
        _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(ab), _mm512_castps_pd(cd))),
        _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(ab), _mm512_castps_pd(cd))));
    /* each 128-bit lane now holds partial [a, b, c, d]: add the four lanes */
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(abcd),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(abcd), 1)));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

/* one request's query heads j = h0 * g .. h1 * g - 1, those of KV heads h0 .. h1 - 1 */
static void one_request(const uint16_t *q, const uint16_t *k, const uint16_t *v,
                        const int64_t *slots, int64_t len, uint16_t *out, int h0, int h1,
                        int n_q, int n_kv, int hd, int64_t kv_row, float scale) {
    int g = n_q / n_kv, nv = hd / 32, j0 = h0 * g, j1 = h1 * g;
    __m512bh qv[MAX_HEADS][MAX_HD / 32];
    float s[MAX_HEADS][BLOCK + 4], m[MAX_HEADS], l[MAX_HEADS];
    float acc[MAX_HEADS][MAX_HD] __attribute__((aligned(64)));
    for (int j = j0; j < j1; j++) {
        for (int c = 0; c < nv; c++)
            qv[j][c] = (__m512bh)_mm512_loadu_si512((const void *)(q + j * hd + c * 32));
        m[j] = -INFINITY;
        l[j] = 0.0f;
        memset(acc[j], 0, sizeof(float) * hd);
    }
    for (int64_t t0 = 0; t0 < len; t0 += BLOCK) {
        int nb = (int)(len - t0 < BLOCK ? len - t0 : BLOCK);
        for (int t = 0; t < nb; t += 4) { /* scores of four keys at a time, every head */
            const uint16_t *kr[4];
            for (int x = 0; x < 4; x++) /* (past the end: the last key again, not used) */
                kr[x] = k + slots[t0 + (t + x < nb ? t + x : nb - 1)] * kv_row;
            for (int h = h0; h < h1; h++) {
                for (int jj = 0; jj < g; jj++) {
                    int j = h * g + jj;
                    __m512 d[4];
                    for (int x = 0; x < 4; x++) {
                        d[x] = _mm512_setzero_ps();
                        for (int c = 0; c < nv; c++)
                            d[x] = _mm512_dpbf16_ps(d[x], qv[j][c], (__m512bh)_mm512_loadu_si512(
                                (const void *)(kr[x] + h * hd + c * 32)));
                    }
                    _mm_storeu_ps(&s[j][t], _mm_mul_ps(reduce4(d[0], d[1], d[2], d[3]),
                                                       _mm_set1_ps(scale)));
                }
            }
        }
        for (int j = j0; j < j1; j++) { /* online softmax over this block */
            float mx = m[j];
#pragma omp simd reduction(max : mx)
            for (int t = 0; t < nb; t++) mx = s[j][t] > mx ? s[j][t] : mx;
            if (mx == -INFINITY) { /* every score so far overflowed to -inf: nothing seen */
                for (int t = 0; t < nb; t++) s[j][t] = 0.0f;
                continue;
            }
            float corr = exp_neg(m[j] - mx), sum = 0.0f;
#pragma omp simd reduction(+ : sum)
            for (int t = 0; t < nb; t++) {
                s[j][t] = exp_neg(s[j][t] - mx);
                sum += s[j][t];
            }
            l[j] = l[j] * corr + sum;
            m[j] = mx;
            if (corr != 1.0f)
                for (int d = 0; d < hd; d++) acc[j][d] *= corr;
        }
        for (int t = 0; t < nb; t++) { /* values: every head of one row at once */
            const uint16_t *vr = v + slots[t0 + t] * kv_row;
            if (t + 1 < nb) _mm_prefetch((const char *)(v + slots[t0 + t + 1] * kv_row), _MM_HINT_T0);
            for (int h = h0; h < h1; h++) {
                for (int c = 0; c < hd / 16; c++) {
                    __m512 vc = bf16x16_to_f32(vr + h * hd + c * 16);
                    for (int jj = 0; jj < g; jj++) {
                        int j = h * g + jj;
                        __m512 a = _mm512_load_ps(acc[j] + c * 16);
                        _mm512_store_ps(acc[j] + c * 16,
                                        _mm512_fmadd_ps(_mm512_set1_ps(s[j][t]), vc, a));
                    }
                }
            }
        }
    }
    for (int j = j0; j < j1; j++) {
        float inv = l[j] > 0.0f ? 1.0f / l[j] : 0.0f;
        for (int d = 0; d < hd; d++) out[j * hd + d] = f32_to_bf16(acc[j][d] * inv);
    }
}

int bf16_decode_attention(const uint16_t *q, const uint16_t *k, const uint16_t *v,
                          const int64_t *idx, int64_t idx_stride, const int64_t *lens,
                          uint16_t *out, int b, int n_q, int n_kv, int hd, int64_t kv_row,
                          float scale, int num_threads) {
    if (hd % 32 || hd > MAX_HD || n_q > MAX_HEADS || n_q % n_kv) return -1;
    /* a task is a request's KV heads, all of them unless there are fewer requests than
     * threads (then one head each, so a single request still uses every core) */
    int split = b < num_threads ? n_kv : 1, per = n_kv / split;
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads)
    for (int task = 0; task < b * split; task++) {
        int i = task / split, h0 = (task % split) * per;
        one_request(q + (int64_t)i * n_q * hd, k, v, idx + (int64_t)i * idx_stride, lens[i],
                    out + (int64_t)i * n_q * hd, h0, h0 + per, n_q, n_kv, hd, kv_row, scale);
    }
    return 0;
}

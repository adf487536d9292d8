/* Paged decode attention for bfloat16 KV pools on AVX-512-BF16 CPUs: each request's one query
 * per head attends its KV slots read straight from the pool (no gathered copy). A task is a
 * request's KV heads (one each when there are fewer requests than threads); each KV head's key
 * and value rows are read once for all its query heads; q.k products are bf16 pairs summed in
 * float32 (vdpbf16ps), the softmax and the weighted sum of values are float32. Built by
 * cpu_kernels.py; the contract is decode_attention_ref's in decode_attention.py.
 *
 * q: (b, n_q, hd); k, v: pool rows of `kv_row` elements ((n_kv, hd) each, head h at h * hd);
 * idx: (b, idx_stride) slot of each position, the first lens[i] used; out: (b, n_q, hd).
 * hd must be a multiple of 32 and at most 256; n_q at most 64. bf16_decode_attention_lse
 * writes float32 outputs and each head's log-sum-exp instead (a cascade's merge needs both). */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "bf16.h"
#include "exp512.h"

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

/* acc[jj] += sum_t p[jj][t] * v_t over nb keys, for G query heads (a constant after
 * inlining) and 64 dimensions from `dim`: G * 4 accumulators stay in registers */
static inline __attribute__((always_inline)) void values64(
        const uint16_t *v, const int64_t *slots, int nb, int64_t kv_row, int off,
        float (*p)[BLOCK + 16], float (*acc)[MAX_HD], int dim, const int G) {
    __m512 a[4][4];
    for (int jj = 0; jj < G; jj++)
        for (int c = 0; c < 4; c++) a[jj][c] = _mm512_load_ps(acc[jj] + dim + 16 * c);
    for (int t = 0; t < nb; t++) {
        const uint16_t *vr = v + slots[t] * kv_row + off + dim;
        if (t + 8 < nb) { /* the two cache lines of a row's 64 dimensions, 8 keys ahead */
            const char *ahead = (const char *)(v + slots[t + 8] * kv_row + off + dim);
            _mm_prefetch(ahead, _MM_HINT_T0);
            _mm_prefetch(ahead + 64, _MM_HINT_T0);
        }
        __m512 vc[4];
        for (int c = 0; c < 4; c++) vc[c] = bf16x16_to_f32(vr + 16 * c);
        for (int jj = 0; jj < G; jj++) {
            __m512 pj = _mm512_set1_ps(p[jj][t]);
            for (int c = 0; c < 4; c++) a[jj][c] = _mm512_fmadd_ps(pj, vc[c], a[jj][c]);
        }
    }
    for (int jj = 0; jj < G; jj++)
        for (int c = 0; c < 4; c++) _mm512_store_ps(acc[jj] + dim + 16 * c, a[jj][c]);
}

/* the query heads j0 .. j0 + g - 1 of KV head h over one request's keys */
static void one_kv_head(const uint16_t *q, const uint16_t *k, const uint16_t *v,
                        const int64_t *slots, int64_t len, uint16_t *out, float *out32,
                        float *lse, int h, int g, int hd, int64_t kv_row, float scale) {
    int nv = hd / 32, off = h * hd;
    __m512bh qv[MAX_HEADS][MAX_HD / 32];
    float s[MAX_HEADS][BLOCK + 16] __attribute__((aligned(64)));
    float m[MAX_HEADS], l[MAX_HEADS];
    float acc[MAX_HEADS][MAX_HD] __attribute__((aligned(64)));
    for (int jj = 0; jj < g; jj++) {
        for (int c = 0; c < nv; c++)
            qv[jj][c] = (__m512bh)_mm512_loadu_si512((const void *)(q + jj * hd + c * 32));
        m[jj] = -INFINITY;
        l[jj] = 0.0f;
        memset(acc[jj], 0, sizeof(float) * hd);
    }
    for (int64_t t0 = 0; t0 < len; t0 += BLOCK) {
        int nb = (int)(len - t0 < BLOCK ? len - t0 : BLOCK);
        for (int t = 0; t < nb; t += 4) { /* scores of four keys at a time */
            const uint16_t *kr[4];
            for (int x = 0; x < 4; x++) /* (past the end: the last key again, not used) */
                kr[x] = k + slots[t0 + (t + x < nb ? t + x : nb - 1)] * kv_row + off;
            for (int x = 0; x < 4 && t0 + t + 32 + x < len; x++) /* keys 8 steps ahead */
                for (int c = 0; c < hd; c += 32)
                    _mm_prefetch((const char *)(k + slots[t0 + t + 32 + x] * kv_row + off + c),
                                 _MM_HINT_T0);
            for (int x = 0; x < 4 && t + x < nb; x++) /* these keys' values, summed below */
                for (int c = 0; c < hd; c += 32)
                    _mm_prefetch((const char *)(v + slots[t0 + t + x] * kv_row + off + c),
                                 _MM_HINT_T1);
            for (int jj = 0; jj < g; jj++) {
                __m512 d[4];
                for (int x = 0; x < 4; x++) {
                    d[x] = _mm512_setzero_ps();
                    for (int c = 0; c < nv; c++)
                        d[x] = _mm512_dpbf16_ps(d[x], qv[jj][c], (__m512bh)_mm512_loadu_si512(
                            (const void *)(kr[x] + c * 32)));
                }
                _mm_storeu_ps(&s[jj][t], _mm_mul_ps(reduce4(d[0], d[1], d[2], d[3]),
                                                    _mm_set1_ps(scale)));
            }
        }
        for (int jj = 0; jj < g; jj++) { /* online softmax over this block */
            __mmask16 last = (__mmask16)((1u << (nb % 16 ? nb % 16 : 16)) - 1);
            int nvec = (nb + 15) / 16;
            __m512 mxv = _mm512_set1_ps(m[jj]);
            for (int i = 0; i < nvec; i++)
                mxv = _mm512_mask_max_ps(mxv, i + 1 < nvec ? 0xffff : last, mxv,
                                         _mm512_loadu_ps(&s[jj][16 * i]));
            float mx = _mm512_reduce_max_ps(mxv);
            if (mx == -INFINITY) { /* every score so far overflowed to -inf: nothing seen */
                for (int t = 0; t < nb; t++) s[jj][t] = 0.0f;
                continue;
            }
            float corr = exp_neg(m[jj] - mx);
            __m512 sum = _mm512_setzero_ps(), mv = _mm512_set1_ps(mx);
            for (int i = 0; i < nvec; i++) {
                __mmask16 keep = i + 1 < nvec ? 0xffff : last;
                __m512 e = _mm512_maskz_mov_ps(
                    keep, exp512_neg(_mm512_sub_ps(_mm512_loadu_ps(&s[jj][16 * i]), mv)));
                _mm512_storeu_ps(&s[jj][16 * i], e);
                sum = _mm512_add_ps(sum, e);
            }
            l[jj] = l[jj] * corr + _mm512_reduce_add_ps(sum);
            m[jj] = mx;
            if (corr != 1.0f)
                for (int d = 0; d < hd; d++) acc[jj][d] *= corr;
        }
        for (int j0 = 0; j0 < g; j0 += 4) /* values, 4 heads x 64 dimensions at a time */
            for (int dim = 0; dim < hd; dim += 64) {
                if (hd - dim < 64) { /* hd = 32 (mod 64): the last 32 dimensions */
                    for (int t = 0; t < nb; t++) {
                        const uint16_t *vr = v + slots[t0 + t] * kv_row + off + dim;
                        for (int c = 0; c < 2; c++) {
                            __m512 vc = bf16x16_to_f32(vr + 16 * c);
                            for (int jj = j0; jj < g && jj < j0 + 4; jj++) {
                                float *a = acc[jj] + dim + 16 * c;
                                _mm512_store_ps(a, _mm512_fmadd_ps(_mm512_set1_ps(s[jj][t]),
                                                                   vc, _mm512_load_ps(a)));
                            }
                        }
                    }
                    continue;
                }
                switch (g - j0 < 4 ? g - j0 : 4) {
                case 1: values64(v, slots + t0, nb, kv_row, off, s + j0, acc + j0, dim, 1); break;
                case 2: values64(v, slots + t0, nb, kv_row, off, s + j0, acc + j0, dim, 2); break;
                case 3: values64(v, slots + t0, nb, kv_row, off, s + j0, acc + j0, dim, 3); break;
                default: values64(v, slots + t0, nb, kv_row, off, s + j0, acc + j0, dim, 4);
                }
            }
    }
    for (int jj = 0; jj < g; jj++) {
        float inv = l[jj] > 0.0f ? 1.0f / l[jj] : 0.0f;
        if (out32)
            for (int d = 0; d < hd; d++) out32[jj * hd + d] = acc[jj][d] * inv;
        else
            for (int d = 0; d < hd; d++) out[jj * hd + d] = f32_to_bf16(acc[jj][d] * inv);
        if (lse) lse[jj] = l[jj] > 0.0f ? m[jj] + logf(l[jj]) : -INFINITY;
    }
}

/* one request's query heads j = h0 * g .. h1 * g - 1, those of KV heads h0 .. h1 - 1 */
static void one_request(const uint16_t *q, const uint16_t *k, const uint16_t *v,
                        const int64_t *slots, int64_t len, uint16_t *out, float *out32,
                        float *lse, int h0, int h1, int n_q, int n_kv, int hd, int64_t kv_row,
                        float scale) {
    int g = n_q / n_kv;
    for (int h = h0; h < h1; h++)
        one_kv_head(q + h * g * hd, k, v, slots, len, out ? out + h * g * hd : NULL,
                    out32 ? out32 + h * g * hd : NULL, lse ? lse + h * g : NULL, h, g, hd,
                    kv_row, scale);
}

static int decode_attention(const uint16_t *q, const uint16_t *k, const uint16_t *v,
                            const int64_t *idx, int64_t idx_stride, const int64_t *lens,
                            uint16_t *out, float *out32, float *lse, int b, int n_q, int n_kv,
                            int hd, int64_t kv_row, float scale, int num_threads) {
    if (hd % 32 || hd > MAX_HD || n_q > MAX_HEADS || n_q % n_kv) return -1;
    /* a task is a request's KV heads, all of them unless there are fewer requests than
     * threads (then one head each, so a single request still uses every core) */
    int split = b < num_threads ? n_kv : 1, per = n_kv / split;
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads)
    for (int task = 0; task < b * split; task++) {
        int i = task / split, h0 = (task % split) * per;
        int64_t o = (int64_t)i * n_q * hd;
        one_request(q + o, k, v, idx + (int64_t)i * idx_stride, lens[i], out ? out + o : NULL,
                    out32 ? out32 + o : NULL, lse ? lse + (int64_t)i * n_q : NULL, h0,
                    h0 + per, n_q, n_kv, hd, kv_row, scale);
    }
    return 0;
}

int bf16_decode_attention(const uint16_t *q, const uint16_t *k, const uint16_t *v,
                          const int64_t *idx, int64_t idx_stride, const int64_t *lens,
                          uint16_t *out, int b, int n_q, int n_kv, int hd, int64_t kv_row,
                          float scale, int num_threads) {
    return decode_attention(q, k, v, idx, idx_stride, lens, out, NULL, NULL, b, n_q, n_kv, hd,
                            kv_row, scale, num_threads);
}

/* The same, for a cascade's own-keys part: out32 (b, n_q, hd) float32, unrounded, and
 * lse (b, n_q) float32, the log-sum-exp of each head's scaled scores (-inf with no keys). */
int bf16_decode_attention_lse(const uint16_t *q, const uint16_t *k, const uint16_t *v,
                              const int64_t *idx, int64_t idx_stride, const int64_t *lens,
                              float *out32, float *lse, int b, int n_q, int n_kv, int hd,
                              int64_t kv_row, float scale, int num_threads) {
    return decode_attention(q, k, v, idx, idx_stride, lens, NULL, out32, lse, b, n_q, n_kv, hd,
                            kv_row, scale, num_threads);
}

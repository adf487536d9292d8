/* Each row's k largest logits recomputed in float32, in place: what refine_top_logits
 * (model/llama.py) does with top_k_indices, a gather, an einsum and a scatter, in one pass
 * per row: a 16-lane scan keeps the k largest seen (a lane is looked at only when it beats
 * the k-th so far), then k float32 dot products of the row's hidden state with the LM head's
 * float32 weight rows. Ties at the k-th place may keep another of the tied indices than
 * torch's topk (either is a k largest). Built by cpu_kernels.py with the other CPU kernels.
 *
 * logits: (R, V) float32, row stride V; h: (R, D) bfloat16, row stride h_stride; w: (V, D)
 * float32; k <= 64.
 *
 * f32_argmax_rows: each row's index of its largest logit, the first of equal ones, a NaN's if
 * there is one (torch's max along a row). */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include "bf16.h"

#define MAX_K 64

/* the k largest of row (indices into top[], values into val[]; unsorted), V >= k */
static void row_top_k(const float *row, int64_t V, int k, int64_t *top, float *val) {
    int n = 0, low = 0; /* top[low] holds the smallest kept value once n == k */
    float thr = -INFINITY;
    int64_t i = 0;
    for (; i + 16 <= V; i += 16) {
        __m512 v = _mm512_loadu_ps(row + i);
        __mmask16 hit = n < k ? 0xffff : _mm512_cmp_ps_mask(v, _mm512_set1_ps(thr), _CMP_GT_OQ);
        while (hit) {
            int l = __builtin_ctz(hit);
            hit &= hit - 1;
            float x = row[i + l];
            if (n < k) {
                top[n] = i + l;
                val[n++] = x;
            } else if (x > thr) {
                top[low] = i + l;
                val[low] = x;
            } else {
                continue;
            }
            if (n == k) { /* the new smallest kept */
                low = 0;
                for (int j = 1; j < k; j++)
                    if (val[j] < val[low]) low = j;
                thr = val[low];
            }
        }
    }
    for (; i < V; i++) {
        float x = row[i];
        if (n < k) {
            top[n] = i;
            val[n++] = x;
        } else if (x > thr) {
            top[low] = i;
            val[low] = x;
        } else {
            continue;
        }
        if (n == k) {
            low = 0;
            for (int j = 1; j < k; j++)
                if (val[j] < val[low]) low = j;
            thr = val[low];
        }
    }
}

void f32_refine_top_logits(float *logits, int64_t R, int64_t V, const uint16_t *h,
                           int64_t h_stride, const float *w, int D, int k, int num_threads) {
    if (k > MAX_K) k = MAX_K;
    if (k > V) k = (int)V;
#pragma omp parallel for num_threads(num_threads) if (R > 1)
    for (int64_t r = 0; r < R; r++) {
        int64_t top[MAX_K];
        float val[MAX_K];
        float *row = logits + r * V;
        row_top_k(row, V, k, top, val);
        const uint16_t *hr = h + r * h_stride;
        for (int j = 0; j < k; j++) {
            const float *wr = w + top[j] * D;
            __m512 acc = _mm512_setzero_ps();
            int d = 0;
            for (; d + 16 <= D; d += 16)
                acc = _mm512_fmadd_ps(bf16x16_load(hr + d), _mm512_loadu_ps(wr + d), acc);
            float s = _mm512_reduce_add_ps(acc);
            for (; d < D; d++) s += bf16_to_f32(hr[d]) * wr[d];
            row[top[j]] = s;
        }
    }
}

static int64_t row_argmax(const float *row, int64_t V) {
    int64_t best = 0;
    float top = row[0];
    if (top != top) return 0;
    int64_t i = 1;
    for (; i + 16 <= V; i += 16) {
        __m512 v = _mm512_loadu_ps(row + i);
        /* lanes above the best so far, or NaN (unordered): looked at one by one, in order */
        __mmask16 hit = _mm512_cmp_ps_mask(v, _mm512_set1_ps(top), _CMP_NLE_UQ);
        while (hit) {
            int l = __builtin_ctz(hit);
            hit &= hit - 1;
            float x = row[i + l];
            if (x != x) return i + l;
            if (x > top) {
                top = x;
                best = i + l;
            }
        }
    }
    for (; i < V; i++) {
        float x = row[i];
        if (x != x) return i;
        if (x > top) {
            top = x;
            best = i;
        }
    }
    return best;
}

void f32_argmax_rows(const float *logits, int64_t R, int64_t V, int64_t *out, int num_threads) {
#pragma omp parallel for num_threads(num_threads) if (R > 1)
    for (int64_t r = 0; r < R; r++) out[r] = V > 0 ? row_argmax(logits + r * V, V) : 0;
}

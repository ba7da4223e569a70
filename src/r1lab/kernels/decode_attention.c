/* One decoding step of attention for a Llama-family layer, fused: RoPE on the new query and
 * key, the new key and value written into the KV cache, and one-query attention over the cache.
 *
 * Built and loaded by r1lab.kernels (gcc -O3 -march=native -fopenmp, at first use, cached).
 * torch does the same work in ~8 operations per layer (RoPE: 3, cache write, two batched
 * matmuls, softmax, output copy); here the cache is read once and nothing is written twice.
 *
 * Layouts (float32, strides in elements):
 *   qkv   [A, (H + 2*Hkv) * D]  row stride qkv_row: q heads, then k heads, then v heads
 *   cos, ssin [*, D]            RoPE tables; ssin is sin with rotate_half's sign folded in
 *                               (-sin on the first half), so rope(x)[d] = x[d] cos[d] +
 *                               x[(d + D/2) % D] ssin[d]
 *   pos   [A]                   position of each row's new token (indexes the tables)
 *   kc, vc                      one layer's cache, [A, Hkv, max_len, D] with strides
 *                               (c_row, c_head, D, 1); position `len` is written here
 *   bias  [A, >= len + 1]       additive key mask, row stride bias_row (0 or a large negative)
 *   out   [A, H * D]            attention output, heads concatenated
 * Query head h uses kv head h / (H / Hkv) (grouped-query attention).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

static inline void rope(const float *x, const float *c, const float *s, int D, float scale,
                        float *y) {
    int half = D / 2;
#pragma omp simd
    for (int d = 0; d < half; d++) y[d] = (x[d] * c[d] + x[d + half] * s[d]) * scale;
#pragma omp simd
    for (int d = half; d < D; d++) y[d] = (x[d] * c[d] + x[d - half] * s[d]) * scale;
}

void r1_decode_attention(const float *qkv, long qkv_row, const float *cos, const float *ssin,
                         const long *pos, float *kc, float *vc, long c_row, long c_head,
                         const float *bias, long bias_row, float *out, int A, int H, int Hkv,
                         int D, int len, float scale) {
    const int G = H / Hkv, S = len + 1;
#pragma omp parallel
    {
        float *buf = malloc(sizeof(float) * ((size_t)G * S + (size_t)G * D));
        float *scores = buf, *q = buf + (size_t)G * S;
#pragma omp for schedule(static)
        for (long item = 0; item < (long)A * Hkv; item++) {
            const int a = (int)(item / Hkv), j = (int)(item % Hkv);
            const float *row = qkv + a * qkv_row;
            const float *c = cos + pos[a] * D, *s = ssin + pos[a] * D;
            float *K = kc + a * c_row + j * c_head, *V = vc + a * c_row + j * c_head;
            rope(row + (long)(H + j) * D, c, s, D, 1.0f, K + (long)len * D);
            memcpy(V + (long)len * D, row + (long)(H + Hkv + j) * D, sizeof(float) * D);
            for (int g = 0; g < G; g++) rope(row + (long)(j * G + g) * D, c, s, D, scale, q + g * D);
            const float *b = bias + a * bias_row;
            for (int t = 0; t < S; t++) {
                const float *k = K + (long)t * D;
                for (int g = 0; g < G; g++) {
                    const float *qg = q + g * D;
                    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
                    for (int d = 0; d < D; d++) acc += qg[d] * k[d];
                    scores[g * S + t] = acc + b[t];
                }
            }
            for (int g = 0; g < G; g++) {
                float *sc = scores + g * S, m = sc[0], sum = 0.0f;
                for (int t = 1; t < S; t++) m = sc[t] > m ? sc[t] : m;
#pragma omp simd reduction(+ : sum)
                for (int t = 0; t < S; t++) {
                    sc[t] = expf(sc[t] - m);
                    sum += sc[t];
                }
                float *o = out + (long)a * H * D + (long)(j * G + g) * D;
                memset(o, 0, sizeof(float) * D);
                for (int t = 0; t < S; t++) {
                    const float *v = V + (long)t * D;
                    const float p = sc[t];
#pragma omp simd
                    for (int d = 0; d < D; d++) o[d] += p * v[d];
                }
                const float inv = 1.0f / sum;
#pragma omp simd
                for (int d = 0; d < D; d++) o[d] *= inv;
            }
        }
        free(buf);
    }
}

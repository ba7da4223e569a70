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
 *
 * Long contexts: the cost is two passes over the cache per (row, kv head), q.k for every key,
 * then p.v, both 16-float vectors with the head dim as a compile-time constant for D = 64 and
 * 128 (four independent accumulators; one horizontal sum per key in the first pass, none in the
 * second, whose outputs stay in registers over the keys). The first version, with the head dim
 * a runtime value, a scalar-indexed dot per key and the output accumulated in memory, ran at
 * 3.5 GFLOP/s at 1000 cached positions (16 rows, 4 heads of 64, one core); see
 * benchmarks/RESULTS.md ("How cost grows") for the before/after.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));  /* unaligned loads/stores */
#define LD(p) (*(const v16u *)(p))
#define ST(p, v) (*(v16u *)(p) = (v))
#define MAXDV 16 /* head dims up to 256 */

static inline void rope(const float *x, const float *c, const float *s, int D, float scale,
                        float *y) {
    int half = D / 2;
#pragma omp simd
    for (int d = 0; d < half; d++) y[d] = (x[d] * c[d] + x[d + half] * s[d]) * scale;
#pragma omp simd
    for (int d = half; d < D; d++) y[d] = (x[d] * c[d] + x[d - half] * s[d]) * scale;
}

/* any head dim: the scalar-indexed loops (head dims that are not a multiple of 16) */
static void generic_item(const float *row, const float *c, const float *s, float *K, float *V,
                         const float *b, float *scores, float *q, float *out_a, int H, int Hkv,
                         int j, int D, int len, float scale) {
    const int G = H / Hkv, S = len + 1;
    rope(row + (long)(H + j) * D, c, s, D, 1.0f, K + (long)len * D);
    memcpy(V + (long)len * D, row + (long)(H + Hkv + j) * D, sizeof(float) * D);
    for (int g = 0; g < G; g++) rope(row + (long)(j * G + g) * D, c, s, D, scale, q + g * D);
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
        float *o = out_a + (long)(j * G + g) * D;
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

static inline float hsum(v16 v) {
    float s = 0.0f;
    for (int i = 0; i < 16; i++) s += v[i];
    return s;
}

/* sc[t] = q . k_t + b[t] for t < S; keys at row stride D */
static inline __attribute__((always_inline)) void scores_of(const float *q, const float *K,
                                                           const float *b, int S, int D,
                                                           float *sc) {
    const int DV = D / 16;
    v16 qv[MAXDV];
    for (int k = 0; k < DV; k++) qv[k] = LD(q + 16 * k);
    for (int t = 0; t < S; t++) {
        const float *kt = K + (long)t * D;
        v16 a0 = qv[0] * LD(kt), a1 = {0}, a2 = {0}, a3 = {0};
        if (DV > 1) a1 = qv[1] * LD(kt + 16);
        if (DV > 2) a2 = qv[2] * LD(kt + 32);
        if (DV > 3) a3 = qv[3] * LD(kt + 48);
        for (int k = 4; k < DV; k += 4) {
            a0 += qv[k] * LD(kt + 16 * k);
            if (k + 1 < DV) a1 += qv[k + 1] * LD(kt + 16 * k + 16);
            if (k + 2 < DV) a2 += qv[k + 2] * LD(kt + 16 * k + 32);
            if (k + 3 < DV) a3 += qv[k + 3] * LD(kt + 16 * k + 48);
        }
        sc[t] = hsum((a0 + a1) + (a2 + a3)) + b[t];
    }
}

/* o = sum_t p[t] v_t * inv for t < S (values at row stride D); two key streams, so eight
 * independent accumulator chains for D = 64 */
static inline __attribute__((always_inline)) void weighted_sum(const float *p, const float *V,
                                                              int S, int D, float inv, float *o) {
    const int DV = D / 16;
    v16 acc0[MAXDV], acc1[MAXDV];
    for (int k = 0; k < DV; k++) acc0[k] = acc1[k] = (v16){0};
    int t = 0;
    for (; t + 1 < S; t += 2) {
        const float p0 = p[t], p1 = p[t + 1];
        const float *v0 = V + (long)t * D, *v1 = v0 + D;
        for (int k = 0; k < DV; k++) {
            acc0[k] += p0 * LD(v0 + 16 * k);
            acc1[k] += p1 * LD(v1 + 16 * k);
        }
    }
    if (t < S) {
        const float *v0 = V + (long)t * D;
        for (int k = 0; k < DV; k++) acc0[k] += p[t] * LD(v0 + 16 * k);
    }
    for (int k = 0; k < DV; k++) ST(o + 16 * k, (acc0[k] + acc1[k]) * inv);
}

static inline __attribute__((always_inline)) void item(
    const float *row, const float *c, const float *s, float *K, float *V, const float *b,
    float *scores, float *q, float *out_a, int H, int Hkv, int j, int D, int len, float scale) {
    const int G = H / Hkv, S = len + 1;
    rope(row + (long)(H + j) * D, c, s, D, 1.0f, K + (long)len * D);
    memcpy(V + (long)len * D, row + (long)(H + Hkv + j) * D, sizeof(float) * D);
    for (int g = 0; g < G; g++) rope(row + (long)(j * G + g) * D, c, s, D, scale, q + g * D);
    for (int g = 0; g < G; g++) {
        float *sc = scores + (long)g * S, m, sum = 0.0f;
        scores_of(q + g * D, K, b, S, D, sc);
        m = sc[0];
#pragma omp simd reduction(max : m)
        for (int t = 1; t < S; t++) m = sc[t] > m ? sc[t] : m;
#pragma omp simd reduction(+ : sum)
        for (int t = 0; t < S; t++) {
            sc[t] = expf(sc[t] - m);
            sum += sc[t];
        }
        weighted_sum(sc, V, S, D, 1.0f / sum, out_a + (long)(j * G + g) * D);
    }
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
        for (long it = 0; it < (long)A * Hkv; it++) {
            const int a = (int)(it / Hkv), j = (int)(it % Hkv);
            const float *row = qkv + a * qkv_row;
            const float *c = cos + pos[a] * D, *s = ssin + pos[a] * D;
            float *K = kc + a * c_row + j * c_head, *V = vc + a * c_row + j * c_head;
            const float *b = bias + a * bias_row;
            float *o = out + (long)a * H * D;
            if (D == 64)
                item(row, c, s, K, V, b, scores, q, o, H, Hkv, j, 64, len, scale);
            else if (D == 128)
                item(row, c, s, K, V, b, scores, q, o, H, Hkv, j, 128, len, scale);
            else if (D % 16 == 0 && D <= 16 * MAXDV)
                item(row, c, s, K, V, b, scores, q, o, H, Hkv, j, D, len, scale);
            else
                generic_item(row, c, s, K, V, b, scores, q, o, H, Hkv, j, D, len, scale);
        }
        free(buf);
    }
}

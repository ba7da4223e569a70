/* Causal self-attention over packed training blocks, forward and backward, for the packed
 * training forward (r1lab.train.packed). Flash-attention style: the probabilities are never
 * stored; the forward keeps each query's log-sum-exp and the backward recomputes them.
 *
 * Layouts (float32, row-major):
 *   x    [R, S, W], W = (H + 2*Hkv) * D: per block position, the q heads, then k, then v,
 *        before RoPE: block position t has position id t, and q and k are rotated here with
 *        row t of the tables cos, ssin [>= S, D] (ssin: sin with rotate_half's sign folded in,
 *        see decode_attention.c); the backward rotates their gradients back
 *   lens [R] int64: block r's real positions are 0 .. lens[r]-1; the rest is padding, which
 *        is skipped (its output and gradient are 0)
 *   out  [R, S, H*D]; lse [R, H, S]
 *   dx   [R, S, W], fully written by the backward
 * Query head h attends with kv head h / (H / Hkv); D must be a multiple of 16. Work is split
 * over (block, kv head) pairs, so the k/v gradients of a pair are written by one thread.
 *
 * Register blocking: queries go 4 at a time (QB). Scores of a query block against 16 keys
 * (one vector, keys transposed into [D][Sp], Sp = S rounded up to 16, zero padded) are 4
 * independent accumulators over the D products; outputs and gradients of a query block are
 * 4 x D/16 accumulators over the keys. A query's probabilities beyond its own position are 0,
 * so the 4 queries of a block share the key loop.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));  /* unaligned loads/stores */
#define LD(p) (*(const v16u *)(p))
#define ST(p, v) (*(v16u *)(p) = (v))
#define QB 4
#define MAXDV 16 /* head dims up to 256 */

static inline int round16(int n) { return (n + 15) / 16 * 16; }

/* y = rope(x) at table row c, s: y[d] = x[d] c[d] + x[(d + D/2) % D] s[d] */
static inline void rope(const float *restrict x, const float *restrict c, const float *restrict s,
                        int D, float *restrict y) {
    const int h = D / 2;
#pragma omp simd
    for (int d = 0; d < h; d++) y[d] = x[d] * c[d] + x[d + h] * s[d];
#pragma omp simd
    for (int d = h; d < D; d++) y[d] = x[d] * c[d] + x[d - h] * s[d];
}

/* the transpose of `rope`: dx[e] = dy[e] c[e] + dy[(e + D/2) % D] s[(e + D/2) % D] */
static inline void rope_back(const float *restrict dy, const float *restrict c,
                             const float *restrict s, int D, float *restrict dx) {
    const int h = D / 2;
#pragma omp simd
    for (int e = 0; e < h; e++) dx[e] = dy[e] * c[e] + dy[e + h] * s[e + h];
#pragma omp simd
    for (int e = h; e < D; e++) dx[e] = dy[e] * c[e] + dy[e - h] * s[e - h];
}

/* rows t < L of a [*, D] matrix at row stride `row`, rotated (when cos) at position t, into
 * rows [Sp][D] (when rows) and transposed into dst [D][Sp] (zero for t >= L) */
static void keys_into(const float *src, long row, int L, int D, int Sp, const float *cos,
                      const float *ssin, float *rows, float *dst) {
    float tmp[256];
    memset(dst, 0, sizeof(float) * (size_t)D * Sp);
    for (int t = 0; t < L; t++) {
        const float *k = src + t * row;
        if (cos) {
            rope(k, cos + (long)t * D, ssin + (long)t * D, D, tmp);
            k = tmp;
        }
        if (rows) memcpy(rows + (long)t * D, k, sizeof(float) * D);
        for (int d = 0; d < D; d++) dst[(long)d * Sp + t] = k[d];
    }
}

/* the QB query rows i0 .. i0+QB-1 of head h, rotated, into q [QB][D]; rows past the block's
 * `nq` real queries repeat the last one (their results are dropped) */
static inline void queries_into(const float *xb, long W, int i0, int nq, int h, int D,
                                const float *cos, const float *ssin, float *q) {
    for (int b = 0; b < QB; b++) {
        const int i = i0 + (b < nq ? b : nq - 1);
        rope(xb + (long)i * W + (long)h * D, cos + (long)i * D, ssin + (long)i * D, D, q + b * D);
    }
}

/* s[b][t] = scale * a_b . k_t for the QB rows a_b (row stride `arow`), t < nk (a multiple of
 * 16), keys from KT [D][Sp]; s rows have stride Sp */
static inline __attribute__((always_inline)) void block_scores(
    const float *a, long arow, const float *KT, int Sp, int D, int nk, float scale, float *s) {
    int c = 0;
    for (; c + 32 <= nk; c += 32) {  /* 32 keys: 8 accumulators, 2 loads per 4 broadcasts */
        v16 acc0 = {0}, acc1 = {0}, acc2 = {0}, acc3 = {0};
        v16 acc4 = {0}, acc5 = {0}, acc6 = {0}, acc7 = {0};
        for (int d = 0; d < D; d++) {
            const v16 k = LD(KT + (long)d * Sp + c), k2 = LD(KT + (long)d * Sp + c + 16);
            const float a0 = a[d], a1 = a[arow + d], a2 = a[2 * arow + d], a3 = a[3 * arow + d];
            acc0 += a0 * k;
            acc1 += a1 * k;
            acc2 += a2 * k;
            acc3 += a3 * k;
            acc4 += a0 * k2;
            acc5 += a1 * k2;
            acc6 += a2 * k2;
            acc7 += a3 * k2;
        }
        ST(s + c, acc0 * scale);
        ST(s + Sp + c, acc1 * scale);
        ST(s + 2 * Sp + c, acc2 * scale);
        ST(s + 3 * Sp + c, acc3 * scale);
        ST(s + c + 16, acc4 * scale);
        ST(s + Sp + c + 16, acc5 * scale);
        ST(s + 2 * Sp + c + 16, acc6 * scale);
        ST(s + 3 * Sp + c + 16, acc7 * scale);
    }
    for (; c < nk; c += 16) {
        v16 acc0 = {0}, acc1 = {0}, acc2 = {0}, acc3 = {0};
        for (int d = 0; d < D; d++) {
            const v16 k = LD(KT + (long)d * Sp + c);
            acc0 += a[d] * k;
            acc1 += a[arow + d] * k;
            acc2 += a[2 * arow + d] * k;
            acc3 += a[3 * arow + d] * k;
        }
        ST(s + c, acc0 * scale);
        ST(s + Sp + c, acc1 * scale);
        ST(s + 2 * Sp + c, acc2 * scale);
        ST(s + 3 * Sp + c, acc3 * scale);
    }
}

static inline __attribute__((always_inline)) void fwd_item(
    const float *xb, const long W, const float *KT, float *s, float *q, int Sp, int L, int S,
    int H, int Hkv, int j, int g, int D, float scale, const float *cos, const float *ssin,
    float *outb, float *lseb) {
    const int G = H / Hkv, h = j * G + g, DV = D / 16;
    const long HD = (long)H * D;
    const float *V = xb + (long)(H + Hkv + j) * D;
    for (int i0 = 0; i0 < S; i0 += QB) {
        if (i0 >= L) {  /* padding queries */
            for (int i = i0; i < S && i < i0 + QB; i++) {
                memset(outb + i * HD + (long)h * D, 0, sizeof(float) * D);
                if (lseb) lseb[(long)h * S + i] = 0.0f;
            }
            continue;
        }
        const int nq = (L - i0 < QB ? L - i0 : QB), nk = i0 + nq;  /* keys 0 .. nk-1 */
        queries_into(xb, W, i0, nq, h, D, cos, ssin, q);
        block_scores(q, D, KT, Sp, D, round16(nk), scale, s);
        float inv[QB];
        for (int b = 0; b < QB; b++) {
            float *sb = s + b * Sp;
            const int n = b < nq ? i0 + b + 1 : 0;
            float m = n ? sb[0] : 0.0f, sum = 0.0f;
            for (int t = 1; t < n; t++) m = sb[t] > m ? sb[t] : m;
#pragma omp simd reduction(+ : sum)
            for (int t = 0; t < n; t++) {
                sb[t] = expf(sb[t] - m);
                sum += sb[t];
            }
            for (int t = n; t < nk; t++) sb[t] = 0.0f;
            inv[b] = n ? 1.0f / sum : 0.0f;
            if (lseb && b < nq) lseb[(long)h * S + i0 + b] = m + logf(sum);
        }
        v16 acc[QB][MAXDV];
        for (int b = 0; b < QB; b++)
            for (int k = 0; k < DV; k++) acc[b][k] = (v16){0};
        for (int t = 0; t < nk; t++) {
            const float p0 = s[t], p1 = s[Sp + t], p2 = s[2 * Sp + t], p3 = s[3 * Sp + t];
            const float *v = V + t * W;
            for (int k = 0; k < DV; k++) {
                const v16 vk = LD(v + 16 * k);
                acc[0][k] += p0 * vk;
                acc[1][k] += p1 * vk;
                acc[2][k] += p2 * vk;
                acc[3][k] += p3 * vk;
            }
        }
        for (int b = 0; b < nq; b++)
            for (int k = 0; k < DV; k++)
                ST(outb + (long)(i0 + b) * HD + (long)h * D + 16 * k, acc[b][k] * inv[b]);
        for (int i = i0 + nq; i < S && i < i0 + QB; i++) {  /* padding in the last block */
            memset(outb + i * HD + (long)h * D, 0, sizeof(float) * D);
            if (lseb) lseb[(long)h * S + i] = 0.0f;
        }
    }
}

void r1_causal_attention_fwd(const float *x, const long *lens, const float *cos,
                             const float *ssin, float *out, float *lse, int R, int S, int H,
                             int Hkv, int D, float scale) {
    const int G = H / Hkv, Sp = round16(S);
    const long W = (long)(H + 2 * Hkv) * D;
#pragma omp parallel
    {
        float *KT = aligned_alloc(64, sizeof(float) * ((size_t)D * Sp + QB * (size_t)Sp + QB * (size_t)D));
        float *s = KT + (size_t)D * Sp, *q = s + QB * (size_t)Sp;
#pragma omp for schedule(dynamic, 1)
        for (long item = 0; item < (long)R * Hkv; item++) {
            const int r = (int)(item / Hkv), j = (int)(item % Hkv), L = (int)lens[r];
            const float *xb = x + (long)r * S * W;
            float *outb = out + (long)r * S * H * D, *lseb = lse ? lse + (long)r * H * S : 0;
            keys_into(xb + (long)(H + j) * D, W, L, D, Sp, cos, ssin, 0, KT);
            for (int g = 0; g < G; g++) {
                if (D == 64)
                    fwd_item(xb, W, KT, s, q, Sp, L, S, H, Hkv, j, g, 64, scale, cos, ssin, outb, lseb);
                else if (D == 128)
                    fwd_item(xb, W, KT, s, q, Sp, L, S, H, Hkv, j, g, 128, scale, cos, ssin, outb, lseb);
                else
                    fwd_item(xb, W, KT, s, q, Sp, L, S, H, Hkv, j, g, D, scale, cos, ssin, outb, lseb);
            }
        }
        free(KT);
    }
}

static inline __attribute__((always_inline)) void bwd_item(
    const float *xb, const long W, const float *K, const float *KT, const float *VT, float *dK,
    float *dV, float *s, float *ds, float *qt, int Sp, int L, int S, int H, int Hkv, int j,
    int g, int D, float scale, const float *cos, const float *ssin, const float *outb,
    const float *lseb, const float *doutb, float *db) {
    const int G = H / Hkv, h = j * G + g, DV = D / 16;
    const long HD = (long)H * D;
    for (int i0 = 0; i0 < S; i0 += QB) {
        if (i0 >= L) {
            for (int i = i0; i < S && i < i0 + QB; i++)
                memset(db + i * W + (long)h * D, 0, sizeof(float) * D);
            continue;
        }
        const int nq = (L - i0 < QB ? L - i0 : QB), nk = i0 + nq;
        /* the block's rotated queries and output gradients, QB rows each (last repeated) */
        float *q = qt, *dO = qt + QB * D;
        float delta[QB];
        queries_into(xb, W, i0, nq, h, D, cos, ssin, q);
        for (int b = 0; b < QB; b++) {
            const int i = i0 + (b < nq ? b : nq - 1);
            memcpy(dO + b * D, doutb + (long)i * HD + (long)h * D, sizeof(float) * D);
            const float *o = outb + (long)i * HD + (long)h * D;
            float dl = 0.0f;
#pragma omp simd reduction(+ : dl)
            for (int d = 0; d < D; d++) dl += dO[b * D + d] * o[d];
            delta[b] = dl;
        }
        block_scores(q, D, KT, Sp, D, round16(nk), scale, s);   /* scores -> probabilities */
        block_scores(dO, D, VT, Sp, D, round16(nk), 1.0f, ds);  /* dP[t] = dO . v_t */
        for (int b = 0; b < QB; b++) {
            float *sb = s + b * Sp, *dsb = ds + b * Sp;
            const int n = b < nq ? i0 + b + 1 : 0;
            const float l = b < nq ? lseb[(long)h * S + i0 + b] : 0.0f;
#pragma omp simd
            for (int t = 0; t < n; t++) {
                const float p = expf(sb[t] - l);
                sb[t] = p;
                dsb[t] = p * (dsb[t] - delta[b]) * scale;
            }
            for (int t = n; t < nk; t++) sb[t] = dsb[t] = 0.0f;
        }
        v16 dq[QB][MAXDV];
        for (int b = 0; b < QB; b++)
            for (int k = 0; k < DV; k++) dq[b][k] = (v16){0};
        for (int t = 0; t < nk; t++) {
            const float a0 = ds[t], a1 = ds[Sp + t], a2 = ds[2 * Sp + t], a3 = ds[3 * Sp + t];
            const float p0 = s[t], p1 = s[Sp + t], p2 = s[2 * Sp + t], p3 = s[3 * Sp + t];
            const float *k_t = K + (long)t * D;
            float *dk = dK + (long)t * D, *dv = dV + (long)t * D;
            for (int k = 0; k < DV; k++) {
                const v16 kk = LD(k_t + 16 * k);
                dq[0][k] += a0 * kk;
                dq[1][k] += a1 * kk;
                dq[2][k] += a2 * kk;
                dq[3][k] += a3 * kk;
                const v16 q0 = LD(q + 16 * k), q1 = LD(q + D + 16 * k);
                const v16 q2 = LD(q + 2 * D + 16 * k), q3 = LD(q + 3 * D + 16 * k);
                ST(dk + 16 * k, LD(dk + 16 * k) + a0 * q0 + a1 * q1 + a2 * q2 + a3 * q3);
                const v16 o0 = LD(dO + 16 * k), o1 = LD(dO + D + 16 * k);
                const v16 o2 = LD(dO + 2 * D + 16 * k), o3 = LD(dO + 3 * D + 16 * k);
                ST(dv + 16 * k, LD(dv + 16 * k) + p0 * o0 + p1 * o1 + p2 * o2 + p3 * o3);
            }
        }
        for (int b = 0; b < nq; b++) {  /* the gradient of the query before RoPE */
            float g_rot[256];
            for (int k = 0; k < DV; k++) ST(g_rot + 16 * k, dq[b][k]);
            const int i = i0 + b;
            rope_back(g_rot, cos + (long)i * D, ssin + (long)i * D, D, db + (long)i * W + (long)h * D);
        }
        for (int i = i0 + nq; i < S && i < i0 + QB; i++)  /* padding in the last block */
            memset(db + i * W + (long)h * D, 0, sizeof(float) * D);
    }
}

void r1_causal_attention_bwd(const float *x, const long *lens, const float *cos,
                             const float *ssin, const float *out, const float *lse,
                             const float *dout, float *dx, int R, int S, int H, int Hkv, int D,
                             float scale) {
    const int G = H / Hkv, Sp = round16(S);
    const long W = (long)(H + 2 * Hkv) * D;
#pragma omp parallel
    {
        /* KT, VT [D][Sp]; K (rotated), dK, dV [Sp][D]; s, ds [QB][Sp]; q, dO [QB][D] each */
        float *buf = aligned_alloc(64, sizeof(float) * ((size_t)5 * D * Sp + 2 * QB * (size_t)Sp
                                                        + 2 * QB * (size_t)D));
        float *KT = buf, *VT = KT + (size_t)D * Sp, *dK = VT + (size_t)D * Sp;
        float *dV = dK + (size_t)D * Sp, *K = dV + (size_t)D * Sp, *s = K + (size_t)D * Sp;
        float *ds = s + QB * Sp, *qt = ds + QB * Sp;
#pragma omp for schedule(dynamic, 1)
        for (long item = 0; item < (long)R * Hkv; item++) {
            const int r = (int)(item / Hkv), j = (int)(item % Hkv), L = (int)lens[r];
            const float *xb = x + (long)r * S * W;
            const float *outb = out + (long)r * S * H * D, *lseb = lse + (long)r * H * S;
            const float *doutb = dout + (long)r * S * H * D;
            float *db = dx + (long)r * S * W;
            memset(dK, 0, sizeof(float) * (size_t)2 * D * Sp);  /* dK and dV */
            keys_into(xb + (long)(H + j) * D, W, L, D, Sp, cos, ssin, K, KT);
            keys_into(xb + (long)(H + Hkv + j) * D, W, L, D, Sp, 0, 0, 0, VT);
            for (int g = 0; g < G; g++) {
                if (D == 64)
                    bwd_item(xb, W, K, KT, VT, dK, dV, s, ds, qt, Sp, L, S, H, Hkv, j, g, 64,
                             scale, cos, ssin, outb, lseb, doutb, db);
                else if (D == 128)
                    bwd_item(xb, W, K, KT, VT, dK, dV, s, ds, qt, Sp, L, S, H, Hkv, j, g, 128,
                             scale, cos, ssin, outb, lseb, doutb, db);
                else
                    bwd_item(xb, W, K, KT, VT, dK, dV, s, ds, qt, Sp, L, S, H, Hkv, j, g, D,
                             scale, cos, ssin, outb, lseb, doutb, db);
            }
            for (int t = 0; t < S; t++) {  /* k's gradient before RoPE (0 in the padding) */
                float *dk = db + t * W + (long)(H + j) * D;
                if (t < L)
                    rope_back(dK + (long)t * D, cos + (long)t * D, ssin + (long)t * D, D, dk);
                else
                    memset(dk, 0, sizeof(float) * D);
                memcpy(db + t * W + (long)(H + Hkv + j) * D, dV + (long)t * D, sizeof(float) * D);
            }
        }
        free(buf);
    }
}

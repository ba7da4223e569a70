/* y = x W^T + b for the few rows of a decoding step, with the epilogue a decoder layer needs
 * fused in: none, SiLU (SwiGLU's gate), a residual add (h + x W^T) or a product ((x W^T) * g).
 *
 * Why: at M = 8-32 rows (a decoding step of a GRPO group or a few) oneDNN's inner product
 * reaches 30-130 GFLOP/s on the 2-core Zen 4 machine, where at M = 128 it reaches 160-185:
 * its blocking is sized for more rows. The decoder takes this kernel up to 64 rows
 * (`r1lab.kernels.SMALL_GEMM_ROWS`), where it still wins or ties. This kernel is the textbook register-blocked one for
 * few rows: W is packed once per `generate` call in panels of 32 columns ([N/32][K][32],
 * zero-padded), and each (8 rows x 32 columns) block keeps 16 accumulators of 16 floats in
 * registers while k runs over K: two panel loads and 8 broadcasts per 16 FMAs. Threads split
 * the panels. float32 throughout; the sum over k runs in order k = 0..K-1 per output, so the
 * result does not depend on the thread count.
 *
 * Measured (M = 16, 2 threads, Zen 4, oneDNN -> this kernel): one decoding step's 20 matmuls
 * of the 4M model (d 256, 16 MB of weights) 1.36 -> 0.88 ms, the 25M model's 30 (d 512,
 * 100 MB) 6.32 -> 4.95 ms; `benchmarks/profile_ops.py` prints both at M = 8 to 64.
 */
#include <math.h>

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4))); /* unaligned loads/stores */
#define NR 32

/* acc[MR][2] = x[MR rows] times one panel; `next` (or NULL): the panel to prefetch meanwhile
 * (hardware prefetchers lose the stream at panel boundaries: 4M model, M = 16, one step's 20
 * matmuls cycling through 16 MB of weights, 0.95 -> 0.88 ms; 25M, 100 MB: 5.63 -> 4.95 ms) */
static inline __attribute__((always_inline)) void block(const int MR, const float *x, long ldx,
                                                        const float *wp, long K, v16 acc[][2],
                                                        const float *next) {
    for (int m = 0; m < MR; m++) acc[m][0] = acc[m][1] = (v16){0};
    for (long k = 0; k < K; k++) {
        if (next) {
            __builtin_prefetch(next + k * NR, 0, 2);
            __builtin_prefetch(next + k * NR + 16, 0, 2);
        }
        const v16 w0 = *(const v16u *)(wp + k * NR), w1 = *(const v16u *)(wp + k * NR + 16);
#pragma GCC unroll 8
        for (int m = 0; m < MR; m++) {
            const float xv = x[m * ldx + k];
            acc[m][0] += w0 * xv;
            acc[m][1] += w1 * xv;
        }
    }
}

/* mode 0: y = acc + b; 1: silu(acc + b); 2: h + (acc + b); 3: (acc + b) * h */
static inline __attribute__((always_inline)) void store(const int MR, v16 acc[][2], long n0,
                                                        long N, const float *bias, int mode,
                                                        const float *h, long ldh, float *y,
                                                        long ldy) {
    float tmp[NR];
    const int cols = N - n0 < NR ? (int)(N - n0) : NR;
    for (int m = 0; m < MR; m++) {
        *(v16u *)tmp = acc[m][0];
        *(v16u *)(tmp + 16) = acc[m][1];
        float *ym = y + m * ldy + n0;
        const float *hm = h ? h + m * ldh + n0 : 0;
        if (bias) {
#pragma omp simd
            for (int j = 0; j < cols; j++) tmp[j] += bias[n0 + j];
        }
        if (mode == 1) {
#pragma omp simd
            for (int j = 0; j < cols; j++) ym[j] = tmp[j] / (1.0f + expf(fminf(-tmp[j], 80.0f)));
        } else if (mode == 2) {
#pragma omp simd
            for (int j = 0; j < cols; j++) ym[j] = hm[j] + tmp[j];
        } else if (mode == 3) {
#pragma omp simd
            for (int j = 0; j < cols; j++) ym[j] = tmp[j] * hm[j];
        } else {
#pragma omp simd
            for (int j = 0; j < cols; j++) ym[j] = tmp[j];
        }
    }
}

#define ROWS(MRV)                                                                              \
    {                                                                                          \
        v16 acc[MRV][2];                                                                       \
        block(MRV, x + m0 * ldx, ldx, pw, K, acc, m0 == 0 && p + 1 < panels ? pw + K * NR : 0); \
        store(MRV, acc, n0, N, bias, mode, h ? h + m0 * ldh : 0, ldh, y + m0 * ldy, ldy);      \
        m0 += MRV;                                                                             \
    }

/* x [M, K] (row stride ldx), wp the packed weight [ceil(N/32)][K][32], bias [N] or NULL,
 * h [M, N] (row stride ldh; modes 2 and 3) or NULL, y [M, N] (row stride ldy) */
void r1_small_gemm(const float *x, long ldx, const float *wp, const float *bias, long M, long N,
                   long K, int mode, const float *h, long ldh, float *y, long ldy) {
    const long panels = (N + NR - 1) / NR;
#pragma omp parallel for schedule(static)
    for (long p = 0; p < panels; p++) {
        const float *pw = wp + p * K * NR;
        const long n0 = p * NR;
        long m0 = 0;
        while (M - m0 >= 8) ROWS(8)
        if (M - m0 >= 4) ROWS(4)
        if (M - m0 >= 2) ROWS(2)
        if (M - m0 >= 1) ROWS(1)
    }
}

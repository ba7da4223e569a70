/* Row-wise and elementwise pieces of a Llama-family layer that torch runs as several passes
 * over memory (and more again in the backward): RMSNorm and SwiGLU's gate, forward and
 * backward, one pass each. float32, contiguous.
 *
 *   RMSNorm  y = x * rstd * w, rstd = 1 / sqrt(mean(x^2) + eps), per row of d (w may be NULL)
 *   SwiGLU   a = silu(g) * u = g * sigmoid(g) * u
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

void r1_rms_norm_fwd(const float *x, const float *w, float eps, float *y, float *rstd, long n,
                     int d) {
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) {
        const float *xi = x + i * d;
        float *yi = y + i * d, ss = 0.0f;
#pragma omp simd reduction(+ : ss)
        for (int k = 0; k < d; k++) ss += xi[k] * xi[k];
        const float r = 1.0f / sqrtf(ss / d + eps);
        if (rstd) rstd[i] = r;
        if (w) {
#pragma omp simd
            for (int k = 0; k < d; k++) yi[k] = xi[k] * r * w[k];
        } else {
#pragma omp simd
            for (int k = 0; k < d; k++) yi[k] = xi[k] * r;
        }
    }
}

/* dx = rstd * (g - x * rstd^2 * mean(g * x)), g = dy * w; dw = sum over rows of dy * x * rstd
 * (dw may be NULL: no weight, or its gradient is not needed) */
void r1_rms_norm_bwd(const float *x, const float *w, const float *rstd, const float *dy,
                     float *dx, float *dw, long n, int d) {
    if (dw) memset(dw, 0, sizeof(float) * d);
#pragma omp parallel
    {
        float *acc = dw ? calloc(d, sizeof(float)) : 0;
        float *g = malloc(sizeof(float) * d);
#pragma omp for schedule(static)
        for (long i = 0; i < n; i++) {
            const float *xi = x + i * d, *dyi = dy + i * d;
            const float r = rstd[i];
            float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
            for (int k = 0; k < d; k++) {
                g[k] = w ? dyi[k] * w[k] : dyi[k];
                dot += g[k] * xi[k];
            }
            const float c = r * r * dot / d;
            float *dxi = dx + i * d;
#pragma omp simd
            for (int k = 0; k < d; k++) dxi[k] = r * (g[k] - xi[k] * c);
            if (acc) {
#pragma omp simd
                for (int k = 0; k < d; k++) acc[k] += dyi[k] * xi[k] * r;
            }
        }
        if (acc) {
#pragma omp critical
            for (int k = 0; k < d; k++) dw[k] += acc[k];
            free(acc);
        }
        free(g);
    }
}

void r1_swiglu_fwd(const float *g, const float *u, float *a, long n) {
#pragma omp parallel for simd schedule(static)
    for (long i = 0; i < n; i++) a[i] = g[i] / (1.0f + expf(fminf(-g[i], 88.0f))) * u[i];  /* no overflow to inf */
}

/* dg = da * u * s * (1 + g * (1 - s)), du = da * g * s, s = sigmoid(g) */
void r1_swiglu_bwd(const float *g, const float *u, const float *da, float *dg, float *du,
                   long n) {
#pragma omp parallel for simd schedule(static)
    for (long i = 0; i < n; i++) {
        const float s = 1.0f / (1.0f + expf(fminf(-g[i], 88.0f)));
        dg[i] = da[i] * u[i] * s * (1.0f + g[i] * (1.0f - s));
        du[i] = da[i] * g[i] * s;
    }
}

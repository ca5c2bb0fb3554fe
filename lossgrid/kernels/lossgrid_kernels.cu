// CUDA kernels of lossgrid: perturbation of many grid points, segmented (filter- or
// layer-wise) normalization of a flat direction, and BatchNorm folding.
//
// The arithmetic of one element lives in `__host__ __device__` inline functions
// (namespace `lg`); the `extern "C" __global__` kernels only map threads to elements
// and call them. The same file compiles as plain C++ (the test harness
// tests/kernels/host_harness.cpp includes it and runs the functions on the CPU),
// with NVRTC (CuPy's RawModule) and with nvcc.
//
// All data is float32 and contiguous; indices are 64-bit so that K * P may exceed
// 2^31. Products that feed a sum use fmaf explicitly, so the rounding does not depend
// on whether a compiler contracts a * b + c: the host build computes bit for bit what
// the device computes for the same launch shape.

#ifndef __CUDACC__
// Plain C++: the CUDA qualifiers mean nothing and the math functions come from libm.
// (NVRTC and nvcc provide sqrtf/fmaf themselves; NVRTC has no <math.h>.)
#include <math.h>
#define __host__
#define __device__
#endif

#define LG_HD __host__ __device__ inline

namespace lg {

using index_t = long long;

// ---------------------------------------------------------------------------
// perturb: out[k, p] = base[p] + sum_j coeffs[k, j] * dirs[j, p]
// ---------------------------------------------------------------------------

// Element `i` of the row-major [K, P] output. The directions are added in order
// j = 0, 1, ..., each with one rounding (fmaf).
LG_HD float perturb_element(const float* base, const float* dirs, const float* coeffs,
                            index_t i, index_t num_params, int num_dirs) {
    const index_t k = i / num_params;
    const index_t p = i - k * num_params;
    float v = base[p];
    for (int j = 0; j < num_dirs; ++j) {
        v = fmaf(coeffs[k * num_dirs + j], dirs[j * num_params + p], v);
    }
    return v;
}

// ---------------------------------------------------------------------------
// normalize_rows: a row is the slice [offsets[r], offsets[r + 1]) of the flat
// vector; out = d * (|w_row| / (|d_row| + eps)) with Euclidean norms per row.
// ---------------------------------------------------------------------------

// The two sums of squares one thread accumulates.
struct SumSq {
    float dd;  // sum of d^2
    float ww;  // sum of w^2
};

// Thread `tid` of `nthreads` visits elements begin + tid, begin + tid + nthreads, ...
// of the row and returns its partial sums.
LG_HD SumSq row_partial_sums(const float* d, const float* w, index_t begin, index_t end,
                             int tid, int nthreads) {
    SumSq s = {0.0f, 0.0f};
    for (index_t i = begin + tid; i < end; i += nthreads) {
        s.dd = fmaf(d[i], d[i], s.dd);
        s.ww = fmaf(w[i], w[i], s.ww);
    }
    return s;
}

// One step of the tree reduction over `2 * half` partial sums: the lower half adds
// the upper half. Each slot read here is not written in the same step.
LG_HD void reduce_step(float* dd, float* ww, int tid, int half) {
    if (tid < half) {
        dd[tid] += dd[tid + half];
        ww[tid] += ww[tid + half];
    }
}

// The factor that gives a row of d the norm of the matching row of w. An all-zero
// row of d stays zero (0 * finite); an all-zero row of w gives a zero row.
LG_HD float scale_factor(float sum_dd, float sum_ww, float eps) {
    return sqrtf(sum_ww) / (sqrtf(sum_dd) + eps);
}

// Thread `tid` writes its strided share of the scaled row.
LG_HD void scale_row(const float* d, float* out, index_t begin, index_t end, int tid,
                     int nthreads, float factor) {
    for (index_t i = begin + tid; i < end; i += nthreads) {
        out[i] = d[i] * factor;
    }
}

// ---------------------------------------------------------------------------
// fold_conv_bn: w' = w * s, b' = beta + (b - mean) * s with s = gamma / sqrt(var + eps),
// per (point k, output channel c); flat channel index kc = k * C + c.
// ---------------------------------------------------------------------------

// BatchNorm's scale; a negative (perturbed) variance gives NaN, as BatchNorm does.
LG_HD float bn_scale(float gamma, float var, float eps) {
    return gamma / sqrtf(var + eps);
}

// Element `i` of the [K, C, inner] weights (`inner` = elements per output channel).
LG_HD float fold_weight_element(const float* weight, const float* gamma, const float* var,
                                float eps, index_t i, index_t inner) {
    const index_t kc = i / inner;
    return weight[i] * bn_scale(gamma[kc], var[kc], eps);
}

// Folded bias of channel `kc`; a convolution without bias has b = 0.
LG_HD float fold_bias(const float* bias, int has_bias, const float* gamma, const float* beta,
                      const float* mean, const float* var, float eps, index_t kc) {
    const float b = has_bias ? bias[kc] : 0.0f;
    return fmaf(b - mean[kc], bn_scale(gamma[kc], var[kc], eps), beta[kc]);
}

}  // namespace lg

#ifdef __CUDACC__

// One launch for all K * P outputs. Grid-stride loop: any grid size covers any
// length, so the host picks a grid that fills the GPU. The output buffer is
// preallocated by the caller; the kernel allocates nothing, so a launch can be
// captured in a CUDA graph and replayed with new values in `coeffs`.
extern "C" __global__ void perturb(const float* __restrict__ base, const float* __restrict__ dirs,
                                   const float* __restrict__ coeffs, float* __restrict__ out,
                                   long long num_points, long long num_params, int num_dirs) {
    const lg::index_t total = num_points * num_params;
    const lg::index_t stride = (lg::index_t)blockDim.x * gridDim.x;
    for (lg::index_t i = (lg::index_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        out[i] = lg::perturb_element(base, dirs, coeffs, i, num_params, num_dirs);
    }
}

// One block per row (gridDim.x = number of rows), all tensors in one launch.
// blockDim.x must be a power of two; dynamic shared memory holds 2 * blockDim.x
// floats: the threads' partial sums of d^2, then those of w^2.
extern "C" __global__ void normalize_rows(const float* __restrict__ d, const float* __restrict__ w,
                                          const long long* __restrict__ offsets, float eps,
                                          float* __restrict__ out) {
    extern __shared__ float partial[];
    float* dd = partial;
    float* ww = partial + blockDim.x;
    const int tid = threadIdx.x;
    const int nthreads = blockDim.x;
    const lg::index_t begin = offsets[blockIdx.x];
    const lg::index_t end = offsets[blockIdx.x + 1];

    const lg::SumSq s = lg::row_partial_sums(d, w, begin, end, tid, nthreads);
    dd[tid] = s.dd;
    ww[tid] = s.ww;
    __syncthreads();
    // Tree reduction: after the step with `half`, slots [0, half) hold the sums.
    for (int half = nthreads / 2; half > 0; half /= 2) {
        lg::reduce_step(dd, ww, tid, half);
        __syncthreads();
    }
    lg::scale_row(d, out, begin, end, tid, nthreads, lg::scale_factor(dd[0], ww[0], eps));
}

// K points at once. Thread i folds weight element i (if i < K * C * inner) and the
// bias of channel i (if i < K * C); grid-stride over the larger of the two counts.
extern "C" __global__ void fold_conv_bn(const float* __restrict__ weight, const float* __restrict__ bias,
                                        int has_bias, const float* __restrict__ gamma,
                                        const float* __restrict__ beta, const float* __restrict__ mean,
                                        const float* __restrict__ var, float eps, long long num_channels,
                                        long long inner, float* __restrict__ weight_out,
                                        float* __restrict__ bias_out) {
    const lg::index_t num_weights = num_channels * inner;
    const lg::index_t total = num_weights > num_channels ? num_weights : num_channels;
    const lg::index_t stride = (lg::index_t)blockDim.x * gridDim.x;
    for (lg::index_t i = (lg::index_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        if (i < num_weights) {
            weight_out[i] = lg::fold_weight_element(weight, gamma, var, eps, i, inner);
        }
        if (i < num_channels) {
            bias_out[i] = lg::fold_bias(bias, has_bias, gamma, beta, mean, var, eps, i);
        }
    }
}

#endif  // __CUDACC__

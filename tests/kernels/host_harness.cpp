// Host harness for lossgrid/kernels/lossgrid_kernels.cu (tests only).
//
// Includes the CUDA source as plain C++ and exposes one extern "C" function per
// kernel. Each function loops over blocks and threads exactly as the kernel's
// launch would, calling the same __host__ __device__ functions, so the tests can
// check the device arithmetic against the NumPy oracle on a machine without a GPU.
// Barriers (__syncthreads) become phase boundaries: every thread finishes one phase
// before any thread starts the next.
//
// Built by tests/kernels/_host_build.py: g++ -O2 -shared -fPIC -std=c++17 -I lossgrid/kernels.

#include <vector>

#include "lossgrid_kernels.cu"

using lg::index_t;

extern "C" {

// The `perturb` kernel launched as <<<grid, block>>>.
void lg_host_perturb(const float* base, const float* dirs, const float* coeffs, float* out,
                     long long num_points, long long num_params, int num_dirs, int grid, int block) {
    const index_t total = num_points * num_params;
    const index_t stride = (index_t)block * grid;
    for (int b = 0; b < grid; ++b) {
        for (int t = 0; t < block; ++t) {
            for (index_t i = (index_t)b * block + t; i < total; i += stride) {
                out[i] = lg::perturb_element(base, dirs, coeffs, i, num_params, num_dirs);
            }
        }
    }
}

// The `normalize_rows` kernel launched as <<<num_rows, block, 2 * block * sizeof(float)>>>.
// Returns 0, or -1 if `block` is not a power of two (the kernel requires one).
int lg_host_normalize_rows(const float* d, const float* w, const long long* offsets, long long num_rows,
                           float eps, int block, float* out) {
    if (block <= 0 || (block & (block - 1)) != 0) {
        return -1;
    }
    std::vector<float> dd(block), ww(block);  // the block's shared memory
    for (index_t r = 0; r < num_rows; ++r) {
        const index_t begin = offsets[r];
        const index_t end = offsets[r + 1];
        for (int t = 0; t < block; ++t) {
            const lg::SumSq s = lg::row_partial_sums(d, w, begin, end, t, block);
            dd[t] = s.dd;
            ww[t] = s.ww;
        }
        for (int half = block / 2; half > 0; half /= 2) {
            for (int t = 0; t < block; ++t) {
                lg::reduce_step(dd.data(), ww.data(), t, half);
            }
        }
        const float factor = lg::scale_factor(dd[0], ww[0], eps);
        for (int t = 0; t < block; ++t) {
            lg::scale_row(d, out, begin, end, t, block, factor);
        }
    }
    return 0;
}

// The `fold_conv_bn` kernel launched as <<<grid, block>>>. `bias` may be null when
// has_bias is 0.
void lg_host_fold_conv_bn(const float* weight, const float* bias, int has_bias, const float* gamma,
                          const float* beta, const float* mean, const float* var, float eps,
                          long long num_channels, long long inner, float* weight_out, float* bias_out,
                          int grid, int block) {
    const index_t num_weights = num_channels * inner;
    const index_t total = num_weights > num_channels ? num_weights : num_channels;
    const index_t stride = (index_t)block * grid;
    for (int b = 0; b < grid; ++b) {
        for (int t = 0; t < block; ++t) {
            for (index_t i = (index_t)b * block + t; i < total; i += stride) {
                if (i < num_weights) {
                    weight_out[i] = lg::fold_weight_element(weight, gamma, var, eps, i, inner);
                }
                if (i < num_channels) {
                    bias_out[i] = lg::fold_bias(bias, has_bias, gamma, beta, mean, var, eps, i);
                }
            }
        }
    }
}

}  // extern "C"

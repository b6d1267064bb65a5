// add + LayerNorm (cpu::add_layernorm's and cpu::add_residual_layernorm's contracts; beta may
// be null, and sum_out, when not null, gets x + residual rounded to T, which the LayerNorm then
// reads, as the CPU kernel does), two kernels: a warp per row with the row in
// registers and 16-byte accesses for rows that fit (hidden * sizeof(T) a multiple of 16 up to
// 4 KB, aligned pointers: every BERT), a block per row through shared memory for any other.
#include <algorithm>
#include <cstdint>

#include "common.cuh"

namespace pybert::cuda {
namespace {

// 16 bytes of storage elements: one vectorised load or store.
template <typename T>
struct alignas(16) Pack {
  T v[16 / sizeof(T)];
};

// out = LayerNorm(x + residual) * gamma + beta, one warp per row, the row in registers: lane l
// holds the 16-byte packs l, l + 32, ... (kPacksPerLane of them, the last ones possibly past
// the row). So x and residual are read once and out written once, the least traffic there is,
// in 16-byte accesses; mean and centred variance are two warp reductions over registers (no
// E[x^2] - E[x]^2 cancellation). out may alias x or residual: a lane writes only what it read.
template <typename T, int kPacksPerLane>
__global__ void add_layernorm_warp_kernel(const T* x, const T* residual, const T* gamma,
                                          const T* beta, T* out, T* sum_out, int64_t rows,
                                          int hidden, float eps) {
  constexpr int kPerPack = 16 / sizeof(T);
  const int lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= rows) return;
  const int packs = hidden / kPerPack;
  const auto* x_row = reinterpret_cast<const Pack<T>*>(x + row * hidden);
  const auto* r_row =
      residual != nullptr ? reinterpret_cast<const Pack<T>*>(residual + row * hidden) : nullptr;
  float v[kPacksPerLane][kPerPack];
  float sum = 0.0f;
#pragma unroll
  for (int i = 0; i < kPacksPerLane; ++i) {
    const int p = lane + 32 * i;
    if (p >= packs) continue;
    const Pack<T> a = x_row[p];
    Pack<T> b;
    if (r_row != nullptr) b = r_row[p];
    Pack<T> rounded;
#pragma unroll
    for (int j = 0; j < kPerPack; ++j) {
      v[i][j] = to_float(a.v[j]) + (r_row != nullptr ? to_float(b.v[j]) : 0.0f);
      if (sum_out != nullptr) {
        rounded.v[j] = from_float<T>(v[i][j]);
        v[i][j] = to_float(rounded.v[j]);
      }
      sum += v[i][j];
    }
    if (sum_out != nullptr) reinterpret_cast<Pack<T>*>(sum_out + row * hidden)[p] = rounded;
  }
  const float mean = warp_sum(sum) / float(hidden);
  float sq = 0.0f;
#pragma unroll
  for (int i = 0; i < kPacksPerLane; ++i) {
    if (lane + 32 * i >= packs) continue;
#pragma unroll
    for (int j = 0; j < kPerPack; ++j) {
      const float c = v[i][j] - mean;
      sq += c * c;
    }
  }
  const float rstd = rsqrtf(warp_sum(sq) / float(hidden) + eps);
  const auto* g = reinterpret_cast<const Pack<T>*>(gamma);
  const auto* b = reinterpret_cast<const Pack<T>*>(beta);
  auto* out_row = reinterpret_cast<Pack<T>*>(out + row * hidden);
#pragma unroll
  for (int i = 0; i < kPacksPerLane; ++i) {
    const int p = lane + 32 * i;
    if (p >= packs) continue;
    const Pack<T> gp = g[p];
    Pack<T> o;
#pragma unroll
    for (int j = 0; j < kPerPack; ++j) {
      const float shift = b != nullptr ? to_float(b[p].v[j]) : 0.0f;
      o.v[j] = from_float<T>((v[i][j] - mean) * rstd * to_float(gp.v[j]) + shift);
    }
    out_row[p] = o;
  }
}

constexpr int kMaxPacksPerLane = 8;  // rows up to 4 KB (2048 fp16 or 1024 fp32 values)
constexpr int kWarpsPerBlock = 4;

template <typename T, int kPacksPerLane>
void launch_warp_kernel(const T* x, const T* residual, const T* gamma, const T* beta, T* out,
                        T* sum_out, int64_t rows, int64_t hidden, float eps,
                        cudaStream_t stream) {
  const int64_t blocks = (rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
  add_layernorm_warp_kernel<T, kPacksPerLane><<<blocks, 32 * kWarpsPerBlock, 0, stream>>>(
      x, residual, gamma, beta, out, sum_out, rows, int(hidden), eps);
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Any row: one block per row. The row (x + residual) is kept in shared memory as fp32, so the
// mean and the centred variance are two passes over fast memory (no E[x^2] - E[x]^2
// cancellation).
template <typename T>
__global__ void add_layernorm_kernel(const T* x, const T* residual, const T* gamma,
                                     const T* beta, T* out, T* sum_out, int64_t hidden,
                                     float eps) {
  extern __shared__ float row_values[];  // hidden floats
  __shared__ float scratch[32];
  const int64_t base = int64_t(blockIdx.x) * hidden;
  float sum = 0.0f;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
    float v = to_float(x[base + i]) + (residual ? to_float(residual[base + i]) : 0.0f);
    if (sum_out != nullptr) {
      sum_out[base + i] = from_float<T>(v);
      v = to_float(sum_out[base + i]);
    }
    row_values[i] = v;
    sum += v;
  }
  const float mean = block_sum(sum, scratch) / float(hidden);
  float sq = 0.0f;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
    const float c = row_values[i] - mean;
    sq += c * c;
  }
  const float rstd = rsqrtf(block_sum(sq, scratch) / float(hidden) + eps);
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
    out[base + i] = from_float<T>((row_values[i] - mean) * rstd * to_float(gamma[i]) +
                                  (beta != nullptr ? to_float(beta[i]) : 0.0f));
  }
}

// x += delta, elementwise (a pre-norm residual with no LayerNorm after it).
template <typename T>
__global__ void add_inplace_kernel(const T* delta, T* x, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    x[i] = from_float<T>(to_float(x[i]) + to_float(delta[i]));
  }
}

template <typename T>
void launch_add_layernorm(const T* x, const T* residual, const T* gamma, const T* beta, T* out,
                          T* sum_out, int64_t rows, int64_t hidden, float eps,
                          cudaStream_t stream) {
  if (rows == 0) return;
  constexpr int kPerPack = 16 / sizeof(T);
  const int64_t packs_per_lane = (hidden / kPerPack + 31) / 32;
  if (hidden % kPerPack == 0 && packs_per_lane <= kMaxPacksPerLane && aligned16(x) &&
      aligned16(gamma) && aligned16(beta) && aligned16(out) && aligned16(sum_out) &&
      (residual == nullptr || aligned16(residual))) {
    using Launch = void (*)(const T*, const T*, const T*, const T*, T*, T*, int64_t, int64_t,
                            float, cudaStream_t);
    static constexpr Launch kLaunch[kMaxPacksPerLane] = {
        launch_warp_kernel<T, 1>, launch_warp_kernel<T, 2>, launch_warp_kernel<T, 3>,
        launch_warp_kernel<T, 4>, launch_warp_kernel<T, 5>, launch_warp_kernel<T, 6>,
        launch_warp_kernel<T, 7>, launch_warp_kernel<T, 8>};
    kLaunch[packs_per_lane - 1](x, residual, gamma, beta, out, sum_out, rows, hidden, eps,
                                stream);
    check_launch("add_layernorm");
    return;
  }
  const int threads = hidden >= 1024 ? 512 : (hidden >= 256 ? 256 : 128);
  const size_t shared = size_t(hidden) * sizeof(float);
  if (shared > 48 * 1024) {
    check_cuda(cudaFuncSetAttribute(add_layernorm_kernel<T>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared)),
               "add_layernorm: shared memory for a wide row");
  }
  add_layernorm_kernel<T><<<rows, threads, shared, stream>>>(x, residual, gamma, beta, out,
                                                             sum_out, hidden, eps);
  check_launch("add_layernorm");
}

}  // namespace

template <typename T>
void add_layernorm(const T* x, const T* residual, const T* gamma, const T* beta, T* out,
                   int64_t rows, int64_t hidden, float eps, cudaStream_t stream) {
  launch_add_layernorm<T>(x, residual, gamma, beta, out, nullptr, rows, hidden, eps, stream);
}

template <typename T>
void add_residual_layernorm(const T* delta, T* x, const T* gamma, const T* beta, T* normed,
                            int64_t rows, int64_t hidden, float eps, cudaStream_t stream) {
  if (gamma != nullptr) {
    launch_add_layernorm<T>(x, delta, gamma, beta, normed, x, rows, hidden, eps, stream);
    return;
  }
  const int64_t n = rows * hidden;
  if (n == 0) return;
  const int64_t blocks = std::min<int64_t>((n + 255) / 256, 65535);
  add_inplace_kernel<T><<<blocks, 256, 0, stream>>>(delta, x, n);
  check_launch("add_residual_layernorm");
}

#define PYBERT_INSTANTIATE(T)                                                               \
  template void add_layernorm<T>(const T*, const T*, const T*, const T*, T*, int64_t,      \
                                 int64_t, float, cudaStream_t);                             \
  template void add_residual_layernorm<T>(const T*, T*, const T*, const T*, T*, int64_t,    \
                                          int64_t, float, cudaStream_t);
PYBERT_INSTANTIATE(float)
PYBERT_INSTANTIATE(__half)
PYBERT_INSTANTIATE(__nv_bfloat16)
#undef PYBERT_INSTANTIATE

}  // namespace pybert::cuda

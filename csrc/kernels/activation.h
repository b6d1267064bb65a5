// The activations a GEMM epilogue can apply; shared by the CPU and CUDA kernels and the runner.
#pragma once

namespace pybert {

enum class Activation : int {
  kNone = 0,
  kReLU = 1,
  kTanh = 2,
  kGELU = 3,  // exact form: x * Phi(x) with the erf
  kSiLU = 4,  // x * sigmoid(x) (SwiGLU's gate)
};

}  // namespace pybert

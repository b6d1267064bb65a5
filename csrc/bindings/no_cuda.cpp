// Linked instead of engine_cuda.cpp in a build without the CUDA kernels.
#include "engine.h"

namespace pybert {

const bool kBuiltWithCuda = false;

std::unique_ptr<DeviceEngine> make_cuda_engine(const BertConfig&, const WeightTensors&,
                                               at::ScalarType, const at::Device& device,
                                               WeightStorage) {
  TORCH_CHECK(false, "Engine: this build of pybert has no CUDA kernels (device ", device,
              "); rebuild with nvcc and a CUDA torch (PYBERT_CUDA=1)");
}

}  // namespace pybert

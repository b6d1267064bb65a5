// parallel_for on torch's CPU thread pool (at::parallel_for), so the kernels never start a
// second pool that competes with torch's for the same cores. Its own library: the plain
// kernels need it, and it needs nothing of theirs.
#include <ATen/Parallel.h>

#include "../parallel.h"

namespace pybert::cpu {

void parallel_for(int64_t n, int64_t grain_size,
                  const std::function<void(int64_t, int64_t)>& fn) {
  at::parallel_for(0, n, grain_size, fn);
}

}  // namespace pybert::cpu

// Run fn(begin, end) over chunks of [0, n) on the CPU thread pool that torch uses, so the
// extension never starts a second pool that competes with torch's for the same cores.
#pragma once

#include <cstdint>
#include <functional>

namespace pybert::cpu {

void parallel_for(int64_t n, int64_t grain_size,
                  const std::function<void(int64_t begin, int64_t end)>& fn);

}  // namespace pybert::cpu

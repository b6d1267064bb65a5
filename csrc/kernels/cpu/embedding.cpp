#include <algorithm>

#include "kernels.h"
#include "parallel.h"

namespace pybert::cpu {

template <typename T>
void embed_packed(const PackedIds& ids, const EmbeddingTables<T>& tables, T* out) {
  const int32_t* cu_seqlens = ids.cu_seqlens;
  const int64_t batch = ids.batch, hidden = tables.hidden;
  parallel_for(ids.total_tokens, 64, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      T* dst = out + row * hidden;
      if (row >= cu_seqlens[batch]) {  // spare capacity
        std::fill(dst, dst + hidden, from_float<T>(0.0f));
        continue;
      }
      // The sequence of this packed row: the last b with cu_seqlens[b] <= row.
      const int64_t b =
          std::upper_bound(cu_seqlens, cu_seqlens + batch + 1, row) - cu_seqlens - 1;
      const int64_t s = row - cu_seqlens[b];
      const int64_t input = ids.seq_len > 0 ? b * ids.seq_len + s : row;  // padded or packed
      const T* tok = tables.token + ids.tokens[input] * hidden;
      const T* seg = tables.segment + ids.segments[input] * hidden;
      const T* pos = tables.position != nullptr ? tables.position + s * hidden : nullptr;
      for (int64_t i = 0; i < hidden; ++i) {
        dst[i] = from_float<T>(to_float(tok[i]) + to_float(seg[i]) +
                             (pos != nullptr ? to_float(pos[i]) : 0.0f));
      }
    }
  });
}

#define PYBERT_INSTANTIATE(T) \
  template void embed_packed<T>(const PackedIds&, const EmbeddingTables<T>&, T*);
PYBERT_INSTANTIATE(float)
PYBERT_INSTANTIATE(bfloat16)
#undef PYBERT_INSTANTIATE

}  // namespace pybert::cpu

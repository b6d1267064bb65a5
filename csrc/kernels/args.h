// Argument structs the CPU and CUDA kernels share with every layer above them (the backends,
// the runner, the op bindings), where one kernel's long argument list would otherwise be
// written out again in each. Raw pointers and sizes, like every kernel argument.
#pragma once

#include <cstdint>

namespace pybert {

// How an engine holds its GEMM weight matrices, chosen once when it is built. Named in Python by
// pybert/engine/precision.py and parsed once (bindings/engine.cpp); each backend says which it
// serves: the CPU all three, the GPU the plain matrix (cuBLASLt reads it as given).
enum class WeightStorage {
  kPlain,   // the row-major matrix as given
  kPacked,  // CPU: prepacked once in the layouts of the GEMM paths its GemmChoice names
  kInt8,    // CPU: like kPacked, and the kInt8 path allowed: int8 per output channel,
            // activations quantised per row on each call (dynamic quantisation; oneDNN's int8
            // GEMM: VNNI or AMX where the CPU has them). Where a float path times faster (a CPU
            // without VNNI), the plan names it for that shape and row count instead.
};

// One batch's token ids and where its sequences lie in the packed rows.
struct PackedIds {
  const int64_t* tokens;      // (batch, seq_len) padded, or (total_tokens) packed if seq_len == 0
  const int64_t* segments;    // the layout of tokens
  const int32_t* cu_seqlens;  // (batch + 1): sequence b is packed rows [cu_seqlens[b], [b + 1])
  int64_t batch;
  int64_t seq_len;       // 0: tokens and segments are packed
  int64_t total_tokens;  // rows: cu_seqlens[batch], or more (spare capacity, as in a CUDA graph)
};

// The tables an embedded row sums, each row-major and `hidden` wide.
template <typename T>
struct EmbeddingTables {
  const T* token;     // (vocab_size, hidden)
  const T* segment;   // (type_vocab_size, hidden)
  const T* position;  // (>= the longest sequence, hidden): row s is position s; null: none
                      // (rotary positions act in the attention instead)
  int64_t hidden;
};

}  // namespace pybert

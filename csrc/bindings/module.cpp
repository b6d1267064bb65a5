// The Python module pybert._C: the Engine class, the weight layout and what the build holds.
// (torch.ops.pybert.* are registered by ops_schema.cpp and the ops_<device>.cpp files.)
#include <torch/extension.h>

#include <string>
#include <utility>
#include <vector>

#include "engine.h"
#include "kernels/cpu/simd.h"
#include "tensor_checks.h"

namespace pybert {
namespace {

// One config field from a dict's value, by the field's C++ type.
void read_field(const py::handle& value, int64_t& field) { field = value.cast<int64_t>(); }
void read_field(const py::handle& value, float& field) { field = value.cast<float>(); }
void read_field(const py::handle& value, bool& field) { field = value.cast<bool>(); }
void read_field(const py::handle& value, Activation& field) {
  field = parse_activation(value.cast<std::string>());
}

// A config dict as pybert.BertConfig.native() writes it: every field of PYBERT_CONFIG_FIELDS.
BertConfig config_from_dict(const py::dict& d) {
  BertConfig c;
#define PYBERT_READ_FIELD(type, name, default_value)          \
  TORCH_CHECK(d.contains(#name), "config has no '" #name "'"); \
  read_field(d[#name], c.name);
  PYBERT_CONFIG_FIELDS(PYBERT_READ_FIELD)
#undef PYBERT_READ_FIELD
  for (int64_t size : {c.vocab_size, c.num_hiddens, c.num_heads, c.ffn_num_hiddens,
                       c.num_layers, c.max_len, c.type_vocab_size}) {
    TORCH_CHECK(size >= 1, "config sizes must be >= 1, got ", size);
  }
  TORCH_CHECK(c.position_offset >= 0, "position_offset must be >= 0, got ", c.position_offset);
  TORCH_CHECK(c.embedding_size >= 0, "embedding_size must be >= 0, got ", c.embedding_size);
  TORCH_CHECK(c.rotary_base >= 0.0f && c.local_rotary_base >= 0.0f,
              "rotary bases must be >= 0 (0: none)");
  TORCH_CHECK(c.local_window >= 0 && c.global_every >= 1,
              "local_window must be >= 0 and global_every >= 1, got ", c.local_window, " and ",
              c.global_every);
  TORCH_CHECK(!c.rotary() || c.head_dim() % 2 == 0, "rotary positions need an even head dim, "
              "got ", c.head_dim());
  return c;
}

// One of CPU_ATTENTION_PATHS' values as the kernels' enum.
cpu::AttentionPath attention_path_of(int path) {
  TORCH_CHECK_VALUE(path >= 0 && path < cpu::kAttentionPaths, "unknown attention path ", path);
  return static_cast<cpu::AttentionPath>(path);
}

// One of CPU_GEMM_PATHS' values as the kernels' enum.
cpu::GemmPath gemm_path_of(int path) {
  TORCH_CHECK_VALUE(path >= 0 && path < cpu::kGemmPaths, "unknown GEMM path ", path);
  return static_cast<cpu::GemmPath>(path);
}

// A CPU plan as pybert.engine.cpu_plan writes it: {"gemm": {(n, k): [(max_rows, path), ...]},
// "attention_kernel": path, "attention_max_length": int}, paths as GemmPath's and
// AttentionPath's values; None: the defaults.
CpuPlan cpu_plan_from(const py::object& plan) {
  CpuPlan parsed;
  if (plan.is_none()) return parsed;
  const py::dict d = plan.cast<py::dict>();
  if (d.contains("attention_kernel")) {
    parsed.attention_kernel = attention_path_of(d["attention_kernel"].cast<int>());
  }
  if (d.contains("attention_max_length")) {
    parsed.attention_max_length = d["attention_max_length"].cast<int64_t>();
  }
  if (!d.contains("gemm")) return parsed;
  for (const auto& [shape, choice] : d["gemm"].cast<py::dict>()) {
    const auto [n, k] = shape.cast<std::pair<int64_t, int64_t>>();
    cpu::GemmChoice& entries = parsed.gemm[{n, k}];
    for (const auto& [max_rows, path] :
         choice.cast<std::vector<std::pair<int64_t, int>>>()) {
      entries.emplace_back(max_rows, gemm_path_of(path));
    }
  }
  return parsed;
}

// Seconds of one CPU GEMM (m, k) x (n, k)^T in `dtype` by each of `paths` (GemmPath's values)
// for each m of `rows` (negative: not available).
std::vector<std::vector<double>> time_cpu_gemm(const std::vector<int>& paths,
                                               const std::vector<int64_t>& rows, int64_t n,
                                               int64_t k, const std::string& dtype,
                                               int repeats) {
  std::vector<cpu::GemmPath> chosen;
  for (int path : paths) chosen.push_back(gemm_path_of(path));
  TORCH_CHECK_VALUE(n >= 1 && k >= 1, "GEMM sizes must be >= 1");
  for (int64_t m : rows) TORCH_CHECK_VALUE(m >= 1, "GEMM rows must be >= 1, got ", m);
  TORCH_CHECK_VALUE(dtype == "float32" || dtype == "bfloat16",
                    "dtype must be float32 or bfloat16, got ", dtype);
  py::gil_scoped_release release;
  if (dtype == "bfloat16") return cpu::time_gemm<cpu::bfloat16>(chosen, rows, n, k, repeats);
  return cpu::time_gemm<float>(chosen, rows, n, k, repeats);
}

// Whether this machine can run a GEMM path (GemmPath's value) in `dtype`.
bool cpu_gemm_path_available(int path, const std::string& dtype) {
  const cpu::GemmPath chosen = gemm_path_of(path);
  return dtype == "bfloat16" ? cpu::gemm_path_available<cpu::bfloat16>(chosen)
                             : cpu::gemm_path_available<float>(chosen);
}

// The names of PYBERT_CONFIG_FIELDS, in order.
py::list config_fields() {
  py::list names;
#define PYBERT_FIELD_NAME(type, name, default_value) names.append(#name);
  PYBERT_CONFIG_FIELDS(PYBERT_FIELD_NAME)
#undef PYBERT_FIELD_NAME
  return names;
}

// {name: (shape, part, optional)} for every weight of `config`, in the order of
// bert/weights.h.
py::dict weight_shapes(const py::dict& config_dict) {
  const BertConfig config = config_from_dict(config_dict);
  py::dict shapes;
  BertWeights<void> layout;
  for_each_weight(config, layout, [&](const WeightSpec& spec, const void*&) {
    shapes[py::str(spec.name)] =
        py::make_tuple(py::tuple(py::cast(spec.shape)), weight_part_name(spec.part),
                       spec.optional);
  });
  return shapes;
}

}  // namespace
}  // namespace pybert

PYBIND11_MODULE(_C, m) {
  using pybert::Engine;
  m.doc() = "pybert's C++/CUDA engine (see pybert.Engine for the Python API)";
  m.attr("cuda_available") = pybert::kBuiltWithCuda;
  // Whether the CPU kernels' hot loops have AVX2 / AVX-512 clones (not in a PYBERT_GENERIC_CPU
  // build, nor off x86-64 Linux with GCC).
  m.attr("cpu_simd_clones") = bool(PYBERT_HAS_SIMD_CLONES);
  py::dict activations;
  for (auto act : {pybert::Activation::kNone, pybert::Activation::kReLU,
                   pybert::Activation::kTanh, pybert::Activation::kGELU,
                   pybert::Activation::kSiLU}) {
    activations[pybert::activation_name(act)] = static_cast<int>(act);
  }
  m.attr("ACTIVATIONS") = activations;
  m.attr("CONFIG_FIELDS") = pybert::config_fields();
  py::dict gemm_paths;
  gemm_paths["aten"] = static_cast<int>(pybert::cpu::GemmPath::kAten);
  gemm_paths["mkl"] = static_cast<int>(pybert::cpu::GemmPath::kMklPacked);
  gemm_paths["onednn"] = static_cast<int>(pybert::cpu::GemmPath::kOneDnnPacked);
  gemm_paths["int8"] = static_cast<int>(pybert::cpu::GemmPath::kInt8);
  m.attr("CPU_GEMM_PATHS") = gemm_paths;
  m.def("time_cpu_gemm", &pybert::time_cpu_gemm, py::arg("paths"), py::arg("rows"),
        py::arg("n"), py::arg("k"), py::arg("dtype"), py::arg("repeats") = 3,
        "seconds of one CPU GEMM by each path for each row count (negative: not available)");
  m.def("cpu_gemm_path_available", &pybert::cpu_gemm_path_available, py::arg("path"),
        py::arg("dtype"), "whether this machine can run a CPU GEMM path in a dtype");
  py::dict attention_paths;
  attention_paths["flash"] = static_cast<int>(pybert::cpu::AttentionPath::kFlash);
  attention_paths["mkl"] = static_cast<int>(pybert::cpu::AttentionPath::kMkl);
  attention_paths["own"] = static_cast<int>(pybert::cpu::AttentionPath::kOwn);
  m.attr("CPU_ATTENTION_PATHS") = attention_paths;
  // The longest sequence the CPU's own attention kernels take (longer ones go to flash).
  m.attr("CPU_ATTENTION_KERNEL_MAX") = pybert::cpu::kAttentionKernelMaxLength;
  m.def(
      "cpu_attention_path_available",
      [](int path) {
        return pybert::cpu::attention_path_available(pybert::attention_path_of(path));
      },
      py::arg("path"), "whether this machine can run a CPU attention path");
  m.def("cpu_attention_isa", &pybert::cpu::attention_tiled_isa,
        "the vectors the own CPU attention kernel runs in: avx512, avx2 or baseline");
  m.def(
      "time_cpu_attention",
      [](int path, int64_t batch, int64_t length, int64_t num_heads, int64_t head_dim,
         int repeats) {
        const pybert::cpu::AttentionPath chosen = pybert::attention_path_of(path);
        TORCH_CHECK_VALUE(batch >= 1 && length >= 1 && num_heads >= 1 && head_dim >= 1,
                          "attention sizes must be >= 1");
        py::gil_scoped_release release;
        return pybert::cpu::time_attention(chosen, batch, length, num_heads, head_dim, repeats);
      },
      py::arg("path"), py::arg("batch"), py::arg("length"), py::arg("num_heads"),
      py::arg("head_dim"), py::arg("repeats") = 3,
      "seconds of the float CPU attention by one path (negative: not available)");
  m.def("weight_shapes", &pybert::weight_shapes, py::arg("config"),
        "{name: (shape, part)} of the engine's packed weights for a config dict");
  py::class_<Engine>(m, "Engine")
      .def(py::init([](const py::dict& config, const pybert::WeightTensors& weights,
                       const std::string& weight_storage, const py::object& cpu_plan) {
             return std::make_unique<Engine>(pybert::config_from_dict(config), weights,
                                             weight_storage, pybert::cpu_plan_from(cpu_plan));
           }),
           py::arg("config"), py::arg("weights"), py::arg("weight_storage") = "packed",
           py::arg("cpu_plan") = py::none())
      .def_property_readonly("has_nsp", &Engine::has_nsp)
      .def_property_readonly("has_mlm", &Engine::has_mlm)
      .def_property_readonly("has_embedding_norm", &Engine::has_embedding_norm)
      .def(
          "forward",
          [](Engine& engine, const at::Tensor& tokens, const at::Tensor& segments,
             const at::Tensor& cu_seqlens, int64_t total_tokens, int64_t max_seqlen,
             const std::optional<at::Tensor>& pred_positions, bool with_encoded,
             bool with_nsp, bool interruptible) {
            // Between two layers a CPU forward asks whether a signal arrived (Ctrl-C): the
            // handler runs with the GIL, and its exception ends the call.
            std::function<bool()> stop_requested;
            if (interruptible) {
              stop_requested = [] {
                py::gil_scoped_acquire gil;
                return PyErr_CheckSignals() != 0;
              };
            }
            Engine::Outputs out;
            {
              py::gil_scoped_release release;
              out = engine.forward(tokens, segments, cu_seqlens, total_tokens, max_seqlen,
                                   pred_positions, with_encoded, with_nsp,
                                   std::move(stop_requested));
            }
            if (!out.completed) throw py::error_already_set();
            return py::make_tuple(out.encoded, out.mlm_logits, out.nsp_logits);
          },
          py::arg("tokens"), py::arg("segments"), py::arg("cu_seqlens"),
          py::arg("total_tokens"), py::arg("max_seqlen"), py::arg("pred_positions"),
          py::arg("with_encoded") = true, py::arg("with_nsp") = true,
          py::arg("interruptible") = false);
}

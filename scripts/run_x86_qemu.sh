#!/usr/bin/env bash
# Run pybert's tests on x86-64 CPUs this machine is not, under qemu's user-mode emulation. The
# emulated CPUID is what torch, oneDNN, MKL and pybert's own dispatch (target_clones, the
# attention kernel's variants, the int8 weight limit) ask, so an instruction the model lacks
# stops the run with SIGILL, as it would on a user's machine, and every run-time choice takes
# the branch that CPU would take.
#
#   bash scripts/run_x86_qemu.sh [--cpu MODEL]... [pytest arguments]
#
# MODEL is a name of `qemu-x86_64-static -cpu help`. qemu's emulator goes up to AVX2: no
# AVX-512, VNNI, BF16 or AMX, so the models that matter are
#   Nehalem-v2   x86-64-v2 (SSE4.2, no AVX): torch's DEFAULT kernels, pybert's baseline code
#   EPYC-Milan   AMD Zen 3, x86-64-v3 (AVX2 + FMA, no AVX-512, no VNNI): the AVX2 clones and
#                tiles, int8 weights kept to 7 bits, no bfloat16 GEMM in oneDNN, MKL on an AMD
#                processor (Haswell-v4 is the same ISA from Intel)
# (numpy and torch need x86-64-v2: nothing older runs). Default: both.
#
# The Python is .venv's, with whichever pybert it imports: installed (`pip install .`, as CI
# does), or the checkout's in-place build with PYTHONPATH=. set by the caller. A subprocess a
# test starts runs on the host CPU: qemu-user does not follow exec.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-$PWD/.venv/bin/python}

models=()
while [ $# -gt 0 ] && [ "$1" = --cpu ]; do
  models+=("$2")
  shift 2
done
[ ${#models[@]} -gt 0 ] || models=(Nehalem-v2 EPYC-Milan)
# Default: the CPU kernels' tests and the CPU engine's, less those marked slow (about 15
# emulated minutes of the kernels' 17 go to a 3000-token window and opcheck).
[ $# -gt 0 ] || set -- -q -p no:cacheprovider -m "not slow" tests/kernels \
  tests/engine/test_cpu_plan.py tests/engine/test_engine_cpu.py

bash scripts/install_debian_packages.sh qemu-user-static

# qemu names each CPUID bit its emulator lacks for the model (hypervisor features, no effect
# on user code) once per process; they are dropped from the output, all else is kept.
emulated() {
  local model=$1
  shift
  qemu-x86_64-static -cpu "$model" "$python" "$@" \
    2> >(grep -v "TCG doesn't support requested feature" >&2)
}

for model in "${models[@]}"; do
  echo "== $model (qemu-x86_64-static -cpu $model) =="
  # What the emulated CPU looks like to each dispatcher, and a refusal to go on where it still
  # has AVX-512 (the run would prove nothing about CPUs without it). -P here and pytest's own
  # script below (not -m pytest): the checkout's pybert/ must not shadow an installed one.
  emulated "$model" -P - <<'EOF'
import torch
import pybert._C as C
capability = torch.backends.cpu.get_cpu_capability()
print(f"torch {torch.__version__}: {capability} kernels; pybert attention tiles:",
      C.cpu_attention_isa())
if capability.startswith("AVX512") or C.cpu_attention_isa() == "avx512":
    raise SystemExit("the emulated CPU has AVX-512: not the CPU asked for")
EOF
  emulated "$model" "$(dirname "$python")/pytest" "$@"
done

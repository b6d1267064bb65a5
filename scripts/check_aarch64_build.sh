#!/usr/bin/env bash
# Compile pybert's C++ (the CPU kernels, the runner, the bindings) for aarch64 with a cross
# compiler and warnings as errors, so that x86-only code (an intrinsic, a builtin, an ISA
# attribute outside simd.h's guard) fails CI before an Arm user meets it. The commands are
# CMake's own for this machine's build (compile_commands.json), replayed with the aarch64
# compiler; the headers are this machine's torch's (an Arm torch's differ only in its build
# configuration). Nothing is linked or run here (scripts/run_aarch64_qemu.sh links the objects
# it leaves in build/aarch64-check/objects and runs them under emulation).
#
# The compiler: $PYBERT_AARCH64_CXX, default aarch64-linux-gnu-g++ (Debian's
# g++-aarch64-linux-gnu; .ci/run installs it). $PYBERT_AARCH64_TORCH: an aarch64 torch package
# whose headers replace this machine's torch's; $PYBERT_AARCH64_CXXFLAGS: more flags (an Arm
# Python's headers).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
cxx=${PYBERT_AARCH64_CXX:-aarch64-linux-gnu-g++}
work=build/aarch64-check
command -v "$cxx" > /dev/null || {
  echo "check_aarch64_build: no $cxx (apt-get install g++-aarch64-linux-gnu)" >&2
  exit 1
}
mkdir -p "$work"
export PATH="$PWD/.venv/bin:$PATH"
generator=()
command -v ninja > /dev/null && generator=(-G Ninja)
cmake -S . -B "$work/cmake" "${generator[@]}" \
  -DPython_EXECUTABLE="$("$python" -c 'import sys; print(sys.executable)')" \
  -DPYBERT_WERROR=ON -DCMAKE_EXPORT_COMPILE_COMMANDS=ON \
  > "$work/configure.log" || { cat "$work/configure.log"; exit 1; }
"$python" - "$work" "$cxx" "${MAX_JOBS:-2}" <<'PY'
import concurrent.futures, json, os, shlex, shutil, subprocess, sys

work, cxx, jobs = sys.argv[1], sys.argv[2], int(sys.argv[3])
objects = os.path.abspath(os.path.join(work, "objects"))
shutil.rmtree(objects, ignore_errors=True)  # only this run's objects, for a link to take
os.makedirs(objects)
arm_torch = os.environ.get("PYBERT_AARCH64_TORCH")
host_torch = None
if arm_torch:
    import torch
    host_torch = os.path.dirname(torch.__file__)
extra = shlex.split(os.environ.get("PYBERT_AARCH64_CXXFLAGS", ""))
with open(os.path.join(work, "cmake", "compile_commands.json")) as commands:
    entries = json.load(commands)


def compile_for_aarch64(entry):
    args = shlex.split(entry["command"]) if "command" in entry else list(entry["arguments"])
    if arm_torch:
        args = [a.replace(host_torch, arm_torch) for a in args]
    args[0] = cxx
    out = args.index("-o")
    args[out + 1] = os.path.join(objects, os.path.basename(entry["file"]) + ".o")
    result = subprocess.run(args + extra, cwd=entry["directory"], capture_output=True,
                            text=True)
    return entry["file"], result.returncode, result.stdout + result.stderr


failed = 0
with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
    for source, code, output in pool.map(compile_for_aarch64, entries):
        name = os.path.relpath(source)
        print(("ok      " if code == 0 else "FAILED  ") + name)
        if code != 0:
            failed += 1
            print(output)
if not entries or failed:
    sys.exit(f"check_aarch64_build: {failed} of {len(entries)} sources failed for aarch64")
print(f"check_aarch64_build: {len(entries)} C++ sources compile for aarch64")
PY

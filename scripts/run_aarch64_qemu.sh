#!/usr/bin/env bash
# Build pybert._C for aarch64 and run tests on it under qemu-user emulation: the closest this
# project gets to an Arm machine without one. Slow (torch's import takes ~30 s emulated, the
# kernels' tests ~10 min), so it is not part of CI; run it by hand, as root on Debian 12:
#
#   bash scripts/run_aarch64_qemu.sh [pytest arguments]   (default: the CPU kernels' tests)
#
# What it does, in $PYBERT_AARCH64_ROOT (default /tmp/pybert-aarch64):
# 1. Debian's arm64 CPython 3.11 (debootstrap --foreign: the packages unpacked, nothing run),
#    and aarch64 wheels from PyPI in site/: torch $PYBERT_AARCH64_TORCH (default 2.9.1, the
#    last release whose PyPI aarch64 wheel is a CPU build: OpenBLAS and oneDNN over the Arm
#    Compute Library, no MKL), numpy, safetensors, tokenizers, pytest.
# 2. The extension cross-compiled by scripts/check_aarch64_build.sh against the aarch64 torch's
#    and Python's headers, then linked against the aarch64 torch's libraries.
# 3. pytest on a copy of pybert/ and tests/ by the emulated Python (binfmt_misc registered
#    for aarch64 where the kernel allows it, so that tests starting a subprocess work too).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
root=${PYBERT_AARCH64_ROOT:-/tmp/pybert-aarch64}
torch_version=${PYBERT_AARCH64_TORCH:-2.9.1}
pip=${PIP:-$repo/.venv/bin/pip}
mkdir -p "$root"

bash scripts/install_debian_packages.sh qemu-user-static debootstrap g++-aarch64-linux-gnu

sysroot=$root/sysroot
if [ ! -x "$sysroot/usr/bin/python3.11" ]; then
  debootstrap --foreign --arch=arm64 --variant=minbase \
    --include=python3.11,libpython3.11-stdlib,libpython3.11-dev,libgomp1 \
    bookworm "$sysroot" http://deb.debian.org/debian > "$root/debootstrap.log"
  for deb in "$sysroot"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$sysroot"; done
fi
export QEMU_LD_PREFIX=$sysroot
python_arm=$root/python
cat > "$python_arm" <<EOF
#!/bin/bash
export PYTHONPATH=$root/site\${PYTHONPATH:+:\$PYTHONPATH}
exec qemu-aarch64-static -L $sysroot $sysroot/usr/bin/python3.11 "\$@"
EOF
chmod +x "$python_arm"
# Tests that start a subprocess run sys.executable, an aarch64 binary: binfmt_misc hands it
# to qemu (with QEMU_LD_PREFIX for its libraries). Where it cannot be registered, those
# tests fail and the others still run.
if [ -w /proc/sys/fs/binfmt_misc/register ] || mount binfmt_misc -t binfmt_misc \
    /proc/sys/fs/binfmt_misc 2> /dev/null; then
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] ||
    cat /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register 2> /dev/null ||
    echo "run_aarch64_qemu: could not register qemu for aarch64 binaries" >&2
fi

if [ ! -d "$root/site/torch" ]; then
  "$pip" install -q --target "$root/site" --no-deps --only-binary=:all: --python-version 3.11 \
    --implementation cp --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 \
    --platform manylinux_2_17_aarch64 "torch==$torch_version" numpy safetensors tokenizers \
    tqdm filelock typing-extensions sympy mpmath networkx jinja2 markupsafe fsspec pytest \
    pluggy iniconfig packaging pygments hypothesis attrs sortedcontainers huggingface-hub \
    pyyaml requests idna urllib3 certifi charset-normalizer
fi

PYBERT_AARCH64_TORCH=$root/site/torch PYBERT_AARCH64_CXXFLAGS="-I$sysroot/usr/include/python3.11 \
  -idirafter $sysroot/usr/include" bash scripts/check_aarch64_build.sh > "$root/compile.log" ||
  { cat "$root/compile.log"; exit 1; }
# Torch's own OpenMP runtime (its wheel bundles one), so that one thread pool runs both.
module=$root/_C.cpython-311-aarch64-linux-gnu.so
aarch64-linux-gnu-g++ -shared -o "$module" build/aarch64-check/objects/*.o \
  -L"$root/site/torch/lib" -Wl,--no-as-needed -ltorch_python -ltorch -ltorch_cpu -lc10 \
  "$root"/site/torch.libs/libgomp-*.so* -Wl,--as-needed
echo "run_aarch64_qemu: built $module"

stage=$root/stage
rm -rf "$stage" && mkdir -p "$stage"
git ls-files pybert tests pyproject.toml | tar cf - -T - | tar xf - -C "$stage"
cp "$root/_C.cpython-311-aarch64-linux-gnu.so" "$stage/pybert/"
cd "$stage"
if [ $# -eq 0 ]; then
  set -- tests/kernels -k "cpu or isa or opcheck or every_argument"
fi
exec "$python_arm" -m pytest -q -p no:cacheprovider "$@"

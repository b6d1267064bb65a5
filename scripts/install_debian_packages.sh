#!/usr/bin/env bash
# Install Debian packages that are not installed yet (sudo where not root; the package lists
# refreshed only when an install from the current ones fails).
#
#   bash scripts/install_debian_packages.sh PACKAGE...
set -euo pipefail
missing=()
for package in "$@"; do
  dpkg-query -W -f='${Status}' "$package" 2> /dev/null | grep -q "install ok installed" ||
    missing+=("$package")
done
[ ${#missing[@]} -gt 0 ] || exit 0
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
"${sudo[@]}" apt-get install -y -q "${missing[@]}" > /dev/null ||
  { "${sudo[@]}" apt-get update -q > /dev/null &&
    "${sudo[@]}" apt-get install -y -q "${missing[@]}" > /dev/null; }

#!/usr/bin/env bash
# Installs the build tools `make` needs when they are missing (Debian/Ubuntu: apt-get).
# Usage: tools/ensure-build-tools.sh [extra-command...]   e.g. clang-format
set -euo pipefail

declare -A package=(
  [cmake]=cmake [ninja]=ninja-build [cc]=gcc [c++]=g++ [clang-format]=clang-format
)
need=(cmake ninja cc "$@")
missing=()
for cmd in "${need[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${package[$cmd]:-$cmd}")
done

# Without a new enough Go, tools/ensure-go.sh downloads one: it needs curl and unzip.
if ! "$(dirname "${BASH_SOURCE[0]}")/ensure-go.sh" --check; then
  need+=(curl unzip)
fi
[[ ${#missing[@]} -eq 0 ]] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: missing build tools: ${missing[*]}; install them with your package manager" >&2
  exit 1
fi
sudo=""
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
    echo "error: missing build tools: ${missing[*]}; run as root or install them" >&2
    exit 1
  fi
fi
echo "installing build tools: ${missing[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

#!/usr/bin/env bash
# Installs Debian's CUDA toolkit (nvcc 11.8) from the non-free component of the same
# Debian archive, when nvcc is not already there.
set -euo pipefail
command -v nvcc >/dev/null 2>&1 && exit 0
sudo=""
[[ $(id -u) -ne 0 ]] && sudo="sudo"
if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
  $sudo sed -i -E '/^Components:/{/ contrib( |$)/!s/$/ contrib/; / non-free( |$)/!s/$/ non-free/}' \
    /etc/apt/sources.list.d/debian.sources
else
  $sudo sed -i -E '/^deb /{/ contrib( |$)/!s/$/ contrib/; / non-free( |$)/!s/$/ non-free/}' /etc/apt/sources.list
fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends nvidia-cuda-toolkit >/dev/null

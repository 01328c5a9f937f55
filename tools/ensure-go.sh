#!/usr/bin/env bash
# Prints the path of a Go toolchain new enough for this module (go.mod's `go` line). Uses
# `go` from PATH when it is new enough; otherwise downloads the official toolchain from the
# Go module proxy (the same archive `GOTOOLCHAIN=auto` would fetch) into
# ${XDG_CACHE_HOME:-~/.cache}/gosd/ once. Messages go to stderr; exit status 1 on failure.
# With --check it only tells (exit status 0 or 1) whether a usable toolchain is at hand.
set -euo pipefail
check=false
[[ ${1:-} == --check ]] && check=true

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
need=$(awk '$1 == "go" { print $2; exit }' "$root/go.mod") # e.g. 1.25
fetch_version=${GOSD_GO_VERSION:-go1.26.8}

# newer A B: A >= B for dotted versions.
newer() { [[ $(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n1) == "$2" ]]; }

if command -v go >/dev/null 2>&1; then
  have=$(GOTOOLCHAIN=local go env GOVERSION 2>/dev/null || true) # e.g. go1.26.8
  if [[ -n $have ]] && newer "${have#go}" "$need"; then
    $check || command -v go
    exit 0
  fi
  $check || echo "Go ${have:-of unknown version} in PATH is older than $need; using $fetch_version" >&2
fi

case $(uname -m) in
x86_64 | amd64) arch=amd64 ;;
aarch64 | arm64) arch=arm64 ;;
*)
  $check && exit 1
  echo "error: no Go toolchain for $(uname -m); install Go $need or newer from https://go.dev/dl/" >&2
  exit 1
  ;;
esac
os=$(uname -s | tr '[:upper:]' '[:lower:]')
dest=${XDG_CACHE_HOME:-$HOME/.cache}/gosd/$fetch_version.$os-$arch
if [[ -x $dest/bin/go ]]; then
  $check || echo "$dest/bin/go"
  exit 0
fi
$check && exit 1

module=v0.0.1-$fetch_version.$os-$arch
url=${GOPROXY_URL:-https://proxy.golang.org}/golang.org/toolchain/@v/$module.zip
echo "downloading Go $fetch_version ($os/$arch) from $url" >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
curl -fsSL --retry 3 -o "$tmp/go.zip" "$url" || {
  echo "error: could not download $url; install Go $need or newer from https://go.dev/dl/" >&2
  exit 1
}
# The module zip holds golang.org/toolchain@<version>/{bin,pkg,src,...}; module zips carry
# no file modes, so the executables are marked as such after extraction.
unzip -q "$tmp/go.zip" -d "$tmp/x"
src=$tmp/x/golang.org/toolchain@$module
chmod +x "$src"/bin/* "$src"/pkg/tool/*/*
"$src/bin/go" version >/dev/null
mkdir -p "$(dirname "$dest")"
rm -rf "$dest"
mv "$src" "$dest"
echo "$dest/bin/go"

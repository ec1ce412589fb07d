#!/bin/sh
# Builds app.wasm from app.c with Debian's clang for wasm32-wasi.
# Deterministic: no debug info, stripped, no build paths embedded; two builds are
# byte-identical (tests/unit/test_wasm_samples.py checks the committed app.wasm).
# Usage: ./build.sh [OUT]   (default: app.wasm next to this script)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-"$here/app.wasm"}
cd "$here"
clang --target=wasm32-wasi -O2 -g0 -Wall -Werror \
    -ffile-prefix-map="$here"=. \
    -Wl,--strip-all \
    -o "$out" app.c

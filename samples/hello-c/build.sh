#!/bin/sh
# Builds the native binary `app` from app.c and sdk/c with the system C compiler.
# Not committed (it is this machine's code): `make setup` and the tests run this.
# Usage: ./build.sh [OUT]   (default: app next to this script)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-"$here/app"}
sdk="$here/../../sdk/c"
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
cc=${CC:-$(command -v cc || command -v clang || command -v gcc || echo cc)}
"$cc" -std=c11 -O2 -Wall -Wextra -Werror -I"$sdk" -o "$tmp" "$here/app.c" "$sdk/estarter_native.c"
mv -f "$tmp" "$out"

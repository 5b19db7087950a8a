#!/usr/bin/env bash
# Build every TypeScript plugin of the repo into a component and copy it to
# $TARGET_DIR/plugins/js/<name, - as _>.wasm (beside the Rust plugins' targets).
#
#   scripts/build-ts-plugins.sh [--project DIR]
#
# A TypeScript plugin is a directory under plugins/, tests/plugins/ or examples/ whose
# package.json has a "cashback" key (what `cashbackd plugin new rule NAME --lang ts`
# makes). Its dependencies come from the npm registry (`npm ci`, pinned by its
# package-lock.json); `npm run build` runs its build.mjs: tsc, componentize-js, and the
# manifest and fixtures embedded. A project is rebuilt only when one of its inputs is
# newer than its component. scripts/build-plugins.sh runs this after the Rust plugins.
#
# --project DIR builds only DIR, wherever it is, leaving the component in DIR/dist/
# (`cashbackd plugin build|test` run this).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
die() { echo "build-ts-plugins: error: $*" >&2; exit 1; }

command -v node >/dev/null && command -v npm >/dev/null ||
  die "node and npm are needed for TypeScript plugins (Debian: apt-get install nodejs npm)"

# The component's name: package.json's "name".
name_of() { node -e 'console.log(require(require("path").resolve(process.argv[1])).name)' "$1/package.json"; }

build() {
  local dir=$1 name wasm
  name=$(name_of "$dir")
  wasm=$dir/dist/$name.wasm
  # Up to date when the component is newer than every input.
  if [[ -f $wasm ]] && [[ -z $(find "$dir" -path "$dir/node_modules" -prune -o -path "$dir/dist" -prune -o \
    -type f -newer "$wasm" -print -quit) ]]; then
    echo "==> $name is up to date"
  else
    echo "==> building $name (TypeScript, componentize-js)"
    if [[ ! -d $dir/node_modules || $dir/package-lock.json -nt $dir/node_modules ]]; then
      if [[ -f $dir/package-lock.json ]]; then
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
      else
        (cd "$dir" && npm install --no-audit --no-fund --loglevel=error)
      fi
    fi
    (cd "$dir" && npm run --silent build)
  fi
  [[ -f $wasm ]] || die "$dir: the build made no $wasm"
  BUILT=$wasm
}

if [[ ${1:-} == --project ]]; then
  (($# == 2)) || die "usage: $0 --project DIR"
  build "$(cd "$2" && pwd)"
  exit 0
fi
(($# == 0)) || die "usage: $0 [--project DIR]"

mkdir -p "$TARGET_DIR/plugins/js"
find plugins tests/plugins examples -name node_modules -prune -o -name package.json -print 2>/dev/null | sort |
  while read -r pkg; do
    dir=$(dirname "$pkg")
    grep -q '"cashback"' "$pkg" || continue
    build "$REPO/$dir"
    dst=$TARGET_DIR/plugins/js/$(basename "$BUILT" .wasm | tr - _).wasm
    cp "$BUILT" "$dst"
    printf '%-28s %-24s %8s KB  %s\n' "$(name_of "$REPO/$dir")" "js (componentize-js)" \
      "$(awk -v b="$(stat -c %s "$dst")" 'BEGIN { printf "%.1f", b / 1024 }')" "${dst#"$REPO"/}"
  done

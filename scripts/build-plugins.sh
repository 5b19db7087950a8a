#!/usr/bin/env bash
# Build every WebAssembly plugin crate of the repo into a *component* and copy
# it to $TARGET_DIR/plugins/<target>/<crate>.wasm.
#
#   scripts/build-plugins.sh [--list | --help | PLUGIN...]
#   scripts/build-plugins.sh --crate DIR
#
# A plugin crate is any Cargo.toml under plugins/, tests/plugins/ or examples/
# whose [lib] crate-type lists "cdylib". Its targets come from
#   [package.metadata.cashback]
#   targets = ["wasm32-wasip2", "wasm32-unknown-unknown"]
# (default: wasm32-wasip2).
#
# --crate DIR builds the one plugin crate in DIR, wherever it is (a crate of its
# own made by `cashbackd plugin new`, say), with the same toolchain choice, into
# its own target dir (the one `cargo metadata` names, or CARGO_TARGET_DIR):
# <target dir>/plugins/<target>/<crate>.wasm. `cashbackd plugin build` runs this.
#
# Environment:
#   CASHBACKD_WASM_TOOLCHAIN  auto (default) | rustup (never use the Debian
#                             fallback) | debian (always use it)
#   CASHBACKD_TOOLCHAIN_DIR   cache of the unpacked Debian toolchain
#                             (default $REPO/target/wasm-toolchain)
#   CARGO_TARGET_DIR          the target dir shared with the rest of the repo
set -euo pipefail

SELF=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")   # before cd: $0 may be relative
CALLER=$(pwd)                                           # --crate DIR is relative to it
cd "$(dirname "$0")/.."
REPO=$(pwd)
TC=${CASHBACKD_TOOLCHAIN_DIR:-$REPO/target/wasm-toolchain}
MODE=${CASHBACKD_WASM_TOOLCHAIN:-auto}
TOOLS=$REPO/target/tools
COMPONENT_MAGIC=0061736d0d000100   # "\0asm", version 0x0d, layer 1
CORE_MAGIC=0061736d01000000        # "\0asm", version 1, layer 0

die() { echo "build-plugins: error: $*" >&2; exit 1; }
case $MODE in auto | rustup | debian) ;; *) die "CASHBACKD_WASM_TOOLCHAIN must be auto, rustup or debian, not '$MODE'" ;; esac

# ---- discovery -------------------------------------------------------------
# One line per plugin: "package<TAB>lib-crate-name<TAB>targets<TAB>manifest".
# awk instead of a TOML parser: we only need four simple keys, and this keeps
# the script dependency-free. Comments and any quoting/whitespace are tolerated.
discover() {
  local dirs=() d
  for d in plugins tests/plugins examples; do [[ -d $d ]] && dirs+=("$d"); done
  ((${#dirs[@]})) || return 0
  find "${dirs[@]}" -name target -prune -o -name Cargo.toml -print | sort |
    while read -r manifest; do describe "$manifest"; done
}

# The line of one manifest; nothing when it is not a plugin crate.
describe() {
  awk -v m="$1" '
    function val(s) { sub(/^[^=]*=[[:space:]]*/, "", s); gsub(/["\047[:space:]]/, "", s); return s }
    { sub(/[[:space:]]#.*$/, ""); sub(/^[[:space:]]*#.*$/, "") }
    # join a multi-line array ("key = [" ... "]") into one line
    pend != "" { $0 = pend " " $0; pend = "" }
    /=[[:space:]]*\[[^]]*$/ { pend = $0; next }
    /^[[:space:]]*\[/ { sec = $0; gsub(/[][[:space:]]/, "", sec); next }
    sec == "package" && /^[[:space:]]*name[[:space:]]*=/ { name = val($0) }
    sec == "lib" && /^[[:space:]]*name[[:space:]]*=/ { lib = val($0) }
    sec == "lib" && /^[[:space:]]*crate-type[[:space:]]*=/ && /["\047]cdylib["\047]/ { cdylib = 1 }
    sec == "package.metadata.cashback" && /^[[:space:]]*targets[[:space:]]*=/ {
      t = val($0); gsub(/[][]/, "", t); gsub(/,/, " ", t); sub(/ $/, "", t) }
    END {
      if (!cdylib || name == "") exit
      if (lib == "") { lib = name; gsub(/-/, "_", lib) }
      printf "%s\t%s\t%s\t%s\n", name, lib, (t == "" ? "wasm32-wasip2" : t), m }
  ' "$1"
}

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$SELF"; }

CRATE=
if [[ ${1:-} == --crate || ${1:-} == --crate=* ]]; then
  if [[ $1 == --crate ]]; then
    (($# == 2)) || die "usage: $0 --crate DIR"
    CRATE=$2
  else
    (($# == 1)) || die "usage: $0 --crate DIR"
    CRATE=${1#--crate=}
  fi
  [[ $CRATE == /* ]] || CRATE=$CALLER/$CRATE
  [[ -f $CRATE/Cargo.toml ]] || die "no Cargo.toml in $CRATE"
  CRATE=$(cd "$CRATE" && pwd)
  PLUGINS=$(describe "$CRATE/Cargo.toml")
  [[ -n $PLUGINS ]] || die "$CRATE is not a plugin crate: its [lib] crate-type does not list \"cdylib\""
  set --
else
  PLUGINS=$(discover)
fi

if [[ -n ${CARGO_TARGET_DIR:-} ]]; then
  TARGET_DIR=$CARGO_TARGET_DIR
  case $TARGET_DIR in /*) ;; *) TARGET_DIR=$REPO/$TARGET_DIR ;; esac   # where cargo runs
elif [[ -n $CRATE ]]; then
  # A crate of its own has its own target dir; cargo knows where (it may be configured).
  TARGET_DIR=$(cargo metadata --no-deps --format-version 1 --manifest-path "$CRATE/Cargo.toml" < /dev/null |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
  [[ -n $TARGET_DIR ]] || die "cargo metadata names no target directory for $CRATE"
else
  TARGET_DIR=$REPO/target
fi

SELECT=()
for arg in "$@"; do
  case $arg in
    -h | --help) usage; exit 0 ;;
    --list) [[ -n $PLUGINS ]] && printf '%s\n' "$PLUGINS" | awk -F'\t' '{ printf "%-28s %-44s %s\n", $1, $3, $4 }'; exit 0 ;;
    --crate | --crate=*) die "--crate DIR must be the only argument" ;;
    -*) die "unknown option '$arg' (see --help)" ;;
    *) printf '%s\n' "$PLUGINS" | cut -f1 | grep -qxF -- "$arg" ||
         die "no plugin crate named '$arg'; known: $(printf '%s\n' "$PLUGINS" | cut -f1 | xargs)"
       SELECT+=("$arg") ;;
  esac
done
if ((${#SELECT[@]})); then
  PLUGINS=$(printf '%s\n' "$PLUGINS" | awk -F'\t' 'NR==FNR { want[$0]; next } $1 in want' <(printf '%s\n' "${SELECT[@]}") -)
fi
[[ -n $PLUGINS ]] || die "no plugin crates found under plugins/, tests/plugins/ or examples/"

# ---- Debian fallback toolchain ----------------------------------------------
# rustup's download server sometimes hangs or refuses, but Debian's archive is
# always reachable. bookworm-security ships rustc-web 1.96 with its std source
# (rust-web-src), so we build std ourselves with -Zbuild-std. Only Debian's
# rustc can compile that std source, hence RUSTC points at it while rustup's
# cargo drives the build. Packages are unpacked with dpkg -x, never installed,
# so the system stays untouched and the cache lives in the target dir.
candidate() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { print $2 }' | grep -v '^(none)$' || true; }
DEBIAN_READY=
setup_debian() {
  [[ -n $DEBIAN_READY ]] && return
  { command -v apt-get && command -v dpkg; } > /dev/null || die "Debian fallback needs apt-get and dpkg"
  local ver
  ver=$(candidate rustc-web)
  # apt-cache knows nothing before the first 'apt-get update' on a fresh machine.
  [[ -n $ver ]] || { apt-get update -qq; ver=$(candidate rustc-web); }
  [[ -n $ver ]] || die "apt has no candidate for rustc-web (needs bookworm-security in sources.list)"
  if [[ $(cat "$TC/.stamp" 2>/dev/null) != "$ver" ]]; then
    local mm=${ver%%+*}; mm=${mm%.*}   # 1.96.0+dfsg1-1~deb12u2 -> 1.96
    # Read the LLVM major that this std/rustc was built against instead of
    # hard-coding it; lld (wasm-ld, rust-lld) must come from the same LLVM.
    local llvm
    llvm=$(apt-cache show "libstd-rust-web-$mm=$ver" | sed -n 's/^Depends:.*\(libllvm[0-9]\+\).*/\1/p' | head -n1)
    [[ -n $llvm ]] || die "cannot find the libllvm dependency of libstd-rust-web-$mm=$ver"
    local lver; lver=$(candidate "$llvm")
    # wasi-libc: the wasm32-wasip2 std links '-lc' from <sysroot>/lib/rustlib/
    # wasm32-wasip2/lib/self-contained, which rustc-web does not ship (rustup's
    # rust-std does). Debian's wasi-libc (preview 1) links fine; wasm-component-ld
    # adapts its preview-1 imports to preview 2 with its built-in adapter.
    local pkgs=("rustc-web=$ver" "libstd-rust-web-$mm=$ver" "libstd-rust-web-dev=$ver"
      "rust-web-src=$ver" "rust-web-llvm=$ver" "$llvm=$lver" "lld-${llvm#libllvm}=$lver" wasi-libc)
    # CASHBACKD_TOOLCHAIN_DIR is user-supplied: only ever delete our own cache.
    [[ ! -e $TC || -e $TC/.cashbackd-wasm-toolchain ]] ||
      die "$TC exists but is not a cache made by this script; refusing to delete it"
    echo "wasm toolchain: fetching Debian rustc-web $ver into $TC"
    rm -rf "$TC"; mkdir -p "$TC/debs"; touch "$TC/.cashbackd-wasm-toolchain"
    # Sandbox::User=root: the cache dir is root's, so the _apt user could not write there.
    get() { (cd "$TC/debs" && apt-get -q -o APT::Sandbox::User=root download "${pkgs[@]}" > /dev/null); }
    get || { apt-get update -qq && get; } || die "apt-get download failed for: ${pkgs[*]}"
    local deb; for deb in "$TC"/debs/*.deb; do dpkg -x "$deb" "$TC"; done
    rm -rf "$TC/debs"
    echo "$ver" > "$TC/.stamp"
  fi
  # Cheap, idempotent fix-ups of the unpacked tree (redone every run):
  # - the wasip2 std links -lc from <sysroot>/lib/rustlib/wasm32-wasip2/lib/self-contained;
  mkdir -p "$TC/usr/lib/rustlib/wasm32-wasip2/lib"
  ln -sfn ../../../wasm32-wasi "$TC/usr/lib/rustlib/wasm32-wasip2/lib/self-contained"
  # - wasm-component-ld runs the first wasm-ld/rust-lld on PATH, and rustc puts
  #   its sysroot tools dir first on the linker's PATH. Debian keeps rust-lld in
  #   usr/bin, so a system wasm-ld (e.g. LLVM 14 from the 'lld' package) would
  #   win; a link beside wasm-component-ld (as rustup has) prevents that.
  ln -sfn ../../../../bin/rust-lld "$TC/usr/lib/rustlib/x86_64-unknown-linux-gnu/bin/rust-lld"
  # - rustc-web (and lld, which inherits the env) need libLLVM from the tree.
  #   Rewritten only when it changes, so cargo's cached `rustc -vV` stays valid.
  local want
  # shellcheck disable=SC2016 # $LD_LIBRARY_PATH and $@ are for the wrapper to expand
  want=$(printf '#!/bin/sh\nLD_LIBRARY_PATH="%s/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "%s/usr/bin/rustc" "$@"' "$TC" "$TC")
  [[ $(cat "$TC/rustc-wrapper" 2>/dev/null) == "$want" ]] || printf '%s\n' "$want" > "$TC/rustc-wrapper"
  chmod +x "$TC/rustc-wrapper"
  local f m
  for f in usr/bin/rustc usr/lib/rustlib/x86_64-unknown-linux-gnu/bin/rust-lld "usr/lib/x86_64-linux-gnu/libLLVM*.so*" \
    usr/lib/rustlib/x86_64-unknown-linux-gnu/bin/wasm-component-ld \
    usr/lib/rustlib/src/rust/library/Cargo.lock usr/lib/rustlib/wasm32-wasip2/lib/self-contained/libc.a; do
    m=$(compgen -G "$TC/$f" | head -n1) || true   # -e: symlinks must resolve
    [[ -n $m && -e $m ]] || die "Debian toolchain incomplete: missing $TC/$f (delete $TC to refetch)"
  done
  "$TC/rustc-wrapper" -V > /dev/null || die "$TC/rustc-wrapper does not run"
  DEBIAN_READY=1
}

# ---- per-target toolchain choice ---------------------------------------------
declare -A VIA   # target -> rustup | debian
ensure_target() {
  local t=$1
  if [[ $MODE != debian ]] && command -v rustup > /dev/null; then
    if rustup target list --installed | grep -qxF "$t"; then
      echo "wasm toolchain: rustup target $t installed"; VIA[$t]=rustup; return
    fi
    if timeout 120 rustup target add "$t"; then
      echo "wasm toolchain: rustup target $t added"; VIA[$t]=rustup; return
    fi
    echo "wasm toolchain: 'rustup target add $t' failed or timed out" >&2
  fi
  [[ $MODE != rustup ]] || die "rustup could not provide target $t and CASHBACKD_WASM_TOOLCHAIN=rustup forbids the Debian fallback"
  setup_debian
  echo "wasm toolchain: $t using Debian rustc-web $(cat "$TC/.stamp") fallback"
  VIA[$t]=debian
}

# rustup's wasm32-unknown-unknown links with plain rust-lld and emits a *core
# module*. Instead of a post-pass with wasm-tools (a large cargo install), we
# use wasm-component-ld as the linker: rustup already ships it next to rustc
# (it is the default linker of wasm32-wasip2), so it usually costs nothing;
# the output is then a component straight from cargo. Only if it is missing
# (older toolchains) is it cargo-installed once into target/tools.
rustup_component_ld() {
  local host wcl
  host=$(rustc -vV | sed -n 's/^host: //p')
  wcl=$(rustc --print sysroot)/lib/rustlib/$host/bin/wasm-component-ld
  if [[ ! -x $wcl ]]; then
    wcl=$TOOLS/bin/wasm-component-ld
    [[ -x $wcl ]] || cargo install --locked --quiet wasm-component-ld --root "$TOOLS" >&2 ||
      die "cargo install wasm-component-ld failed"
  fi
  echo "$wcl"
}

# ---- build -----------------------------------------------------------------
TARGETS=$(printf '%s\n' "$PLUGINS" | cut -f3 | tr ' ' '\n' | sed '/^$/d' | sort -u)
for t in $TARGETS; do ensure_target "$t"; done

SUMMARY=() FAILED=()
for t in $TARGETS; do
  envs=() extra=()
  if [[ ${VIA[$t]} == debian ]]; then
    envs=(RUSTC="$TC/rustc-wrapper" RUSTC_BOOTSTRAP=1
      "CARGO_TARGET_$(tr 'a-z-' 'A-Z_' <<< "$t")_LINKER=$TC/usr/lib/rustlib/x86_64-unknown-linux-gnu/bin/wasm-component-ld")
    # std is compiled once per target into the shared target dir and reused.
    extra=('-Zbuild-std=std,panic_abort')
  elif [[ $t == wasm32-unknown-unknown ]]; then
    envs=("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=$(rustup_component_ld)")
  fi
  # One cargo invocation per package, never one for all: the SDK selects a WIT
  # world through cargo features, and features must not unify across plugins.
  while IFS=$'\t' read -r name lib targets manifest; do
    [[ " $targets " == *" $t "* ]] || continue
    src=$TARGET_DIR/$t/plugin/$lib.wasm dst=$TARGET_DIR/plugins/$t/$lib.wasm
    rm -f "$dst"   # never leave a stale artifact behind a failed build
    echo "==> building $name for $t (${VIA[$t]})"
    if ! env "${envs[@]}" CARGO_TARGET_DIR="$TARGET_DIR" cargo build --manifest-path "$manifest" \
      -p "$name" --target "$t" --profile plugin "${extra[@]}" < /dev/null; then
      FAILED+=("$name ($t)"); continue
    fi
    [[ -f $src ]] || { FAILED+=("$name ($t): cargo produced no $src"); continue; }
    magic=$(od -An -tx1 -N8 "$src" | tr -d ' \n')
    if [[ $magic != "$COMPONENT_MAGIC" ]]; then
      [[ $magic == "$CORE_MAGIC" ]] && what="a core wasm module" || what="not wasm (magic '$magic')"
      FAILED+=("$name ($t): $src is $what, not a component"); continue
    fi
    mkdir -p "$(dirname "$dst")"; cp "$src" "$dst"
    SUMMARY+=("$(printf '%-28s %-24s %8s KB  %s' "$name" "$t" \
      "$(awk -v b="$(stat -c %s "$dst")" 'BEGIN { printf "%.1f", b / 1024 }')" "${dst#"$REPO"/}")")
  done <<< "$PLUGINS"
done

# The TypeScript plugins, when the whole repo is built (not for --crate or a selection).
# Only the TypeScript tests need them: without node and npm, or without the npm registry,
# the demo and the rest of the tests go on (those tests skip, which fails in CI, where a
# failed TypeScript build fails this script too).
if [[ -z ${CRATE:-} ]] && ((${#SELECT[@]} == 0)); then
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    if [[ -n ${CI:-} ]]; then FAILED+=("TypeScript plugins: no node and npm"); else
      echo "build-plugins: note: no node and npm, TypeScript plugins not built (their tests will skip)" >&2; fi
  elif ! CARGO_TARGET_DIR=$TARGET_DIR "$REPO/scripts/build-ts-plugins.sh"; then
    if [[ -n ${CI:-} ]]; then FAILED+=("TypeScript plugins (scripts/build-ts-plugins.sh)"); else
      echo "build-plugins: note: the TypeScript plugins did not build (see above); their tests will skip" >&2; fi
  fi
fi

echo
((${#SUMMARY[@]})) && printf '%s\n' "${SUMMARY[@]}"
if ((${#FAILED[@]})); then
  printf 'build-plugins: FAILED: %s\n' "${FAILED[@]}" >&2
  exit 1
fi

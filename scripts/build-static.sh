#!/usr/bin/env bash
# The static (musl) build of calico-migrate: the binary of the container image
# (Containerfile runs this script) and the one CI builds (.ci/run). It needs no libc at run
# time, so it runs on distroless/static or scratch.
#
#   scripts/build-static.sh    build, check it is static and runs, print its path on stdout
#
# Environment:
#   CARGO_TARGET_DIR   default target/static: never the dev build's target/, whose
#                      artifacts it would otherwise invalidate
#   STATIC_PROFILE     static (default): the release profile (opt-level 3) without debug
#                      info, symbols kept so a panic backtrace still names functions.
#                      Any profile of Cargo.toml also works (release, dev).
#   CC_<target>        a C compiler for the musl target (default musl-gcc, see below)
#
# ring (rustls' crypto) and psm have C/assembly that the `cc` crate compiles. For
# x86_64-unknown-linux-musl, cc looks for x86_64-linux-musl-gcc, then musl-gcc, and fails
# when neither is on the PATH (the host gcc is not tried): Debian's musl-tools provides
# musl-gcc, and this script installs it when it is missing (as .ci/run installs kubectl).
set -euo pipefail
cd "$(dirname "$0")/.."

arch=$(uname -m)
case "$arch" in
  x86_64 | aarch64) target="$arch-unknown-linux-musl" ;;
  *) echo "build-static: no musl target for architecture $arch" >&2; exit 2 ;;
esac
target_env=$(echo "$target" | tr - _)   # x86_64_unknown_linux_musl

# The Rust standard library for the target (a rustup download, once).
if ! rustup target list --installed | grep -qx "$target"; then
  echo "build-static: adding the Rust target $target" >&2
  rustup target add "$target" >&2
fi

# The C compiler for the target, unless the caller named one.
cc_var="CC_$target_env"
if [ -z "${!cc_var:-}" ]; then
  if ! command -v musl-gcc >/dev/null 2>&1; then
    echo "build-static: musl-gcc not on PATH; installing Debian's musl-tools" >&2
    if ! (apt-get update -qq && apt-get install -y -qq --no-install-recommends musl-tools) >/dev/null 2>&1 \
        || ! command -v musl-gcc >/dev/null 2>&1; then
      echo "build-static: could not install musl-tools (needs root and apt-get). Install" \
        "musl-gcc (Debian/Ubuntu: apt-get install musl-tools; Fedora: dnf install musl-gcc)," \
        "or name a C compiler for $target with $cc_var=..." >&2
      exit 2
    fi
  fi
  export "$cc_var=musl-gcc"
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/static}"
profile="${STATIC_PROFILE:-static}"
if [ "$profile" = static ]; then
  # Defined here rather than in Cargo.toml: a profile of this build only.
  export CARGO_PROFILE_STATIC_INHERITS=release
  export CARGO_PROFILE_STATIC_DEBUG=false
  export CARGO_PROFILE_STATIC_STRIP=debuginfo
fi
cargo build --locked --profile "$profile" --target "$target" --bin calico-migrate >&2

case "$profile" in dev | test) dir=debug ;; bench) dir=release ;; *) dir=$profile ;; esac
bin="$CARGO_TARGET_DIR/$target/$dir/calico-migrate"

# Prove it: no program interpreter, no shared library (crt-static is the musl targets'
# default; a RUSTFLAGS of -crt-static would be caught here), and it runs.
command -v readelf >/dev/null 2>&1 || { echo "build-static: readelf (binutils) is needed for the check" >&2; exit 2; }
dynamic=$( (readelf -lW "$bin"; readelf -dW "$bin") | grep -E 'program interpreter|\(NEEDED\)' || true)
if [ -n "$dynamic" ]; then
  echo "build-static: $bin is dynamically linked:" >&2
  echo "$dynamic" >&2
  exit 1
fi
"$bin" --version >&2
"$bin" completions bash >/dev/null
echo "build-static: $bin is static, $(du -h "$bin" | cut -f1)" >&2
echo "$bin"

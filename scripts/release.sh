#!/usr/bin/env bash
# Builds the release archive of agentcom-sidecar for x86_64 Linux: the static (musl) binary,
# the README, the licences and config/ (units, example config, sample agent), packed as
#   dist/agentcom-sidecar-<version>-x86_64-linux-musl.tar.gz
# with its checksum beside it (…tar.gz.sha256, for `sha256sum -c`).
#
# Usage: scripts/release.sh [OUTPUT_DIR]        (default: dist)
#
# Needs, once: rustup target add x86_64-unknown-linux-musl, and a musl C compiler for ring's
# C code (Debian: apt-get install musl-tools). The binary depends on no shared library, so
# the archive runs on any x86_64 Linux. Installing from it: docs/usage/installing.md.
set -euo pipefail

target=x86_64-unknown-linux-musl
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=${1:-dist}

die() {
    printf 'release: %s\n' "$*" >&2
    exit 1
}

version=$(sed -n 's/^version = "\([^"]*\)".*/\1/p' Cargo.toml | head -n 1)
[ -n "$version" ] || die "no version in Cargo.toml"
name="agentcom-sidecar-${version}-x86_64-linux-musl"

# The prerequisites, each with the command that provides it.
if ! rustc --print target-libdir --target "$target" >/dev/null 2>&1 ||
    ! ls "$(rustc --print target-libdir --target "$target")"/libstd-* >/dev/null 2>&1; then
    die "the $target target is not installed: rustup target add $target"
fi
if ! command -v x86_64-linux-musl-gcc >/dev/null 2>&1 && ! command -v musl-gcc >/dev/null 2>&1; then
    die "no musl C compiler (x86_64-linux-musl-gcc or musl-gcc) for ring's C code: apt-get install musl-tools"
fi
command -v sha256sum >/dev/null 2>&1 || die "sha256sum is missing (coreutils)"

cargo build --release --locked --target "$target"
bin="target/$target/release/agentcom-sidecar"
[ -x "$bin" ] || die "$bin was not built"

# Static: no program interpreter (a dynamic loader) in its program headers.
if command -v readelf >/dev/null 2>&1 && readelf -l "$bin" | grep -q 'INTERP'; then
    die "$bin asks for a dynamic loader: not a static build"
fi
# It runs, and is the version the archive is named after.
built=$("$bin" --version)
[ "$built" = "agentcom-sidecar $version" ] || die "$bin --version says '$built', expected 'agentcom-sidecar $version'"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/$name/config"
install -m 755 "$bin" "$stage/$name/agentcom-sidecar"
install -m 644 README.md LICENSE LICENSE-APACHE LICENSE-MIT "$stage/$name/"
install -m 644 config/agentcom-sidecar.service config/agentcom-sidecar@.service \
    config/config.json.example config/ecosystem.config.js "$stage/$name/config/"
install -m 755 config/sample-agent.sh "$stage/$name/config/"

# Reproducible: file order, owners and times do not depend on this machine or this moment.
mtime=$(git log -1 --format=%ct 2>/dev/null || echo 0)
mkdir -p "$out"
tar -C "$stage" --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$mtime" \
    -cf - "$name" | gzip -n -9 >"$out/$name.tar.gz"
(cd "$out" && sha256sum "$name.tar.gz" >"$name.tar.gz.sha256")

printf '%s\n' "$out/$name.tar.gz" "$out/$name.tar.gz.sha256"

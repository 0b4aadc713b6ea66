#!/usr/bin/env bash
# Runs every Kiln test on a fresh machine: installs what is missing, fetches the pinned ONNX
# conformance data, then format, lint and the whole test suite in one shared build.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

need_apt=()
command -v cc >/dev/null || need_apt+=(build-essential)
command -v python3 >/dev/null || need_apt+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
if [ ${#need_apt[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}"
fi
if ! command -v cargo >/dev/null; then
  echo "cargo not found: install Rust (https://rustup.rs) first" >&2
  exit 1
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

scripts/fetch-onnx-tests.sh
scripts/setup-cross.sh
scripts/setup-embedded.sh


cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
KILN_REQUIRE_CONFORMANCE=1 KILN_REQUIRE_CROSS=1 KILN_REQUIRE_MCU=1 cargo test --workspace --locked
# The build.rs example: the shipped digits model compiled by kiln::Build as a native object
# and as Rust source, float and int8, run on its reference input.
cargo run -q --locked -p kiln-buildrs-app
# The same API picking Rust source by itself: a no_std crate built for a Cortex-M target.
cargo build -q --locked -p kiln-buildrs-mcu --target thumbv7em-none-eabihf

#!/usr/bin/env bash
# Installs the microcontroller toolchains and simulators the C-backend tests use (Debian
# packages; idempotent, quiet):
#   avr:     avr-gcc + avr-libc, simavr and its headers (Kiln's own driver links libsimavr)
#   cortexm: arm-none-eabi-gcc + newlib, qemu-system-arm >= 9 for the TCG plugin API that
#            counts instructions. Debian 12 images here carry qemu-utils 10 from
#            bookworm-backports, which bookworm's qemu-system 7.2 conflicts with, so QEMU
#            comes from bookworm-backports too (pinned low by default: nothing else moves).
#   rust:    the thumbv7em-none-eabihf standard library, for the Rust source backend's
#            Cortex-M4F runs (through rustup)
set -euo pipefail
if command -v rustup >/dev/null; then
  rustup target add thumbv7em-none-eabihf >/dev/null 2>&1 || echo "warning: rustup could not add thumbv7em-none-eabihf" >&2
fi
sudo_cmd=""
[ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

pkgs=(gcc-avr avr-libc binutils-avr simavr libsimavr-dev
      gcc-arm-none-eabi binutils-arm-none-eabi libnewlib-arm-none-eabi)
missing=()
for p in "${pkgs[@]}"; do installed "$p" || missing+=("$p"); done
need_qemu=0
installed qemu-system-arm || need_qemu=1
[ ${#missing[@]} -eq 0 ] && [ $need_qemu -eq 0 ] && exit 0

backports=()
if [ $need_qemu -eq 1 ]; then
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  if [ "$codename" = bookworm ]; then
    if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
      printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' |
        $sudo_cmd tee /etc/apt/sources.list.d/kiln-bookworm-backports.sources >/dev/null
    fi
    backports=(qemu-system-arm/bookworm-backports qemu-system-common/bookworm-backports
               qemu-system-data/bookworm-backports)
  else
    missing+=(qemu-system-arm)
  fi
fi
$sudo_cmd apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends \
  "${missing[@]}" "${backports[@]}" >/dev/null

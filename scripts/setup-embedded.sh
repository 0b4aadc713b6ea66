#!/usr/bin/env bash
# Installs the AVR toolchain and simulator the C-backend tests use (Debian packages;
# idempotent, quiet): avr-gcc + avr-libc to build, simavr (and its firmware-tag header)
# to run an ATmega328P.
set -euo pipefail
pkgs=(gcc-avr avr-libc binutils-avr simavr libsimavr-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo_cmd=""
[ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
$sudo_cmd apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

#!/bin/bash
# Builds rqemu and boots it on a default image: SeaBIOS loads fixtures/guests/hello.asm from a
# qcow2 disk on IDE; the guest reads a sector through int13, prints it on the serial console and
# writes it back as the third sector.
#   scripts/run.sh [extra rqemu options...]       e.g. --trace 'ide_*' or -trace 'blk_*'
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nasm >/dev/null || [ ! -f /usr/share/seabios/bios-256k.bin ]; then
  echo "run.sh: installing nasm and seabios"
  apt-get update -qq && apt-get install -y -qq nasm seabios >/dev/null
fi
cargo build --release --bins
bin=${CARGO_TARGET_DIR:-target}/release
out=${CARGO_TARGET_DIR:-target}/default-image
mkdir -p "$out"
nasm -f bin fixtures/guests/hello.asm -o "$out/hello.bin"
img="$bin/rqemu-img"
rm -f "$out/hello.qcow2"
"$img" convert -f raw -O qcow2 "$out/hello.bin" "$out/hello.qcow2"
"$img" resize -q "$out/hello.qcow2" 64M
"$img" info "$out/hello.qcow2"
echo "--- booting rqemu (the guest resets when done; -no-reboot then ends the run) ---"
exec "$bin/rqemu" -m 64 -nographic -no-reboot \
  -drive file="$out/hello.qcow2",format=qcow2,if=ide "$@"

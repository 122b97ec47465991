#!/bin/bash
# Installs the reference QEMU 10.0.2 (qemu-img, qemu-io, qemu-nbd, qemu-system-x86_64) and
# SeaBIOS from Debian bookworm-backports, plus any Debian packages named as arguments.
#
#   scripts/install-reference-qemu.sh [PACKAGE...]        (as root)
#
# The trap it avoids: bookworm itself ships QEMU 7.2. With qemu-utils 10.0.2 already installed,
# a plain `apt-get install qemu-system-x86` resolves to 7.2 and takes qemu-utils down with it.
# So the backports suite is added as a source, and an apt pin (priority 990 for QEMU's packages
# from bookworm-backports) makes every later install, plain or not, keep 10.0.2.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "install-reference-qemu.sh: must run as root" >&2; exit 1; }

SOURCES=/etc/apt/sources.list.d/rqemu-bookworm-backports.sources
PIN=/etc/apt/preferences.d/rqemu-reference-qemu
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  cat > "$SOURCES" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
fi
cat > "$PIN" <<'EOF'
# rqemu's tests compare against QEMU 10.0.2 from bookworm-backports, never bookworm's 7.2.
Package: qemu-* seabios ipxe-qemu
Pin: release n=bookworm-backports
Pin-Priority: 990
EOF

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq -t bookworm-backports \
  qemu-system-x86 qemu-utils qemu-block-extra seabios >/dev/null
# The other packages come from their default suite (bookworm's Ceph 16, which the rbd tests'
# cluster setup is written for), not from backports.
if [ $# -gt 0 ]; then
  apt-get install -y -qq "$@" >/dev/null
fi

version=$(qemu-img --version | head -1)
case "$version" in
  *" 10.0."*) echo "reference: $version" ;;
  *) echo "install-reference-qemu.sh: expected QEMU 10.0.x, got: $version" >&2; exit 1 ;;
esac
[ -f /usr/share/seabios/bios-256k.bin ] || { echo "install-reference-qemu.sh: SeaBIOS missing" >&2; exit 1; }

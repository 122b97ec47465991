#!/bin/bash
# Builds the Linux guest of the NBD file-system test (tests/nbd_linux_client.rs): a Debian
# cloud kernel fetched with apt, and an initramfs of busybox-static, e2fsprogs' mke2fs and
# e2fsck, nbd-client, the few kernel modules the guest needs and scripts/linux-client/init.
#
#   scripts/linux-client/build.sh OUTDIR      -> OUTDIR/vmlinuz, OUTDIR/initrd.gz
#
# Env: KERNEL_PACKAGE (default linux-image-cloud-amd64, a meta-package followed to the real one).
# Exit status 0 when built (or already built from the same init), 2 when the kernel package
# cannot be fetched (the test then skips), 1 on any other failure.
set -euo pipefail
OUT=${1:?usage: build.sh OUTDIR}
SRC=$(cd "$(dirname "$0")" && pwd)
PKG=${KERNEL_PACKAGE:-linux-image-cloud-amd64}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# Rebuild only when init changed: the stamp holds the checksum of what went in.
STAMP=$(cat "$SRC/init" "$SRC/build.sh" | sha256sum | cut -c1-16)
if [ -f "$OUT/vmlinuz" ] && [ -f "$OUT/initrd.gz" ] && [ "$(cat "$OUT/stamp" 2>/dev/null)" = "$STAMP" ]; then
  exit 0
fi

for tool in /bin/busybox /usr/sbin/mke2fs /usr/sbin/e2fsck /usr/sbin/nbd-client; do
  [ -x "$tool" ] || { echo "build.sh: $tool missing (packages busybox-static e2fsprogs nbd-client)" >&2; exit 1; }
done

# 1. The kernel: follow the meta-package's linux-image-* dependency to the versioned package.
while dep=$(apt-cache depends "$PKG" 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-.*\)$/\1/p' | head -n1) \
      && [ -n "$dep" ]; do
  PKG=$dep
done
DEB=$(find "$OUT" -maxdepth 1 -name "${PKG}_*.deb" | head -n1)
if [ -z "$DEB" ]; then
  (cd "$OUT" && apt-get download "$PKG" >/dev/null 2>&1) || {
    echo "build.sh: cannot fetch kernel package $PKG with apt-get download" >&2; exit 2; }
  DEB=$(find "$OUT" -maxdepth 1 -name "${PKG}_*.deb" | head -n1)
fi
[ -n "$DEB" ] || { echo "build.sh: kernel package $PKG not found after download" >&2; exit 2; }
KTREE=$OUT/kernel
rm -rf "$KTREE"
dpkg-deb -x "$DEB" "$KTREE"
KVER=$(ls "$KTREE/lib/modules")
grep -q '^CONFIG_EXT4_FS=y' "$KTREE/boot/config-$KVER" \
  || { echo "build.sh: $PKG has ext4 as a module; this guest expects it built in" >&2; exit 1; }

# 2. The root tree.
ROOT=$OUT/root
rm -rf "$ROOT"
mkdir -p "$ROOT"/{bin,sbin,etc,dev,proc,sys,mnt,tmp,modules}
cp /bin/busybox "$ROOT/bin/"
/bin/busybox --list | while read -r applet; do
  case "$applet" in busybox|mke2fs|mkfs.ext2|e2fsck|fsck) ;; *) ln -s busybox "$ROOT/bin/$applet" ;; esac
done
# A dynamically linked program goes in with every library ldd names, at the same paths.
with_libraries() {
  cp -L "$1" "$ROOT/sbin/"
  ldd "$1" | grep -o '/[^ ]*' | while read -r lib; do
    mkdir -p "$ROOT$(dirname "$lib")"
    cp -Ln "$lib" "$ROOT$lib"
  done
}
for prog in /usr/sbin/mke2fs /usr/sbin/e2fsck /usr/sbin/nbd-client; do with_libraries "$prog"; done
cp /etc/mke2fs.conf "$ROOT/etc/"
install -m 0755 "$SRC/init" "$ROOT/init"

# 3. Modules: each wanted one after what it depends on (read from the module's own
# "depends=" field, since the package carries no modules.dep), flat in /modules, listed in
# /modules/ORDER-<interface> in loading order.
unpack_module() {  # unpack_module NAME: /modules/NAME.ko, unless built in
  local file
  [ -f "$ROOT/modules/$1.ko" ] && return 0
  file=$(find "$KTREE/lib/modules/$KVER/kernel" \( -name "$1.ko*" -o -name "${1//_/-}.ko*" \) | head -n1)
  if [ -z "$file" ]; then
    grep -qE "/($1|${1//_/-})\.ko" "$KTREE/lib/modules/$KVER/modules.builtin" && return 0
    echo "build.sh: module $1 not in $PKG" >&2; exit 1
  fi
  case "$file" in
    *.xz) xz -dc "$file" ;; *.zst) zstd -qdc "$file" ;; *.gz) gzip -dc "$file" ;; *) cat "$file" ;;
  esac > "$ROOT/modules/$1.ko"
}
visit() {  # visit NAME: append NAME's dependencies, then NAME, to ORDER
  local dep
  unpack_module "$1"
  if [ -f "$ROOT/modules/$1.ko" ]; then
    for dep in $(tr '\0' '\n' < "$ROOT/modules/$1.ko" | sed -n 's/^depends=//p' | tr ',' ' '); do
      visit "$dep"
    done
  fi
  ORDER+=("$1")
}
order_for() {  # order_for IFACE MODULE...: the load order of MODULEs and their dependencies
  local iface=$1 m; shift
  ORDER=()
  for m in "$@"; do visit "$m"; done
  printf '%s\n' "${ORDER[@]}" | awk '!seen[$0]++' > "$ROOT/modules/ORDER-$iface"
}
order_for virtio virtio_pci virtio_blk
order_for ide ata_piix sd_mod
order_for nbd virtio_pci virtio_net nbd
# A module listed in an ORDER file but built in has no .ko: init skips it.

# 4. The archive.
(cd "$ROOT" && find . | LC_ALL=C sort | /bin/busybox cpio -o -H newc -R 0:0 2>/dev/null) | gzip -6 > "$OUT/initrd.gz"
cp "$KTREE/boot/vmlinuz-$KVER" "$OUT/vmlinuz"
echo "$STAMP" > "$OUT/stamp"
echo "build.sh: kernel $KVER, initrd $(du -h "$OUT/initrd.gz" | cut -f1)"

#!/bin/bash
# Fetches qemu-iotests, QEMU 10.0.2's conformance suite, into a cache outside the project
# and prints the suite's directory (the one holding `check`).
#
#   scripts/fetch-iotests.sh          IOTESTS_CACHE (default /var/tmp/qemu-iotests-src)
#
# The suite is GPL-2.0 and is never copied into the project. It comes from Debian's source
# package of the reference QEMU (the upstream tarball), fetched by apt with a private state
# directory inside the cache: the system's apt sources and lists stay untouched.
set -euo pipefail
VERSION=10.0.2
DEBIAN_VERSION='1:10.0.2+ds-2+deb13u1~bpo12+1'
CACHE=${IOTESTS_CACHE:-/var/tmp/qemu-iotests-src}
SUITE=$CACHE/qemu-$VERSION/tests/qemu-iotests

mkdir -p "$CACHE"
exec 9>"$CACHE/.fetch.lock"
flock 9 # tests of several formats may start at once: one fetch, the others wait for it
if [ ! -x "$SUITE/check" ]; then
  APT=$CACHE/apt
  mkdir -p "$APT/lists/partial" "$APT/archives/partial"
  echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]" \
    "http://deb.debian.org/debian bookworm-backports main" > "$APT/sources.list"
  apt=(apt-get -qq -o Dir::Etc::SourceList="$APT/sources.list" -o Dir::Etc::SourceParts=/nonexistent
       -o Dir::State::Lists="$APT/lists" -o Dir::Cache="$APT" -o Debug::NoLocking=1)
  "${apt[@]}" update >&2
  # Only the orig tarball is needed; the mirror may no longer carry the .dsc and the Debian
  # diff of a backport, so apt's complaints about those are not fatal, a missing tarball is.
  (cd "$CACHE" && "${apt[@]}" source --download-only "qemu=$DEBIAN_VERSION" >&2) || true
  tarball=$CACHE/qemu_$VERSION+ds.orig.tar.xz
  [ -f "$tarball" ] || { echo "fetch-iotests.sh: no $tarball after apt-get source" >&2; exit 2; }
  # The harness imports QEMU's python/ package and reads a few scripts/ helpers.
  tar -C "$CACHE" -xJf "$tarball" \
    "qemu-$VERSION/tests/qemu-iotests" "qemu-$VERSION/python" "qemu-$VERSION/scripts"
fi
echo "$SUITE"

#!/usr/bin/env bash
# System packages the tests and the local sandbox need, and a running ZFS:
# kernel OpenZFS when loaded, otherwise the zfs-fuse daemon (userspace ZFS).
# Idempotent; needs root (apt-get).
set -euo pipefail

say() { printf 'deps.sh: %s\n' "$*"; }

need=()
command -v zfs-fuse >/dev/null 2>&1 || [ -d /sys/module/zfs ] || need+=(zfs-fuse)
command -v pgrep >/dev/null 2>&1 || need+=(procps)
command -v sh >/dev/null 2>&1 || need+=(dash)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# ansible-test's shellcheck sanity test and the rc.d script's checkbashisms test.
command -v shellcheck >/dev/null 2>&1 || need+=(shellcheck)
command -v checkbashisms >/dev/null 2>&1 || need+=(devscripts)
# The lab VMs (tests/lab, Molecule): QEMU, and the builder's tools; the
# seed ISO of FreeBSD guests. build-image would install its own, but the
# launcher's tests run before any image is built.
command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
command -v qemu-img >/dev/null 2>&1 || need+=(qemu-utils)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v ssh >/dev/null 2>&1 || need+=(openssh-client)
command -v genisoimage >/dev/null 2>&1 || need+=(genisoimage)
if [ "${#need[@]}" -gt 0 ]; then
    say "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ -d /sys/module/zfs ]; then
    say "kernel ZFS: $(cat /sys/module/zfs/version 2>/dev/null || echo loaded)"
elif pgrep -x zfs-fuse >/dev/null; then
    say "zfs-fuse running"
else
    say "starting zfs-fuse"
    # A pid file left by a zfs-fuse that died makes it refuse to start.
    rm -f /run/zfs-fuse.pid
    zfs-fuse -p /run/zfs-fuse.pid
    for _ in $(seq 1 100); do
        zpool list >/dev/null 2>&1 && break
        sleep 0.2
    done
    zpool list >/dev/null 2>&1 || { echo "deps.sh: zfs-fuse did not come up" >&2; exit 1; }
fi

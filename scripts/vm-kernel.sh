#!/usr/bin/env bash
# Tooling of the cgroup v2 VM test (tests/vm/): QEMU and busybox from Debian, and Debian's current
# kernel unpacked into .vm/ (vmlinuz plus the few modules the VM loads). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
MODS="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci 9pnet 9pnet_virtio netfs fscache 9p overlay"
export DEBIAN_FRONTEND=noninteractive
install_tools() { apt-get install -y -q --no-install-recommends qemu-system-x86 busybox-static; }
if [ ! -x /usr/bin/qemu-system-x86_64 ] || [ ! -x /bin/busybox ]; then
    install_tools || { apt-get update -q && install_tools; }
fi
[ -f .vm/vmlinuz ] && [ -f .vm/mods/overlay.ko ] && exit 0
# The kernel package that Debian's linux-image-amd64 points at now.
pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/.*Depends: \(linux-image-[^ ]*\)/\1/p' | head -1)
[ -n "$pkg" ] || { apt-get update -q; pkg=$(apt-cache depends linux-image-amd64 | sed -n 's/.*Depends: \(linux-image-[^ ]*\)/\1/p' | head -1); }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"
(cd "$tmp" && apt-get download -q "$pkg" >/dev/null 2>&1) || { apt-get update -q && (cd "$tmp" && apt-get download -q "$pkg"); }
dpkg-deb -x "$tmp"/*.deb "$tmp/x"
rm -rf .vm && mkdir -p .vm/mods
cp "$tmp"/x/boot/vmlinuz-* .vm/vmlinuz
for m in $MODS; do
    f=$(find "$tmp/x/lib/modules" -name "$m.ko" -o -name "$m.ko.xz" | head -1)
    case "$f" in *.xz) xz -dc "$f" > ".vm/mods/$m.ko" ;; *) cp "$f" ".vm/mods/$m.ko" ;; esac
done
echo "$pkg" > .vm/kernel

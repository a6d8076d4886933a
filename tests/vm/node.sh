#!/usr/bin/env bash
# Makes the VM node of the VM lane once and prints its directory: a node as
# most Kubernetes nodes are (systemd as PID 1, the unified cgroup v2
# hierarchy only, containerd as a systemd service), from Debian's packages:
#   qemu/      qemu-system-x86_64, unpacked from Debian's .debs (installing
#              qemu-system-x86 would replace the machine's newer qemu-utils)
#   vmlinuz    Debian's kernel; initrd.img a busybox initramfs that loads
#              virtio and ext4 (modules there) and switches to the disk
#   root.img   a debootstrapped bookworm with systemd, containerd, runc,
#              python3 and its grpc and protobuf, and the lane's unit
# The directory is named after a hash of this recipe, under
# /var/cache/wasmlet/vm, so a changed recipe makes a new node and an
# unchanged one is reused. Run as root.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../lib.sh"
CACHE=${WASMLET_VM_CACHE:-/var/cache/wasmlet/vm}
QEMU_PACKAGES=(qemu-system-x86 qemu-system-common qemu-system-data seabios ipxe-qemu)
GUEST_PACKAGES=systemd,systemd-sysv,dbus,udev,kmod,containerd,runc,iproute2,busybox-static,procps,jq,python3,python3-grpcio,python3-protobuf,python3-yaml
# Loaded by the initramfs, in this order (virtio before virtio_ring fails).
INITRAMFS_MODULES=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk crc16 mbcache jbd2 crc32c_generic ext4)
DISK_SIZE=4G

log() { echo "node.sh: $*" >&2; }

key=$(cat "$HERE/node.sh" "$HERE/initramfs-init" "$HERE/wasmlet-vm-lane.service" | sha256sum | cut -c1-16)
node="$CACHE/node-$key"
if [[ -f "$node/ready" ]]; then
    echo "$node"
    exit 0
fi
uri=$(mirror_uri)
[[ -n "$uri" ]] || { log "no Debian mirror found in /etc/apt/sources.list.d"; exit 1; }
work="$node.partial"
rm -rf "$work"
mkdir -p "$work/debs"

log "qemu from Debian's packages, unpacked"
(cd "$work/debs" && quiet apt-get -o APT::Sandbox::User=root download "${QEMU_PACKAGES[@]}")
for deb in "$work"/debs/*.deb; do
    dpkg-deb -x "$deb" "$work/qemu"
done
# Only the libraries qemu links: qemu's own packages stay unpacked.
mapfile -t libraries < <(apt-cache depends --no-recommends --no-suggests "${QEMU_PACKAGES[@]}" |
    awk '$1 == "Depends:" && $2 !~ /^(qemu-|seabios|ipxe-qemu|<)/ { print $2 }' | sort -u)
DEBIAN_FRONTEND=noninteractive quiet apt-get install -y --no-install-recommends "${libraries[@]}"
"$work/qemu/usr/bin/qemu-system-x86_64" --version >/dev/null

log "the kernel"
kernel_package=$(apt-cache depends linux-image-amd64 | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }')
(cd "$work/debs" && quiet apt-get -o APT::Sandbox::User=root download "$kernel_package")
dpkg-deb -x "$work"/debs/"$kernel_package"_*.deb "$work/kernel"
release=$(ls "$work/kernel/lib/modules")
cp "$work/kernel/boot/vmlinuz-$release" "$work/vmlinuz"

log "the initramfs"
initramfs="$work/initramfs"
mkdir -p "$initramfs"/{bin,dev,proc,sys,newroot,modules}
cp /bin/busybox "$initramfs/bin/busybox"
for applet in sh mount insmod switch_root sleep mkdir; do
    ln -s busybox "$initramfs/bin/$applet"
done
for module in "${INITRAMFS_MODULES[@]}"; do
    file=$(find "$work/kernel/lib/modules/$release" -name "$module.ko*" | head -n 1)
    [[ -n "$file" ]] || { log "module $module not in $kernel_package"; exit 1; }
    case "$file" in
        *.ko.xz) xz -dc "$file" >"$initramfs/modules/$module.ko" ;;
        *.ko.zst) zstd -qdc "$file" >"$initramfs/modules/$module.ko" ;;
        *) cp "$file" "$initramfs/modules/$module.ko" ;;
    esac
done
printf '%s\n' "${INITRAMFS_MODULES[@]}" >"$initramfs/modules/order"
install -m 0755 "$HERE/initramfs-init" "$initramfs/init"
(cd "$initramfs" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initrd.img"

log "the root filesystem (debootstrap bookworm from $uri)"
rootfs="$work/rootfs"
quiet debootstrap --variant=minbase --include="$GUEST_PACKAGES" bookworm "$rootfs" "$uri"
mkdir -p "$rootfs/lib/modules"
cp -a "$work/kernel/lib/modules/$release" "$rootfs/lib/modules/"
chroot "$rootfs" /sbin/depmod "$release"
echo wasmlet-node >"$rootfs/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 wasmlet-node\n' >"$rootfs/etc/hosts"
echo "/dev/vda / ext4 rw 0 1" >"$rootfs/etc/fstab"
install -m 0644 "$HERE/wasmlet-vm-lane.service" "$rootfs/etc/systemd/system/wasmlet-vm-lane.service"
ln -sf /etc/systemd/system/wasmlet-vm-lane.service "$rootfs/etc/systemd/system/multi-user.target.wants/wasmlet-vm-lane.service"
# The lane configures containerd itself; the package's own start is not waited for.
rm -rf "$rootfs/var/cache/apt/archives"/*.deb
truncate -s "$DISK_SIZE" "$work/root.img"
mkfs.ext4 -q -F -d "$rootfs" "$work/root.img"
rm -rf "$rootfs" "$initramfs" "$work/kernel" "$work/debs"

touch "$work/ready"
rm -rf "$node"
mv "$work" "$node"
# Earlier recipes' nodes are of no more use.
find "$CACHE" -maxdepth 1 -name 'node-*' ! -name "node-$key" -exec rm -rf {} +
echo "$node"

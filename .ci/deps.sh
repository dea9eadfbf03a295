#!/usr/bin/env bash
# Installs everything the build and the three test tiers need. Idempotent and
# fast when already satisfied: each step checks before it acts.
#
#   apt packages      clang-19, llvm-19, libbpf-dev, bpftool, iproute2, dwarves,
#                     qemu-system-x86, busybox-static, cpio, kmod, xz-utils, and
#                     the real peers used by tests and benchmarks.
#   6.12 headers      linux-headers-$KVER (+ -common, linux-kbuild), exact ABI
#                     resolved at run time from linux-image-6.12-amd64, fetched
#                     with apt-get download + dpkg-deb -x into
#                     $KMESH_CACHE/headers/$KVER. Installing them with apt would
#                     pull in the kernel image (a hard dependency) and write /boot.
#   guest kernels     Debian 6.12 and 6.1 images, apt-get download + dpkg-deb -x
#                     into $KMESH_CACHE/kernels/<kver> (never installed to /boot).
#   go modules        go mod download (tools are pinned in go.mod).
#
# Prints KVER_612=, KVER_61= and KHEADERS= on its last lines for the Makefile.
set -euo pipefail

CACHE="${KMESH_CACHE:-/var/cache/kmesh-go}"
export DEBIAN_FRONTEND=noninteractive
log() { echo "deps: $*" >&2; }

need_root() {
	if [ "$(id -u)" != 0 ]; then
		echo "deps: must run as root (apt, kernel images); try: sudo make deps" >&2
		exit 1
	fi
}

APT_UPDATED=0
apt_update() {
	if [ "$APT_UPDATED" = 0 ]; then
		log "apt-get update"
		timeout 600 apt-get update -q >&2
		APT_UPDATED=1
	fi
}

# resolve_kver METAPKG PATTERN: prints the ABI version the metapackage depends on.
resolve_kver() {
	local meta=$1 out
	out=$(apt-cache depends "$meta" 2>/dev/null | awk '/Depends: linux-image-[0-9]/{sub("linux-image-","",$2);print $2;exit}')
	if [ -z "$out" ]; then
		apt_update
		out=$(apt-cache depends "$meta" 2>/dev/null | awk '/Depends: linux-image-[0-9]/{sub("linux-image-","",$2);print $2;exit}')
	fi
	if [ -z "$out" ]; then
		echo "deps: cannot resolve the kernel ABI from metapackage $meta" >&2
		exit 1
	fi
	echo "$out"
}

need_root

# The 6.12 ABI comes from linux-image-6.12-amd64 (bookworm-backports/updates), the
# 6.1 ABI from bookworm's default linux-image-amd64. Resolving both at run time
# means a Debian point release that drops an old ABI package does not break us.
if ! apt-cache show linux-image-6.12-amd64 >/dev/null 2>&1; then apt_update; fi
KVER_612=$(resolve_kver linux-image-6.12-amd64)
KVER_61=$(resolve_kver linux-image-amd64)

PKGS=(clang-19 llvm-19 libbpf-dev bpftool iproute2 dwarves qemu-system-x86
	busybox-static cpio kmod xz-utils gcc-12 gcc make git ca-certificates libelf1
	# real peers for waypoint, bench and VM-tier tests
	haproxy nginx-light curl wget wrk iperf3 openssl libclang-rt-19-dev)

missing=()
for p in "${PKGS[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
		missing+=("$p")
	fi
done
if [ ${#missing[@]} -gt 0 ]; then
	apt_update
	log "apt-get install ${missing[*]}"
	timeout 1200 apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
	# Debian starts the daemons it installs; tests start their own instances.
	for svc in haproxy nginx; do
		if command -v systemctl >/dev/null 2>&1; then systemctl disable --now "$svc" >/dev/null 2>&1 || true; fi
		if [ -x "/etc/init.d/$svc" ]; then "/etc/init.d/$svc" stop >/dev/null 2>&1 || true; fi
	done
fi

# download_extract DIR PKG...: apt-get download the packages and unpack them all
# into DIR (atomically: a partial run leaves no half-filled DIR behind).
download_extract() {
	local dir=$1 tmp
	shift
	log "fetching $* into $dir"
	tmp=$(mktemp -d)
	(cd "$tmp" && timeout 600 apt-get download -q "$@" >&2 2>/dev/null) ||
		{ apt_update; (cd "$tmp" && timeout 600 apt-get download -q "$@" >&2); }
	rm -rf "$dir.partial"
	mkdir -p "$dir.partial"
	for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$dir.partial"; done
	rm -rf "$tmp" "$dir"
	mv "$dir.partial" "$dir"
}

# 6.12 headers for the module build. The -amd64 Makefile includes the -common one
# by absolute path; point it at the extracted copy. Everything else is relative.
fetch_headers() {
	local kver=$1 dir="$CACHE/headers/$1"
	local base=${kver%-amd64}
	if [ -f "$dir/usr/src/linux-headers-$kver/vmlinux" ] &&
		grep -q "$dir" "$dir/usr/src/linux-headers-$kver/Makefile" 2>/dev/null; then
		return
	fi
	download_extract "$dir" "linux-headers-$kver" "linux-headers-$base-common" "linux-kbuild-$base"
	echo "include $dir/usr/src/linux-headers-$base-common/Makefile" >"$dir/usr/src/linux-headers-$kver/Makefile"
}
fetch_headers "$KVER_612"

# Guest kernel images: download and extract, never install.
fetch_kernel() {
	local kver=$1 dir="$CACHE/kernels/$1"
	if [ -f "$dir/boot/vmlinuz-$kver" ] && [ -f "$dir/lib/modules/$kver/modules.dep" ]; then
		return
	fi
	download_extract "$dir" "linux-image-$kver"
	# The package's postinst would run depmod; we extract instead, so run it here
	# (modprobe --show-depends resolves the guest's module closure from it).
	depmod -b "$dir" "$kver"
}
fetch_kernel "$KVER_612"
fetch_kernel "$KVER_61"

# bpffs: mounted for the host tier and the daemon.
if ! mountpoint -q /sys/fs/bpf; then
	mount -t bpf bpf /sys/fs/bpf
fi

# Go modules, including the pinned tools (bpf2go, staticcheck).
if command -v go >/dev/null 2>&1; then
	timeout 900 go mod download >&2
else
	echo "deps: Go is not on PATH (expected /usr/local/go/bin/go, see README)" >&2
	exit 1
fi

echo "KVER_612=$KVER_612"
echo "KVER_61=$KVER_61"
echo "KHEADERS=$CACHE/headers/$KVER_612/usr/src/linux-headers-$KVER_612"

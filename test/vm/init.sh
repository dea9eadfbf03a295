#!/bin/sh
# /init of the VM tier's initramfs (busybox). Mounts what the tests need, runs
# guestrun, and powers off; qemu runs with -no-reboot so the VM exits.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /sys/fs/bpf /sys/fs/cgroup /tmp /run /dev/pts /dev/shm
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mount -t devpts devpts /dev/pts
mount -t tmpfs shm /dev/shm
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
ip link set lo up
echo "KMESH-VM-BOOTED kernel=$(uname -r) uptime=$(cut -d' ' -f1 /proc/uptime)"
/guestrun
echo "KMESH-VM-UPTIME $(cut -d' ' -f1 /proc/uptime)"
poweroff -f

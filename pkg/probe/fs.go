// Package probe finds the kernel facilities kmesh needs and explains, by name,
// what is missing and how to fix it. It tests for features, never kernel versions.
package probe

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// DefaultBPFFS is where bpffs is mounted when no other path is configured.
const DefaultBPFFS = "/sys/fs/bpf"

// Cgroup2Mount returns the cgroup v2 mount point. A non-empty override is
// verified and returned as is. Otherwise /proc/self/mountinfo is searched, so a
// hybrid layout (v1 controllers on /sys/fs/cgroup, v2 at /sys/fs/cgroup/unified)
// is handled.
func Cgroup2Mount(override string) (string, error) {
	if override != "" {
		if err := isFS(override, unix.CGROUP2_SUPER_MAGIC); err != nil {
			return "", fmt.Errorf("cgroup2 path %s: %w (pass the cgroup v2 mount, e.g. /sys/fs/cgroup/unified on hybrid systems)", override, err)
		}
		return override, nil
	}
	// Prefer the conventional locations, then anything in the mount table.
	for _, p := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		if isFS(p, unix.CGROUP2_SUPER_MAGIC) == nil {
			return p, nil
		}
	}
	mounts, err := mountsOfType("cgroup2")
	if err != nil {
		return "", err
	}
	if len(mounts) > 0 {
		return mounts[0], nil
	}
	return "", errors.New("no cgroup v2 mount found: kmesh attaches its socket programs to cgroup v2; " +
		"mount it (mount -t cgroup2 none /sys/fs/cgroup/unified) or boot with systemd.unified_cgroup_hierarchy=1")
}

// EnsureBPFFS makes sure path is a bpffs mount, mounting one if the directory is
// not already a mount point. Pinned maps and links live there and survive the
// daemon.
func EnsureBPFFS(path string) error {
	if path == "" {
		path = DefaultBPFFS
	}
	if isFS(path, unix.BPF_FS_MAGIC) == nil {
		return nil
	}
	if err := os.MkdirAll(path, 0o700); err != nil {
		return fmt.Errorf("bpffs: creating %s: %w", path, err)
	}
	if err := unix.Mount("bpf", path, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("bpffs: mounting at %s: %w (needs CAP_SYS_ADMIN; or mount it yourself: mount -t bpf bpf %s)", path, err, path)
	}
	return isFS(path, unix.BPF_FS_MAGIC)
}

func isFS(path string, magic int64) error {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return err
	}
	if int64(st.Type) != magic {
		return fmt.Errorf("%s is not the expected filesystem (magic %#x, want %#x)", path, st.Type, magic)
	}
	return nil
}

func mountsOfType(fstype string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint opts ... - fstype source superopts
		fields := strings.Fields(sc.Text())
		for i, fld := range fields {
			if fld == "-" && i+1 < len(fields) && fields[i+1] == fstype && len(fields) > 4 {
				out = append(out, fields[4])
			}
		}
	}
	return out, sc.Err()
}

package dataplane

import (
	"fmt"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/pkg/netns"
)

// enrolKey is where a workload's enrolment lives in the maps: a cgroup id
// (with the cgroup's depth, for the BPF ancestor walk) or a netns cookie.
type enrolKey struct {
	cgroup  uint64
	level   int
	netns   uint64
	cgPath  string // resolved, absolute
	nsPath  string
	cgGiven string // the cgroup path as given (model.Enrolment.CgroupPath)
	present bool
}

// resolveCgroup returns the id (inode) and depth of a cgroup v2 directory;
// path is absolute or relative to the cgroup2 mount. The depth counts from
// the mount, which is the hierarchy root when kmeshd runs in the initial
// cgroup namespace (as a node daemon does).
func resolveCgroup(mount, path string) (id uint64, level int, abs string, err error) {
	abs = path
	if !filepath.IsAbs(abs) {
		abs = filepath.Join(mount, path)
	}
	abs = filepath.Clean(abs)
	rel, err := filepath.Rel(mount, abs)
	if err != nil || strings.HasPrefix(rel, "..") {
		return 0, 0, "", fmt.Errorf("cgroup %s is not under the cgroup2 mount %s", path, mount)
	}
	var st unix.Stat_t
	if err := unix.Stat(abs, &st); err != nil {
		return 0, 0, "", fmt.Errorf("cgroup %s: %w", abs, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return 0, 0, "", fmt.Errorf("cgroup %s is not a directory", abs)
	}
	if rel != "." {
		level = len(strings.Split(rel, string(filepath.Separator)))
	}
	if level >= 32 {
		return 0, 0, "", fmt.Errorf("cgroup %s is nested %d levels deep (limit 31)", abs, level)
	}
	return st.Ino, level, abs, nil
}

// netnsCookie returns the cookie of the network namespace at path
// (/run/netns/NAME, /proc/PID/ns/net): a socket created inside it reports the
// cookie through SO_NETNS_COOKIE. The switch happens on a locked OS thread
// that is restored (or, if restoring fails, never reused).
func netnsCookie(path string) (uint64, error) {
	var cookie uint64
	err := netns.Do(path, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		cookie, err = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("netns %s cookie: %w", path, err)
	}
	return cookie, nil
}

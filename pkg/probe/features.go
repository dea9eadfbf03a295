package probe

import (
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"
)

// Requirement is one kernel facility a mode needs, with why and how to get it.
type Requirement struct {
	Feature string // e.g. "program type cgroup_sock_addr"
	Why     string // what kmesh uses it for
	Check   func() error
}

// Missing is the error for absent requirements; its message names each
// missing feature, its use, and what to do.
type Missing struct{ Items []string }

func (m *Missing) Error() string {
	return "this kernel lacks features kmesh needs:\n  - " + strings.Join(m.Items, "\n  - ") +
		"\nfix: run a kernel that provides them (any Linux >= 6.1 built with CONFIG_BPF_SYSCALL, CONFIG_CGROUP_BPF, " +
		"CONFIG_BPF_STREAM_PARSER, CONFIG_DEBUG_INFO_BTF and cgroup v2 does), or enable the named options"
}

const sockAddr = ebpf.CGroupSockAddr

func helper(pt ebpf.ProgramType, fn asm.BuiltinFunc) func() error {
	return func() error { return features.HaveProgramHelper(pt, fn) }
}

// DualEngine lists what dual-engine mode needs. Each is probed by loading a
// tiny program or creating a tiny map: features, never kernel versions.
func DualEngine() []Requirement {
	return []Requirement{
		{"program type cgroup_sock_addr (CONFIG_CGROUP_BPF)", "connect()/getpeername() load balancing", func() error { return features.HaveProgramType(sockAddr) }},
		{"program type cgroup_sock", "marking sockets of enrolled workloads", func() error { return features.HaveProgramType(ebpf.CGroupSock) }},
		{"program type sock_ops", "connection tracking and records", func() error { return features.HaveProgramType(ebpf.SockOps) }},
		{"program type sk_msg (CONFIG_BPF_STREAM_PARSER)", "same-node acceleration", func() error { return features.HaveProgramType(ebpf.SkMsg) }},
		{"program type syscall (BPF_PROG_RUN)", "the atomic generation switch of the update protocol", func() error { return features.HaveProgramType(ebpf.Syscall) }},
		{"map type sk_storage", "per-socket state (original destination for getpeername)", func() error { return features.HaveMapType(ebpf.SkStorage) }},
		{"map type sockhash", "same-node acceleration", func() error { return features.HaveMapType(ebpf.SockHash) }},
		{"map type ringbuf", "connection records for telemetry", func() error { return features.HaveMapType(ebpf.RingBuf) }},
		{"map type array_of_maps", "the RCU barrier of the update protocol", func() error { return features.HaveMapType(ebpf.ArrayOfMaps) }},
		{"bounded loops in the verifier", "tier and port scans, weighted binary search", features.HaveBoundedLoops},
		{"BPF ISA v3 (atomic fetch-and-add)", "round-robin counters", features.HaveV3ISA},
		{"helper bpf_get_netns_cookie in cgroup_sock_addr", "enrolment by network namespace", helper(sockAddr, asm.FnGetNetnsCookie)},
		{"helper bpf_get_current_ancestor_cgroup_id in cgroup_sock_addr", "enrolment by cgroup", helper(sockAddr, asm.FnGetCurrentAncestorCgroupId)},
		{"helper bpf_sk_storage_get in cgroup_sock_addr", "remembering the dialed VIP", helper(sockAddr, asm.FnSkStorageGet)},
		{"helper bpf_sk_storage_get in cgroup_sock", "marking enrolled sockets", helper(ebpf.CGroupSock, asm.FnSkStorageGet)},
		{"helper bpf_get_current_ancestor_cgroup_id in cgroup_sock", "marking enrolled sockets", helper(ebpf.CGroupSock, asm.FnGetCurrentAncestorCgroupId)},
		{"helper bpf_get_netns_cookie in sock_ops", "inbound enrolment by network namespace", helper(ebpf.SockOps, asm.FnGetNetnsCookie)},
		{"helper bpf_sock_hash_update in sock_ops", "same-node acceleration", helper(ebpf.SockOps, asm.FnSockHashUpdate)},
		{"helper bpf_ringbuf_reserve in sock_ops", "connection records", helper(ebpf.SockOps, asm.FnRingbufReserve)},
		{"helper bpf_msg_redirect_hash in sk_msg", "same-node acceleration", helper(ebpf.SkMsg, asm.FnMsgRedirectHash)},
		{"helper bpf_get_netns_cookie in sk_msg", "same-node acceleration over loopback", helper(ebpf.SkMsg, asm.FnGetNetnsCookie)},
		{"socket option SO_NETNS_COOKIE", "learning a network namespace's cookie for enrolment", HaveNetnsCookieSockopt},
	}
}

// Check runs requirements and returns a *Missing naming every absent one
// (nil when all are present).
func Check(reqs []Requirement) error {
	var missing []string
	for _, r := range reqs {
		if err := r.Check(); err != nil {
			reason := "missing"
			if !errors.Is(err, ebpf.ErrNotSupported) {
				reason = "probe failed: " + err.Error()
			}
			missing = append(missing, fmt.Sprintf("%s (needed for %s): %s", r.Feature, r.Why, reason))
		}
	}
	if len(missing) == 0 {
		return nil
	}
	return &Missing{Items: missing}
}

var (
	setRetvalOnce sync.Once
	setRetvalErr  error
)

// HaveSetRetval reports whether cgroup sock_addr programs can choose the
// errno of a refused connect() (bpf_set_retval). Without it a service with no
// usable backend fails connect() with EPERM instead of ECONNREFUSED.
func HaveSetRetval() error {
	setRetvalOnce.Do(func() { setRetvalErr = features.HaveProgramHelper(sockAddr, asm.FnSetRetval) })
	return setRetvalErr
}

var (
	sockopsCgroupOnce sync.Once
	sockopsCgroupErr  error
)

// HaveSockopsCurrentCgroup reports whether sock_ops programs can read the
// current task's cgroup ancestry; without it a listener is recognised as
// enrolled only through its socket storage (not for MPTCP listeners).
func HaveSockopsCurrentCgroup() error {
	sockopsCgroupOnce.Do(func() {
		sockopsCgroupErr = features.HaveProgramHelper(ebpf.SockOps, asm.FnGetCurrentAncestorCgroupId)
	})
	return sockopsCgroupErr
}

// HaveNetnsCookieSockopt checks getsockopt(SO_NETNS_COOKIE) on a fresh socket.
func HaveNetnsCookieSockopt() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if _, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE); err != nil {
		if errors.Is(err, unix.ENOPROTOOPT) {
			return fmt.Errorf("SO_NETNS_COOKIE: %w", ebpf.ErrNotSupported)
		}
		return err
	}
	return nil
}

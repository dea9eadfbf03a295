package netlab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Cmd describes a process to run inside the lab.
type Cmd struct {
	Name   string   // for logs and errors, unique per lab for long-running processes
	Netns  *Netns   // nil = the caller's namespace
	CPUs   string   // taskset CPU list ("0", "1-3"); empty = not pinned
	Nice   int      // scheduling niceness (-20..19); 0 = inherit
	Cgroup string   // cgroup v2 directory to start in (clone3 CLONE_INTO_CGROUP); empty = the lab's
	Args   []string // program and arguments
	Env    []string // added to the environment
	// ExtraFiles are inherited as descriptors 3, 4, ... (they survive
	// ip netns exec, unlike paths under its remounted /sys).
	ExtraFiles []*os.File
}

func (l *Lab) command(ctx context.Context, c Cmd) (*exec.Cmd, func(), error) {
	if c.Cgroup == "" {
		c.Cgroup = l.Cgroup
	}
	if len(c.Args) == 0 {
		return nil, nil, errors.New("empty command")
	}
	argv := c.Args
	if c.CPUs != "" {
		argv = append([]string{"taskset", "-c", c.CPUs}, argv...)
	}
	if c.Nice != 0 {
		argv = append([]string{"nice", "-n", strconv.Itoa(c.Nice)}, argv...)
	}
	if c.Netns != nil {
		argv = append([]string{"ip", "netns", "exec", c.Netns.Name}, argv...)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), c.Env...)
	cmd.ExtraFiles = c.ExtraFiles
	// Own process group: the whole tree is signalled at once. Pdeathsig: the
	// child dies with us even if we are SIGKILLed (ip and taskset exec the
	// program, so it is the same process).
	attr := &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	release := func() {}
	if c.Cgroup != "" {
		fd, err := unix.Open(c.Cgroup, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: opening cgroup %s: %w", c.Name, c.Cgroup, err)
		}
		attr.UseCgroupFD, attr.CgroupFD = true, fd
		release = func() { unix.Close(fd) }
	}
	cmd.SysProcAttr = attr
	cmd.Cancel = func() error { return killGroup(cmd, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	return cmd, release, nil
}

func killGroup(cmd *exec.Cmd, sig syscall.Signal) error {
	if cmd.Process == nil {
		return nil
	}
	err := syscall.Kill(-cmd.Process.Pid, sig)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

// Proc is a long-running process started by Lab.Start.
type Proc struct {
	Name string
	Log  string // path of its combined stdout/stderr
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err is the exit status, valid after Done.
func (p *Proc) Err() error { return p.err }

// Pid of the started program.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// LogTail returns up to n bytes from the end of the process log, on one
// line (lines joined with " / "), for error messages.
func (p *Proc) LogTail(n int) string { return oneLine(tail(p.Log, n)) }

func oneLine(s string) string {
	var parts []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			parts = append(parts, l)
		}
	}
	return strings.Join(parts, " / ")
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(bytes.TrimSpace(b))
}

// Start launches a long-running process whose output goes to Dir/<name>.log.
// Close stops it: SIGTERM to its process group, SIGKILL after a grace period.
func (l *Lab) Start(c Cmd) (*Proc, error) {
	cmd, release, err := l.command(context.Background(), c)
	if err != nil {
		return nil, err
	}
	defer release()
	logPath := filepath.Join(l.Dir, c.Name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("starting %s: %w", c.Name, err)
	}
	p := &Proc{Name: c.Name, Log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	l.Defer("stop "+c.Name, func() error { return p.stop(3 * time.Second) })
	return p, nil
}

func (p *Proc) stop(grace time.Duration) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	_ = killGroup(p.cmd, syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
	}
	if err := killGroup(p.cmd, syscall.SIGKILL); err != nil {
		return err
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(5 * time.Second):
		return fmt.Errorf("%s (pid %d) did not exit after SIGKILL", p.Name, p.Pid())
	}
}

// Output runs a process to completion within timeout and returns its stdout.
// On failure the error carries the end of its stderr.
func (l *Lab) Output(ctx context.Context, c Cmd, timeout time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd, release, err := l.command(ctx, c)
	if err != nil {
		return nil, err
	}
	var stdout bytes.Buffer
	stderr := &tailBuffer{max: 8192}
	cmd.Stdout, cmd.Stderr = &stdout, stderr
	err = cmd.Start()
	release()
	if err == nil {
		err = cmd.Wait()
	}
	if err != nil {
		if ctx.Err() == context.DeadlineExceeded {
			err = fmt.Errorf("timed out after %v", timeout)
		}
		return stdout.Bytes(), fmt.Errorf("%s: %w; stderr: %s", c.Name, err, oneLine(string(stderr.Bytes())))
	}
	return stdout.Bytes(), nil
}

// tailBuffer keeps the last max bytes written to it, so a chatty child cannot
// grow our memory without bound.
type tailBuffer struct {
	max int
	buf []byte
}

var _ io.Writer = (*tailBuffer)(nil)

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) Bytes() []byte { return t.buf }

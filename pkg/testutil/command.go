package testutil

import (
	"bytes"
	"context"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Command is an external program started by a test (a proxy, a server)
// inside a namespace and/or cgroup. Its output is captured.
type Command struct {
	Cmd    *exec.Cmd
	out    syncBuffer
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

// StartCommand runs name with args placed by opt (Netns via ip netns exec,
// Cgroup via clone3 CLONE_INTO_CGROUP, Timeout: default 60 s). It is killed
// on cleanup if still running.
func StartCommand(tb testing.TB, opt HelperOptions, name string, args ...string) *Command {
	tb.Helper()
	timeout := opt.Timeout
	if timeout == 0 {
		timeout = 60 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	var cmd *exec.Cmd
	if opt.Netns != nil {
		cmd = opt.Netns.Command(ctx, name, args...) // ip netns exec execs name: same pid
	} else {
		cmd = exec.CommandContext(ctx, name, args...)
	}
	c := &Command{Cmd: cmd, cancel: cancel, done: make(chan struct{})}
	cmd.Stdout = &c.out
	cmd.Stderr = &c.out
	// A process group of its own: programs that fork workers (nginx) are
	// killed whole, and the workers do not keep the output pipe open.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if opt.Cgroup != nil {
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, opt.Cgroup.FD()
	}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		cancel()
		tb.Fatalf("starting %s: %v", name, err)
	}
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	tb.Cleanup(c.Stop)
	return c
}

// Output is everything the program wrote so far (stdout and stderr).
func (c *Command) Output() string { return c.out.String() }

// Exited reports whether the program has ended, and how.
func (c *Command) Exited() (bool, error) {
	select {
	case <-c.done:
		return true, c.err
	default:
		return false, nil
	}
}

// Kill sends SIGKILL to the program's process group and waits for it to end.
func (c *Command) Kill() {
	if c.Cmd.Process != nil {
		syscall.Kill(-c.Cmd.Process.Pid, syscall.SIGKILL)
	}
	<-c.done
}

// Stop kills the program if it still runs and releases its context.
func (c *Command) Stop() {
	c.Kill()
	c.cancel()
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

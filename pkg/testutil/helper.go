package testutil

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Helper processes: a test binary re-executes itself to run code in another
// cgroup and/or network namespace (the BPF socket hooks act on the cgroup a
// socket was created in, and a Go process cannot move one thread's cgroup).
// A package opts in by calling HelperMain from TestMain and registering
// helpers with RegisterHelper in an init function.

const helperEnv = "KMESH_TEST_HELPER"

var (
	helpersMu sync.Mutex
	helpers   = map[string]func(args json.RawMessage) (any, error){}
)

// RegisterHelper registers fn under name. In the helper process fn receives the
// JSON arguments given to StartHelper; its result is written to stdout as JSON.
func RegisterHelper(name string, fn func(args json.RawMessage) (any, error)) {
	helpersMu.Lock()
	defer helpersMu.Unlock()
	helpers[name] = fn
}

// HelperMain runs the requested helper and exits if this process is a helper,
// otherwise it runs the tests. Call it as the whole body of TestMain.
func HelperMain(m *testing.M) {
	name := os.Getenv(helperEnv)
	if name == "" {
		os.Exit(m.Run())
	}
	helpersMu.Lock()
	fn := helpers[name]
	helpersMu.Unlock()
	if fn == nil {
		fmt.Fprintf(os.Stderr, "unknown test helper %q\n", name)
		os.Exit(2)
	}
	res, err := fn(json.RawMessage(os.Getenv(helperEnv + "_ARGS")))
	if err != nil {
		fmt.Fprintf(os.Stderr, "helper %s: %v\n", name, err)
		os.Exit(1)
	}
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		os.Exit(1)
	}
	os.Exit(0)
}

// HelperOptions places a helper process. The zero value runs it in the test's
// own cgroup and namespace with a 60 s timeout.
type HelperOptions struct {
	Netns   *Netns        // run inside this namespace
	Cgroup  *Cgroup       // start directly inside this cgroup (clone3)
	Timeout time.Duration // kill after this long; default 60 s
}

// Helper is a started helper process.
type Helper struct {
	Cmd    *exec.Cmd
	stdout bytes.Buffer
	stderr bytes.Buffer
	cancel context.CancelFunc
	name   string
}

// StartHelper starts the named helper with args (marshalled to JSON). The
// process is killed on cleanup if still running.
func StartHelper(tb testing.TB, name string, args any, opt HelperOptions) *Helper {
	tb.Helper()
	exe, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	raw, err := json.Marshal(args)
	if err != nil {
		tb.Fatal(err)
	}
	timeout := opt.Timeout
	if timeout == 0 {
		timeout = 60 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	var cmd *exec.Cmd
	if opt.Netns != nil {
		cmd = opt.Netns.Command(ctx, exe, "-test.run=^$")
	} else {
		cmd = exec.CommandContext(ctx, exe, "-test.run=^$")
	}
	cmd.Env = append(os.Environ(), helperEnv+"="+name, helperEnv+"_ARGS="+string(raw))
	h := &Helper{Cmd: cmd, cancel: cancel, name: name}
	cmd.Stdout = &h.stdout
	cmd.Stderr = &h.stderr
	if opt.Cgroup != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: opt.Cgroup.FD()}
	}
	if err := cmd.Start(); err != nil {
		cancel()
		tb.Fatalf("starting helper %s: %v", name, err)
	}
	tb.Cleanup(func() {
		cancel()
		cmd.Wait()
	})
	return h
}

// Wait waits for the helper and decodes its JSON result into out (may be nil).
func (h *Helper) Wait(out any) error {
	err := h.Cmd.Wait()
	h.cancel()
	if err != nil {
		return fmt.Errorf("helper %s: %v; stderr: %s", h.name, err, h.stderr.String())
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(h.stdout.Bytes(), out); err != nil {
		return fmt.Errorf("helper %s: decoding result %q: %v", h.name, h.stdout.String(), err)
	}
	return nil
}

// RunHelper starts a helper and waits for its result.
func RunHelper(tb testing.TB, name string, args any, opt HelperOptions, out any) {
	tb.Helper()
	if err := StartHelper(tb, name, args, opt).Wait(out); err != nil {
		tb.Fatal(err)
	}
}

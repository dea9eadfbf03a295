// Command vmtest is the VM tier's runner: it builds static guest test binaries,
// packs them with busybox, iproute2, the needed distro modules and kmesh.ko
// into an initramfs, boots a Debian kernel under qemu TCG, and turns the guest's
// serial output into a pass/fail result.
//
//	go run ./test/vm/vmtest -kver 6.12.117+deb12-amd64 -suite kmod,ebpf
//
// TCG, not KVM: /dev/kvm on these machines is PVM, which cannot boot a stock
// kernel; -M microvm hangs under TCG, so the machine type is pc.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

type options struct {
	kver    string
	suites  []string
	cache   string
	work    string
	timeout time.Duration
	memMB   int
	smp     int
	kmod    string
	run     string
	// execArgs are appended to every exec program's arguments.
	execArgs string
}

func main() {
	var o options
	var suites string
	flag.StringVar(&o.kver, "kver", "", "guest kernel ABI, e.g. 6.12.117+deb12-amd64 (see make deps)")
	flag.StringVar(&suites, "suite", "ebpf", "comma-separated suites from test/vm/suites.txt")
	flag.StringVar(&o.cache, "cache", envOr("KMESH_CACHE", "/var/cache/kmesh-go"), "cache with kernels/<kver>")
	flag.StringVar(&o.work, "work", "", "work directory (default .build/vm/<kver>)")
	flag.DurationVar(&o.timeout, "timeout", 15*time.Minute, "hard limit for the qemu run")
	flag.IntVar(&o.memMB, "mem", 2048, "guest memory in MiB")
	flag.IntVar(&o.smp, "smp", 2, "guest vCPUs")
	flag.StringVar(&o.kmod, "kmod", "kmod/kmesh.ko", "kernel module for suites that use it")
	flag.StringVar(&o.run, "run", "", "pass -test.run=<regexp> to every guest test binary")
	flag.StringVar(&o.execArgs, "exec-args", "", "extra arguments (space-separated) for every exec program of the suites")
	flag.Parse()
	o.suites = strings.Split(suites, ",")
	if o.kver == "" {
		fatalf("-kver is required (run make deps; the Makefile passes it)")
	}
	if o.work == "" {
		o.work = filepath.Join(".build", "vm", o.kver)
	}
	res, err := run(o)
	if err != nil {
		fatalf("%v", err)
	}
	fmt.Printf("vmtest %s [%s]: %d passed, %d failed\n", o.kver, strings.Join(o.suites, ","), res.passed, res.failed)
	if res.failed > 0 || res.passed == 0 {
		os.Exit(1)
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "vmtest: "+format+"\n", args...)
	os.Exit(1)
}

// plan is what the selected suites ask for.
type plan struct {
	tests   []testBinary
	modules []string
	bins    []string
	kmod    bool
	gobins  []string     // Go main packages built statically into /usr/local/bin
	files   [][2]string  // host path, guest path
	execs   []testBinary // programs run in the guest (pass = exit 0)
}

type testBinary struct {
	name, pkg string
	args      []string
}

func readPlan(path string, suites []string) (plan, error) {
	want := map[string]bool{}
	for _, s := range suites {
		want[strings.TrimSpace(s)] = true
	}
	f, err := os.Open(path)
	if err != nil {
		return plan{}, err
	}
	defer f.Close()
	var p plan
	seen := map[string]bool{}
	found := map[string]bool{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fl := strings.Fields(line)
		if len(fl) < 2 {
			return p, fmt.Errorf("%s:%d: want \"<suite> <directive> [args]\"", path, n)
		}
		suite, dir, args := fl[0], fl[1], fl[2:]
		found[suite] = true
		if !want[suite] {
			continue
		}
		key := dir + " " + strings.Join(args, " ")
		if seen[key] {
			continue
		}
		seen[key] = true
		switch dir {
		case "test":
			if len(args) < 1 {
				return p, fmt.Errorf("%s:%d: test needs a package", path, n)
			}
			name := strings.NewReplacer("./", "", "/", "_", ".", "_").Replace(args[0])
			p.tests = append(p.tests, testBinary{name: name, pkg: args[0], args: args[1:]})
		case "module":
			p.modules = append(p.modules, args...)
		case "bin":
			p.bins = append(p.bins, args...)
		case "kmod":
			p.kmod = true
		case "gobin":
			if len(args) != 1 {
				return p, fmt.Errorf("%s:%d: gobin needs one package", path, n)
			}
			p.gobins = append(p.gobins, args[0])
		case "file":
			if len(args) != 2 || !filepath.IsAbs(args[1]) {
				return p, fmt.Errorf("%s:%d: file needs a host path and an absolute guest path", path, n)
			}
			p.files = append(p.files, [2]string{args[0], args[1]})
		case "exec":
			if len(args) < 2 || !filepath.IsAbs(args[1]) {
				return p, fmt.Errorf("%s:%d: exec needs a name and an absolute guest path", path, n)
			}
			p.execs = append(p.execs, testBinary{name: args[0], pkg: args[1], args: args[2:]})
		default:
			return p, fmt.Errorf("%s:%d: unknown directive %q", path, n, dir)
		}
	}
	for s := range want {
		if !found[s] {
			return p, fmt.Errorf("unknown suite %q (see %s)", s, path)
		}
	}
	return p, sc.Err()
}

type result struct{ passed, failed int }

func run(o options) (result, error) {
	p, err := readPlan("test/vm/suites.txt", o.suites)
	if err != nil {
		return result{}, err
	}
	kroot := filepath.Join(o.cache, "kernels", o.kver)
	kernel := filepath.Join(kroot, "boot", "vmlinuz-"+o.kver)
	if _, err := os.Stat(kernel); err != nil {
		return result{}, fmt.Errorf("guest kernel %s missing: run make deps", kernel)
	}
	if err := os.RemoveAll(o.work); err != nil {
		return result{}, err
	}
	root := filepath.Join(o.work, "root")
	for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "lib", "lib64", "t", "suite", "dev", "proc", "sys", "tmp", "run", "etc", "lib/kmesh"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return result{}, err
		}
	}
	start := time.Now()
	if err := installBusybox(root); err != nil {
		return result{}, err
	}
	if err := copyFile("test/vm/init.sh", filepath.Join(root, "init"), 0o755); err != nil {
		return result{}, err
	}
	if err := goBuild(filepath.Join(root, "guestrun"), "build", "./test/vm/guestrun"); err != nil {
		return result{}, err
	}
	var manifest strings.Builder
	for _, tb := range p.tests {
		out := filepath.Join(root, "t", tb.name+".test")
		if err := goBuild(out, "test", "-c", "-tags", "vmguest", tb.pkg); err != nil {
			return result{}, err
		}
		args := append([]string{"-test.short"}, tb.args...)
		if o.run != "" {
			args = append(args, "-test.run="+o.run)
		}
		fmt.Fprintf(&manifest, "%s /t/%s.test %s\n", tb.name, tb.name, strings.Join(args, " "))
	}
	for _, pkg := range p.gobins {
		out := filepath.Join(root, "usr/local/bin", filepath.Base(pkg))
		if err := goBuild(out, "build", "-tags", "grpcnotrace", pkg); err != nil { // as the Makefile builds daemons
			return result{}, err
		}
	}
	for _, f := range p.files {
		if err := copyFile(f[0], filepath.Join(root, f[1]), 0o644); err != nil {
			return result{}, err
		}
	}
	for _, x := range p.execs {
		fmt.Fprintf(&manifest, "exec %s %s %s %s\n", x.name, x.pkg, strings.Join(x.args, " "), o.execArgs)
	}
	if err := os.WriteFile(filepath.Join(root, "suite", "manifest"), []byte(manifest.String()), 0o644); err != nil {
		return result{}, err
	}
	for _, b := range p.bins {
		if err := copyWithLibs(root, b); err != nil {
			return result{}, err
		}
	}
	if err := installModules(root, kroot, o.kver, p.modules); err != nil {
		return result{}, err
	}
	env := []string{}
	if p.kmod {
		if err := copyFile(o.kmod, filepath.Join(root, "lib/kmesh/kmesh.ko"), 0o644); err != nil {
			return result{}, fmt.Errorf("kmod suite needs %s (make kmod): %w", o.kmod, err)
		}
		env = append(env, "KMESH_KMOD_PATH=/lib/kmesh/kmesh.ko")
	}
	initrd := filepath.Join(o.work, "initramfs.cpio.gz")
	if err := packInitramfs(root, initrd); err != nil {
		return result{}, err
	}
	fmt.Printf("vmtest: initramfs ready in %.1fs (%d test binaries, %d programs)\n", time.Since(start).Seconds(), len(p.tests), len(p.execs))
	if os.Getenv("CI") == "true" {
		env = append(env, "CI=true")
	}
	return boot(o, kernel, initrd, env)
}

func goBuild(out string, args ...string) error {
	full := append(args[:1:1], "-trimpath", "-ldflags=-s -w", "-o", out)
	full = append(full, args[1:]...)
	cmd := exec.Command("go", full...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(full, " "), err, b)
	}
	return nil
}

func installBusybox(root string) error {
	bb := "/bin/busybox"
	if err := copyFile(bb, filepath.Join(root, "bin/busybox"), 0o755); err != nil {
		return fmt.Errorf("busybox-static: %w (make deps)", err)
	}
	out, err := exec.Command(bb, "--list-full").Output()
	if err != nil {
		return err
	}
	for _, applet := range strings.Fields(string(out)) {
		if filepath.Base(applet) == "busybox" {
			continue // a link over itself loops (ELOOP at exec)
		}
		dst := filepath.Join(root, applet)
		if _, err := os.Lstat(dst); err == nil {
			continue
		}
		os.MkdirAll(filepath.Dir(dst), 0o755)
		if err := os.Symlink("/bin/busybox", dst); err != nil {
			return err
		}
	}
	// Device nodes the kernel needs before devtmpfs is mounted.
	if err := exec.Command("mknod", "-m", "600", filepath.Join(root, "dev/console"), "c", "5", "1").Run(); err != nil {
		return fmt.Errorf("mknod /dev/console (needs root): %w", err)
	}
	return exec.Command("mknod", "-m", "666", filepath.Join(root, "dev/null"), "c", "1", "3").Run()
}

var lddPath = regexp.MustCompile(`(/[^ ]+) \(0x`)

// copyWithLibs copies a dynamically linked program and the libraries ldd names.
func copyWithLibs(root, bin string) error {
	if err := copyFile(bin, filepath.Join(root, bin), 0o755); err != nil {
		return err
	}
	out, err := exec.Command("ldd", bin).Output()
	if err != nil {
		return nil // static
	}
	for _, m := range lddPath.FindAllStringSubmatch(string(out), -1) {
		lib := m[1]
		real, err := filepath.EvalSymlinks(lib)
		if err != nil {
			return err
		}
		if err := copyFile(real, filepath.Join(root, lib), 0o755); err != nil {
			return err
		}
	}
	return nil
}

// installModules copies the named modules and their dependencies from the
// extracted kernel package, decompressed (busybox modprobe cannot read .xz), and
// runs depmod so modprobe and kernel autoloading work in the guest.
func installModules(root, kroot, kver string, names []string) error {
	if len(names) == 0 {
		return nil
	}
	moddir := filepath.Join(kroot, "lib/modules", kver)
	dstdir := filepath.Join(root, "lib/modules", kver)
	if err := os.MkdirAll(dstdir, 0o755); err != nil {
		return err
	}
	for _, f := range []string{"modules.builtin", "modules.builtin.modinfo", "modules.order"} {
		copyFile(filepath.Join(moddir, f), filepath.Join(dstdir, f), 0o644)
	}
	done := map[string]bool{}
	for _, name := range names {
		out, err := exec.Command("modprobe", "-d", kroot, "-S", kver, "--show-depends", name).CombinedOutput()
		if err != nil {
			return fmt.Errorf("modprobe --show-depends %s for %s: %v: %s", name, kver, err, out)
		}
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 || f[0] != "insmod" || done[f[1]] {
				continue
			}
			done[f[1]] = true
			rel, err := filepath.Rel(moddir, f[1])
			if err != nil {
				return err
			}
			dst := filepath.Join(dstdir, strings.TrimSuffix(rel, ".xz"))
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return err
			}
			if strings.HasSuffix(f[1], ".xz") {
				if err := decompressXZ(f[1], dst); err != nil {
					return err
				}
			} else if err := copyFile(f[1], dst, 0o644); err != nil {
				return err
			}
		}
	}
	if out, err := exec.Command("depmod", "-b", root, kver).CombinedOutput(); err != nil {
		return fmt.Errorf("depmod: %v: %s", err, out)
	}
	return nil
}

func decompressXZ(src, dst string) error {
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer out.Close()
	var stderr strings.Builder
	cmd := exec.Command("xz", "-dc", src)
	cmd.Stdout, cmd.Stderr = out, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("xz -dc %s: %v: %s", src, err, stderr.String())
	}
	return nil
}

func packInitramfs(root, out string) error {
	script := fmt.Sprintf("cd %q && find . -print0 | cpio --null -o -H newc --quiet | gzip -1 > %q", root, mustAbs(out))
	if b, err := exec.Command("sh", "-c", script).CombinedOutput(); err != nil {
		return fmt.Errorf("packing initramfs: %v: %s", err, b)
	}
	return nil
}

func mustAbs(p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		panic(err)
	}
	return a
}

var endRe = regexp.MustCompile(`KMESH-VM-END (\S+) passed=(\d+) failed=(\d+) skipped=(\d+) exit=(-?\d+)`)
var klogRe = regexp.MustCompile(`KMESH-VM-KERNELLOG problems=(\d+)`)

func boot(o options, kernel, initrd string, env []string) (result, error) {
	args := []string{
		"-accel", "tcg,thread=multi", "-cpu", "max", "-M", "pc",
		"-m", strconv.Itoa(o.memMB), "-smp", strconv.Itoa(o.smp),
		"-nographic", "-no-reboot", "-nic", "none",
		"-kernel", kernel, "-initrd", initrd,
		"-append", strings.Join(append([]string{"console=ttyS0", "panic=-1", "oops=panic", "quiet", "loglevel=4"}, env...), " "),
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	cmd.Stdin = nil
	logPath := filepath.Join(o.work, "serial.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return result{}, err
	}
	defer logf.Close()
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return result{}, fmt.Errorf("starting qemu: %w (make deps installs qemu-system-x86)", err)
	}
	var res result
	suites := map[string]string{}
	var done, booted bool
	var klogProblems = -1
	scanDone := make(chan struct{})
	go func() {
		defer close(scanDone)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := strings.TrimRight(sc.Text(), "\r")
			fmt.Fprintln(logf, line)
			fmt.Printf("vm| %s\n", line)
			switch {
			case strings.Contains(line, "KMESH-VM-BOOTED"):
				booted = true
			case strings.Contains(line, "KMESH-VM-DONE"):
				done = true
			}
			if m := endRe.FindStringSubmatch(line); m != nil {
				p, _ := strconv.Atoi(m[2])
				f, _ := strconv.Atoi(m[3])
				s, _ := strconv.Atoi(m[4])
				res.passed += p
				res.failed += f
				if s > 0 && os.Getenv("CI") == "true" {
					res.failed += s // skipped tests do not count as passing in CI
				}
				suites[m[1]] = fmt.Sprintf("%d passed, %d failed, %d skipped", p, f, s)
			}
			if m := klogRe.FindStringSubmatch(line); m != nil {
				klogProblems, _ = strconv.Atoi(m[1])
			}
		}
	}()
	werr := cmd.Wait()
	pw.Close()
	<-scanDone
	elapsed := time.Since(start)
	names := make([]string, 0, len(suites))
	for n := range suites {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Printf("vmtest: %s finished in %.1fs (serial log %s)\n", o.kver, elapsed.Seconds(), logPath)
	for _, n := range names {
		fmt.Printf("vmtest:   %-40s %s\n", n, suites[n])
	}
	writeSummary(filepath.Join(o.work, "summary.txt"), o.kver, names, suites)
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		fmt.Printf("vmtest: guest did not finish within %s\n", o.timeout)
		res.failed++
	case !booted:
		fmt.Printf("vmtest: guest never reached /init (qemu: %v)\n", werr)
		res.failed++
	case !done:
		fmt.Printf("vmtest: guest stopped before finishing (kernel panic or crash; see %s)\n", logPath)
		res.failed++
	}
	if klogProblems != 0 {
		fmt.Printf("vmtest: kernel log problems: %d\n", klogProblems)
		res.failed++
	}
	if len(suites) == 0 {
		res.failed++
	}
	return res, nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	// dst may be a busybox applet symlink (/usr/bin/wget -> /bin/busybox):
	// replace the link, never write through it (it points at the host's
	// /bin/busybox).
	if err := os.Remove(dst); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// writeSummary records one line per guest suite ("vm\t<kver>\t<suite>\t<counts>",
// or FAIL in the first column), which make test prints again and adds up at the
// end. It deliberately does not imitate go test's package line.
func writeSummary(path, kver string, names []string, suites map[string]string) {
	var b strings.Builder
	for _, n := range names {
		word := "vm"
		if !strings.Contains(suites[n], " 0 failed") {
			word = "FAIL"
		}
		fmt.Fprintf(&b, "%s\t%s\t%s\t%s\n", word, kver, n, suites[n])
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		fmt.Printf("vmtest: writing %s: %v\n", path, err)
	}
}

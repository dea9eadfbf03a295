package main

import (
	"bufio"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/kmesh-go/kmesh/bench/report"
)

// The VM mode (-vm) runs this benchmark inside the Debian 6.12 guest of the
// VM tier, with kmesh.ko loaded, so kernel-native mode (scenario 7) can be
// measured; kmesh.ko cannot load on the development hosts. test/vm/vmtest
// boots the guest with the suite bench-kn (test/vm/suites.txt: the static
// bench binary, HAProxy, kmesh.ko); the guest's bench prints results.json
// over the serial console between markers, and the host renders it into
// -out like any run. Under TCG every absolute number is slow: only ratios
// between scenarios of the same guest run mean something.

const (
	jsonBegin = "KMESH-BENCH-JSON-BEGIN"
	jsonEnd   = "KMESH-BENCH-JSON-END"
	vmSuite   = "bench-kn"
)

// emitJSON prints dir/results.json base64-encoded in short lines between the
// markers (the guest's serial console carries it to the host).
func emitJSON(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, "results.json"))
	if err != nil {
		return err
	}
	enc := base64.StdEncoding.EncodeToString(b)
	fmt.Println(jsonBegin)
	for len(enc) > 0 {
		n := min(len(enc), 76)
		fmt.Println(enc[:n])
		enc = enc[n:]
	}
	fmt.Println(jsonEnd)
	return nil
}

// guestArgs are the host's flags for the guest's bench, without the VM and
// output flags.
func guestArgs(args []string) ([]string, error) {
	var out []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		name := strings.TrimLeft(a, "-")
		name, _, hasValue := strings.Cut(name, "=")
		switch name {
		case "vm", "emit-json":
			continue
		case "vm-kver", "out":
			if !hasValue {
				i++
			}
			continue
		}
		if strings.ContainsAny(a, " \t") {
			return nil, fmt.Errorf("%q: arguments with spaces cannot be passed to the guest", a)
		}
		out = append(out, a)
	}
	return out, nil
}

// kver612 reads the 6.12 guest kernel ABI that make deps resolved.
func kver612() (string, error) {
	cache := os.Getenv("KMESH_CACHE")
	if cache == "" {
		cache = "/var/cache/kmesh-go"
	}
	f, err := os.Open(filepath.Join(cache, "kver.mk"))
	if err != nil {
		return "", fmt.Errorf("%w (run make deps, or pass -vm-kver)", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "KVER_612="); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return "", errors.New("no KVER_612 in kver.mk (run make deps)")
}

// runVM boots the guest, runs the benchmark there and renders its results
// into out. It returns the exit code.
func runVM(args []string, out, kver string) int {
	if kver == "" {
		var err error
		if kver, err = kver612(); err != nil {
			fmt.Fprintln(os.Stderr, "bench -vm:", err)
			return 2
		}
	}
	ga, err := guestArgs(args)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench -vm:", err)
		return 2
	}
	if _, err := os.Stat("kmod/kmesh.ko"); err != nil {
		fmt.Fprintln(os.Stderr, "bench -vm: kmod/kmesh.ko missing: run make kmod (and run from the repository root)")
		return 2
	}
	cmd := exec.Command("go", "run", "./test/vm/vmtest", "-kver", kver, "-suite", vmSuite, "-timeout", "60m",
		"-exec-args", strings.Join(ga, " "))
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	vmErr := cmd.Run()
	serial := filepath.Join(".build", "vm", kver, "serial.log")
	js, err := extractJSON(serial)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench -vm: no results from the guest (%v; vmtest: %v)\n", err, vmErr)
		return 1
	}
	if err := os.WriteFile(filepath.Join(out, "results.json"), js, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "bench -vm:", err)
		return 1
	}
	rep, err := report.ReadJSON(filepath.Join(out, "results.json"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench -vm:", err)
		return 1
	}
	rep.Environment.Command = "sudo go run ./bench/cmd/bench " + shellJoin(args)
	rep.Environment.Notes = append(rep.Environment.Notes, "measured inside the Debian "+kver+" guest under qemu TCG (kmesh.ko): compare ratios only")
	report.Build(rep)
	code := write(rep, out, nil)
	if vmErr != nil && code == 0 {
		fmt.Fprintln(os.Stderr, "bench -vm: the guest run failed:", vmErr)
		code = 1
	}
	return code
}

func extractJSON(serial string) ([]byte, error) {
	f, err := os.Open(serial)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var b strings.Builder
	in, done := false, false
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasSuffix(l, jsonBegin):
			in, done = true, false
			b.Reset()
		case strings.HasSuffix(l, jsonEnd):
			in, done = false, true
		case in:
			b.WriteString(l)
		}
	}
	if !done {
		return nil, fmt.Errorf("%s has no %s..%s block", serial, jsonBegin, jsonEnd)
	}
	return base64.StdEncoding.DecodeString(b.String())
}

// Command guestrun runs inside the VM tier's guest, started by /init. It runs
// each test binary (and "exec" program) listed in /suite/manifest, streams its output to the serial
// console, and prints machine-readable result markers that test/vm/vmtest
// parses on the host:
//
//	KMESH-VM-BEGIN <name>
//	KMESH-VM-END <name> passed=N failed=N skipped=N exit=N
//	KMESH-VM-KERNELLOG problems=N
//	KMESH-VM-DONE
//
// After the tests it scans the kernel log for oopses, WARNs, BUGs and leak
// reports; each counts as a failure.
package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"
)

const perBinaryTimeout = 15 * time.Minute

var kernelProblems = []string{"BUG:", "WARNING:", "Oops", "kernel BUG", "Call Trace", "UBSAN:", "KASAN:",
	"general protection fault", "unreferenced object", "refcount_t:", "list_add corruption", "list_del corruption"}

func main() {
	manifest, err := os.ReadFile("/suite/manifest")
	if err != nil {
		fmt.Println("guestrun:", err)
		fmt.Println("KMESH-VM-DONE")
		return
	}
	for _, line := range strings.Split(string(manifest), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == "exec" {
			runProgram(f[1], f[2], f[3:])
			continue
		}
		if len(f) < 2 {
			continue
		}
		runBinary(f[0], f[1], f[2:])
	}
	checkKernelLog()
	fmt.Println("KMESH-VM-DONE")
}

func runBinary(name, bin string, args []string) {
	fmt.Printf("KMESH-VM-BEGIN %s\n", name)
	ctx, cancel := context.WithTimeout(context.Background(), perBinaryTimeout)
	defer cancel()
	args = append([]string{"-test.v", "-test.count=1", "-test.timeout=" + perBinaryTimeout.String()}, args...)
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = "/tmp"
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	var passed, failed, skipped int
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			l := sc.Text()
			fmt.Println(l)
			// Top-level results only: subtest results are indented.
			switch {
			case strings.HasPrefix(l, "--- PASS: "):
				passed++
			case strings.HasPrefix(l, "--- FAIL: "):
				failed++
			case strings.HasPrefix(l, "--- SKIP: "):
				skipped++
			}
		}
	}()
	err := cmd.Run()
	pw.Close()
	<-done
	code := 0
	if err != nil {
		code = 1
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		fmt.Printf("guestrun: %s: %v\n", name, err)
		if failed == 0 {
			failed = 1 // a crash, panic or timeout without a --- FAIL line
		}
	}
	if passed+failed+skipped == 0 {
		fmt.Printf("guestrun: %s ran no tests\n", name)
		failed = 1
	}
	fmt.Printf("KMESH-VM-END %s passed=%d failed=%d skipped=%d exit=%d\n", name, passed, failed, skipped, code)
}

// runProgram runs a program that is not a test binary (a demo, a benchmark):
// its output streams to the console and it passes when it exits 0.
func runProgram(name, bin string, args []string) {
	fmt.Printf("KMESH-VM-BEGIN %s\n", name)
	ctx, cancel := context.WithTimeout(context.Background(), perBinaryTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = "/tmp"
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stdout
	passed, failed, code := 1, 0, 0
	if err := cmd.Run(); err != nil {
		passed, failed, code = 0, 1, 1
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		fmt.Printf("guestrun: %s: %v\n", name, err)
	}
	fmt.Printf("KMESH-VM-END %s passed=%d failed=%d skipped=0 exit=%d\n", name, passed, failed, code)
}

func checkKernelLog() {
	out, err := exec.Command("dmesg").CombinedOutput()
	if err != nil {
		fmt.Println("guestrun: dmesg:", err)
		fmt.Println("KMESH-VM-KERNELLOG problems=1")
		return
	}
	problems := 0
	for _, l := range strings.Split(string(out), "\n") {
		for _, p := range kernelProblems {
			if strings.Contains(l, p) {
				problems++
				fmt.Println("kernel log:", l)
				break
			}
		}
	}
	fmt.Printf("KMESH-VM-KERNELLOG problems=%d\n", problems)
}

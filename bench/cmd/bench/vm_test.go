package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestGuestArgsDropHostOnlyFlags(t *testing.T) {
	got, err := guestArgs([]string{"-vm", "-out", "docs/x", "-vm-kver=6.12", "-scenarios", "direct,kernel-native", "--repeat=2", "-emit-json"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"-scenarios", "direct,kernel-native", "--repeat=2"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("guest args %q, want %q", got, want)
	}
	if _, err := guestArgs([]string{"-note", "two words"}); err == nil {
		t.Fatal("the guest manifest splits on spaces: an argument with spaces must be refused")
	}
}

// The JSON the guest prints between markers (base64 in short lines, with the
// serial log's other output around it) comes back byte for byte.
func TestEmitAndExtractJSON(t *testing.T) {
	dir := t.TempDir()
	want := []byte(`{"cells":[{"scenario":"kernel-native","p50_us":123.4}],"note":"` + strings.Repeat("x", 500) + `"}`)
	if err := os.WriteFile(filepath.Join(dir, "results.json"), want, 0o644); err != nil {
		t.Fatal(err)
	}
	r, w, _ := os.Pipe()
	stdout := os.Stdout
	os.Stdout = w
	err := emitJSON(dir)
	w.Close()
	os.Stdout = stdout
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(r)
	serial := filepath.Join(dir, "serial.log")
	var log bytes.Buffer
	log.WriteString("KMESH-VM-BOOTED\nresults: /tmp/bench/results.md\n")
	log.Write(out)
	log.WriteString("KMESH-VM-END bench passed=1\n")
	os.WriteFile(serial, log.Bytes(), 0o644)
	got, err := extractJSON(serial)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("round trip: got %q", got)
	}
	os.WriteFile(serial, []byte("no markers\n"), 0o644)
	if _, err := extractJSON(serial); err == nil {
		t.Fatal("a log without the block must be an error")
	}
}

//go:build vmguest

package kmod

import (
	"bufio"
	"bytes"
	"embed"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/kmesh-go/kmesh/pkg/bpf/objs"
	"github.com/kmesh-go/kmesh/pkg/testutil"
)

//go:embed testdata/http
var httpCorpus embed.FS

const (
	opInfo        = 0
	opMatchHost   = 1
	opMatchPath   = 2
	opMatchHeader = 3
	opCopy        = 4
)

var statusNames = map[string]int32{
	"OK": HTTPOK, "INCOMPLETE": HTTPIncomplete, "TOO_LARGE": HTTPTooLarge, "E_NOT_HTTP": HTTPErrNotHTTP,
	"E_REQLINE": HTTPErrReqLine, "E_HEADER": HTTPErrHeader, "E_HOST": HTTPErrHost, "E_VERSION": HTTPErrVersion,
}

// kernelParser runs kmod_http_run (a syscall program calling the parser
// kfuncs) on one input and one check.
type kernelParser struct {
	o objs.KmodHttpObjects
}

func newKernelParser(t *testing.T) *kernelParser {
	t.Helper()
	p := &kernelParser{}
	if err := objs.LoadKmodHttpObjects(&p.o, nil); err != nil {
		t.Fatalf("loading parser self-test objects: %v", err)
	}
	t.Cleanup(func() { p.o.Close() })
	return p
}

func (p *kernelParser) run(t *testing.T, input []byte, op, flags uint32, nameLen int, val string) objs.KmodHttpHttpCase {
	t.Helper()
	var c objs.KmodHttpHttpCase
	if len(input) > len(c.Buf) || len(val) > len(c.Val) {
		t.Fatalf("input of %d bytes or pattern of %d does not fit the case buffer", len(input), len(val))
	}
	c.Len = uint32(len(input))
	for i, b := range input {
		c.Buf[i] = int8(b)
	}
	c.Op, c.Flags, c.NameLen, c.ValLen = op, flags, uint32(nameLen), uint32(len(val))
	for i := 0; i < len(val); i++ {
		c.Val[i] = int8(val[i])
	}
	if err := p.o.HttpCases.Put(uint32(0), &c); err != nil {
		t.Fatal(err)
	}
	ret, err := p.o.KmodHttpRun.Run(&ebpf.RunOptions{})
	if err != nil || ret != 0 {
		t.Fatalf("kmod_http_run: ret=%d err=%v", ret, err)
	}
	var out objs.KmodHttpHttpCase
	if err := p.o.HttpCases.Lookup(uint32(0), &out); err != nil {
		t.Fatal(err)
	}
	if out.Result == -12 {
		t.Fatal("bpf_kmesh_http_parse returned NULL (out of memory)")
	}
	return out
}

func cString(b []int8, n int) string {
	if n > len(b) {
		n = len(b)
	}
	s := make([]byte, n)
	for i := 0; i < n; i++ {
		s[i] = byte(b[i])
	}
	return string(s)
}

func unescape(s string) string {
	if s == "-" {
		return ""
	}
	return strings.NewReplacer(`\s`, " ", `\t`, "\t").Replace(s)
}

func matchFlags(t *testing.T, spec string) uint32 {
	var f uint32
	for _, tok := range strings.Split(spec, ",") {
		switch {
		case tok == "exact":
		case tok == "prefix":
			f |= MatchPrefix
		case tok == "suffix":
			f |= MatchSuffix
		case tok == "present":
			f |= MatchPresent
		case tok == "nocase":
			f |= MatchNoCase
		case tok == "noport":
			f |= MatchNoPort
		case strings.HasPrefix(tok, "raw="):
			v, err := strconv.ParseUint(tok[4:], 0, 32)
			if err != nil {
				t.Fatalf("bad mode %q", spec)
			}
			f |= uint32(v)
		default:
			t.Fatalf("bad mode %q", spec)
		}
	}
	return f
}

func flagsText(f uint32) string {
	var parts []string
	for i, n := range []string{"reqline", "host", "folded", "trailing"} {
		if f&(1<<i) != 0 {
			parts = append(parts, n)
		}
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ",")
}

// TestHTTPKfuncsCorpus runs every expectation of testdata/http/expect.txt
// (the file kmod/fuzz/http_corpus checks against the userspace build of the
// parser) through the module's kfuncs: both builds of http_parse.c must give
// the same answers on real request heads from curl, wget, browsers, proxies.
func TestHTTPKfuncsCorpus(t *testing.T) {
	loadModule(t)
	p := newKernelParser(t)
	expect, err := httpCorpus.ReadFile("testdata/http/expect.txt")
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	entries, err := httpCorpus.ReadDir("testdata/http")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".http") {
			files[e.Name()], _ = httpCorpus.ReadFile("testdata/http/" + e.Name())
		}
	}
	checked := map[string]bool{}
	checks := 0
	sc := bufio.NewScanner(bytes.NewReader(expect))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Split(line, "\t")
		in, ok := files[f[0]]
		if !ok {
			t.Fatalf("expect.txt:%d: no corpus file %s", n, f[0])
		}
		checked[f[0]] = true
		checks++
		var got, want string
		switch f[1] {
		case "status":
			c := p.run(t, in, opInfo, 0, 0, "")
			got, want = strconv.Itoa(int(c.Info.Status)), strconv.Itoa(int(statusNames[f[2]]))
		case "version":
			got, want = strconv.Itoa(int(p.run(t, in, opInfo, 0, 0, "").Info.Version)), f[2]
		case "headers":
			got, want = strconv.Itoa(int(p.run(t, in, opInfo, 0, 0, "").Info.NrHeaders)), f[2]
		case "head-len":
			got, want = strconv.Itoa(int(p.run(t, in, opInfo, 0, 0, "").Info.HeadLen)), f[2]
		case "flags":
			got, want = flagsText(p.run(t, in, opInfo, 0, 0, "").Info.Flags), f[2]
		case "form":
			forms := []string{"none", "origin", "absolute", "authority", "asterisk"}
			got, want = forms[p.run(t, in, opInfo, 0, 0, "").Info.TargetForm], f[2]
		case "method", "target", "path", "host":
			field := map[string]uint32{"method": HTTPFieldMethod, "target": HTTPFieldTarget, "path": HTTPFieldPath,
				"host": HTTPFieldHost}[f[1]]
			need := uint32(1) // KMESH_HTTP_F_REQLINE
			if f[1] == "host" {
				need = 2 // KMESH_HTTP_F_HOST
			}
			c := p.run(t, in, opCopy, field, 0, "")
			got = "-"
			if c.Info.Flags&need != 0 {
				got = cString(c.Out[:], int(c.Result))
			}
			want = f[2]
			if want != "-" {
				want = unescape(want)
			}
		case "header":
			name, val := unescape(f[2]), unescape(f[3])
			got = strconv.Itoa(int(p.run(t, in, opMatchHeader, MatchExact, len(name), name+val).Result))
			want = "1"
		case "match-host", "match-path":
			op := uint32(opMatchHost)
			if f[1] == "match-path" {
				op = opMatchPath
			}
			got, want = strconv.Itoa(int(p.run(t, in, op, matchFlags(t, f[2]), 0, unescape(f[3])).Result)), f[4]
		case "match-header":
			name, val := unescape(f[3]), unescape(f[4])
			got = strconv.Itoa(int(p.run(t, in, opMatchHeader, matchFlags(t, f[2]), len(name), name+val).Result))
			want = f[5]
		default:
			t.Fatalf("expect.txt:%d: unknown check %q", n, f[1])
		}
		if got != want {
			t.Errorf("expect.txt:%d: %s %s: kernel says %q, want %q", n, f[0], strings.Join(f[1:], " "), got, want)
		}
	}
	for name := range files {
		if !checked[name] {
			t.Errorf("%s has no expectation", name)
		}
	}
	t.Logf("%d corpus files, %d checks through the kernel parser", len(files), checks)
}

// TestHTTPKfuncsHostileInputs: binary garbage, every truncation of a real
// head and an oversized buffer go through the kernel parser without a
// problem (the VM harness also fails the run on any kernel warning).
func TestHTTPKfuncsHostileInputs(t *testing.T) {
	loadModule(t)
	p := newKernelParser(t)
	head, _ := httpCorpus.ReadFile("testdata/http/browser_chrome.http")
	for n := 0; n <= len(head); n += 7 {
		c := p.run(t, head[:n], opMatchHost, MatchExact, 0, "www.example.com")
		if n < len(head) && c.Info.Status != HTTPIncomplete {
			t.Fatalf("prefix of %d bytes: status %d, want INCOMPLETE", n, c.Info.Status)
		}
	}
	garbage := make([]byte, 12000)
	x := uint32(2463534242)
	for i := range garbage {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		garbage[i] = byte(x)
	}
	for _, n := range []int{1, 16, 511, 4096, 8192, 12000} {
		c := p.run(t, garbage[:n], opMatchHeader, MatchPresent, 4, "host")
		if c.Info.Status >= 0 && c.Info.Status != HTTPIncomplete {
			t.Fatalf("%d bytes of garbage parsed as status %d", n, c.Info.Status)
		}
	}
	big := append([]byte("GET /big HTTP/1.1\r\nHost: big.example\r\nX-Pad: "), bytes.Repeat([]byte("p"), 11000)...)
	c := p.run(t, big, opMatchHost, MatchExact, 0, "big.example")
	if c.Info.Status != HTTPTooLarge || c.Result != 1 {
		t.Fatalf("oversized head: status %d host match %d, want TOO_LARGE and 1", c.Info.Status, c.Result)
	}
}

// TestKfuncFilter: the module registers its kfuncs once, in the common hook,
// with a filter. It must admit the parser in sock_ops and sk_msg programs
// (whose per-type kfunc hooks do not exist on 6.12) and refuse the deferral
// kfunc outside cgroup/connect and the allocating parser in tracing programs.
func TestKfuncFilter(t *testing.T) {
	loadModule(t)
	spec, err := objs.LoadKmodFilter()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"filter_defer_from_bind4", "filter_defer_from_sendmsg4", "filter_parse_from_tracing"} {
		ps := spec.Programs[name]
		prog, err := ebpf.NewProgram(ps)
		if err == nil {
			prog.Close()
			t.Errorf("%s: loaded, want the verifier to refuse the kfunc", name)
			continue
		}
		var ve *ebpf.VerifierError
		if !errors.As(err, &ve) || !strings.Contains(fmt.Sprintf("%+v", ve), "is not allowed") {
			t.Errorf("%s: %v, want \"calling kernel function ... is not allowed\"", name, err)
		}
	}

	// sock_ops calls a module kfunc on real connects; sk_msg loads.
	var o objs.KmodHttpObjects
	if err := objs.LoadKmodHttpObjects(&o, nil); err != nil {
		t.Fatalf("sock_ops and sk_msg programs calling module kfuncs: %v", err)
	}
	defer o.Close()
	cg := testutil.NewCgroup(t)
	l, err := link.AttachCgroup(link.CgroupOptions{Path: cg.Path, Attach: ebpf.AttachCGroupSockOps, Program: o.KmodSockops})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ns := testutil.NewNetns(t, "kmf-")
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
	testutil.ServeIdentity(t, ln, "srv")
	var res testutil.DialResult
	testutil.RunHelper(t, "dial", testutil.DialArgs{Addr: ln.Addr().String(), Count: 2},
		testutil.HelperOptions{Netns: ns, Cgroup: cg}, &res)
	var calls uint64
	if err := o.SockopsCalls.Get(&calls); err != nil {
		t.Fatal(err)
	}
	if res.Identities["srv"] != 2 || calls != 2 {
		t.Fatalf("sock_ops kfunc calls: %d on %+v, want 2", calls, res)
	}
}

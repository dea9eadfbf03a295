package procstat

import (
	"math"
	"strings"
	"testing"
)

const sample = `cpu  1000 20 300 40000 50 6 700 8 0 0
cpu0 500 10 150 20000 25 3 350 4 0 0
cpu1 500 10 150 20000 25 3 350 4 0 0
intr 123
ctxt 456
`

func TestParse(t *testing.T) {
	s, err := Parse(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	want := Sample{User: 1000, Nice: 20, System: 300, Idle: 40000, IOWait: 50, IRQ: 6, SoftIRQ: 700, Steal: 8}
	if s != want {
		t.Fatalf("Parse = %+v, want %+v", s, want)
	}
}

func TestParseRejectsBadInput(t *testing.T) {
	for name, in := range map[string]string{
		"no cpu line":     "cpu0 1 2 3 4 5 6 7 8\nintr 1\n",
		"short line":      "cpu 1 2 3 4\n",
		"not a number":    "cpu 1 2 x 4 5 6 7 8\n",
		"empty":           "",
		"negative number": "cpu 1 2 -3 4 5 6 7 8\n",
	} {
		if _, err := Parse(strings.NewReader(in)); err == nil {
			t.Errorf("%s: Parse accepted %q", name, in)
		}
	}
}

func TestSubAndSeconds(t *testing.T) {
	before := Sample{User: 100, Nice: 0, System: 50, Idle: 1000, IOWait: 0, IRQ: 0, SoftIRQ: 10, Steal: 0}
	after := Sample{User: 250, Nice: 50, System: 150, Idle: 1100, IOWait: 10, IRQ: 2, SoftIRQ: 40, Steal: 5}
	d, err := after.Sub(before)
	if err != nil {
		t.Fatal(err)
	}
	c := d.Seconds()
	check := func(name string, got, want float64) {
		t.Helper()
		if math.Abs(got-want) > 1e-9 {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	check("user", c.User, 2.0) // (150 user + 50 nice) ticks
	check("system", c.System, 1.0)
	check("softirq", c.SoftIRQ, 0.3)
	check("irq", c.IRQ, 0.02)
	check("idle", c.Idle, 1.1)
	check("steal", c.Steal, 0.05)
	check("busy", c.Busy(), 2.0+1.0+0.3+0.02)
}

func TestSubRejectsBackwards(t *testing.T) {
	if _, err := (Sample{User: 1}).Sub(Sample{User: 2}); err == nil {
		t.Fatal("Sub accepted a counter going backwards")
	}
}

func TestReadLive(t *testing.T) {
	a, err := Read()
	if err != nil {
		t.Fatal(err)
	}
	if a.User+a.System+a.Idle == 0 {
		t.Fatalf("live /proc/stat has all-zero counters: %+v", a)
	}
	b, err := Read()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Sub(a); err != nil {
		t.Fatalf("two live samples: %v", err)
	}
}

func TestParseCgroupCPU(t *testing.T) {
	in := "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 0\nthrottled_usec 0\n"
	c, err := ParseCgroupCPU(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if c != (CgroupCPU{Usage: 1500, User: 1000, System: 500}) {
		t.Fatalf("ParseCgroupCPU = %+v", c)
	}
	for _, bad := range []string{"", "usage_usec 1\nuser_usec 2\n", "usage_usec x\nuser_usec 2\nsystem_usec 3\n"} {
		if _, err := ParseCgroupCPU(strings.NewReader(bad)); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
	d, err := (CgroupCPU{Usage: 30, User: 20, System: 10}).Sub(CgroupCPU{Usage: 10, User: 5, System: 5})
	if err != nil || d != (CgroupCPU{Usage: 20, User: 15, System: 5}) {
		t.Fatalf("Sub = %+v, %v", d, err)
	}
	if _, err := (CgroupCPU{Usage: 1}).Sub(CgroupCPU{Usage: 2}); err == nil {
		t.Fatal("Sub accepted a counter going backwards")
	}
}

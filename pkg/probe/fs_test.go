package probe

import (
	"strings"
	"testing"
)

func TestCgroup2MountFindsV2(t *testing.T) {
	p, err := Cgroup2Mount("")
	if err != nil {
		t.Fatalf("Cgroup2Mount: %v", err)
	}
	if err := isFS(p, 0x63677270); err != nil { // CGROUP2_SUPER_MAGIC
		t.Fatalf("%s: %v", p, err)
	}
}

func TestCgroup2MountRejectsWrongOverride(t *testing.T) {
	_, err := Cgroup2Mount("/proc")
	if err == nil || !strings.Contains(err.Error(), "cgroup2 path /proc") {
		t.Fatalf("got %v, want an error naming the bad path", err)
	}
}

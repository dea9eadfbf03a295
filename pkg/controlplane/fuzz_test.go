package controlplane

import (
	"errors"
	"os"
	"testing"
)

// FuzzLoad: the loader never panics, every rejection is a located FieldError,
// and whatever it accepts translates into resources that pass the daemon's
// own compile passes (the embedded server never pushes what kmeshd NACKs).
func FuzzLoad(f *testing.F) {
	for _, p := range []string{"../../deploy/standalone/mesh.yaml", "../../deploy/standalone/demo.yaml"} {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte(base))
	f.Add([]byte(httpCfg))
	f.Add([]byte("services: [{name: a, vips: ['::1'], ports: [{port: 1}]}]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Load("f.yaml", data)
		if err != nil {
			for _, e := range unwrapAll(err) {
				var fe *FieldError
				if !errors.As(e, &fe) {
					t.Fatalf("rejection is not a FieldError: %T %v", e, e)
				}
			}
			return
		}
		res := Translate(cfg, "host1")
		if err := selfCheck("f.yaml", cfg, res, "host1"); err != nil {
			t.Fatalf("accepted by the loader but rejected by the compiler: %v\n%s", err, data)
		}
	})
}

func unwrapAll(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, unwrapAll(e)...)
		}
		return out
	}
	return []error{err}
}

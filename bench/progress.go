package bench

import (
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/bench/report"
)

// progress prints one line per run: rewritten in place on a terminal,
// appended otherwise (CI logs).
type progress struct {
	w     io.Writer
	tty   bool
	total int
	start time.Time
}

func newProgress(w io.Writer, total int) *progress {
	p := &progress{w: w, total: total, start: time.Now()}
	if f, ok := w.(*os.File); ok {
		_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
		p.tty = err == nil
	}
	return p
}

func (p *progress) step(i, rep, reps int, pt report.Point, scenario string) {
	if p.w == nil {
		return
	}
	el := time.Since(p.start)
	eta := "?"
	if i > 0 {
		eta = (el / time.Duration(i) * time.Duration(p.total-i)).Round(time.Second).String()
	}
	line := fmt.Sprintf("[%*d/%d] %3.0f%%  rep %d/%d  %-26s %-18s elapsed %s, eta %s",
		len(fmt.Sprint(p.total)), i+1, p.total, 100*float64(i)/float64(p.total), rep, reps, pt, scenario,
		el.Round(time.Second), eta)
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[K%s", line)
	} else {
		fmt.Fprintln(p.w, line)
	}
}

func (p *progress) done() {
	if p.w == nil {
		return
	}
	if p.tty {
		fmt.Fprintln(p.w)
	}
	fmt.Fprintf(p.w, "%d runs in %s\n", p.total, time.Since(p.start).Round(time.Second))
}

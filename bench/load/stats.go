package load

import (
	"math"
	"slices"
	"time"
)

// Percentile returns the nearest-rank percentile p (0 < p <= 100) of sorted:
// the smallest sample such that at least p % of the samples are <= it. No
// interpolation, so every reported value is a latency that was observed.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	if p <= 0 {
		return sorted[0]
	}
	// The epsilon keeps float error (99.9/100*1000 = 999.0000000000001) from
	// moving the rank up by one.
	rank := int(math.Ceil(p/100*float64(len(sorted)) - 1e-9))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

// Summarize sorts samples in place and returns their latency summary.
func Summarize(samples []time.Duration) Latency {
	if len(samples) == 0 {
		return Latency{}
	}
	slices.Sort(samples)
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	var sum float64
	for _, s := range samples {
		sum += us(s)
	}
	return Latency{
		P50:  us(Percentile(samples, 50)),
		P90:  us(Percentile(samples, 90)),
		P99:  us(Percentile(samples, 99)),
		P999: us(Percentile(samples, 99.9)),
		Min:  us(samples[0]),
		Max:  us(samples[len(samples)-1]),
		Mean: sum / float64(len(samples)),
	}
}

package main

import (
	"math"
	"time"
)

// hist is a log-linear latency histogram: 16 sub-buckets per power of two of
// microseconds, so any quantile is within about 6% and histograms from several
// processes merge by adding counts.
type hist struct {
	Counts []uint64 `json:"counts"`
	N      uint64   `json:"n"`
	Max    int64    `json:"max_us"`
}

const histSub = 16

func newHist() *hist { return &hist{Counts: make([]uint64, 64*histSub)} }

func bucketOf(us int64) int {
	if us < histSub {
		return int(max(us, 0))
	}
	exp := 63 - leadingZeros(uint64(us)) // us >= 16: exp >= 4
	sub := int((us >> (exp - 4)) & (histSub - 1))
	return (exp-3)*histSub + sub
}

func lowerBound(b int) int64 {
	if b < histSub {
		return int64(b)
	}
	exp := b/histSub + 3
	sub := int64(b % histSub)
	return (histSub + sub) << (exp - 4)
}

func leadingZeros(x uint64) int {
	n := 0
	for i := 63; i >= 0 && x&(1<<uint(i)) == 0; i-- {
		n++
	}
	return n
}

func (h *hist) add(d time.Duration) {
	us := d.Microseconds()
	b := bucketOf(us)
	if b >= len(h.Counts) {
		b = len(h.Counts) - 1
	}
	h.Counts[b]++
	h.N++
	h.Max = max(h.Max, us)
}

func (h *hist) merge(o *hist) {
	for i, c := range o.Counts {
		h.Counts[i] += c
	}
	h.N += o.N
	h.Max = max(h.Max, o.Max)
}

// quantile returns the q-quantile (0..1), NaN when empty.
func (h *hist) quantile(q float64) time.Duration {
	if h.N == 0 {
		return time.Duration(math.NaN())
	}
	rank := uint64(math.Ceil(q * float64(h.N)))
	if rank >= h.N {
		return time.Duration(h.Max) * time.Microsecond
	}
	var seen uint64
	for b, c := range h.Counts {
		seen += c
		if seen >= rank && c > 0 {
			return time.Duration(min(lowerBound(b), h.Max)) * time.Microsecond
		}
	}
	return time.Duration(h.Max) * time.Microsecond
}

package main

import (
	"testing"
	"time"
)

func TestHistQuantiles(t *testing.T) {
	h := newHist()
	for i := 1; i <= 10000; i++ {
		h.add(time.Duration(i) * time.Microsecond)
	}
	for _, tt := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 5000 * time.Microsecond}, {0.99, 9900 * time.Microsecond}, {1, 10000 * time.Microsecond}} {
		got := h.quantile(tt.q)
		if got < tt.want*93/100 || got > tt.want {
			t.Errorf("q%.2f: got %v, want within 7%% below %v", tt.q, got, tt.want)
		}
	}
	o := newHist()
	o.add(time.Second)
	h.merge(o)
	if h.N != 10001 || h.quantile(1) != time.Second {
		t.Errorf("merge: got n=%d max=%v", h.N, h.quantile(1))
	}
	for us := int64(0); us < 1<<20; us += 7 {
		if b := bucketOf(us); lowerBound(b) > us || (b+1 < len(h.Counts) && lowerBound(b+1) <= us) {
			t.Fatalf("bucket %d of %dus spans [%d, %d)", b, us, lowerBound(b), lowerBound(b+1))
		}
	}
}

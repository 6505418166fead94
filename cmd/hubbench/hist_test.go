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

func TestField(t *testing.T) {
	line := []byte(`{"type":"message","room":"r","data":{"p":-3,"s":42,"t":1700000000000000000,"x":"y"}}`)
	for _, tt := range []struct {
		key  string
		want int64
		ok   bool
	}{{`"p":`, -3, true}, {`"s":`, 42, true}, {`"t":`, 1700000000000000000, true}, {`"q":`, 0, false}} {
		if got, ok := field(line, tt.key); got != tt.want || ok != tt.ok {
			t.Errorf("field %s: got %d, %v; want %d, %v", tt.key, got, ok, tt.want, tt.ok)
		}
	}
}

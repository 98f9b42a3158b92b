package loadgen

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestBucketsAreContiguousAndTight(t *testing.T) {
	prevHi := uint64(0)
	for i := 0; i < numBuckets; i++ {
		lo, hi := bucketBounds(i)
		if i > 0 && lo != prevHi+1 {
			t.Fatalf("bucket %d starts at %d, previous ended at %d", i, lo, prevHi)
		}
		if bucketOf(lo) != i || bucketOf(hi) != i {
			t.Fatalf("bucket %d [%d,%d] maps to %d/%d", i, lo, hi, bucketOf(lo), bucketOf(hi))
		}
		if lo > 0 && float64(hi-lo)/float64(lo) > 1.0/subBuckets {
			t.Fatalf("bucket %d [%d,%d] wider than 1/%d", i, lo, hi, subBuckets)
		}
		prevHi = hi
	}
	if prevHi != math.MaxUint64 {
		t.Fatalf("last bucket ends at %d, want MaxUint64", prevHi)
	}
}

func TestQuantilesExactForSmallValues(t *testing.T) {
	var h Histogram
	for v := 1; v <= 100; v++ {
		h.Record(time.Duration(v))
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.01, 1}, {0.5, 50}, {0.99, 99}, {0.999, 100}, {1, 100}} {
		if got := h.Quantile(c.q); got != c.want {
			t.Errorf("q%v = %d, want %d", c.q, got, c.want)
		}
	}
	if h.Count() != 100 || h.Max() != 100 || h.Mean() != 50 {
		t.Errorf("count %d max %d mean %d", h.Count(), h.Max(), h.Mean())
	}
}

// Quantiles of random latencies match the exact nearest-rank quantiles of
// the same values within the histogram's resolution, also after merging.
func TestQuantilesMatchSortedSample(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var parts [4]Histogram
	var all []time.Duration
	for i := 0; i < 100000; i++ {
		// Log-normal around 1 ms with a long tail, like request latencies.
		d := time.Duration(math.Exp(rng.NormFloat64()*0.8) * float64(time.Millisecond))
		all = append(all, d)
		parts[i%4].Record(d)
	}
	var h Histogram
	for i := range parts {
		h.Merge(&parts[i])
	}
	slices.Sort(all)
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		exact := all[int(math.Ceil(q*float64(len(all))))-1]
		got := h.Quantile(q)
		if got < exact || float64(got-exact) > float64(exact)/subBuckets {
			t.Errorf("q%v = %v, exact %v: off by more than 1/%d", q, got, exact, subBuckets)
		}
	}
	if h.Max() != all[len(all)-1] {
		t.Errorf("max %v, want %v", h.Max(), all[len(all)-1])
	}
	s := h.Summary()
	if s.Count != int64(len(all)) || s.P50 > s.P99 || s.P99 > s.P999 || s.P999 > s.Max {
		t.Errorf("summary out of order: %+v", s)
	}
}

func TestEmptyHistogram(t *testing.T) {
	var h Histogram
	if h.Quantile(0.5) != 0 || h.Mean() != 0 || h.Max() != 0 || h.Count() != 0 {
		t.Fatal("empty histogram should report zeros")
	}
	h.Merge(&Histogram{})
	h.Record(-5)
	if h.Count() != 1 || h.Quantile(1) != 0 {
		t.Fatal("a negative duration counts as 0")
	}
}

package loadgen

import (
	"math"
	"math/bits"
	"time"
)

// The histogram is log-linear (HDR-like): values below 2*subBuckets are
// counted exactly, larger ones in buckets of width 2^shift that keep the top
// subBits+1 bits, so a recorded value is known to within 1/subBuckets
// (0.8 %) whatever its size, in fixed memory.
const (
	subBits    = 7
	subBuckets = 1 << subBits // 128
	// numBuckets covers every uint64: the largest shift is 64-(subBits+1).
	numBuckets = (64-subBits-1)*subBuckets + 2*subBuckets
)

// Histogram records durations (in nanoseconds) with a relative error below
// 1 %. The zero value is ready to use. It is not safe for concurrent use:
// give each goroutine its own and Merge them.
type Histogram struct {
	counts   []uint64
	n        uint64
	sum      float64
	min, max uint64
}

func bucketOf(v uint64) int {
	if v < 2*subBuckets {
		return int(v)
	}
	shift := bits.Len64(v) - (subBits + 1)
	return shift*subBuckets + int(v>>uint(shift))
}

// bucketBounds returns the smallest and largest value counted in bucket i.
func bucketBounds(i int) (lo, hi uint64) {
	if i < 2*subBuckets {
		return uint64(i), uint64(i)
	}
	shift := uint(i/subBuckets - 1)
	m := uint64(i - int(shift)*subBuckets)
	lo = m << shift
	return lo, lo + (uint64(1) << shift) - 1
}

// Record adds one duration; negative durations count as 0.
func (h *Histogram) Record(d time.Duration) {
	if h.counts == nil {
		h.counts = make([]uint64, numBuckets)
	}
	v := uint64(0)
	if d > 0 {
		v = uint64(d)
	}
	h.counts[bucketOf(v)]++
	if h.n == 0 || v < h.min {
		h.min = v
	}
	if v > h.max {
		h.max = v
	}
	h.n++
	h.sum += float64(v)
}

// Merge adds every value recorded in o.
func (h *Histogram) Merge(o *Histogram) {
	if o == nil || o.n == 0 {
		return
	}
	if h.counts == nil {
		h.counts = make([]uint64, numBuckets)
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	if o.max > h.max {
		h.max = o.max
	}
	h.n += o.n
	h.sum += o.sum
}

// Count is the number of recorded values.
func (h *Histogram) Count() int64 { return int64(h.n) }

// Max is the largest recorded value (exact).
func (h *Histogram) Max() time.Duration { return time.Duration(h.max) }

// Mean is the arithmetic mean of the recorded values (exact).
func (h *Histogram) Mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return time.Duration(h.sum / float64(h.n))
}

// Quantile returns the value at quantile q (0 < q <= 1) by the nearest-rank
// method: the smallest recorded value v such that at least q of all values
// are <= v. It returns the upper edge of v's bucket (never more than the
// maximum recorded), so it errs high, by less than 1 %. It is 0 when nothing
// was recorded.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	rank = max(rank, 1)
	rank = min(rank, h.n)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			_, hi := bucketBounds(i)
			hi = max(min(hi, h.max), h.min)
			return time.Duration(hi)
		}
	}
	return time.Duration(h.max)
}

// Summary is the digest of a Histogram that reports print.
type Summary struct {
	Count int64         `json:"count"`
	Mean  time.Duration `json:"mean_ns"`
	P50   time.Duration `json:"p50_ns"`
	P99   time.Duration `json:"p99_ns"`
	P999  time.Duration `json:"p999_ns"`
	Max   time.Duration `json:"max_ns"`
}

// Summary returns count, mean, p50, p99, p99.9 and max.
func (h *Histogram) Summary() Summary {
	return Summary{
		Count: h.Count(),
		Mean:  h.Mean(),
		P50:   h.Quantile(0.50),
		P99:   h.Quantile(0.99),
		P999:  h.Quantile(0.999),
		Max:   h.Max(),
	}
}

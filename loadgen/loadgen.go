// Package loadgen is the load generator behind `mbox bench` and the
// MysteryBox-versus-etcd comparison in scripts/bench.
//
// A Target is a system under test reduced to three operations — Write,
// Read (linearizable) and StaleRead — on a key space of small integers, so
// the same client code drives any store: MysteryBox (see NewMysteryBox) or,
// in scripts/bench, etcd. Run executes one Scenario against a Target:
//
//   - closed loop (Rate 0): Clients goroutines each issue the next operation
//     as soon as the previous one answered; the result is the throughput the
//     system sustains at that concurrency, and its latency there;
//   - open loop (Rate > 0): operations are scheduled at a fixed total rate
//     and each one's latency is measured from its intended start, not from
//     when a free client got to send it, so a stall shows up as the queueing
//     delay a real user would see (no coordinated omission).
//
// Each run has a warm-up that is not recorded, then a measured window.
// Latencies go into per-client log-linear histograms (Histogram, < 1 %
// error) that are merged at the end; a Sampler (ProcSampler reads
// /proc/<pid>/stat) measures the servers' CPU time over the same window.
package loadgen

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// Target is a system under test. client is the index (from 0) of the
// calling client goroutine, so an implementation can pin each client to a
// connection; key is in [0, keys) of the Prepare call. All methods must be
// safe for concurrent use.
type Target interface {
	// Write stores a new value under key (for MysteryBox: a new version of
	// the key's secret).
	Write(ctx context.Context, client, key int) error
	// Read reads key's current value with linearizable consistency.
	Read(ctx context.Context, client, key int) error
	// StaleRead reads key's value from whichever node answers, without a
	// leadership check (etcd: a serializable read).
	StaleRead(ctx context.Context, client, key int) error
}

// Preparer is implemented by targets that need their key space created
// before reads can succeed. Prepare writes every key in [0, keys) once.
type Preparer interface {
	Prepare(ctx context.Context, keys int) error
}

// Op is the kind of operation a scenario issues.
type Op int

// Operations.
const (
	OpWrite     Op = iota // Target.Write
	OpRead                // Target.Read (linearizable)
	OpStaleRead           // Target.StaleRead
	OpMix                 // Read with probability Scenario.ReadFraction, else Write
)

var opNames = [...]string{"write", "read", "stale-read", "mix"}

func (o Op) String() string {
	if o >= 0 && int(o) < len(opNames) {
		return opNames[o]
	}
	return fmt.Sprintf("op(%d)", int(o))
}

// MarshalText makes an Op print by name in JSON.
func (o Op) MarshalText() ([]byte, error) { return []byte(o.String()), nil }

// UnmarshalText parses a name written by MarshalText.
func (o *Op) UnmarshalText(b []byte) error {
	v, err := ParseOp(string(b))
	if err == nil {
		*o = v
	}
	return err
}

// ParseOp is the inverse of Op.String.
func ParseOp(s string) (Op, error) {
	for i, n := range opNames {
		if n == s {
			return Op(i), nil
		}
	}
	return 0, fmt.Errorf("unknown operation %q (want write, read, stale-read or mix)", s)
}

// Scenario is one measured run.
type Scenario struct {
	// Name labels the run in reports; Run fills it from the other fields
	// when empty.
	Name string `json:"name"`
	// Op is what the clients issue; OpMix draws Read or Write per operation.
	Op Op `json:"op"`
	// ReadFraction is the share of reads in an OpMix scenario (0.9: 90/10).
	ReadFraction float64 `json:"read_fraction,omitempty"`
	// Clients is the number of concurrent client goroutines (>= 1).
	Clients int `json:"clients"`
	// Rate > 0 makes the run open-loop at this many operations per second
	// in total; Clients then bounds how many can be in flight.
	Rate float64 `json:"rate,omitempty"`
	// RateFraction, for suites: the open-loop rate as a share of a measured
	// maximum, which the caller resolves into Rate (see ResolveRate).
	RateFraction float64 `json:"rate_fraction,omitempty"`
	// Warmup runs the load without recording it; Duration is the measured
	// window.
	Warmup   time.Duration `json:"warmup_ns"`
	Duration time.Duration `json:"duration_ns"`
}

// Label returns Name, or a name derived from the other fields.
func (s Scenario) Label() string {
	if s.Name != "" {
		return s.Name
	}
	n := s.Op.String()
	if s.Op == OpMix {
		n = fmt.Sprintf("mix-%.0f/%.0f", 100*s.ReadFraction, 100*(1-s.ReadFraction))
	}
	n = fmt.Sprintf("%s c=%d", n, s.Clients)
	if s.Rate > 0 {
		n += fmt.Sprintf(" @%.0f/s", s.Rate)
	}
	return n
}

// Config holds what is common to the scenarios of one target.
type Config struct {
	// Keys is the size of the key space; each operation picks a key
	// uniformly at random. Default 1000.
	Keys int
	// OpTimeout bounds each operation. Default 10s.
	OpTimeout time.Duration
	// Sampler, when set, measures the servers' CPU time over the measured
	// window (Result.CPU).
	Sampler Sampler
	// Seed makes the key and operation choices reproducible; 0 picks one.
	Seed uint64

	clock clock // tests replace the wall clock
}

// Result is the outcome of one scenario.
type Result struct {
	Scenario Scenario `json:"scenario"`
	// Ops is the number of operations that succeeded in the measured window;
	// Errors the number that failed (not in the latencies).
	Ops    int64 `json:"ops"`
	Errors int64 `json:"errors"`
	// FirstError is the first error seen, for the report.
	FirstError string `json:"first_error,omitempty"`
	// Elapsed is the measured window, from its start until the last
	// operation started in it answered.
	Elapsed time.Duration `json:"elapsed_ns"`
	// Throughput is Ops / Elapsed, in operations per second.
	Throughput float64 `json:"ops_per_sec"`
	// Latency covers every successful operation; ByOp splits it by kind.
	Latency Summary            `json:"latency"`
	ByOp    map[string]Summary `json:"by_op,omitempty"`
	// Missed counts, in an open-loop run, the operations scheduled in the
	// measured window that no client was free to start before it ended: the
	// target rate was not reached.
	Missed int64 `json:"missed,omitempty"`
	// CPU is the CPU time (user+system, seconds) each server used during the
	// measured window, in the Sampler's order; nil without a Sampler.
	CPU       []float64 `json:"cpu_seconds,omitempty"`
	CPULabels []string  `json:"cpu_labels,omitempty"`
	CPUError  string    `json:"cpu_error,omitempty"`
}

// CPUPer1kOps returns the CPU seconds per 1,000 operations of each server.
func (r *Result) CPUPer1kOps() []float64 {
	if r.Ops == 0 || len(r.CPU) == 0 {
		return nil
	}
	out := make([]float64, len(r.CPU))
	for i, c := range r.CPU {
		out[i] = c / float64(r.Ops) * 1000
	}
	return out
}

// ResolveRate returns s with Rate set from RateFraction and maxThroughput
// when s asks for a fraction and has no explicit rate.
func ResolveRate(s Scenario, maxThroughput float64) Scenario {
	if s.Rate <= 0 && s.RateFraction > 0 && maxThroughput > 0 {
		s.Rate = math.Max(1, math.Round(s.RateFraction*maxThroughput))
	}
	return s
}

// Run executes scenario s against t and returns what it measured. It
// returns an error only when the scenario is invalid or ctx ends; failed
// operations are counted in Result.Errors.
func Run(ctx context.Context, t Target, s Scenario, cfg Config) (*Result, error) {
	if s.Clients < 1 {
		return nil, errors.New("loadgen: scenario needs at least 1 client")
	}
	if s.Duration <= 0 {
		return nil, errors.New("loadgen: scenario needs a positive duration")
	}
	if s.Op < OpWrite || s.Op > OpMix {
		return nil, fmt.Errorf("loadgen: unknown operation %d", s.Op)
	}
	if s.Op == OpMix && (s.ReadFraction < 0 || s.ReadFraction > 1) {
		return nil, errors.New("loadgen: read fraction must be within [0, 1]")
	}
	if s.Rate < 0 || s.Warmup < 0 {
		return nil, errors.New("loadgen: negative rate or warm-up")
	}
	if s.RateFraction > 0 && s.Rate == 0 {
		return nil, errors.New("loadgen: rate fraction not resolved into a rate (ResolveRate)")
	}
	if cfg.Keys <= 0 {
		cfg.Keys = 1000
	}
	if cfg.OpTimeout <= 0 {
		cfg.OpTimeout = 10 * time.Second
	}
	clk := cfg.clock
	if clk == nil {
		clk = wallClock{}
	}
	seed := cfg.Seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	s.Name = s.Label()

	r := &runner{t: t, s: s, cfg: cfg, clk: clk}
	r.start = clk.Now()
	r.measureStart = r.start.Add(s.Warmup)
	r.end = r.measureStart.Add(s.Duration)
	if s.Rate > 0 {
		r.interval = float64(time.Second) / s.Rate
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var cpuStart []float64
	var cpuErr error
	samplerDone := make(chan struct{})
	if cfg.Sampler != nil {
		go func() {
			defer close(samplerDone)
			clk.SleepUntil(ctx, r.measureStart)
			cpuStart, cpuErr = cfg.Sampler.Sample()
		}()
	} else {
		close(samplerDone)
	}

	workers := make([]*worker, s.Clients)
	var wg sync.WaitGroup
	for i := range workers {
		w := &worker{id: i, rng: rand.New(rand.NewPCG(seed, uint64(i)))}
		workers[i] = w
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.loop(ctx, w)
		}()
	}
	wg.Wait()
	lastDone := clk.Now()
	<-samplerDone
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	res := &Result{Scenario: s, ByOp: map[string]Summary{}}
	var all Histogram
	byOp := map[Op]*Histogram{}
	for _, w := range workers {
		all.Merge(&w.all)
		for op := range w.byOp {
			if w.byOp[op].Count() == 0 {
				continue
			}
			if byOp[Op(op)] == nil {
				byOp[Op(op)] = &Histogram{}
			}
			byOp[Op(op)].Merge(&w.byOp[op])
		}
		res.Errors += w.errors
		if res.FirstError == "" && w.firstErr != nil {
			res.FirstError = w.firstErr.Error()
		}
	}
	for op, h := range byOp {
		res.ByOp[op.String()] = h.Summary()
	}
	res.Latency = all.Summary()
	res.Ops = all.Count()
	res.Elapsed = r.end.Sub(r.measureStart)
	if lastDone.After(r.end) {
		res.Elapsed = lastDone.Sub(r.measureStart)
	}
	res.Throughput = float64(res.Ops) / res.Elapsed.Seconds()
	if s.Rate > 0 {
		// Slots of the schedule that fall inside the measured window.
		first := int64(math.Ceil(float64(r.measureStart.Sub(r.start)) / r.interval))
		last := int64(math.Ceil(float64(r.end.Sub(r.start))/r.interval)) - 1
		issued := r.issuedInWindow.Load()
		res.Missed = max(0, last-first+1-issued)
	}
	if cfg.Sampler != nil {
		res.CPULabels = cfg.Sampler.Labels()
		cpuEnd, err := cfg.Sampler.Sample()
		switch {
		case cpuErr != nil:
			res.CPUError = cpuErr.Error()
		case err != nil:
			res.CPUError = err.Error()
		case len(cpuStart) != len(cpuEnd):
			res.CPUError = "sampler returned a different number of servers"
		default:
			res.CPU = make([]float64, len(cpuEnd))
			for i := range cpuEnd {
				res.CPU[i] = cpuEnd[i] - cpuStart[i]
			}
		}
	}
	return res, nil
}

type runner struct {
	t   Target
	s   Scenario
	cfg Config
	clk clock

	start, measureStart, end time.Time
	// interval is the open-loop spacing of operations in nanoseconds.
	interval float64
	// next is the next open-loop slot to take.
	next           atomic.Int64
	issuedInWindow atomic.Int64
}

type worker struct {
	id       int
	rng      *rand.Rand
	all      Histogram
	byOp     [3]Histogram // indexed by OpWrite, OpRead, OpStaleRead
	errors   int64
	firstErr error
}

// loop issues operations until the end of the measured window.
func (r *runner) loop(ctx context.Context, w *worker) {
	for ctx.Err() == nil {
		now := r.clk.Now()
		if !now.Before(r.end) {
			return
		}
		intended := now
		if r.interval > 0 {
			slot := r.next.Add(1) - 1
			intended = r.start.Add(time.Duration(float64(slot) * r.interval))
			if !intended.Before(r.end) {
				return
			}
			if intended.After(now) {
				r.clk.SleepUntil(ctx, intended)
			}
		}
		measured := !intended.Before(r.measureStart)
		if measured && r.interval > 0 {
			r.issuedInWindow.Add(1)
		}
		op := r.s.Op
		if op == OpMix {
			op = OpWrite
			if w.rng.Float64() < r.s.ReadFraction {
				op = OpRead
			}
		}
		key := w.rng.IntN(r.cfg.Keys)
		err := r.do(ctx, op, w.id, key)
		done := r.clk.Now()
		if !measured {
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			w.errors++
			if w.firstErr == nil {
				w.firstErr = fmt.Errorf("%s: %w", op, err)
			}
			continue
		}
		lat := done.Sub(intended)
		w.all.Record(lat)
		w.byOp[op].Record(lat)
	}
}

func (r *runner) do(ctx context.Context, op Op, client, key int) error {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.OpTimeout)
	defer cancel()
	switch op {
	case OpWrite:
		return r.t.Write(ctx, client, key)
	case OpRead:
		return r.t.Read(ctx, client, key)
	default:
		return r.t.StaleRead(ctx, client, key)
	}
}

// clock is the time source of a run; tests use a simulated one.
type clock interface {
	Now() time.Time
	// SleepUntil returns at t or when ctx ends, whichever is first.
	SleepUntil(ctx context.Context, t time.Time)
}

type wallClock struct{}

func (wallClock) Now() time.Time { return time.Now() }

func (wallClock) SleepUntil(ctx context.Context, t time.Time) {
	d := time.Until(t)
	if d <= 0 {
		return
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
	case <-tm.C:
	}
}

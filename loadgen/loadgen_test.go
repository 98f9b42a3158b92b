package loadgen

import (
	"context"
	"errors"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock is simulated time: SleepUntil jumps forward, and the fake
// target advances it by its service time. Only single-client runs use it,
// so the order of events is deterministic.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) SleepUntil(_ context.Context, t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.After(c.now) {
		c.now = t
	}
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// serviceTarget takes a fixed time per operation on the fake clock and
// counts what it was asked.
type serviceTarget struct {
	clk                 *fakeClock
	service             time.Duration
	writes, reads, sts  atomic.Int64
	failEvery, numCalls atomic.Int64
}

func (s *serviceTarget) op(counter *atomic.Int64) error {
	s.clk.advance(s.service)
	counter.Add(1)
	n := s.numCalls.Add(1)
	if f := s.failEvery.Load(); f > 0 && n%f == 0 {
		return errors.New("boom")
	}
	return nil
}

func (s *serviceTarget) Write(context.Context, int, int) error     { return s.op(&s.writes) }
func (s *serviceTarget) Read(context.Context, int, int) error      { return s.op(&s.reads) }
func (s *serviceTarget) StaleRead(context.Context, int, int) error { return s.op(&s.sts) }

func newFake(service time.Duration) (*fakeClock, *serviceTarget) {
	clk := &fakeClock{now: time.Unix(1000, 0)}
	return clk, &serviceTarget{clk: clk, service: service}
}

// Below capacity, an open-loop run issues exactly rate × duration
// operations, each starting on schedule, so latency is the service time.
func TestOpenLoopBelowCapacityKeepsSchedule(t *testing.T) {
	clk, tgt := newFake(2 * time.Millisecond)
	res, err := Run(context.Background(), tgt, Scenario{Op: OpWrite, Clients: 1, Rate: 100, Duration: time.Second}, Config{clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	if res.Ops != 100 || res.Missed != 0 || res.Errors != 0 {
		t.Fatalf("ops %d missed %d errors %d, want 100/0/0", res.Ops, res.Missed, res.Errors)
	}
	if res.Latency.P50 != 2*time.Millisecond || res.Latency.Max != 2*time.Millisecond {
		t.Fatalf("latency %+v, want 2ms throughout", res.Latency)
	}
	if math.Abs(res.Throughput-100) > 0.5 {
		t.Fatalf("throughput %.1f, want 100", res.Throughput)
	}
}

// Above capacity, latency is measured from each operation's intended
// start: with 20 ms per operation and one every 10 ms, operation k starts
// at 20k ms but was due at 10k ms, so it waits 10k ms more than the
// service time, and half of the schedule is never started (Missed).
func TestOpenLoopLatencyFromIntendedStart(t *testing.T) {
	clk, tgt := newFake(20 * time.Millisecond)
	res, err := Run(context.Background(), tgt, Scenario{Op: OpWrite, Clients: 1, Rate: 100, Duration: time.Second}, Config{clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	// Issued while now < 1s: starts at 0, 20, ..., 980 ms: 50 operations.
	if res.Ops != 50 {
		t.Fatalf("ops %d, want 50", res.Ops)
	}
	if res.Missed != 50 {
		t.Fatalf("missed %d, want 50 of the 100 scheduled", res.Missed)
	}
	// Last one: due at 490 ms, done at 1000 ms.
	if want := 510 * time.Millisecond; res.Latency.Max != want {
		t.Fatalf("max latency %v, want %v (from the intended start)", res.Latency.Max, want)
	}
	// A closed loop would report 20 ms for every operation.
	if res.Latency.P50 < 250*time.Millisecond {
		t.Fatalf("p50 %v: queueing delay not counted", res.Latency.P50)
	}
}

// A closed loop issues the next operation as soon as the previous answered
// and measures latency from the actual start.
func TestClosedLoop(t *testing.T) {
	clk, tgt := newFake(10 * time.Millisecond)
	res, err := Run(context.Background(), tgt, Scenario{Op: OpRead, Clients: 1, Duration: time.Second}, Config{clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	if res.Ops != 100 || res.Latency.P99 != 10*time.Millisecond || tgt.reads.Load() != 100 {
		t.Fatalf("ops %d p99 %v reads %d, want 100, 10ms, 100", res.Ops, res.Latency.P99, tgt.reads.Load())
	}
	if res.Missed != 0 {
		t.Fatalf("missed %d in a closed loop", res.Missed)
	}
}

// Operations of the warm-up are issued but not recorded; open-loop slots
// of the warm-up do not count as missed.
func TestWarmupNotRecorded(t *testing.T) {
	clk, tgt := newFake(5 * time.Millisecond)
	res, err := Run(context.Background(), tgt, Scenario{Op: OpStaleRead, Clients: 1, Rate: 100, Warmup: 500 * time.Millisecond, Duration: time.Second}, Config{clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	if tgt.sts.Load() != 150 || res.Ops != 100 || res.Missed != 0 {
		t.Fatalf("issued %d recorded %d missed %d, want 150/100/0", tgt.sts.Load(), res.Ops, res.Missed)
	}
	if res.Elapsed != time.Second {
		t.Fatalf("elapsed %v, want the 1s window", res.Elapsed)
	}
}

func TestErrorsCountedNotTimed(t *testing.T) {
	clk, tgt := newFake(10 * time.Millisecond)
	tgt.failEvery.Store(4)
	res, err := Run(context.Background(), tgt, Scenario{Op: OpWrite, Clients: 1, Duration: time.Second}, Config{clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	if res.Errors != 25 || res.Ops != 75 || res.FirstError != "write: boom" {
		t.Fatalf("errors %d ops %d first %q", res.Errors, res.Ops, res.FirstError)
	}
}

func TestMixDrawsReadFraction(t *testing.T) {
	clk, tgt := newFake(time.Millisecond)
	res, err := Run(context.Background(), tgt, Scenario{Op: OpMix, ReadFraction: 0.9, Clients: 1, Duration: 10 * time.Second}, Config{clock: clk, Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	r, w := tgt.reads.Load(), tgt.writes.Load()
	if r+w != 10000 || r < 8800 || r > 9200 {
		t.Fatalf("reads %d writes %d, want about 9000/1000", r, w)
	}
	if res.ByOp["read"].Count != r || res.ByOp["write"].Count != w {
		t.Fatalf("by op %+v", res.ByOp)
	}
	if res.Scenario.Name != "mix-90/10 c=1" {
		t.Fatalf("derived name %q", res.Scenario.Name)
	}
}

// With the wall clock and real goroutines: many clients share the open-loop
// schedule, so the total rate is what was asked, not rate × clients.
func TestOpenLoopWallClockSharedSchedule(t *testing.T) {
	var calls atomic.Int64
	tgt := funcTarget(func() error { calls.Add(1); time.Sleep(time.Millisecond); return nil })
	res, err := Run(context.Background(), tgt, Scenario{Op: OpWrite, Clients: 8, Rate: 200, Duration: 500 * time.Millisecond}, Config{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Ops < 95 || res.Ops > 101 || calls.Load() != res.Ops {
		t.Fatalf("ops %d calls %d, want 100", res.Ops, calls.Load())
	}
}

type funcTarget func() error

func (f funcTarget) Write(context.Context, int, int) error     { return f() }
func (f funcTarget) Read(context.Context, int, int) error      { return f() }
func (f funcTarget) StaleRead(context.Context, int, int) error { return f() }

type fixedSampler struct{ calls int }

func (s *fixedSampler) Sample() ([]float64, error) {
	s.calls++
	return []float64{float64(s.calls), 2 * float64(s.calls)}, nil
}
func (s *fixedSampler) Labels() []string { return []string{"a", "b"} }

func TestSamplerAndCPUPer1k(t *testing.T) {
	tgt := funcTarget(func() error { time.Sleep(time.Millisecond); return nil })
	res, err := Run(context.Background(), tgt, Scenario{Op: OpWrite, Clients: 2, Duration: 100 * time.Millisecond}, Config{Sampler: &fixedSampler{}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.CPU) != 2 || res.CPU[0] != 1 || res.CPU[1] != 2 || res.CPULabels[1] != "b" {
		t.Fatalf("cpu %v labels %v", res.CPU, res.CPULabels)
	}
	per := res.CPUPer1kOps()
	if math.Abs(per[0]-1000/float64(res.Ops)) > 1e-9 {
		t.Fatalf("per 1k %v for %d ops", per, res.Ops)
	}
}

func TestInvalidScenarios(t *testing.T) {
	tgt := funcTarget(func() error { return nil })
	for _, s := range []Scenario{
		{Op: OpWrite, Clients: 0, Duration: time.Second},
		{Op: OpWrite, Clients: 1},
		{Op: Op(9), Clients: 1, Duration: time.Second},
		{Op: OpMix, ReadFraction: 2, Clients: 1, Duration: time.Second},
		{Op: OpWrite, Clients: 1, Duration: time.Second, RateFraction: 0.5},
	} {
		if _, err := Run(context.Background(), tgt, s, Config{}); err == nil {
			t.Errorf("%+v: no error", s)
		}
	}
}

func TestSuiteAndResolveRate(t *testing.T) {
	s := Suite(QuickTiming)
	if len(s) != 9 {
		t.Fatalf("%d scenarios", len(s))
	}
	open := s[len(s)-1]
	rs := []*Result{
		{Scenario: s[2], Throughput: 1000},
		{Scenario: s[3], Throughput: 3000},
		{Scenario: s[5], Throughput: 9000}, // a read: not a base
	}
	if got := ResolveRate(open, MaxWriteThroughput(rs)).Rate; got != 1500 {
		t.Fatalf("rate %v, want 1500", got)
	}
	for _, o := range []Op{OpWrite, OpRead, OpStaleRead, OpMix} {
		p, err := ParseOp(o.String())
		if err != nil || p != o {
			t.Fatalf("ParseOp(%q) = %v, %v", o, p, err)
		}
	}
}

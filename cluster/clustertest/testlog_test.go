package clustertest

import (
	"fmt"
	"reflect"
	"testing"
)

// logRecorder stands in for the test a node logs to.
type logRecorder struct {
	testing.TB
	lines []string
}

func (r *logRecorder) Logf(format string, args ...any) {
	r.lines = append(r.lines, fmt.Sprintf(format, args...))
}

// TestTestLogDropsWritesAfterTheTestEnds: a goroutine that outlives its
// node (memberlist's prober) may still log, and logging through a test that
// has completed panics the whole test binary.
func TestTestLogDropsWritesAfterTheTestEnds(t *testing.T) {
	rec := &logRecorder{TB: t}
	l := &testLog{t: rec}
	for _, line := range []string{"before", "end", "after"} {
		if line == "end" {
			l.end()
			continue
		}
		if n, err := l.Write([]byte(line)); n != len(line) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", line, n, err)
		}
	}
	if want := []string{"before"}; !reflect.DeepEqual(rec.lines, want) {
		t.Fatalf("logged %q, want %q", rec.lines, want)
	}
}

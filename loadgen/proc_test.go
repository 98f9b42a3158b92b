package loadgen

import (
	"os"
	"testing"
)

func TestParseProcStat(t *testing.T) {
	// A command name with spaces and parentheses; utime 250, stime 50.
	line := "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 12 0 1000 100000 200 18446744073709551615\n"
	got, err := parseProcStat(line)
	if err != nil || got != 3.0 {
		t.Fatalf("got %v, %v; want 3.0 s", got, err)
	}
	if _, err := parseProcStat("garbage"); err == nil {
		t.Fatal("no error for garbage")
	}
}

func TestProcSamplerSelf(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc")
	}
	s := &ProcSampler{PIDs: []int{os.Getpid()}, Names: []string{"self"}}
	v, err := s.Sample()
	if err != nil || len(v) != 1 || v[0] < 0 {
		t.Fatalf("sample %v, %v", v, err)
	}
	if s.Labels()[0] != "self" {
		t.Fatalf("labels %v", s.Labels())
	}
}

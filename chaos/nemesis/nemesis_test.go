package nemesis

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/mysterybox/mysterybox/chaos/proxy"
)

func TestCutBetween(t *testing.T) {
	got := cutBetween([]int{1}, []int{2, 3})
	want := []proxy.Link{{From: 1, To: 2}, {From: 1, To: 3}, {From: 2, To: 1}, {From: 3, To: 1}}
	if !slices.Equal(got, want) {
		t.Fatalf("cutBetween = %v, want %v", got, want)
	}
	// A bridge: left and right never talk, the middle talks to both.
	for _, l := range cutBetween([]int{1, 2}, []int{4, 5}) {
		if l.From == 3 || l.To == 3 {
			t.Fatalf("the bridge is cut: %v", l)
		}
	}
}

func TestDrawDealsEveryKindEachRound(t *testing.T) {
	n := New(Config{Seed: 7, Faults: []string{Kill, PauseLeader, SlowNet}}, nil, time.Time{})
	for round := 0; round < 3; round++ {
		seen := map[string]bool{}
		for range 3 {
			seen[n.draw()] = true
		}
		if len(seen) != 3 {
			t.Fatalf("round %d dealt %v", round, seen)
		}
	}
	if err := Validate([]string{"kill", "no-such-fault"}); err == nil {
		t.Fatal("Validate accepted an unknown fault")
	}
}

func TestLatestSnapshot(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"3-120-1000", "4-9000-2000", "5-9500-3000.tmp", "junk"} {
		p := filepath.Join(dir, "raft", "snapshots", name)
		if err := os.MkdirAll(p, 0o700); err != nil {
			t.Fatal(err)
		}
		if name != "junk" {
			if err := os.WriteFile(filepath.Join(p, "meta.json"), []byte("{}"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	if got := latestSnapshot(dir); got != 9000 {
		t.Fatalf("latestSnapshot = %d, want 9000", got)
	}
	if got := latestSnapshot(t.TempDir()); got != 0 {
		t.Fatalf("no snapshots: %d", got)
	}
}

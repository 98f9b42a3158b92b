package cluster

import (
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// fakeClock is a time source the test moves by hand.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

func newTestHold() (*logHold, *fakeClock) {
	clock := &fakeClock{t: time.Unix(1_000_000, 0)}
	h := newLogHold(hclog.NewNullLogger())
	h.now = clock.now
	return h, clock
}

func wantFloor(t *testing.T, h *logHold, want uint64, held bool) {
	t.Helper()
	got, ok := h.floor()
	if ok != held || (held && got != want) {
		t.Fatalf("floor = %d, %v; want %d, %v", got, ok, want, held)
	}
}

func TestLogHoldLastsWhileStreamingAndAGraceAfter(t *testing.T) {
	h, clock := newTestHold()
	wantFloor(t, h, 0, false)
	release100, _ := h.start(100)
	release50, drop50 := h.start(50)
	wantFloor(t, h, 50, true)

	clock.advance(time.Second)
	release50() // a 1 s stream: held for the minimum grace
	release50() // twice is harmless
	drop50()    // and so is a drop after it: the grace stands
	clock.advance(holdGraceMin - time.Millisecond)
	wantFloor(t, h, 50, true)
	clock.advance(time.Millisecond)
	wantFloor(t, h, 100, true) // the open stream still holds

	clock.advance(29 * time.Second)
	release100() // a 90 s stream (1 s + 1 min + 29 s): held four times that
	clock.advance(holdGraceFactor*90*time.Second - time.Millisecond)
	wantFloor(t, h, 100, true)
	clock.advance(time.Millisecond)
	wantFloor(t, h, 0, false)

	var none *logHold
	if _, ok := none.floor(); ok {
		t.Fatal("a nil hold holds")
	}
}

// A hold dropped (its stream never opened) ends at once, without grace,
// and a release after it does not bring it back.
func TestLogHoldDroppedEndsAtOnce(t *testing.T) {
	h, _ := newTestHold()
	release, drop := h.start(70)
	wantFloor(t, h, 70, true)
	drop()
	wantFloor(t, h, 0, false)
	release()
	wantFloor(t, h, 0, false)
}

func TestGapLogCompactionKeepsItsBoundAndHeldEntries(t *testing.T) {
	store, err := openStore(t.TempDir(), LogStoreWAL)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	h, clock := newTestHold()
	g := gapLog{LogStore: store, hold: h}
	if err := g.StoreLogs(entries(1, 100)); err != nil {
		t.Fatal(err)
	}
	span := func() (uint64, uint64) {
		first, _ := g.FirstIndex()
		last, _ := g.LastIndex()
		return first, last
	}
	// A compaction of the head keeps the entry at its bound.
	if err := g.DeleteRange(1, 20); err != nil {
		t.Fatal(err)
	}
	if first, last := span(); first != 20 || last != 100 {
		t.Fatalf("log %d..%d after compacting up to 20, want 20..100", first, last)
	}
	release, _ := h.start(40)
	// Compacting up to 90 keeps the held snapshot's entry 40 and what follows.
	if err := g.DeleteRange(20, 90); err != nil {
		t.Fatal(err)
	}
	if first, last := span(); first != 40 || last != 100 {
		t.Fatalf("log %d..%d after a held compaction, want 40..100", first, last)
	}
	// A hold below the log's head stops any compaction.
	h2, _ := h.start(10)
	if err := g.DeleteRange(40, 60); err != nil {
		t.Fatal(err)
	}
	if first, _ := span(); first != 40 {
		t.Fatalf("first index %d under a hold at 10, want 40", first)
	}
	h2()
	clock.advance(holdGraceMin)
	// Dropping a conflicting suffix is never held.
	if err := g.DeleteRange(95, 100); err != nil {
		t.Fatal(err)
	}
	if first, last := span(); first != 40 || last != 94 {
		t.Fatalf("log %d..%d after dropping the suffix 95..100, want 40..94", first, last)
	}
	var l raft.Log
	if err := g.GetLog(40, &l); err != nil || string(l.Data) != entryData(40) {
		t.Fatalf("held entry 40: %q, %v", l.Data, err)
	}
	// Dropping the whole log as a conflicting suffix is not held either.
	other, err := openStore(t.TempDir(), LogStoreWAL)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	g2 := gapLog{LogStore: other, hold: h}
	if err := g2.StoreLogs(entries(41, 60)); err != nil {
		t.Fatal(err)
	}
	if err := g2.DeleteRange(41, 60); err != nil {
		t.Fatal(err)
	}
	if last, _ := g2.LastIndex(); last != 0 {
		t.Fatalf("last index %d after dropping the whole log under a hold, want an empty log", last)
	}
	// Once the hold lapses, compaction goes as far as asked, bound kept.
	// Its stream was open for a minute, so it lapses four minutes after.
	release()
	clock.advance(holdGraceFactor*holdGraceMin - time.Millisecond)
	if err := g.DeleteRange(40, 90); err != nil {
		t.Fatal(err)
	}
	if first, _ := span(); first != 40 {
		t.Fatalf("first index %d before the hold lapsed, want 40", first)
	}
	clock.advance(time.Millisecond)
	if err := g.DeleteRange(40, 90); err != nil {
		t.Fatal(err)
	}
	if first, last := span(); first != 90 || last != 94 {
		t.Fatalf("log %d..%d after the hold lapsed, want 90..94", first, last)
	}
}

func TestOpenedSnapshotHoldsTheLogAfterIt(t *testing.T) {
	dataDir := t.TempDir()
	h, clock := newTestHold()
	s, err := newSnapshotStore(dataDir+"/raft", 2, openFakeCheckpoint, h, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	id, _ := keepCheckpoint(t, s, dataDir, 70, map[string]string{"a.sst": "a"})
	_, rc, err := s.Open(id)
	if err != nil {
		t.Fatal(err)
	}
	wantFloor(t, h, 70, true)
	rc.Close()
	wantFloor(t, h, 70, true) // the node still has to restore it
	clock.advance(holdGraceMin)
	wantFloor(t, h, 0, false)
}

package cluster

import (
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
)

// A node far behind is sent the leader's latest snapshot, then asks for the
// log entries after it. If the leader snapshots again meanwhile (every
// 30–60 s under writes) and more than --raft-trailing-logs entries were
// written since the snapshot being sent, hashicorp/raft compacts those
// entries away and the node, once it has restored the first snapshot,
// must be sent the next one: a 1M-version node took two installs and 46.6 s
// instead of one and ≈ 27 s, and under a sustained write load it could go
// on like that. logHold keeps them: while a snapshot is streamed, and for a
// while after (the node still has to restore it, then catch up from the
// log), compactions of the log's head keep that snapshot's own entry (the
// leader reads it for its next append to the node) and all after it.

const (
	// holdGraceMin and holdGraceFactor: how long a hold outlives its
	// stream, at least a minute and otherwise four times the stream's own
	// time (restoring took about twice as long as streaming at a million
	// versions).
	holdGraceMin    = time.Minute
	holdGraceFactor = 4
)

// logHold tracks the snapshots being sent (or just sent).
type logHold struct {
	mu     sync.Mutex
	now    func() time.Time
	logger hclog.Logger
	holds  map[*hold]struct{}
}

type hold struct {
	index uint64    // this entry and those after it are kept
	open  bool      // the stream is still being read
	until time.Time // once closed: when the hold lapses
}

func newLogHold(logger hclog.Logger) *logHold {
	return &logHold{now: time.Now, logger: logger, holds: map[*hold]struct{}{}}
}

// start holds the entries from index on until some time after release is
// called, or until drop is (the stream was never opened: no grace). Either
// is safe to call more than once, and the first call wins.
func (l *logHold) start(index uint64) (release, drop func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	h := &hold{index: index, open: true}
	l.holds[h] = struct{}{}
	started := l.now()
	var once sync.Once
	release = func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			now := l.now()
			h.open = false
			h.until = now.Add(max(holdGraceMin, holdGraceFactor*now.Sub(started)))
		})
	}
	drop = func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			delete(l.holds, h)
		})
	}
	return release, drop
}

// floor returns the lowest held index, if any.
func (l *logHold) floor() (uint64, bool) {
	if l == nil {
		return 0, false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	var low uint64
	found := false
	for h := range l.holds {
		if !h.open && !now.Before(h.until) {
			delete(l.holds, h)
			continue
		}
		if !found || h.index < low {
			low, found = h.index, true
		}
	}
	return low, found
}

package fsm_test

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/mysterybox/mysterybox/api/client"
	"github.com/mysterybox/mysterybox/fsm/fsmpb"
)

// BenchmarkApplyVersions applies b.N new versions as the write scenarios of
// `make bench` make them (1,000 secrets, one 1 KiB entry, an idempotency
// key made as api/client makes them and an audit record per version, 32
// versions per Raft batch) at 4,000 versions a second, about what a region
// of this machine sustains (applied as fast as possible, writes outrun
// compactions and the level-0 pile-up hides their usual cost), waits for
// Pebble's compactions to finish, and reports what it took: bytes Pebble
// wrote to sstables per version (flushes and compactions: the store's write
// amplification) and the process's CPU per version, background work
// included. Compactions depend on the store's size, so compare runs of the
// same count (200,000 take 50 s):
//
//	go test -run XXX -bench ApplyVersions -benchtime 200000x ./fsm
func BenchmarkApplyVersions(b *testing.B) {
	h := newHarness(b)
	// apply builds the next log entries (h.log) and applies them as one
	// Raft batch, stamped with the time now, as a leader's would be.
	apply := func(cmds ...*fsmpb.Command) {
		h.now = time.Now().UnixNano()
		logs := make([]*raft.Log, len(cmds))
		for i, cmd := range cmds {
			logs[i] = h.log(cmd)
		}
		for i, out := range h.f.ApplyBatch(logs) {
			if res := asResult(b, out); res.Err != nil {
				b.Fatalf("apply %v: %v", cmds[i].GetOp(), res.Err)
			}
		}
	}
	random := func(n int) []byte {
		p := make([]byte, n)
		rand.Read(p)
		return p
	}

	apply(cmdCreateProject("project-1", "bench"))
	secrets := make([]string, 1000)
	for i := range secrets {
		secrets[i] = fmt.Sprintf("mbsec-%06d", i)
		apply(cmdCreateSecret(secrets[i], "project-1", fmt.Sprintf("s%d", i), nil))
	}
	const perBatch, perSecond = 32, 4000
	cmds := make([]*fsmpb.Command, 0, perBatch)
	b.ResetTimer()
	cpu0 := processCPU()
	next := time.Now()
	for n := 0; n < b.N; n++ {
		secretID := secrets[n%len(secrets)]
		cmd := cmdCreateVersion(fmt.Sprintf("mbsecver-%013x%08d", time.Now().UnixMicro(), n), secretID, true)
		cmd.GetCreateVersion().Payload.Entries = []*fsmpb.SealedEntry{{Key: "value", Nonce: random(12), Ciphertext: random(1024 + 16)}}
		withKey(cmd, client.NewIdempotencyKey(), hex.EncodeToString(random(8)))
		withAudit(cmd, "/mysterybox.v1.SecretVersionService/Create", secretID)
		cmds = append(cmds, cmd)
		if len(cmds) == perBatch || n == b.N-1 {
			next = next.Add(time.Duration(len(cmds)) * time.Second / perSecond)
			time.Sleep(time.Until(next))
			apply(cmds...)
			cmds = cmds[:0]
		}
	}
	// Background work belongs to the writes that caused it: wait until no
	// compaction has run for a second.
	for quiet := 0; quiet < 10; {
		time.Sleep(100 * time.Millisecond)
		if h.st.Stats().CompactionsInProgress == 0 {
			quiet++
		} else {
			quiet = 0
		}
	}
	b.StopTimer()
	stats := h.st.Stats()
	b.ReportMetric(float64(stats.WrittenBytes)/float64(b.N), "sstable-B/version")
	b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/float64(b.N), "cpu-µs/version")
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

package store

import (
	"crypto/rand"
	"fmt"
	mrand "math/rand/v2"
	"testing"

	"github.com/mysterybox/mysterybox/fsm/fsmpb"
)

// BenchmarkEntryReads reads random sealed entries (1 KiB) out of 200,000,
// about 220 MB, far more than the block and record caches hold, from a
// store reopened cold, for each sstable block size: what larger blocks
// (fewer, larger writes when flushing and compacting) cost reads that miss
// the caches.
//
//	go test -run XXX -bench EntryReads -benchtime 20000x ./store
func BenchmarkEntryReads(b *testing.B) {
	const entries = 200_000
	for _, bs := range []int{4 << 10, 16 << 10, 32 << 10} {
		b.Run(fmt.Sprintf("block=%dKiB", bs>>10), func(b *testing.B) {
			old := blockSize
			blockSize = bs
			defer func() { blockSize = old }()
			dir := b.TempDir()
			st, err := Open(dir, nil)
			if err != nil {
				b.Fatal(err)
			}
			ct := make([]byte, 1040)
			for n := 0; n < entries; {
				batch := st.NewBatch()
				for i := 0; i < 1000; i, n = i+1, n+1 {
					rand.Read(ct)
					if err := batch.PutEntry(fmt.Sprintf("mbsecver-%08d", n), &fsmpb.SealedEntry{Key: "value", Nonce: ct[:12], Ciphertext: ct}); err != nil {
						b.Fatal(err)
					}
				}
				if err := batch.Commit(); err != nil {
					b.Fatal(err)
				}
			}
			if err := st.db.Compact([]byte(prefixEntry), prefixEnd([]byte(prefixEntry)), true); err != nil {
				b.Fatal(err)
			}
			st.Close()
			if st, err = Open(dir, nil); err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			b.ResetTimer()
			for n := 0; n < b.N; n++ {
				vid := fmt.Sprintf("mbsecver-%08d", mrand.IntN(entries))
				if err := st.Read(func(v *View) error { _, err := v.SharedEntry(vid, "value"); return err }); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

package region

import (
	"fmt"
	"testing"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
)

func benchKeyring(b *testing.B) *Keyring {
	raw, err := GenerateKeyringFile("k1")
	if err != nil {
		b.Fatal(err)
	}
	kr, err := ParseKeyring(raw)
	if err != nil {
		b.Fatal(err)
	}
	return kr
}

func benchEntries(size int) []*pb.PayloadEntry {
	return []*pb.PayloadEntry{{Key: "value", Value: &pb.PayloadEntry_BinaryValue{BinaryValue: make([]byte, size)}}}
}

// BenchmarkSeal measures what the leader adds to a write: a fresh data key,
// the entry sealed, the data key wrapped, the key check.
func BenchmarkSeal(b *testing.B) {
	for _, size := range []int{1 << 10, 64 << 10} {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			kr, entries := benchKeyring(b), benchEntries(size)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if _, err := kr.Seal("mbsec-x", "mbsecver-y", entries); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkOpen measures what a payload read adds: unwrap and open.
func BenchmarkOpen(b *testing.B) {
	for _, size := range []int{1 << 10, 64 << 10} {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			kr := benchKeyring(b)
			sealed, err := kr.Seal("mbsec-x", "mbsecver-y", benchEntries(size))
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if _, err := kr.Open("mbsec-x", "mbsecver-y", sealed.GetKekId(), sealed.GetWrappedDek(), sealed.GetEntries()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

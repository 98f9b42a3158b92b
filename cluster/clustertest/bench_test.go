package clustertest

import (
	"context"
	"fmt"
	"testing"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
)

// BenchmarkCreateVersion measures one sealed write (a new 1 KiB version)
// through the whole stack of a 3-node in-process region, sent to the
// leader: the denominator for the cost of encryption (region.BenchmarkSeal).
func BenchmarkCreateVersion(b *testing.B) {
	for _, size := range []int{1 << 10, 64 << 10} {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			c := New(b, Options{Nodes: 3})
			leader := c.WaitLeader()
			ctx := context.Background()
			p, err := pb.NewIdentityServiceClient(c.Conn(leader)).CreateProject(ctx, &pb.CreateProjectRequest{Project: &pb.Project{Metadata: &pb.Metadata{Name: "bench"}}})
			if err != nil {
				b.Fatal(err)
			}
			s, err := pb.NewSecretServiceClient(c.Conn(leader)).Create(ctx, &pb.CreateSecretRequest{Secret: &pb.Secret{Metadata: &pb.Metadata{ParentId: p.GetMetadata().GetId(), Name: "s"}}})
			if err != nil {
				b.Fatal(err)
			}
			req := &pb.CreateSecretVersionRequest{Version: &pb.SecretVersion{
				Metadata: &pb.Metadata{ParentId: s.GetMetadata().GetId()},
				Spec: &pb.SecretVersionSpec{Payload: &pb.Payload{Entries: []*pb.PayloadEntry{
					{Key: "value", Value: &pb.PayloadEntry_BinaryValue{BinaryValue: make([]byte, size)}},
				}}},
			}}
			client := pb.NewSecretVersionServiceClient(c.Conn(leader))
			b.SetBytes(int64(size))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := client.Create(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

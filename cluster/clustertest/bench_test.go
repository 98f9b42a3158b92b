package clustertest

import (
	"context"
	"fmt"
	"sync/atomic"
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

// benchRegion makes a 3-node region with one project and `keys` secrets,
// each with one 1 KiB version, and returns the secrets' ids.
func benchRegion(b *testing.B, opts Options, keys int) (*Cluster, []string) {
	b.Helper()
	c := New(b, opts)
	leader := c.WaitLeader()
	ctx := context.Background()
	p, err := pb.NewIdentityServiceClient(c.Conn(leader)).CreateProject(ctx, &pb.CreateProjectRequest{Project: &pb.Project{Metadata: &pb.Metadata{Name: "bench"}}})
	if err != nil {
		b.Fatal(err)
	}
	var ids []string
	for i := 0; i < keys; i++ {
		s, err := pb.NewSecretServiceClient(c.Conn(leader)).Create(ctx, &pb.CreateSecretRequest{Secret: &pb.Secret{
			Metadata: &pb.Metadata{ParentId: p.GetMetadata().GetId(), Name: fmt.Sprintf("s%d", i)},
		}})
		if err != nil {
			b.Fatal(err)
		}
		_, err = pb.NewSecretVersionServiceClient(c.Conn(leader)).Create(ctx, &pb.CreateSecretVersionRequest{Version: &pb.SecretVersion{
			Metadata: &pb.Metadata{ParentId: s.GetMetadata().GetId()},
			Spec:     &pb.SecretVersionSpec{Payload: &pb.Payload{Entries: []*pb.PayloadEntry{{Key: "value", Value: &pb.PayloadEntry_BinaryValue{BinaryValue: make([]byte, 1024)}}}}},
		}})
		if err != nil {
			b.Fatal(err)
		}
		ids = append(ids, s.GetMetadata().GetId())
	}
	return c, ids
}

// BenchmarkCreateVersionParallel: 64 concurrent writers on the leader, as
// the "write c=64" scenario of make bench, in one process (a CPU profile
// of it covers all three nodes).
func BenchmarkCreateVersionParallel(b *testing.B) {
	c, ids := benchRegion(b, Options{Nodes: 3}, 64)
	client := pb.NewSecretVersionServiceClient(c.Conn(c.WaitLeader()))
	var next atomic.Int64
	b.SetParallelism(32) // 64 goroutines on 2 cores
	b.ResetTimer()
	b.RunParallel(func(pbt *testing.PB) {
		id := ids[int(next.Add(1))%len(ids)]
		req := &pb.CreateSecretVersionRequest{Version: &pb.SecretVersion{
			Metadata: &pb.Metadata{ParentId: id},
			Spec:     &pb.SecretVersionSpec{Payload: &pb.Payload{Entries: []*pb.PayloadEntry{{Key: "value", Value: &pb.PayloadEntry_BinaryValue{BinaryValue: make([]byte, 1024)}}}}},
		}}
		for pbt.Next() {
			if _, err := client.Create(context.Background(), req); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkGetPayloadParallel: 256 concurrent linearizable payload reads
// on the leader, with and without the audit log.
func BenchmarkGetPayloadParallel(b *testing.B) {
	for _, audit := range []bool{true, false} {
		b.Run(fmt.Sprintf("audit=%v", audit), func(b *testing.B) {
			c, ids := benchRegion(b, Options{Nodes: 3, NoAudit: !audit}, 64)
			client := pb.NewPayloadServiceClient(c.Conn(c.WaitLeader()))
			var next atomic.Int64
			b.SetParallelism(128)
			b.ResetTimer()
			b.RunParallel(func(pbt *testing.PB) {
				id := ids[int(next.Add(1))%len(ids)]
				for pbt.Next() {
					if _, err := client.GetByKey(context.Background(), &pb.GetPayloadByKeyRequest{SecretId: id, Key: "value"}); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

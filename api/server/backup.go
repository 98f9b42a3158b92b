package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/backup"
	"github.com/mysterybox/mysterybox/store"
)

const chunkSize = 256 << 10

// Snapshot streams a backup of the region, taken on the leader.
func (x *clusterService) Snapshot(req *pb.SnapshotRequest, stream pb.ClusterService_SnapshotServer) error {
	s := x.s
	ctx := stream.Context()
	if !s.raft.IsLeader() && !s.raft.AcceptsWrites() {
		return s.proxySnapshot(ctx, req, stream)
	}
	if _, err := s.leaderCheck(ctx, s.regionChain()); err != nil {
		return err
	}
	// Every write acknowledged before this call is in the snapshot.
	if err := s.raft.ReadBarrier(ctx); err != nil {
		return toStatus(err)
	}
	// A checkpoint, not a snapshot of the live database: a snapshot would
	// hold the store's read lock for as long as the client takes to read
	// the stream, and a restore or snapshot install waiting for the write
	// lock would then queue every read of the node behind a stalled client.
	// The checkpoint costs milliseconds and pins only files on disk.
	ck, err := s.store.Checkpoint()
	if err != nil {
		return toStatus(err)
	}
	defer func() {
		if err := ck.Remove(); err != nil {
			s.logger.Warn("cannot remove a backup's checkpoint", "dir", ck.Dir(), "error", err)
		}
	}()
	snap, err := store.OpenCheckpoint(ck.Dir(), s.logger.Named("backup"))
	if err != nil {
		return toStatus(err)
	}
	defer snap.Close()
	h := backup.Header{Region: s.cfg.Region, CreatedAt: time.Now().UTC().Format(time.RFC3339)}
	if h.RaftIndex, h.RaftTerm, err = snap.AppliedIndex(); err != nil {
		return toStatus(err)
	}
	if err := snap.View(func(v *store.View) error {
		var err error
		if h.KeyIDs, err = v.KeyIDsInUse(); err != nil {
			return err
		}
		h.ClusterID, err = v.ClusterID()
		return err
	}); err != nil {
		return toStatus(err)
	}
	// Two passes over the same point-in-time snapshot: the first for the
	// checksum the header carries, the second to send.
	sum := sha256.New()
	if h.BodyBytes, err = snap.WriteTo(sum); err != nil {
		return toStatus(err)
	}
	h.BodySHA = hex.EncodeToString(sum.Sum(nil))
	w := &chunkWriter{send: func(b []byte) error { return stream.Send(&pb.SnapshotChunk{Data: b}) }}
	if err := backup.WriteHeader(w, h); err != nil {
		return toStatus(err)
	}
	if _, err := snap.WriteTo(w); err != nil {
		return toStatus(err)
	}
	if err := w.flush(); err != nil {
		return err
	}
	s.logger.Info("backup streamed", "raft_index", h.RaftIndex, "bytes", h.BodyBytes)
	return nil
}

// chunkWriter turns writes into stream messages of up to chunkSize.
type chunkWriter struct {
	buf  []byte
	send func([]byte) error
}

func (c *chunkWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		room := chunkSize - len(c.buf)
		if room > len(p) {
			room = len(p)
		}
		c.buf = append(c.buf, p[:room]...)
		p = p[room:]
		if len(c.buf) == chunkSize {
			if err := c.flush(); err != nil {
				return 0, err
			}
		}
	}
	return n, nil
}

func (c *chunkWriter) flush() error {
	if len(c.buf) == 0 {
		return nil
	}
	err := c.send(c.buf)
	c.buf = nil
	return err
}

// forwardedContext carries the caller's metadata to the leader.
func forwardedContext(ctx context.Context) (context.Context, error) {
	in, _ := metadata.FromIncomingContext(ctx)
	if len(in.Get(mdForwarded)) > 0 {
		return nil, status.Error(codes.Unavailable, "forwarded call reached a node that is not the leader (leadership is changing); retry")
	}
	out := metadata.Pairs(mdForwarded, "1")
	for _, k := range forwardedKeys {
		if v := in.Get(k); len(v) > 0 {
			out.Set(k, v...)
		}
	}
	return metadata.NewOutgoingContext(ctx, out), nil
}

func (s *Server) leaderConn(ctx context.Context) (*grpc.ClientConn, context.Context, error) {
	fctx, err := forwardedContext(ctx)
	if err != nil {
		return nil, nil, err
	}
	addr, err := s.fwd.leaderAddress(ctx)
	if err != nil {
		return nil, nil, err
	}
	conn, err := s.fwd.conn(addr)
	if err != nil {
		return nil, nil, status.Errorf(codes.Unavailable, "cannot reach leader at %s: %v", addr, err)
	}
	return conn, fctx, nil
}

func (s *Server) proxySnapshot(ctx context.Context, req *pb.SnapshotRequest, stream pb.ClusterService_SnapshotServer) error {
	conn, fctx, err := s.leaderConn(ctx)
	if err != nil {
		return err
	}
	up, err := pb.NewClusterServiceClient(conn).Snapshot(fctx, req)
	if err != nil {
		return err
	}
	for {
		c, err := up.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(c); err != nil {
			return err
		}
	}
}

// restoreReader reads the data of a Restore stream.
type restoreReader struct {
	stream pb.ClusterService_RestoreServer
	buf    []byte
	first  *pb.RestoreChunk
	n      uint64
}

func (r *restoreReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.first != nil {
			r.buf, r.first = r.first.GetData(), nil
			continue
		}
		c, err := r.stream.Recv()
		if err != nil {
			return 0, err
		}
		r.buf = c.GetData()
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	r.n += uint64(n)
	return n, nil
}

// errRestoring refuses a change of the node registry while a backup
// restore replaces the region's state (Server.registry).
var errRestoring = status.Error(codes.Unavailable, "a backup restore is replacing the region's state; retry when it has finished")

// maxRestoreIndex bounds a backup's Raft index: at 2^62 a region writing a
// million entries a second would take 146,000 years to get there, and
// Raft's index stays far from wrapping after the restore.
const maxRestoreIndex = 1 << 62

// Restore replaces the region's state with a backup, through Raft.
func (x *clusterService) Restore(stream pb.ClusterService_RestoreServer) error {
	s := x.s
	ctx := stream.Context()
	first, err := stream.Recv()
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "empty restore stream: %v", err)
	}
	if !s.raft.AcceptsWrites() {
		return s.proxyRestore(ctx, first, stream)
	}
	if _, err := s.leaderCheck(ctx, s.regionChain()); err != nil {
		return err
	}
	in := &restoreReader{stream: stream, first: first}
	h, err := backup.ReadHeader(in)
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	if h.Region != s.cfg.Region && !first.GetForceRegion() {
		return status.Errorf(codes.FailedPrecondition, "backup of region %s cannot be restored into region %s (force_region overrides)", h.Region, s.cfg.Region)
	}
	kr := s.keyring()
	var missing []string
	for _, id := range h.KeyIDs {
		if !kr.Has(id) {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		return status.Errorf(codes.FailedPrecondition, "the backup needs key id(s) %v, which this region's keyring (%v) does not hold", missing, kr.KeyIDs())
	}
	// Spool and verify everything before Raft sees a byte: a restore that
	// fails inside Raft stops the node.
	tmp, err := os.CreateTemp("", "mysterybox-restore-*")
	if err != nil {
		return toStatus(err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if _, err := io.Copy(tmp, backup.BodyReader(in, h)); err != nil {
		if errors.Is(err, backup.ErrCorrupt) {
			return status.Error(codes.InvalidArgument, err.Error())
		}
		return toStatus(err)
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return toStatus(err)
	}
	// The region keeps its own identity (store.RegionIdentity): the
	// backup's node registry describes the nodes of its time (or of
	// another region), and would bring back removed nodes for discovery to
	// add again; its cluster id is another cluster's, or this one's of
	// old, which discovery would take for a sibling cluster, or let merge
	// with one. Registry changes wait until the restore is done
	// (Server.registry), and the read barrier brings every change
	// acknowledged so far into the registry read.
	s.registry.Lock()
	defer s.registry.Unlock()
	if err := s.raft.ReadBarrier(ctx); err != nil {
		return toStatus(err)
	}
	var identity store.RegionIdentity
	if err := s.store.Read(func(v *store.View) error {
		var err error
		if identity.Nodes, err = v.Nodes(); err != nil {
			return err
		}
		identity.ClusterID, err = v.ClusterID()
		return err
	}); err != nil {
		return toStatus(err)
	}
	// One pass verifies the body, reads what it holds, and measures the
	// stream Raft will get (Raft takes its length first); the next hands
	// that stream over, with no second copy on disk.
	size, body, err := store.ReplaceRegionIdentity(tmp, io.Discard, identity)
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "backup body: %v", err)
	}
	// The header is not covered by a checksum; its index must be the
	// body's, which is. Raft records the restore past that index, so one
	// near the top of the range would wrap it.
	if body.AppliedIndex != h.RaftIndex {
		return status.Errorf(codes.InvalidArgument, "backup header says raft_index %d, its body holds %d: the file is corrupt", h.RaftIndex, body.AppliedIndex)
	}
	if body.AppliedIndex > maxRestoreIndex {
		return status.Errorf(codes.InvalidArgument, "backup raft_index %d is beyond any region's log (at most %d): the file is corrupt", body.AppliedIndex, uint64(maxRestoreIndex))
	}
	// Key ids are names: the keys behind them must be the same too, or
	// every payload read fails and every node refuses its next start.
	for id, check := range body.KeyChecks {
		if err := kr.VerifyKeyCheck(id, check); err != nil {
			return status.Errorf(codes.FailedPrecondition, "the backup cannot be opened with this region's keyring: %v", err)
		}
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return toStatus(err)
	}
	pr, pw := io.Pipe()
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		_, _, err := store.ReplaceRegionIdentity(tmp, pw, identity)
		pw.CloseWithError(err)
	}()
	err = s.raft.RestoreBackup(body.AppliedIndex, size, pr)
	pr.Close() // ends the copy if Raft stopped reading early
	<-copied
	if err != nil {
		return toStatus(fmt.Errorf("restore through raft: %w", err))
	}
	s.logger.Info("restored a backup", "region", h.Region, "backup_index", h.RaftIndex, "bytes", h.BodyBytes)
	return stream.SendAndClose(&pb.RestoreResponse{Region: h.Region, BackupIndex: h.RaftIndex, BackupTerm: h.RaftTerm, Bytes: uint64(h.BodyBytes)})
}

func (s *Server) proxyRestore(ctx context.Context, first *pb.RestoreChunk, stream pb.ClusterService_RestoreServer) error {
	noteForwarded(ctx)
	conn, fctx, err := s.leaderConn(ctx)
	if err != nil {
		return err
	}
	up, err := pb.NewClusterServiceClient(conn).Restore(fctx)
	if err != nil {
		return err
	}
	for c := first; ; {
		if err := up.Send(c); err != nil {
			break // the leader's answer below says why
		}
		next, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		c = next
	}
	resp, err := up.CloseAndRecv()
	if err != nil {
		return err
	}
	return stream.SendAndClose(resp)
}

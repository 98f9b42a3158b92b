package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/structpb"

	mbv1 "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/backup"
)

func (a *app) snapshotCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "Back up the region to a file, or restore it from one (region admin)",
		Args:  cobra.NoArgs,
		RunE:  groupRunE,
	}
	cmd.AddCommand(a.snapshotSaveCmd(), a.snapshotRestoreCmd())
	return cmd
}

func (a *app) snapshotSaveCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "save FILE",
		Short: "Stream a consistent backup of the region from the leader into FILE (mode 0600)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			stream, err := cl.Cluster().Snapshot(cmd.Context(), &mbv1.SnapshotRequest{})
			if err != nil {
				return err
			}
			// Write next to the target and rename at the end, so FILE is
			// either the old file or a complete backup.
			tmp, err := os.CreateTemp(filepath.Dir(args[0]), ".mbox-snapshot-*")
			if err != nil {
				return localErr(codes.Unknown, "%v", err)
			}
			defer os.Remove(tmp.Name())
			var sp *spinner
			if a.stderrTTY {
				sp = newSpinner(a.stderr)
				defer sp.hide()
			}
			var n int64
			for {
				c, err := stream.Recv()
				if err == io.EOF {
					break
				}
				if err != nil {
					tmp.Close()
					return err
				}
				if _, err := tmp.Write(c.GetData()); err != nil {
					tmp.Close()
					return localErr(codes.Unknown, "%v", err)
				}
				n += int64(len(c.GetData()))
				if sp != nil {
					sp.show(fmt.Sprintf("received %d bytes", n))
				}
			}
			if err := tmp.Chmod(0o600); err != nil {
				return localErr(codes.Unknown, "%v", err)
			}
			if err := tmp.Sync(); err != nil {
				return localErr(codes.Unknown, "%v", err)
			}
			if err := tmp.Close(); err != nil {
				return localErr(codes.Unknown, "%v", err)
			}
			f, err := os.Open(tmp.Name())
			if err != nil {
				return localErr(codes.Unknown, "%v", err)
			}
			h, err := backup.ReadHeader(f)
			f.Close()
			if err != nil {
				return localErr(codes.Unknown, "%v", err)
			}
			if err := os.Rename(tmp.Name(), args[0]); err != nil {
				return localErr(codes.Unknown, "%v", err)
			}
			if sp != nil {
				sp.hide()
			}
			keys := make([]any, len(h.KeyIDs))
			for i, k := range h.KeyIDs {
				keys[i] = k
			}
			saved, err := structpb.NewStruct(map[string]any{
				"file": args[0], "region": h.Region, "cluster_id": h.ClusterID, "raft_index": float64(h.RaftIndex),
				"raft_term": float64(h.RaftTerm), "bytes": float64(n), "key_ids": keys, "created_at": h.CreatedAt,
			})
			if err != nil {
				return localErr(codes.Unknown, "%v", err)
			}
			return a.emit(saved, func(w io.Writer) {
				fmt.Fprintf(w, "saved region %s at raft index %d (%d bytes, keys %v) to %s\n", h.Region, h.RaftIndex, n, h.KeyIDs, args[0])
			})
		},
	}
}

func (a *app) snapshotRestoreCmd() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "restore FILE",
		Short: "Replace the region's state with a backup, through Raft (verified completely first)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := os.Open(args[0])
			if err != nil {
				return usageErr("%v", err)
			}
			defer f.Close()
			// Check the file locally first: a damaged file fails here,
			// before anything is sent.
			// A damaged file is bad input, as the server would call it
			// (INVALID_ARGUMENT, exit 1), not a mistake in the command line.
			h, err := backup.ReadHeader(f)
			if err != nil {
				return localErr(codes.InvalidArgument, "%s: %v", args[0], err)
			}
			if _, err := io.Copy(io.Discard, backup.BodyReader(f, h)); err != nil {
				return localErr(codes.InvalidArgument, "%s: %v", args[0], err)
			}
			if _, err := f.Seek(0, io.SeekStart); err != nil {
				return localErr(codes.Unknown, "%v", err)
			}
			cl, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			stream, err := cl.Cluster().Restore(cmd.Context())
			if err != nil {
				return err
			}
			var sp *spinner
			if a.stderrTTY {
				sp = newSpinner(a.stderr)
				defer sp.hide()
			}
			buf := make([]byte, 256<<10)
			first, sent := true, int64(0)
			for {
				n, rerr := f.Read(buf)
				if n > 0 {
					if err := stream.Send(&mbv1.RestoreChunk{Data: buf[:n], ForceRegion: force && first}); err != nil {
						break // the server's answer below says why
					}
					first, sent = false, sent+int64(n)
					if sp != nil {
						sp.show(fmt.Sprintf("sent %d bytes", sent))
					}
				}
				if rerr == io.EOF {
					break
				}
				if rerr != nil {
					return localErr(codes.Unknown, "%v", rerr)
				}
			}
			resp, err := stream.CloseAndRecv()
			if err != nil {
				return err
			}
			if sp != nil {
				sp.hide()
			}
			return a.emit(resp, func(w io.Writer) {
				fmt.Fprintf(w, "restored region %s from the backup at raft index %d (%d bytes)\n", resp.GetRegion(), resp.GetBackupIndex(), resp.GetBytes())
			})
		},
	}
	cmd.Flags().BoolVar(&force, "force-region", false, "restore a backup of another region")
	return cmd
}

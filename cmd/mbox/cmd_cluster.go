package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	mbv1 "github.com/mysterybox/mysterybox/api/mysteryboxv1"
)

func (a *app) clusterCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cluster",
		Short: "Inspect and operate the region's Raft cluster",
		Args:  cobra.NoArgs,
		RunE:  groupRunE,
	}
	cmd.AddCommand(a.clusterStatusCmd(), a.clusterMembersCmd(), a.clusterRegionsCmd(), a.clusterJoinCmd(), a.clusterRemoveNodeCmd(), a.clusterTransferLeaderCmd())
	return cmd
}

func (a *app) clusterStatusCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the Raft status of the node that answers",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			s, err := cl.Cluster().Status(cmd.Context(), &mbv1.ClusterStatusRequest{})
			if err != nil {
				return err
			}
			return a.emit(s, clusterStatusText(s))
		},
	}
}

func (a *app) clusterMembersCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "members",
		Short: "List the region's nodes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			m, err := cl.Cluster().Members(cmd.Context(), &mbv1.ListMembersRequest{})
			if err != nil {
				return err
			}
			return a.emit(m, membersText(m.GetMembers()))
		},
	}
}

func (a *app) clusterRegionsCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "regions",
		Short: "List every region gossip knows, with its nodes and leader",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			r, err := cl.Cluster().Regions(cmd.Context(), &mbv1.ListRegionsRequest{})
			if err != nil {
				return err
			}
			return a.emit(r, regionsText(r.GetRegions()))
		},
	}
}

// regionsText prints one row per node: region, node, gRPC address,
// health, and whether it leads its region.
func regionsText(rs []*mbv1.Region) func(io.Writer) {
	return func(w io.Writer) {
		var rows [][]string
		for _, r := range rs {
			for _, n := range r.GetNodes() {
				role := ""
				if n.GetNodeId() == r.GetLeaderId() {
					role = "leader"
				}
				rows = append(rows, []string{r.GetName(), n.GetNodeId(), n.GetGrpcAddress(), n.GetHealth(), role})
			}
		}
		writeTable(w, []string{"REGION", "NODE_ID", "GRPC_ADDRESS", "HEALTH", "LEADER"}, rows)
	}
}

func (a *app) clusterJoinCmd() *cobra.Command {
	var nodeID, raftAddr, grpcAddr string
	cmd := &cobra.Command{
		Use:   "join --node-id ID --raft-addr A --grpc-addr G",
		Short: "Add a node to the region's Raft configuration (a voter once it has caught up)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			r, err := cl.Cluster().Join(cmd.Context(), &mbv1.JoinRequest{NodeId: nodeID, RaftAddress: raftAddr, GrpcAddress: grpcAddr})
			if err != nil {
				return err
			}
			return a.emit(r, membersText(r.GetMembers()))
		},
	}
	cmd.Flags().StringVar(&nodeID, "node-id", "", "id of the joining node")
	cmd.Flags().StringVar(&raftAddr, "raft-addr", "", "its Raft address host:port")
	cmd.Flags().StringVar(&grpcAddr, "grpc-addr", "", "its gRPC address host:port")
	cmd.MarkFlagRequired("node-id")
	cmd.MarkFlagRequired("raft-addr")
	cmd.MarkFlagRequired("grpc-addr")
	return cmd
}

func (a *app) clusterRemoveNodeCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "remove-node ID",
		Short: "Remove a node from the region's Raft configuration",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			r, err := cl.Cluster().RemoveNode(cmd.Context(), &mbv1.RemoveNodeRequest{NodeId: args[0]})
			if err != nil {
				return err
			}
			return a.emit(r, func(w io.Writer) { fmt.Fprintf(w, "removed node %s\n", args[0]) })
		},
	}
}

func (a *app) clusterTransferLeaderCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "transfer-leader [ID]",
		Short: "Hand Raft leadership to a node (default: the most up-to-date follower)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var id string
			if len(args) == 1 {
				id = args[0]
			}
			cl, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			r, err := cl.Cluster().TransferLeadership(cmd.Context(), &mbv1.TransferLeadershipRequest{NodeId: id})
			if err != nil {
				return err
			}
			return a.emit(r, func(w io.Writer) { writeKV(w, []kv{{"leader_id", r.GetLeaderId()}}) })
		},
	}
}

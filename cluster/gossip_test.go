package cluster

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/memberlist"
)

// A leader adds a node outside its configuration only when nothing shows
// that the node belongs to another cluster of the same region name.
func TestOtherClusterNeedsPositiveEvidence(t *testing.T) {
	// This cluster: n1–n3 in the configuration; n0 removed (a tombstone).
	isOurs := func(id string) bool { return id == "n0" || id == "n1" || id == "n2" || id == "n3" }
	for _, tc := range []struct {
		what  string
		meta  NodeMeta
		ours  string // this cluster's id
		other bool
	}{
		{"a new node (no state, no leader, no cluster id)", NodeMeta{NodeID: "n4"}, "cluster-a", false},
		{"a wiped node replacing a dead one, already following this leader", NodeMeta{NodeID: "n4", HasState: true, LeaderID: "n1"}, "cluster-a", false},
		{"a node still following a leader removed a moment ago", NodeMeta{NodeID: "n4", HasState: true, LeaderID: "n0"}, "cluster-a", false},
		{"a reaped node of this cluster, back and following nobody", NodeMeta{NodeID: "n4", HasState: true, ClusterID: "cluster-a"}, "cluster-a", false},
		{"a node seeded from a backup of this region, not started yet", NodeMeta{NodeID: "n4", ClusterID: "cluster-a"}, "cluster-a", false},
		{"another cluster's node, between elections", NodeMeta{NodeID: "n4", HasState: true, ClusterID: "cluster-b"}, "cluster-a", true},
		{"another cluster's leader", NodeMeta{NodeID: "n4", HasState: true, Leader: true, LeaderID: "n4", ClusterID: "cluster-b"}, "cluster-a", true},
		{"another cluster's node before it has an admin (no cluster id yet)", NodeMeta{NodeID: "n4", HasState: true, LeaderID: "n5"}, "cluster-a", true},
		{"another cluster's node, when only that cluster has an admin", NodeMeta{NodeID: "n4", HasState: true, ClusterID: "cluster-b"}, "", true},
		{"a node seeded from another region's backup (no Raft state)", NodeMeta{NodeID: "n4", ClusterID: "cluster-b"}, "cluster-a", true},
		{"neither cluster has an admin, and the node follows a leader here", NodeMeta{NodeID: "n4", HasState: true, LeaderID: "n2"}, "", false},
	} {
		if got := tc.meta.OtherCluster(tc.ours, isOurs); got != tc.other {
			t.Errorf("%s: OtherCluster = %v, want %v", tc.what, got, tc.other)
		}
	}
}

// A node whose metadata could outgrow memberlist's limit (it would then
// advertise nothing at all) does not start; one with long names and
// ordinary addresses does.
func TestMetaFitsInItsLargestForm(t *testing.T) {
	long := strings.Repeat("x", leaderIDRoom)
	ok := NodeMeta{Proto: GossipProtocol, NodeID: long, Region: long, RaftAddr: "10.123.123.123:65535", GRPCAddr: "10.123.123.123:65535"}
	if err := metaFits(ok, memberlist.MetaMaxSize); err != nil {
		t.Fatalf("longest names, IP addresses: %v", err)
	}
	big := ok
	big.RaftAddr = strings.Repeat("h", 120) + ":7001"
	big.GRPCAddr = big.RaftAddr
	err := metaFits(big, memberlist.MetaMaxSize)
	if err == nil || !strings.Contains(err.Error(), "shorten") {
		t.Fatalf("120-character host names: %v, want a refusal", err)
	}
}

// A leader id longer than a node made room for is left out of its
// metadata, rather than the whole metadata (memberlist would then carry
// none at all).
func TestOversizedLeaderIDIsLeftOut(t *testing.T) {
	m := NodeMeta{Proto: GossipProtocol, NodeID: "n1", Region: "eu1", RaftAddr: "10.0.0.1:7001", GRPCAddr: "10.0.0.1:7000", HasState: true, LeaderID: strings.Repeat("l", 600)}
	g := &Gossip{cfg: GossipConfig{Meta: func() NodeMeta { return m }}, logger: hclog.NewNullLogger()}
	raw := (&metaDelegate{g: g}).NodeMeta(memberlist.MetaMaxSize)
	var got NodeMeta
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatalf("metadata %q: %v", raw, err)
	}
	if got.NodeID != "n1" || got.LeaderID != "" || !got.HasState {
		t.Fatalf("metadata %+v: want the node's, without the leader id", got)
	}
}

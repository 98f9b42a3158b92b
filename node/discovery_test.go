package node

import (
	"crypto/x509"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/mysterybox/mysterybox/cluster"
)

func member(id string, hasState bool) cluster.GossipMember {
	return cluster.GossipMember{Health: cluster.HealthAlive, Meta: cluster.NodeMeta{
		NodeID: id, Region: "eu1", RaftAddr: "10.0.0." + id[len(id)-1:] + ":7001", HasState: hasState,
	}}
}

func ids(servers []cluster.ServerInfo) string {
	out := ""
	for _, s := range servers {
		out += s.ID + " "
	}
	return out
}

// bootstrap-expect bootstraps only once the node's view has held the same
// initial set, with no peer in a cluster, for the settle time: a view
// that changes in between (a newcomer, a peer that bootstrapped) starts
// the wait again or calls the bootstrap off.
func TestBootstrapWaitsForAViewThatHoldsStill(t *testing.T) {
	const settle = time.Second
	t0 := time.Unix(1000, 0)
	var c bootstrapChoice
	at := func(d time.Duration, peers ...cluster.GossipMember) string {
		return ids(c.decide(peers, 3, "n2", t0.Add(d), settle))
	}
	n1, n2, n3, n4 := member("n1", false), member("n2", false), member("n3", false), member("n4", false)

	if got := at(0, n2, n3); got != "" {
		t.Fatalf("two of three expected nodes: bootstrapped %s", got)
	}
	if got := at(0, n2, n3, n4); got != "" {
		t.Fatalf("the set's first sight: bootstrapped %s", got)
	}
	if got := at(settle-time.Millisecond, n2, n3, n4); got != "" {
		t.Fatalf("before the settle time: bootstrapped %s", got)
	}
	// n1 appears: the set is now n1 n2 n3, and the wait starts again.
	if got := at(settle, n1, n2, n3, n4); got != "" {
		t.Fatalf("the set changed: bootstrapped %s at once", got)
	}
	if got := at(2*settle-time.Millisecond, n1, n2, n3, n4); got != "" {
		t.Fatalf("before the new set settled: bootstrapped %s", got)
	}
	if got := at(2*settle, n1, n2, n3, n4); got != "n1 n2 n3 " {
		t.Fatalf("a settled view: bootstrapped %q, want n1 n2 n3", got)
	}

	// A peer that turns out to be in a cluster calls it off, and its
	// disappearance from the view starts the wait over.
	c = bootstrapChoice{}
	at(0, n1, n2, n3)
	if got := at(settle, n1, member("n2", false), member("n3", true)); got != "" {
		t.Fatalf("a peer in a cluster: bootstrapped %s", got)
	}
	if got := at(settle+time.Millisecond, n1, n2, n3); got != "" {
		t.Fatalf("right after a peer was seen in a cluster: bootstrapped %s", got)
	}

	// A node outside the set never bootstraps.
	c = bootstrapChoice{}
	var outside []cluster.ServerInfo
	for _, d := range []time.Duration{0, settle, 2 * settle} {
		outside = c.decide([]cluster.GossipMember{n1, n3, n4, member("n0", false)}, 3, "n4", t0.Add(d), settle)
	}
	if outside != nil {
		t.Fatalf("a node outside the initial set bootstrapped %s", ids(outside))
	}
}

// Only a node in the Raft configuration, at the Raft address it
// advertises, may name the region's admin: any holder of the gossip key
// (every region's nodes share it) can advertise a token.
func TestPendingAdminComesFromAMemberOfTheConfiguration(t *testing.T) {
	own := &pendingAdmin{tokenID: "token-own"}
	advertising := func(id, addr, token string) cluster.GossipMember {
		return cluster.GossipMember{Health: cluster.HealthAlive, Meta: cluster.NodeMeta{NodeID: id, Region: "eu1", RaftAddr: addr, AdminTokenID: token}}
	}
	servers := []cluster.ServerInfo{{ID: "n1", Address: "10.0.0.1:7001"}, {ID: "n2", Address: "10.0.0.2:7001"}, {ID: "n3", Address: "10.0.0.3:7001"}}
	for _, c := range []struct {
		name    string
		members []cluster.GossipMember
		want    string
	}{
		{"a rogue with a smaller id, not in Raft", []cluster.GossipMember{advertising("aaa", "10.9.9.9:7001", "token-rogue")}, "token-own"},
		{"a voter's id at another address", []cluster.GossipMember{advertising("n1", "10.9.9.9:7001", "token-rogue")}, "token-own"},
		{"a voter with a smaller id", []cluster.GossipMember{advertising("n1", "10.0.0.1:7001", "token-n1")}, "token-n1"},
		{"another region's node", []cluster.GossipMember{{Health: cluster.HealthAlive, Meta: cluster.NodeMeta{NodeID: "n1", Region: "us1", RaftAddr: "10.0.0.1:7001", AdminTokenID: "token-us"}}}, "token-own"},
	} {
		got := pickPendingAdmin(own, "n2", "eu1", c.members, servers)
		if got == nil || got.tokenID != c.want {
			t.Errorf("%s: chose %v, want %s", c.name, got, c.want)
		}
	}
	if got := pickPendingAdmin(nil, "n2", "eu1", []cluster.GossipMember{advertising("aaa", "10.9.9.9:7001", "token-rogue")}, servers); got != nil {
		t.Errorf("only a rogue advertises: chose %v, want none", got)
	}
}

// A node enters Raft only if the certificate on its Raft port names the
// node id it claims in gossip: a node certificate of the region held by
// someone else does not let them pose as a new node.
func TestPeerCertificateMustNameTheNode(t *testing.T) {
	cert := func(uri string) []*x509.Certificate {
		c := &x509.Certificate{}
		if uri != "" {
			u, _ := url.Parse(uri)
			c.URIs = []*url.URL{u}
		}
		return []*x509.Certificate{c}
	}
	if err := certNames(cert("mysterybox://eu1/n2"), "n2"); err != nil {
		t.Fatalf("its own certificate: %v", err)
	}
	if err := certNames(cert("mysterybox://eu1"), "n2"); err != nil {
		t.Fatalf("a certificate of the region naming no node: %v", err)
	}
	for name, chain := range map[string][]*x509.Certificate{
		"another node's":   cert("mysterybox://eu1/n3"),
		"naming no region": cert(""),
		"no certificate":   nil,
	} {
		if err := certNames(chain, "n2"); err == nil {
			t.Errorf("%s certificate accepted for n2", name)
		}
	}
}

// A node refused as another cluster's is warned of once the evidence has
// lasted, then every 5 minutes; evidence that goes away and comes back
// waits again (a node may follow a departed leader for a moment).
func TestForeignNodeWarningsWaitForLastingEvidence(t *testing.T) {
	f := &foreignNodes{warnAfter: 10 * time.Second}
	t0 := time.Unix(1000, 0)
	round := func(at time.Duration, ids ...string) (warned []string) {
		for _, id := range ids {
			if f.refused(id, t0.Add(at)) {
				warned = append(warned, id)
			}
		}
		f.endRound()
		return warned
	}
	steps := []struct {
		at   time.Duration
		ids  []string
		want string
	}{
		{0, []string{"n4", "n5"}, "[]"},
		{5 * time.Second, []string{"n4", "n5"}, "[]"},
		{10 * time.Second, []string{"n4"}, "[n4]"}, // n5's evidence went away
		{11 * time.Second, []string{"n4", "n5"}, "[]"},
		{20 * time.Second, []string{"n4", "n5"}, "[]"},
		{21 * time.Second, []string{"n4", "n5"}, "[n5]"},
		{10*time.Second + foreignWarnEvery, []string{"n4", "n5"}, "[n4]"},
	}
	for _, s := range steps {
		if got := fmt.Sprint(round(s.at, s.ids...)); got != s.want {
			t.Fatalf("at %v, refusing %v: warned of %s, want %s", s.at, s.ids, got, s.want)
		}
	}
}

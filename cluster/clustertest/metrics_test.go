package clustertest

import (
	"fmt"
	"net/http"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
)

func scrape(t *testing.T, n *Node) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + n.N.MetricsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

// value sums a family's samples whose labels include want.
func value(fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	f, ok := fams[name]
	if !ok {
		return 0, false
	}
	sum := 0.0
	for _, m := range f.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		match := true
		for k, v := range want {
			match = match && labels[k] == v
		}
		if !match {
			continue
		}
		switch {
		case m.GetCounter() != nil:
			sum += m.GetCounter().GetValue()
		case m.GetGauge() != nil:
			sum += m.GetGauge().GetValue()
		case m.GetHistogram() != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return sum, true
}

func TestMetricsArePresentAndMove(t *testing.T) {
	c := New(t, Options{Nodes: 3, Metrics: true, Gossip: true})
	leader := c.WaitLeader()
	follower := c.Followers()[0]
	_, secret := setup(t, c, follower)
	before := scrape(t, leader)
	for _, name := range []string{
		"mysterybox_grpc_requests_total", "mysterybox_grpc_request_duration_seconds", "mysterybox_raft_state",
		"mysterybox_raft_term", "mysterybox_raft_commit_index", "mysterybox_raft_applied_index", "mysterybox_raft_last_contact_seconds",
		"mysterybox_fsm_apply_duration_seconds", "mysterybox_fsm_apply_batch_entries", "mysterybox_pebble_disk_bytes",
		"mysterybox_pebble_compactions_total", "mysterybox_pebble_written_bytes_total", "mysterybox_secrets", "mysterybox_versions", "mysterybox_gossip_members",
		"go_goroutines", "process_resident_memory_bytes",
	} {
		if _, ok := before[name]; !ok {
			t.Errorf("metric %s missing", name)
		}
	}
	if v, _ := value(before, "mysterybox_raft_state", map[string]string{"state": "leader"}); v != 1 {
		t.Errorf("leader's raft_state{state=leader} = %v", v)
	}
	if v, _ := value(before, "mysterybox_gossip_members", map[string]string{"health": "alive"}); v != 3 {
		t.Errorf("gossip members alive = %v, want 3", v)
	}
	voters, _ := value(before, "mysterybox_raft_voters", nil)
	nonvoters, ok := value(before, "mysterybox_raft_nonvoters", nil)
	if voters != 3 || nonvoters != 0 || !ok {
		t.Errorf("raft_voters %v, raft_nonvoters %v (present %v): want 3 and 0", voters, nonvoters, ok)
	}
	if refused, ok := value(before, "mysterybox_audit_records_refused_total", nil); !ok || refused != 0 {
		t.Errorf("audit_records_refused_total %v (present %v), want 0", refused, ok)
	}
	applied0, _ := value(before, "mysterybox_raft_applied_index", nil)
	calls0, _ := value(before, "mysterybox_grpc_requests_total", map[string]string{"method": "/mysterybox.v1.SecretVersionService/Create"})
	fwd0, _ := value(scrape(t, follower), "mysterybox_forwarded_calls_total", nil)
	for i := 0; i < 5; i++ {
		if _, err := pb.NewSecretVersionServiceClient(c.Conn(follower)).Create(ctxT(t), &pb.CreateSecretVersionRequest{Version: &pb.SecretVersion{
			Metadata: &pb.Metadata{ParentId: secret.GetMetadata().GetId()}, Spec: &pb.SecretVersionSpec{Payload: payload("k", fmt.Sprint(i))}}}); err != nil {
			t.Fatal(err)
		}
	}
	after := scrape(t, leader)
	applied1, _ := value(after, "mysterybox_raft_applied_index", nil)
	calls1, _ := value(after, "mysterybox_grpc_requests_total", map[string]string{"method": "/mysterybox.v1.SecretVersionService/Create", "code": "OK"})
	fwd1, _ := value(scrape(t, follower), "mysterybox_forwarded_calls_total", nil)
	if applied1 < applied0+5 || calls1 < calls0+5 || fwd1 < fwd0+5 {
		t.Fatalf("metrics did not move: applied %v->%v, leader Create calls %v->%v, follower forwarded %v->%v", applied0, applied1, calls0, calls1, fwd0, fwd1)
	}
	// A snapshot records how long its checkpoint held the applies.
	ck0, ok := value(after, "mysterybox_fsm_snapshot_checkpoint_duration_seconds", nil)
	if !ok {
		t.Fatal("metric mysterybox_fsm_snapshot_checkpoint_duration_seconds missing")
	}
	if err := leader.N.Raft.Snapshot(); err != nil {
		t.Fatal(err)
	}
	if ck1, _ := value(scrape(t, leader), "mysterybox_fsm_snapshot_checkpoint_duration_seconds", nil); ck1 != ck0+1 {
		t.Fatalf("checkpoints observed %v -> %v after one snapshot", ck0, ck1)
	}
}

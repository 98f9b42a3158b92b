package loadgen_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/mysterybox/mysterybox/cluster/clustertest"
	"github.com/mysterybox/mysterybox/loadgen"
)

// The MysteryBox target against a 3-node in-process region: every kind of
// operation succeeds through followers as well as the leader.
func TestMysteryBoxTarget(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a region")
	}
	c := clustertest.New(t, clustertest.Options{Nodes: 3})
	c.WaitLeader()
	var eps []string
	for _, n := range c.Nodes {
		eps = append(eps, n.Cfg.GRPCAddr)
	}
	tgt, err := loadgen.NewMysteryBox(loadgen.MysteryBoxConfig{Endpoints: eps, Token: c.AdminToken, ValueSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	defer tgt.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := tgt.Prepare(ctx, 10); err != nil {
		t.Fatal(err)
	}
	var results []*loadgen.Result
	for _, s := range []loadgen.Scenario{
		{Op: loadgen.OpWrite, Clients: 3, Duration: 300 * time.Millisecond},
		{Op: loadgen.OpRead, Clients: 3, Duration: 300 * time.Millisecond},
		{Op: loadgen.OpStaleRead, Clients: 3, Duration: 300 * time.Millisecond},
		{Op: loadgen.OpMix, ReadFraction: 0.5, Clients: 3, Rate: 50, Duration: 300 * time.Millisecond},
	} {
		r, err := loadgen.Run(ctx, tgt, s, loadgen.Config{Keys: 10})
		if err != nil {
			t.Fatal(err)
		}
		if r.Errors != 0 || r.Ops == 0 {
			t.Fatalf("%s: %d ops, %d errors (%s)", r.Scenario.Name, r.Ops, r.Errors, r.FirstError)
		}
		results = append(results, r)
	}
	var buf bytes.Buffer
	if err := loadgen.WriteTable(&buf, results); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "stale-read c=3") {
		t.Fatalf("table:\n%s", buf.String())
	}
	if err := tgt.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}

	// Plain gRPC connections without idempotency keys.
	raw, err := loadgen.NewMysteryBox(loadgen.MysteryBoxConfig{Endpoints: eps, Token: c.AdminToken, NoIdempotencyKey: true, ProjectID: tgt.Project(), SecretPrefix: "raw-"})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if err := raw.Prepare(ctx, 3); err != nil {
		t.Fatal(err)
	}
	r, err := loadgen.Run(ctx, raw, loadgen.Scenario{Op: loadgen.OpMix, ReadFraction: 0.5, Clients: 3, Duration: 300 * time.Millisecond}, loadgen.Config{Keys: 3})
	if err != nil || r.Errors != 0 || r.Ops == 0 {
		t.Fatalf("raw: %v, %d ops, %d errors (%s)", err, r.Ops, r.Errors, r.FirstError)
	}
}

package client

import (
	"context"
	"slices"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	mbv1 "github.com/mysterybox/mysterybox/api/mysteryboxv1"
)

// hintingSecrets answers as fakeSecrets and names leader in its response
// headers, as every MysteryBox node does.
type hintingSecrets struct {
	fakeSecrets
	leader string
}

func (h *hintingSecrets) Create(ctx context.Context, req *mbv1.CreateSecretRequest) (*mbv1.Secret, error) {
	grpc.SetHeader(ctx, metadata.Pairs(HeaderLeader, h.leader))
	return h.fakeSecrets.Create(ctx, req)
}

// With discovery disabled the client keeps to Endpoints: a leader named
// outside them (its advertised address may be unreachable from here, as
// behind a port-forward) is not followed; one among them is.
func TestLeaderHintWithoutDiscoveryKeepsToEndpoints(t *testing.T) {
	leader := &fakeSecrets{}
	leaderAddr := startFake(t, leader)
	seed := &hintingSecrets{leader: leaderAddr}
	seedAddr := startFake(t, seed)

	c := newClient(t, Config{Endpoints: []string{seedAddr}, DisableDiscovery: true})
	for range 3 {
		if _, err := c.Secrets().Create(context.Background(), createReq()); err != nil {
			t.Fatal(err)
		}
	}
	if got := seed.count("Create"); got != 3 || leader.count("Create") != 0 {
		t.Fatalf("writes: %d on the configured endpoint, %d on the named leader; want 3 and 0", got, leader.count("Create"))
	}
	if eps := c.Endpoints(); !slices.Equal(eps, []string{seedAddr}) || c.Leader() != "" {
		t.Fatalf("Endpoints() = %v, Leader() = %q: want only the configured endpoint, no leader", eps, c.Leader())
	}

	both := newClient(t, Config{Endpoints: []string{seedAddr, leaderAddr}, DisableDiscovery: true})
	for range 3 {
		if _, err := both.Secrets().Create(context.Background(), createReq()); err != nil {
			t.Fatal(err)
		}
	}
	if both.Leader() != leaderAddr || leader.count("Create") != 2 {
		t.Fatalf("leader among the endpoints: Leader() = %q, %d writes on it; want %s and the 2 after the first answer", both.Leader(), leader.count("Create"), leaderAddr)
	}
}

package server

import (
	"context"
	"crypto/sha256"
	"sync/atomic"
	"testing"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/fsm/fsmpb"
	"github.com/mysterybox/mysterybox/store"
)

// A call is authenticated from the view it is served from, never from a
// second one: a nested Store.Read queues behind a restore (or close) that
// waits for the first view to end, and the node deadlocks. So a token
// created after the view was taken is unknown to that view's call, and the
// miss it caches does not hide the token from the calls after it.
func TestAuthenticationReadsTheCallsOwnView(t *testing.T) {
	st, err := store.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var gen atomic.Uint64 // as the FSM's: moved after each identity commit
	s := &Server{store: st, logger: hclog.NewNullLogger(), cfg: Config{IdentityGeneration: gen.Load}}

	secret := "s3cret"
	sum := sha256.Sum256([]byte(secret))
	putToken := func(id string) {
		b := st.NewBatch()
		defer b.Close()
		if err := b.PutToken(&fsmpb.TokenRecord{
			Token:      &pb.Token{Metadata: &pb.Metadata{Id: id, ParentId: "serviceaccount-1"}},
			SecretHash: sum[:],
		}); err != nil {
			t.Fatal(err)
		}
		if err := b.Commit(); err != nil {
			t.Fatal(err)
		}
		gen.Add(1)
	}
	ctx := context.WithValue(context.Background(), bearerKey{}, &bearer{tokenID: "token-late", secret: secret})
	anyone := access{} // authentication only

	viewGen := gen.Load()
	err = st.Read(func(v *store.View) error {
		putToken("token-late") // committed after this view was taken
		_, err := s.authorize(ctx, v, viewGen, anyone)
		if status.Code(err) != codes.Unauthenticated {
			t.Errorf("a token newer than the call's view: %v, want Unauthenticated", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.readAuthorized(ctx, anyone, func(*store.View, *caller) error { return nil }); err != nil {
		t.Fatalf("the next call, with the token in its view: %v", err)
	}
}

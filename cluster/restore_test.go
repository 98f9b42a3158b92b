package cluster

import (
	"errors"
	"fmt"
	"testing"

	"github.com/hashicorp/raft"
)

// A restore refused with a leadership error may have taken effect on this
// node already (the closing no-op is refused the same way), so the caller
// hears "outcome unknown" (UNAVAILABLE), never an internal error or a
// plain "not the leader" that would say nothing happened.
func TestRestoreLeadershipErrorsAreUnknownOutcomes(t *testing.T) {
	for _, err := range []error{raft.ErrNotLeader, raft.ErrLeadershipLost, raft.ErrLeadershipTransferInProgress, raft.ErrRaftShutdown} {
		if got := restoreOutcome(err); !errors.Is(got, ErrUnknownOutcome) {
			t.Errorf("raft.Restore failing with %q: %v, want ErrUnknownOutcome", err, got)
		}
	}
	other := fmt.Errorf("failed to restore snapshot: %w", errors.New("disk full"))
	if got := restoreOutcome(other); got != other {
		t.Errorf("another failure became %v", got)
	}
	if restoreOutcome(nil) != nil {
		t.Error("success became an error")
	}
}

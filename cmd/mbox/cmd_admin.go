package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	mbv1 "github.com/mysterybox/mysterybox/api/mysteryboxv1"
)

// maxRewrapStalls is how many Rewrap calls in a row may make no progress (none
// re-wrapped and remaining not down) before admin rewrap gives up instead of
// looping forever.
const maxRewrapStalls = 3

func (a *app) adminCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "admin",
		Short: "Region administration",
		Args:  cobra.NoArgs,
		RunE:  groupRunE,
	}
	cmd.AddCommand(a.adminRewrapCmd())
	return cmd
}

func (a *app) adminRewrapCmd() *cobra.Command {
	var batch int32
	cmd := &cobra.Command{
		Use:   "rewrap [--batch-size N]",
		Short: "Re-wrap every data key under the keyring's active key",
		Long: `Re-wrap the data keys of all secret versions under the keyring's active key,
one batch per call, until none is left under an older key; then the older keys
can leave the keyring. Each batch is one Raft command, so the command is safe to
interrupt (Ctrl-C) and to run again, also concurrently: it resumes where it
stopped.

Progress ("rewrapped 300, 1200 remaining") is shown on stderr when stderr is a
terminal. The result goes to stdout: in text "rewrapped N data keys; keys in
use: K", in json/yaml a RewrapResponse whose rewrapped is the total of this run.
--timeout bounds each batch, not the whole run.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cmd.Flags().Changed("batch-size") && batch < 1 {
				return usageErr("--batch-size must be positive")
			}
			cl, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			sum := &mbv1.RewrapResponse{}
			progress := false
			endProgress := func() {
				if progress {
					fmt.Fprintln(a.stderr)
					progress = false
				}
			}
			prev, stalls := int64(-1), 0
			for {
				r, err := cl.Admin().Rewrap(cmd.Context(), &mbv1.RewrapRequest{BatchSize: batch})
				if err != nil {
					endProgress()
					return rewrapErr(err, sum.Rewrapped)
				}
				sum.Rewrapped += r.GetRewrapped()
				sum.Remaining = r.GetRemaining()
				sum.ActiveKeyId = r.GetActiveKeyId()
				sum.KeysInUse = r.GetKeysInUse()
				if r.GetRemaining() <= 0 {
					break
				}
				if a.stderrTTY {
					fmt.Fprintf(a.stderr, "\rrewrapped %d, %d remaining\x1b[K", sum.Rewrapped, r.GetRemaining())
					progress = true
				}
				if r.GetRewrapped() == 0 && (prev < 0 || r.GetRemaining() >= prev) {
					stalls++
				} else {
					stalls = 0
				}
				if stalls >= maxRewrapStalls {
					endProgress()
					return localErr(codes.FailedPrecondition,
						"no progress: %d data keys remain under an older key but %d calls in a row re-wrapped none (re-wrapped %d in all)",
						r.GetRemaining(), stalls, sum.Rewrapped)
				}
				prev = r.GetRemaining()
			}
			endProgress()
			return a.emit(sum, func(w io.Writer) {
				inUse := strings.Join(sum.GetKeysInUse(), ", ")
				if inUse == "" {
					inUse = "none"
				}
				fmt.Fprintf(w, "rewrapped %d data keys; keys in use: %s\n", sum.GetRewrapped(), inUse)
			})
		},
	}
	cmd.Flags().Int32Var(&batch, "batch-size", 0, "versions re-wrapped per call (default: the server's, 100)")
	return cmd
}

// rewrapErr keeps the code of a failed Rewrap call and says how far the run
// got, so the user knows a rerun resumes rather than starts over.
func rewrapErr(err error, done int64) error {
	if done == 0 {
		return err
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	return status.Errorf(st.Code(), "%s (re-wrapped %d data keys before this error; rerun to continue)", st.Message(), done)
}

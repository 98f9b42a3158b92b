package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/mysterybox/mysterybox/api/client"
	mbv1 "github.com/mysterybox/mysterybox/api/mysteryboxv1"
)

func (a *app) tokenCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Manage an account's access tokens",
		Args:  cobra.NoArgs,
		RunE:  groupRunE,
	}
	cmd.AddCommand(a.tokenCreateCmd(), a.tokenListCmd(), a.tokenGetCmd(), a.tokenRevokeCmd())
	return cmd
}

// parseTTL parses --ttl: a Go duration ("12h", "90m"), a number of days
// ("30d"), or days followed by a Go duration ("1d12h"). "0" means no expiry.
func parseTTL(s string) (time.Duration, error) {
	bad := func() (time.Duration, error) {
		return 0, usageErr("--ttl %q: want a duration such as 12h, 30d or 1d12h (0: no expiry)", s)
	}
	s = strings.TrimSpace(s)
	if s == "" {
		return bad()
	}
	var days int64
	rest := s
	if i := strings.IndexByte(s, 'd'); i >= 0 {
		n, err := strconv.ParseInt(s[:i], 10, 64)
		if err != nil || n < 0 || n > math.MaxInt64/int64(24*time.Hour) {
			return bad()
		}
		days, rest = n, s[i+1:]
		if rest != "" && (rest[0] == '-' || rest[0] == '+') {
			return bad()
		}
	}
	d := time.Duration(0)
	if rest != "" {
		var err error
		if d, err = time.ParseDuration(rest); err != nil || d < 0 {
			return bad()
		}
	}
	dayPart := time.Duration(days) * 24 * time.Hour
	if d > math.MaxInt64-dayPart {
		return bad()
	}
	return dayPart + d, nil
}

func (a *app) tokenCreateCmd() *cobra.Command {
	var accountID, ttl, description string
	cmd := &cobra.Command{
		Use:   "create --account-id A [--ttl DURATION] [--description D]",
		Short: "Create a token for an account and print it (shown only once)",
		Long: `Create an access token for an account.

In text format only the bearer token and a newline are printed on stdout, so
TOKEN=$(mbox token create ...) captures it exactly; a note goes to stderr.
With -o json or -o yaml the whole response is printed, the bearer token in
"secret". The token cannot be shown again: the server keeps only a hash.

--ttl is a Go duration (12h, 90m), a number of days (30d) or both (1d12h);
0 or no --ttl means the token does not expire.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &mbv1.CreateTokenRequest{AccountId: accountID, Description: description}
			d, err := parseTTL(ttl)
			if err != nil {
				return err
			}
			if d > 0 {
				req.Ttl = durationpb.New(d)
			}
			cl, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			resp, err := cl.Identity().CreateToken(cmd.Context(), req)
			if err != nil {
				return err
			}
			if resp.GetSecret() == "" {
				return localErr(codes.Internal, "the server returned no token for %s", resp.GetToken().GetMetadata().GetId())
			}
			if a.format != "text" {
				return a.emit(resp, nil)
			}
			if _, err := io.WriteString(a.stdout, resp.GetSecret()+"\n"); err != nil {
				return localErr(codes.Unknown, "write stdout: %v", err)
			}
			tok := resp.GetToken()
			fmt.Fprintf(a.stderr, "note: token %s (expires: %s) is shown only once; store it now\n",
				tok.GetMetadata().GetId(), expiry(tok.GetSpec().GetExpiresAt()))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&accountID, "account-id", "", "account the token authenticates")
	f.StringVar(&ttl, "ttl", "0", "lifetime: Go duration (12h), days (30d) or both (1d12h); 0: no expiry")
	f.StringVar(&description, "description", "", "description")
	cmd.MarkFlagRequired("account-id")
	return cmd
}

func (a *app) tokenListCmd() *cobra.Command {
	var accountID string
	cmd := listCmd(a, "list --account-id A", "List an account's tokens (never their secret part)",
		func(ctx context.Context, cl *client.Client, size int32, token string) (*mbv1.ListTokensResponse, error) {
			return cl.Identity().ListTokens(ctx, &mbv1.ListTokensRequest{AccountId: accountID, PageSize: size, PageToken: token})
		},
		(*mbv1.ListTokensResponse).GetTokens,
		func(toks []*mbv1.Token, next string) *mbv1.ListTokensResponse {
			return &mbv1.ListTokensResponse{Tokens: toks, NextPageToken: next}
		},
		tokensText)
	cmd.Flags().StringVar(&accountID, "account-id", "", "account id")
	cmd.MarkFlagRequired("account-id")
	return cmd
}

func (a *app) tokenGetCmd() *cobra.Command {
	return getCmd(a, "Show a token's metadata", func(ctx context.Context, cl *client.Client, id string) (*mbv1.Token, error) {
		return cl.Identity().GetToken(ctx, &mbv1.GetTokenRequest{Id: id})
	}, tokenText)
}

func (a *app) tokenRevokeCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a token: calls with it fail with UNAUTHENTICATED from now on",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			resp, err := cl.Identity().RevokeToken(cmd.Context(), &mbv1.RevokeTokenRequest{Id: args[0]})
			if err != nil {
				return err
			}
			return a.emit(resp, func(w io.Writer) { fmt.Fprintf(w, "revoked token %s\n", args[0]) })
		},
	}
}

package main

import (
	"context"
	"io"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

	"github.com/mysterybox/mysterybox/api/client"
)

// listResponse is what every List RPC answers: a page of items and the token
// of the next page.
type listResponse interface {
	proto.Message
	GetNextPageToken() string
}

// listCmd builds a `list` command with the --page-size/--page-token flags:
// it reads every page (or one, with --page-size), gathers the items into one
// response and prints it. fetch makes one List call; items takes a page's
// items out of a response and gather puts the printed response together, so
// -o json/yaml show the same message the RPC returns. The caller adds the
// command's own flags, which fetch reads when it runs.
func listCmd[R listResponse, T any](a *app, use, short string,
	fetch func(ctx context.Context, cl *client.Client, size int32, token string) (R, error),
	items func(R) []T,
	gather func(items []T, next string) R,
	text func([]T) func(io.Writer),
) *cobra.Command {
	var pg paging
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := pg.check(cmd); err != nil {
				return err
			}
			cl, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			var all []T
			next, err := pg.each(func(size int32, token string) (string, error) {
				r, err := fetch(cmd.Context(), cl, size, token)
				if err != nil {
					return "", err
				}
				all = append(all, items(r)...)
				return r.GetNextPageToken(), nil
			})
			if err != nil {
				return err
			}
			return a.emitList(gather(all, next), next, text(all))
		},
	}
	pg.register(cmd)
	return cmd
}

package main

import (
	"context"
	"io"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

	"github.com/mysterybox/mysterybox/api/client"
)

// getCmd builds a `get ID` command: fetch one resource by id and print it.
func getCmd[T proto.Message](a *app, short string, fetch func(ctx context.Context, cl *client.Client, id string) (T, error), text func(T) func(io.Writer)) *cobra.Command {
	return &cobra.Command{
		Use:   "get ID",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			m, err := fetch(cmd.Context(), cl, args[0])
			if err != nil {
				return err
			}
			return a.emit(m, text(m))
		},
	}
}

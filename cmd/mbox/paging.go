package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
)

// maxPages bounds how many pages a list follows, so a server that keeps
// answering with a token cannot make mbox loop forever.
const maxPages = 100000

// paging holds the --page-size/--page-token flags of a list command. Without
// --page-size the command follows every page; with it, it returns one page
// and its next_page_token.
type paging struct {
	size  int32
	token string
	one   bool
}

func (p *paging) register(cmd *cobra.Command) {
	cmd.Flags().Int32Var(&p.size, "page-size", 0, "return one page of at most N items (default: follow all pages)")
	cmd.Flags().StringVar(&p.token, "page-token", "", "start at this page token (from a previous next_page_token)")
}

// check validates the flags; call it first in RunE.
func (p *paging) check(cmd *cobra.Command) error {
	p.one = cmd.Flags().Changed("page-size")
	if p.size < 0 || (p.one && p.size == 0) {
		return usageErr("--page-size must be positive")
	}
	return nil
}

// each calls fetch for each page and returns the last next_page_token
// (empty when every page was read).
func (p *paging) each(fetch func(size int32, token string) (string, error)) (string, error) {
	token := p.token
	for range maxPages {
		next, err := fetch(p.size, token)
		if err != nil {
			return "", err
		}
		if p.one || next == "" {
			return next, nil
		}
		if next == token {
			return "", localErr(codes.Internal, "server returned the same page token twice")
		}
		token = next
	}
	return "", localErr(codes.Internal, "more than %d pages", maxPages)
}

// emitList prints a list response. In text mode the next page token, if any,
// goes to stderr so stdout stays a clean table.
func (a *app) emitList(m proto.Message, next string, text func(io.Writer)) error {
	if err := a.emit(m, text); err != nil {
		return err
	}
	if next != "" && a.format == "text" {
		fmt.Fprintf(a.stderr, "more results: --page-token %s\n", next)
	}
	return nil
}

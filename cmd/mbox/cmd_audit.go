package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"

	mbv1 "github.com/mysterybox/mysterybox/api/mysteryboxv1"
)

func (a *app) auditCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Read and verify the region's audit log (region admin)",
		Args:  cobra.NoArgs,
		RunE:  groupRunE,
	}
	var since, account, resource string
	var pageSize int32
	list := &cobra.Command{
		Use:   "list [--since TIME|DURATION] [--account ID] [--resource ID]",
		Short: "List audit records, oldest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &mbv1.ListAuditRequest{AccountId: account, ResourceId: resource, PageSize: pageSize}
			if since != "" {
				t, err := parseSince(since)
				if err != nil {
					return usageErr("--since %q: %v", since, err)
				}
				req.Since = timestamppb.New(t)
			}
			cl, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			resp := &mbv1.ListAuditResponse{}
			for {
				page, err := cl.Audit().List(cmd.Context(), req)
				if err != nil {
					return err
				}
				resp.Records = append(resp.Records, page.GetRecords()...)
				if page.GetNextPageToken() == "" || pageSize > 0 {
					resp.NextPageToken = page.GetNextPageToken()
					break
				}
				req.PageToken = page.GetNextPageToken()
			}
			return a.emit(resp, func(w io.Writer) {
				rows := make([][]string, 0, len(resp.GetRecords()))
				for _, r := range resp.GetRecords() {
					m := r.GetMethod()
					m = m[strings.LastIndex(m, ".")+1:]
					rows = append(rows, []string{fmt.Sprint(r.GetSeq()), ts(r.GetTime()), r.GetAccountId(), m, strings.Join(r.GetResourceIds(), ","), r.GetCode(), r.GetNodeId()})
				}
				writeTable(w, []string{"SEQ", "TIME", "ACCOUNT", "METHOD", "RESOURCES", "CODE", "NODE"}, rows)
			})
		},
	}
	list.Flags().StringVar(&since, "since", "", "only records at or after this RFC 3339 time, or this long ago (e.g. 24h)")
	list.Flags().StringVar(&account, "account", "", "only records of this account")
	list.Flags().StringVar(&resource, "resource", "", "only records naming this resource id")
	list.Flags().Int32Var(&pageSize, "page-size", 0, "one page of this size (default: every page)")
	verify := &cobra.Command{
		Use:   "verify",
		Short: "Walk the audit chain and report the first record that was altered or removed",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			resp, err := cl.Audit().Verify(cmd.Context(), &mbv1.VerifyAuditRequest{})
			if err != nil {
				return err
			}
			if err := a.emit(resp, func(w io.Writer) {
				if resp.GetOk() {
					fmt.Fprintf(w, "ok: %s\n", resp.GetMessage())
				} else {
					fmt.Fprintf(w, "BROKEN at record %d: %s\n", resp.GetFirstBreakSeq(), resp.GetMessage())
				}
			}); err != nil {
				return err
			}
			if !resp.GetOk() {
				return &cliError{name: "DATA_LOSS", exit: 1, msg: fmt.Sprintf("the audit chain is broken at record %d", resp.GetFirstBreakSeq())}
			}
			return nil
		},
	}
	cmd.AddCommand(list, verify)
	return cmd
}

func parseSince(s string) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		return time.Now().Add(-d), nil
	}
	return time.Parse(time.RFC3339, s)
}

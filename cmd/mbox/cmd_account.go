package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/mysterybox/mysterybox/api/client"
	mbv1 "github.com/mysterybox/mysterybox/api/mysteryboxv1"
)

func (a *app) accountCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "account",
		Short: "Manage service and user accounts",
		Args:  cobra.NoArgs,
		RunE:  groupRunE,
	}
	cmd.AddCommand(a.accountCreateCmd(), a.accountListCmd(), a.accountGetCmd(), a.accountDeleteCmd())
	return cmd
}

// parseAccountType maps --type to the enum.
func parseAccountType(s string) (mbv1.AccountType, error) {
	switch strings.ToLower(s) {
	case "service":
		return mbv1.AccountType_SERVICE, nil
	case "user":
		return mbv1.AccountType_USER, nil
	}
	return 0, usageErr("--type %q: want service or user", s)
}

func (a *app) accountCreateCmd() *cobra.Command {
	var name, typ, description string
	var labelFlags []string
	cmd := &cobra.Command{
		Use:   "create --name N [--type service|user]",
		Short: "Create an account in the region",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, err := parseAccountType(typ)
			if err != nil {
				return err
			}
			lbls, err := parseLabels(labelFlags)
			if err != nil {
				return err
			}
			cl, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			acc, err := cl.Identity().CreateAccount(cmd.Context(), &mbv1.CreateAccountRequest{Account: &mbv1.Account{
				Metadata: &mbv1.Metadata{Name: name, Labels: lbls},
				Spec:     &mbv1.AccountSpec{Type: t, Description: description},
			}})
			if err != nil {
				return err
			}
			return a.emit(acc, accountText(acc))
		},
	}
	f := cmd.Flags()
	f.StringVar(&name, "name", "", "account name")
	f.StringVar(&typ, "type", "service", "account type: service or user")
	f.StringVar(&description, "description", "", "description")
	f.StringArrayVar(&labelFlags, "label", nil, "label KEY=VALUE (repeatable)")
	cmd.MarkFlagRequired("name")
	return cmd
}

func (a *app) accountListCmd() *cobra.Command {
	return listCmd(a, "list", "List the region's accounts",
		func(ctx context.Context, cl *client.Client, size int32, token string) (*mbv1.ListAccountsResponse, error) {
			return cl.Identity().ListAccounts(ctx, &mbv1.ListAccountsRequest{PageSize: size, PageToken: token})
		},
		(*mbv1.ListAccountsResponse).GetAccounts,
		func(as []*mbv1.Account, next string) *mbv1.ListAccountsResponse {
			return &mbv1.ListAccountsResponse{Accounts: as, NextPageToken: next}
		},
		accountsText)
}

func (a *app) accountGetCmd() *cobra.Command {
	return getCmd(a, "Show an account", func(ctx context.Context, cl *client.Client, id string) (*mbv1.Account, error) {
		return cl.Identity().GetAccount(ctx, &mbv1.GetAccountRequest{Id: id})
	}, accountText)
}

func (a *app) accountDeleteCmd() *cobra.Command {
	var rv int64
	cmd := &cobra.Command{
		Use:   "delete ID",
		Short: "Delete an account, revoking its tokens and removing its access bindings",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			resp, err := cl.Identity().DeleteAccount(cmd.Context(), &mbv1.DeleteAccountRequest{Id: args[0], ResourceVersion: rv})
			if err != nil {
				return err
			}
			return a.emit(resp, func(w io.Writer) {
				fmt.Fprintf(w, "deleted account %s: revoked %s, removed %s\n", args[0],
					plural(resp.GetRevokedTokens(), "token"), plural(resp.GetRemovedBindings(), "access binding"))
			})
		},
	}
	cmd.Flags().Int64Var(&rv, "resource-version", 0, "fail with ABORTED unless the account is at this version (0: any)")
	return cmd
}

// plural is "1 token", "2 tokens".
func plural(n int64, noun string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, noun)
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/mysterybox/mysterybox/api/client"
	mbv1 "github.com/mysterybox/mysterybox/api/mysteryboxv1"
)

// roles are the roles an access binding can grant (SPEC section 3).
var roles = []string{
	"mysterybox.viewer",
	"mysterybox.payload-viewer",
	"mysterybox.editor",
	"mysterybox.admin",
	"admin",
}

// checkRole rejects an unknown role before any call is made.
func checkRole(role string) error {
	if slices.Contains(roles, role) {
		return nil
	}
	return usageErr("--role %q: want one of %s", role, strings.Join(roles, ", "))
}

func (a *app) accessBindingCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "access-binding",
		Short: "Grant roles to accounts on the region, a project or a secret",
		Args:  cobra.NoArgs,
		RunE:  groupRunE,
	}
	cmd.AddCommand(a.bindingCreateCmd(), a.bindingListCmd(), a.bindingGetCmd(), a.bindingDeleteCmd())
	return cmd
}

func (a *app) bindingCreateCmd() *cobra.Command {
	var resourceID, accountID, role string
	cmd := &cobra.Command{
		Use:   "create --resource-id R --account-id A --role ROLE",
		Short: "Grant a role to an account on a resource",
		Long: `Grant ROLE to an account on a resource: a project id, a secret id, or the
region's name. ROLE is one of:

  mysterybox.viewer          get/list secrets and versions (no payload)
  mysterybox.payload-viewer  viewer + read payloads
  mysterybox.editor          viewer + create/update/delete/undelete secrets and versions
  mysterybox.admin           everything on the resource, including its access bindings
  admin                      (on the region only) everything in the region`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkRole(role); err != nil {
				return err
			}
			cl, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			b, err := cl.Identity().CreateAccessBinding(cmd.Context(), &mbv1.CreateAccessBindingRequest{Binding: &mbv1.AccessBinding{
				Spec: &mbv1.AccessBindingSpec{ResourceId: resourceID, AccountId: accountID, Role: role},
			}})
			if err != nil {
				return err
			}
			return a.emit(b, bindingText(b))
		},
	}
	f := cmd.Flags()
	f.StringVar(&resourceID, "resource-id", "", "project id, secret id or region name")
	f.StringVar(&accountID, "account-id", "", "account granted the role")
	f.StringVar(&role, "role", "", "role: "+strings.Join(roles, ", "))
	cmd.MarkFlagRequired("resource-id")
	cmd.MarkFlagRequired("account-id")
	cmd.MarkFlagRequired("role")
	return cmd
}

func (a *app) bindingListCmd() *cobra.Command {
	var resourceID string
	cmd := listCmd(a, "list --resource-id R", "List the access bindings on a resource",
		func(ctx context.Context, cl *client.Client, size int32, token string) (*mbv1.ListAccessBindingsResponse, error) {
			return cl.Identity().ListAccessBindings(ctx, &mbv1.ListAccessBindingsRequest{ResourceId: resourceID, PageSize: size, PageToken: token})
		},
		(*mbv1.ListAccessBindingsResponse).GetBindings,
		func(bs []*mbv1.AccessBinding, next string) *mbv1.ListAccessBindingsResponse {
			return &mbv1.ListAccessBindingsResponse{Bindings: bs, NextPageToken: next}
		},
		bindingsText)
	cmd.Flags().StringVar(&resourceID, "resource-id", "", "project id, secret id or region name")
	cmd.MarkFlagRequired("resource-id")
	return cmd
}

func (a *app) bindingGetCmd() *cobra.Command {
	return getCmd(a, "Show an access binding", func(ctx context.Context, cl *client.Client, id string) (*mbv1.AccessBinding, error) {
		return cl.Identity().GetAccessBinding(ctx, &mbv1.GetAccessBindingRequest{Id: id})
	}, bindingText)
}

func (a *app) bindingDeleteCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "delete ID",
		Short: "Remove an access binding",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			resp, err := cl.Identity().DeleteAccessBinding(cmd.Context(), &mbv1.DeleteAccessBindingRequest{Id: args[0]})
			if err != nil {
				return err
			}
			return a.emit(resp, func(w io.Writer) { fmt.Fprintf(w, "deleted access binding %s\n", args[0]) })
		},
	}
}

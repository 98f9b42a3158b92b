package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/mysterybox/mysterybox/api/client"
	mbv1 "github.com/mysterybox/mysterybox/api/mysteryboxv1"
)

func (a *app) versionCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Manage secret versions",
		Args:  cobra.NoArgs,
		RunE:  groupRunE,
	}
	cmd.AddCommand(a.versionCreateCmd(), a.versionGetCmd(), a.versionListCmd(), a.versionDeleteCmd(), a.versionUndeleteCmd())
	return cmd
}

func (a *app) versionCreateCmd() *cobra.Command {
	var parent, description string
	var setPrimary bool
	var pf payloadFlags
	cmd := &cobra.Command{
		Use:   "create --parent-id SECRET (--payload K=V | --payload-file K=PATH | --generate K[=LEN])...",
		Short: "Add a version to a secret",
		Long: `Add a version with the given payload entries. The new version becomes the
primary unless another one is pinned; --set-primary pins the new one.
Payload values are never printed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if pf.empty() {
				return usageErr("give at least one --payload, --payload-file or --generate")
			}
			p, err := pf.build(a.stdin)
			if err != nil {
				return err
			}
			cl, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			v, err := cl.Versions().Create(cmd.Context(), &mbv1.CreateSecretVersionRequest{Version: &mbv1.SecretVersion{
				Metadata: &mbv1.Metadata{ParentId: parent},
				Spec:     &mbv1.SecretVersionSpec{Description: description, Payload: p, SetPrimary: setPrimary},
			}})
			if err != nil {
				return err
			}
			return a.emit(v, versionText(v))
		},
	}
	f := cmd.Flags()
	f.StringVar(&parent, "parent-id", "", "secret id")
	f.StringVar(&description, "description", "", "description")
	f.BoolVar(&setPrimary, "set-primary", false, "pin the new version as the secret's primary")
	pf.register(cmd)
	cmd.MarkFlagRequired("parent-id")
	return cmd
}

func (a *app) versionGetCmd() *cobra.Command {
	var showDeleted bool
	cmd := getCmd(a, "Show a version (never its payload)", func(ctx context.Context, cl *client.Client, id string) (*mbv1.SecretVersion, error) {
		return cl.Versions().Get(ctx, &mbv1.GetSecretVersionRequest{Id: id, ShowScheduledForDeletion: showDeleted})
	}, versionText)
	cmd.Flags().BoolVar(&showDeleted, "show-deleted", false, "also find a version scheduled for deletion")
	return cmd
}

func (a *app) versionListCmd() *cobra.Command {
	var parent string
	var showDeleted bool
	cmd := listCmd(a, "list --parent-id SECRET", "List a secret's versions",
		func(ctx context.Context, cl *client.Client, size int32, token string) (*mbv1.ListSecretVersionsResponse, error) {
			return cl.Versions().List(ctx, &mbv1.ListSecretVersionsRequest{
				ParentId: parent, PageSize: size, PageToken: token, ShowScheduledForDeletion: showDeleted,
			})
		},
		(*mbv1.ListSecretVersionsResponse).GetVersions,
		func(vs []*mbv1.SecretVersion, next string) *mbv1.ListSecretVersionsResponse {
			return &mbv1.ListSecretVersionsResponse{Versions: vs, NextPageToken: next}
		},
		versionsText)
	cmd.Flags().StringVar(&parent, "parent-id", "", "secret id")
	cmd.Flags().BoolVar(&showDeleted, "show-deleted", false, "include versions scheduled for deletion")
	cmd.MarkFlagRequired("parent-id")
	return cmd
}

func (a *app) versionDeleteCmd() *cobra.Command {
	var rv int64
	cmd := &cobra.Command{
		Use:   "delete ID",
		Short: "Schedule a version for deletion",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			v, err := cl.Versions().Delete(cmd.Context(), &mbv1.DeleteSecretVersionRequest{Id: args[0], ResourceVersion: rv})
			if err != nil {
				return err
			}
			return a.emit(v, versionText(v))
		},
	}
	cmd.Flags().Int64Var(&rv, "resource-version", 0, "fail with ABORTED unless the version is at this version (0: any)")
	return cmd
}

func (a *app) versionUndeleteCmd() *cobra.Command {
	var rv int64
	cmd := &cobra.Command{
		Use:   "undelete ID",
		Short: "Restore a version scheduled for deletion",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			v, err := cl.Versions().Undelete(cmd.Context(), &mbv1.UndeleteSecretVersionRequest{Id: args[0], ResourceVersion: rv})
			if err != nil {
				return err
			}
			return a.emit(v, versionText(v))
		},
	}
	cmd.Flags().Int64Var(&rv, "resource-version", 0, "fail with ABORTED unless the version is at this version (0: any)")
	return cmd
}

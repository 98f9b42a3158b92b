package main

import (
	"context"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/mysterybox/mysterybox/api/client"
	mbv1 "github.com/mysterybox/mysterybox/api/mysteryboxv1"
)

func (a *app) secretCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "secret",
		Short: "Manage secrets",
		Args:  cobra.NoArgs,
		RunE:  groupRunE,
	}
	cmd.AddCommand(a.secretCreateCmd(), a.secretGetCmd(), a.secretGetByNameCmd(), a.secretListCmd(),
		a.secretUpdateCmd(), a.secretDeleteCmd(), a.secretUndeleteCmd())
	return cmd
}

func (a *app) secretCreateCmd() *cobra.Command {
	var parent, name, description string
	var labelFlags []string
	var pf payloadFlags
	cmd := &cobra.Command{
		Use:   "create --parent-id PROJECT --name N",
		Short: "Create a secret, optionally with its first version",
		Long: `Create a secret. With --payload, --payload-file or --generate the secret gets
its first version with those entries. Payload values are never printed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			lbls, err := parseLabels(labelFlags)
			if err != nil {
				return err
			}
			spec := &mbv1.SecretSpec{Description: description}
			if !pf.empty() {
				p, err := pf.build(a.stdin)
				if err != nil {
					return err
				}
				spec.SecretVersion = &mbv1.SecretVersionSpec{Payload: p}
			}
			cl, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			s, err := cl.Secrets().Create(cmd.Context(), &mbv1.CreateSecretRequest{Secret: &mbv1.Secret{
				Metadata: &mbv1.Metadata{ParentId: parent, Name: name, Labels: lbls},
				Spec:     spec,
			}})
			if err != nil {
				return err
			}
			return a.emit(s, secretText(s))
		},
	}
	f := cmd.Flags()
	f.StringVar(&parent, "parent-id", "", "project id")
	f.StringVar(&name, "name", "", "secret name (unique among the project's live secrets)")
	f.StringVar(&description, "description", "", "description")
	f.StringArrayVar(&labelFlags, "label", nil, "label KEY=VALUE (repeatable)")
	pf.register(cmd)
	cmd.MarkFlagRequired("parent-id")
	cmd.MarkFlagRequired("name")
	return cmd
}

func (a *app) secretGetCmd() *cobra.Command {
	var showDeleted bool
	cmd := getCmd(a, "Show a secret", func(ctx context.Context, cl *client.Client, id string) (*mbv1.Secret, error) {
		return cl.Secrets().Get(ctx, &mbv1.GetSecretRequest{Id: id, ShowScheduledForDeletion: showDeleted})
	}, secretText)
	cmd.Flags().BoolVar(&showDeleted, "show-deleted", false, "also find a secret scheduled for deletion")
	return cmd
}

func (a *app) secretGetByNameCmd() *cobra.Command {
	var parent, name string
	cmd := &cobra.Command{
		Use:   "get-by-name --parent-id P --name N",
		Short: "Show a live secret by its name in a project",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			s, err := cl.Secrets().GetByName(cmd.Context(), &mbv1.GetSecretByNameRequest{ParentId: parent, Name: name})
			if err != nil {
				return err
			}
			return a.emit(s, secretText(s))
		},
	}
	cmd.Flags().StringVar(&parent, "parent-id", "", "project id")
	cmd.Flags().StringVar(&name, "name", "", "secret name")
	cmd.MarkFlagRequired("parent-id")
	cmd.MarkFlagRequired("name")
	return cmd
}

func (a *app) secretListCmd() *cobra.Command {
	var parent string
	var showDeleted bool
	cmd := listCmd(a, "list --parent-id P", "List a project's secrets",
		func(ctx context.Context, cl *client.Client, size int32, token string) (*mbv1.ListSecretsResponse, error) {
			return cl.Secrets().List(ctx, &mbv1.ListSecretsRequest{
				ParentId: parent, PageSize: size, PageToken: token, ShowScheduledForDeletion: showDeleted,
			})
		},
		(*mbv1.ListSecretsResponse).GetSecrets,
		func(ss []*mbv1.Secret, next string) *mbv1.ListSecretsResponse {
			return &mbv1.ListSecretsResponse{Secrets: ss, NextPageToken: next}
		},
		secretsText)
	cmd.Flags().StringVar(&parent, "parent-id", "", "project id")
	cmd.Flags().BoolVar(&showDeleted, "show-deleted", false, "include secrets scheduled for deletion")
	cmd.MarkFlagRequired("parent-id")
	return cmd
}

func (a *app) secretUpdateCmd() *cobra.Command {
	var name, description, primary string
	var labelFlags []string
	var clearLabels bool
	var rv int64
	cmd := &cobra.Command{
		Use:   "update ID",
		Short: "Change a secret's name, description, labels or primary version",
		Long: `Change the fields given, and only those (the update mask is built from the
flags). --label replaces the whole label set; --clear-labels removes every label.
--primary-version-id pins the primary version; the value "latest" unpins it, so
the primary follows the latest ACTIVE version again.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f := cmd.Flags()
			s := &mbv1.Secret{Metadata: &mbv1.Metadata{Id: args[0], ResourceVersion: rv}, Spec: &mbv1.SecretSpec{}}
			var paths []string
			if f.Changed("name") {
				s.Metadata.Name = name
				paths = append(paths, "metadata.name")
			}
			if f.Changed("label") && clearLabels {
				return usageErr("--label and --clear-labels are mutually exclusive")
			}
			if f.Changed("label") || clearLabels {
				lbls, err := parseLabels(labelFlags)
				if err != nil {
					return err
				}
				s.Metadata.Labels = lbls
				paths = append(paths, "metadata.labels")
			}
			if f.Changed("description") {
				s.Spec.Description = description
				paths = append(paths, "spec.description")
			}
			if f.Changed("primary-version-id") {
				if primary == "" {
					return usageErr("--primary-version-id: want a version id or \"latest\"")
				}
				if primary != "latest" {
					s.Spec.PrimaryVersionId = primary
				}
				paths = append(paths, "spec.primary_version_id")
			}
			if len(paths) == 0 {
				return usageErr("nothing to update: give --name, --description, --label, --clear-labels or --primary-version-id")
			}
			cl, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			out, err := cl.Secrets().Update(cmd.Context(), &mbv1.UpdateSecretRequest{
				Secret:     s,
				UpdateMask: &fieldmaskpb.FieldMask{Paths: paths},
			})
			if err != nil {
				return err
			}
			return a.emit(out, secretText(out))
		},
	}
	f := cmd.Flags()
	f.StringVar(&name, "name", "", "new name")
	f.StringVar(&description, "description", "", "new description")
	f.StringArrayVar(&labelFlags, "label", nil, "label KEY=VALUE; replaces all labels (repeatable)")
	f.BoolVar(&clearLabels, "clear-labels", false, "remove every label")
	f.StringVar(&primary, "primary-version-id", "", `pin this version as primary; "latest" unpins`)
	f.Int64Var(&rv, "resource-version", 0, "fail with ABORTED unless the secret is at this version (0: any)")
	return cmd
}

func (a *app) secretDeleteCmd() *cobra.Command {
	var rv int64
	cmd := &cobra.Command{
		Use:   "delete ID",
		Short: "Schedule a secret for deletion (undo with undelete until it is purged)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			s, err := cl.Secrets().Delete(cmd.Context(), &mbv1.DeleteSecretRequest{Id: args[0], ResourceVersion: rv})
			if err != nil {
				return err
			}
			return a.emit(s, secretText(s))
		},
	}
	cmd.Flags().Int64Var(&rv, "resource-version", 0, "fail with ABORTED unless the secret is at this version (0: any)")
	return cmd
}

func (a *app) secretUndeleteCmd() *cobra.Command {
	var name string
	var rv int64
	cmd := &cobra.Command{
		Use:   "undelete ID",
		Short: "Restore a secret scheduled for deletion",
		Long: `Restore a secret scheduled for deletion. If its name was taken meanwhile,
give a new one with --name (otherwise the call fails with ALREADY_EXISTS).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			s, err := cl.Secrets().Undelete(cmd.Context(), &mbv1.UndeleteSecretRequest{Id: args[0], Name: name, ResourceVersion: rv})
			if err != nil {
				return err
			}
			return a.emit(s, secretText(s))
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "new name, when the old one was taken")
	cmd.Flags().Int64Var(&rv, "resource-version", 0, "fail with ABORTED unless the secret is at this version (0: any)")
	return cmd
}

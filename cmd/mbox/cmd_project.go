package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/mysterybox/mysterybox/api/client"
	mbv1 "github.com/mysterybox/mysterybox/api/mysteryboxv1"
)

func (a *app) projectCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "project",
		Short: "Manage projects",
		Args:  cobra.NoArgs,
		RunE:  groupRunE,
	}
	cmd.AddCommand(a.projectCreateCmd(), a.projectListCmd(), a.projectGetCmd(), a.projectDeleteCmd())
	return cmd
}

func (a *app) projectCreateCmd() *cobra.Command {
	var name, description string
	var labelFlags []string
	cmd := &cobra.Command{
		Use:   "create --name N",
		Short: "Create a project",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			lbls, err := parseLabels(labelFlags)
			if err != nil {
				return err
			}
			cl, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			p, err := cl.Identity().CreateProject(cmd.Context(), &mbv1.CreateProjectRequest{Project: &mbv1.Project{
				Metadata: &mbv1.Metadata{Name: name, Labels: lbls},
				Spec:     &mbv1.ProjectSpec{Description: description},
			}})
			if err != nil {
				return err
			}
			return a.emit(p, projectText(p))
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "project name (unique in the region)")
	cmd.Flags().StringVar(&description, "description", "", "description")
	cmd.Flags().StringArrayVar(&labelFlags, "label", nil, "label KEY=VALUE (repeatable)")
	cmd.MarkFlagRequired("name")
	return cmd
}

func (a *app) projectListCmd() *cobra.Command {
	return listCmd(a, "list", "List the region's projects",
		func(ctx context.Context, cl *client.Client, size int32, token string) (*mbv1.ListProjectsResponse, error) {
			return cl.Identity().ListProjects(ctx, &mbv1.ListProjectsRequest{PageSize: size, PageToken: token})
		},
		(*mbv1.ListProjectsResponse).GetProjects,
		func(ps []*mbv1.Project, next string) *mbv1.ListProjectsResponse {
			return &mbv1.ListProjectsResponse{Projects: ps, NextPageToken: next}
		},
		projectsText)
}

func (a *app) projectGetCmd() *cobra.Command {
	return getCmd(a, "Show a project", func(ctx context.Context, cl *client.Client, id string) (*mbv1.Project, error) {
		return cl.Identity().GetProject(ctx, &mbv1.GetProjectRequest{Id: id})
	}, projectText)
}

func (a *app) projectDeleteCmd() *cobra.Command {
	var rv int64
	cmd := &cobra.Command{
		Use:   "delete ID",
		Short: "Delete an empty project",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			resp, err := cl.Identity().DeleteProject(cmd.Context(), &mbv1.DeleteProjectRequest{Id: args[0], ResourceVersion: rv})
			if err != nil {
				return err
			}
			return a.emit(resp, func(w io.Writer) { fmt.Fprintf(w, "deleted project %s\n", args[0]) })
		},
	}
	cmd.Flags().Int64Var(&rv, "resource-version", 0, "fail with ABORTED unless the project is at this version (0: any)")
	return cmd
}

package main

import (
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"

	mbv1 "github.com/mysterybox/mysterybox/api/mysteryboxv1"
)

func (a *app) payloadCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "payload",
		Short: "Read secret payloads",
		Args:  cobra.NoArgs,
		RunE:  groupRunE,
	}
	cmd.AddCommand(a.payloadGetCmd(), a.payloadGetByKeyCmd())
	return cmd
}

func (a *app) payloadGetCmd() *cobra.Command {
	var secretID, versionID string
	cmd := &cobra.Command{
		Use:   "get --secret-id S [--version-id V]",
		Short: "Print every entry of a version's payload (default: the primary version)",
		Long: `Print every entry of a payload. Text output is one KEY=VALUE line per entry;
a value with control characters (such as a newline) is printed Go-quoted, and
a binary value as KEY:base64=<base64>. Use -o json or get-by-key for exact values.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			resp, err := cl.Payloads().Get(cmd.Context(), &mbv1.GetPayloadRequest{SecretId: secretID, VersionId: versionID})
			if err != nil {
				return err
			}
			return a.emit(resp, payloadText(resp.GetEntries()))
		},
	}
	cmd.Flags().StringVar(&secretID, "secret-id", "", "secret id")
	cmd.Flags().StringVar(&versionID, "version-id", "", "version id (default: the primary version)")
	cmd.MarkFlagRequired("secret-id")
	return cmd
}

func (a *app) payloadGetByKeyCmd() *cobra.Command {
	var secretID, versionID, key, outFile string
	cmd := &cobra.Command{
		Use:   "get-by-key --secret-id S --key K [--version-id V] [--out-file F]",
		Short: "Print one payload value, byte for byte",
		Long: `Print the raw value of one payload entry. Nothing is added when stdout is not
a terminal, so VAR=$(mbox payload get-by-key ...) is exact; a newline is added
only on a terminal. A binary value is written raw to a pipe or to --out-file
(created with mode 0600) and refused on a terminal. With -o json or -o yaml
(and no --out-file) the response message is printed instead.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			resp, err := cl.Payloads().GetByKey(cmd.Context(), &mbv1.GetPayloadByKeyRequest{SecretId: secretID, VersionId: versionID, Key: key})
			if err != nil {
				return err
			}
			e := resp.GetEntry()
			if outFile != "" {
				return writeSecretFile(outFile, entryBytes(e))
			}
			if a.format != "text" {
				return a.emit(resp, nil)
			}
			return writeValue(a.stdout, a.stdoutTTY, e)
		},
	}
	cmd.Flags().StringVar(&secretID, "secret-id", "", "secret id")
	cmd.Flags().StringVar(&key, "key", "", "entry key")
	cmd.Flags().StringVar(&versionID, "version-id", "", "version id (default: the primary version)")
	cmd.Flags().StringVar(&outFile, "out-file", "", "write the value to this file (mode 0600) instead of stdout")
	cmd.MarkFlagRequired("secret-id")
	cmd.MarkFlagRequired("key")
	return cmd
}

func entryBytes(e *mbv1.PayloadEntry) []byte {
	if b, ok := e.GetValue().(*mbv1.PayloadEntry_BinaryValue); ok {
		return b.BinaryValue
	}
	return []byte(e.GetStringValue())
}

// writeValue writes a value to stdout exactly; on a terminal it adds a final
// newline for readability and refuses binary values, and text with control
// characters other than tab and newline: a terminal acts on escape
// sequences (it can be made to set its title, write the clipboard, or
// answer with input of its own), and whoever may write a version would
// choose them for whoever reads it.
func writeValue(w io.Writer, tty bool, e *mbv1.PayloadEntry) error {
	b := entryBytes(e)
	if tty {
		if _, bin := e.GetValue().(*mbv1.PayloadEntry_BinaryValue); bin {
			return localErr(codes.FailedPrecondition, "value of key %q is binary: use --out-file or redirect stdout", e.GetKey())
		}
		if hasTerminalControls(string(b)) {
			return localErr(codes.FailedPrecondition, "value of key %q contains control characters a terminal would act on: use --out-file or redirect stdout", e.GetKey())
		}
		if !strings.HasSuffix(string(b), "\n") {
			b = append(b, '\n')
		}
	}
	if _, err := w.Write(b); err != nil {
		return localErr(codes.Unknown, "write stdout: %v", err)
	}
	return nil
}

// hasTerminalControls reports whether s has a C0 control other than tab and
// newline, DEL, or a C1 control (U+0080-U+009F).
func hasTerminalControls(s string) bool {
	for _, r := range s {
		if (r < 0x20 && r != '\t' && r != '\n') || r == 0x7f || (r >= 0x80 && r <= 0x9f) {
			return true
		}
	}
	return false
}

// writeSecretFile writes b to path with mode 0600, also when the file already
// existed with a wider mode (the mode is fixed before the data is written).
func writeSecretFile(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return localErr(codes.Unknown, "--out-file: %v", err)
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return localErr(codes.Unknown, "--out-file: %v", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return localErr(codes.Unknown, "--out-file: %v", err)
	}
	if err := f.Close(); err != nil {
		return localErr(codes.Unknown, "--out-file: %v", err)
	}
	return nil
}

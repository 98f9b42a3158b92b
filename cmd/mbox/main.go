// Command mbox is the MysteryBox command-line client.
//
// It is a thin layer over api/client: flags become requests, responses are
// printed as text, protobuf JSON or YAML on stdout, and errors go to stderr as
// "error: <CODE>: <message>" with an exit code per gRPC code (see docs/cli.md).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mysterybox/mysterybox/api/client"
)

// Exit codes (SPEC section 5).
const (
	exitOK          = 0
	exitError       = 1
	exitUsage       = 2
	exitNotFound    = 3
	exitDenied      = 4
	exitUnavailable = 5
)

const defaultEndpoint = "127.0.0.1:7700"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// app holds the global flags and the lazily created client of one invocation.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	// stdoutTTY reports whether stdout is a terminal; get-by-key adds a
	// newline only then, and refuses to dump binary values there.
	stdoutTTY bool
	// stderrTTY reports whether stderr is a terminal; progress lines (admin
	// rewrap) are shown only then.
	stderrTTY bool

	endpoints   string
	token       string
	tokenFile   string
	format      string
	timeout     time.Duration
	consistency string

	resolvedToken string
	cl            *client.Client
}

// run executes one mbox invocation and returns its exit code.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	a := &app{stdin: stdin, stdout: stdout, stderr: stderr}
	if f, ok := stdout.(*os.File); ok {
		a.stdoutTTY = term.IsTerminal(int(f.Fd()))
	}
	if f, ok := stderr.(*os.File); ok {
		a.stderrTTY = term.IsTerminal(int(f.Fd()))
	}
	return a.execute(ctx, args)
}

// execute runs the command line args with a's streams and returns the exit
// code; tests call it directly to simulate a terminal.
func (a *app) execute(ctx context.Context, args []string) int {
	stdin, stdout, stderr := a.stdin, a.stdout, a.stderr
	root := a.rootCmd()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if a.cl != nil {
		a.cl.Close()
	}
	if err == nil {
		return exitOK
	}
	name, msg, exit := classify(err)
	fmt.Fprintf(stderr, "error: %s: %s\n", name, msg)
	return exit
}

func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "mbox",
		Short: "MysteryBox command-line client",
		Long: `mbox talks to a MysteryBox region over gRPC.

Results go to stdout; errors go to stderr as "error: <CODE>: <message>".
Exit codes: 0 ok, 1 other error, 2 usage, 3 not found,
4 unauthenticated or permission denied, 5 unavailable or deadline exceeded.`,
		SilenceErrors:     true,
		SilenceUsage:      true,
		Args:              cobra.NoArgs,
		RunE:              groupRunE,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error { return a.resolveGlobals(cmd) },
	}
	pf := root.PersistentFlags()
	pf.StringVar(&a.endpoints, "endpoints", defaultEndpoint, "comma-separated gRPC addresses of the region's nodes (env MYSTERYBOX_ENDPOINTS)")
	pf.StringVar(&a.token, "token", "", "access token (env MYSTERYBOX_TOKEN)")
	pf.StringVar(&a.tokenFile, "token-file", "", "read the access token from this file")
	pf.StringVarP(&a.format, "format", "o", "text", "output format: text, json or yaml")
	pf.DurationVar(&a.timeout, "timeout", 10*time.Second, "deadline of each call, retries included (0: none)")
	pf.StringVar(&a.consistency, "consistency", "", "read consistency: linearizable (default) or stale")

	root.AddCommand(a.projectCmd(), a.secretCmd(), a.versionCmd(), a.payloadCmd(), a.clusterCmd(),
		a.accountCmd(), a.tokenCmd(), a.accessBindingCmd(), a.adminCmd())
	wrapRunE(root)
	return root
}

// resolveGlobals validates the global flags and applies the environment.
// Flags win over the environment; the token never gets a default value so
// `--help` cannot show it.
func (a *app) resolveGlobals(cmd *cobra.Command) error {
	pf := cmd.Flags()
	if !pf.Changed("endpoints") {
		if env := strings.TrimSpace(os.Getenv("MYSTERYBOX_ENDPOINTS")); env != "" {
			a.endpoints = env
		}
	}
	switch a.format {
	case "text", "json", "yaml":
	default:
		return usageErr("--format %q: want text, json or yaml", a.format)
	}
	switch a.consistency {
	case "", client.ConsistencyLinearizable, client.ConsistencyStale:
	default:
		return usageErr("--consistency %q: want linearizable or stale", a.consistency)
	}
	if a.timeout < 0 {
		return usageErr("--timeout must not be negative")
	}
	switch {
	case pf.Changed("token") && a.tokenFile != "":
		return usageErr("--token and --token-file are mutually exclusive")
	case pf.Changed("token"):
		a.resolvedToken = a.token
	case a.tokenFile != "":
		b, err := os.ReadFile(a.tokenFile)
		if err != nil {
			return usageErr("--token-file: %v", err)
		}
		a.resolvedToken = strings.TrimSpace(string(b))
	default:
		a.resolvedToken = strings.TrimSpace(os.Getenv("MYSTERYBOX_TOKEN"))
	}
	if strings.ContainsAny(a.resolvedToken, "\r\n") {
		return usageErr("the token contains a line break")
	}
	return nil
}

// client returns the connection, creating it on first use so that commands
// that fail local validation never dial.
func (a *app) client(ctx context.Context) (*client.Client, error) {
	if a.cl != nil {
		return a.cl, nil
	}
	var eps []string
	for _, e := range strings.Split(a.endpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			eps = append(eps, e)
		}
	}
	if len(eps) == 0 {
		return nil, usageErr("--endpoints is empty")
	}
	cl, err := client.New(ctx, client.Config{
		Endpoints:   eps,
		Token:       a.resolvedToken,
		Timeout:     a.timeout,
		Consistency: a.consistency,
	})
	if err != nil {
		return nil, usageErr("%v", err)
	}
	a.cl = cl
	return cl, nil
}

// groupRunE runs for a command group called without a subcommand.
func groupRunE(cmd *cobra.Command, _ []string) error {
	return usageErr("missing subcommand; see '%s --help'", cmd.CommandPath())
}

// cliError is an error with its printed code name and exit code.
type cliError struct {
	name string
	exit int
	msg  string
}

func (e *cliError) Error() string { return e.name + ": " + e.msg }

func usageErr(format string, args ...any) error {
	return &cliError{name: "USAGE", exit: exitUsage, msg: fmt.Sprintf(format, args...)}
}

func localErr(code codes.Code, format string, args ...any) error {
	return &cliError{name: codeName(code), exit: exitFor(code), msg: fmt.Sprintf(format, args...)}
}

// wrapRunE makes every error returned by a RunE either a gRPC status or a
// cliError. Errors that reach run() as anything else come from cobra itself
// (unknown flag or command, wrong arguments, missing required flag): usage.
func wrapRunE(c *cobra.Command) {
	if c.RunE != nil {
		inner := c.RunE
		c.RunE = func(cmd *cobra.Command, args []string) error {
			err := inner(cmd, args)
			if err == nil {
				return nil
			}
			var ce *cliError
			if errors.As(err, &ce) {
				return ce
			}
			if _, ok := status.FromError(err); ok {
				return err
			}
			return localErr(codes.Unknown, "%v", err)
		}
	}
	for _, sub := range c.Commands() {
		wrapRunE(sub)
	}
}

// classify maps an error to its printed code, message and exit code.
func classify(err error) (name, msg string, exit int) {
	var ce *cliError
	if errors.As(err, &ce) {
		return ce.name, ce.msg, ce.exit
	}
	if st, ok := status.FromError(err); ok {
		return codeName(st.Code()), st.Message(), exitFor(st.Code())
	}
	return "USAGE", err.Error(), exitUsage
}

func exitFor(c codes.Code) int {
	switch c {
	case codes.OK:
		return exitOK
	case codes.NotFound:
		return exitNotFound
	case codes.Unauthenticated, codes.PermissionDenied:
		return exitDenied
	case codes.Unavailable, codes.DeadlineExceeded:
		return exitUnavailable
	}
	return exitError
}

// codeName returns the canonical upper-snake name of a gRPC code
// (codes.Code.String() gives "NotFound"; the wire spec says NOT_FOUND).
func codeName(c codes.Code) string {
	names := map[codes.Code]string{
		codes.OK:                 "OK",
		codes.Canceled:           "CANCELLED",
		codes.Unknown:            "UNKNOWN",
		codes.InvalidArgument:    "INVALID_ARGUMENT",
		codes.DeadlineExceeded:   "DEADLINE_EXCEEDED",
		codes.NotFound:           "NOT_FOUND",
		codes.AlreadyExists:      "ALREADY_EXISTS",
		codes.PermissionDenied:   "PERMISSION_DENIED",
		codes.ResourceExhausted:  "RESOURCE_EXHAUSTED",
		codes.FailedPrecondition: "FAILED_PRECONDITION",
		codes.Aborted:            "ABORTED",
		codes.OutOfRange:         "OUT_OF_RANGE",
		codes.Unimplemented:      "UNIMPLEMENTED",
		codes.Internal:           "INTERNAL",
		codes.Unavailable:        "UNAVAILABLE",
		codes.DataLoss:           "DATA_LOSS",
		codes.Unauthenticated:    "UNAUTHENTICATED",
	}
	if n, ok := names[c]; ok {
		return n
	}
	return fmt.Sprintf("CODE_%d", uint32(c))
}

// Command mbox is the MysteryBox command-line client.
//
// It is a thin layer over api/client: flags become requests, responses are
// printed as text, protobuf JSON or YAML on stdout, and errors go to stderr as
// "error: <CODE>: <message>" with an exit code per gRPC code (see docs/cli.md).
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
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
	profile     string
	tlsOn       bool
	caFile      string
	certFile    string
	keyFile     string

	resolvedToken string
	tlsConfig     *tls.Config
	cl            *client.Client
	// spin shows that a call waits for the region (retries), on a terminal.
	spin *spinner
	// execFn replaces the process with a command (mbox run); tests stub it.
	execFn func(path string, argv, env []string) error
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
	if a.spin == nil {
		a.spin = newSpinner(stderr)
	}
	if a.execFn == nil {
		a.execFn = syscall.Exec
	}
	root := a.rootCmd()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	a.spin.hide()
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
4 unauthenticated or permission denied, 5 unavailable or deadline exceeded.

Global settings come from flags, then the environment (MYSTERYBOX_ENDPOINTS,
MYSTERYBOX_TOKEN, MYSTERYBOX_TOKEN_FILE, MYSTERYBOX_FORMAT, MYSTERYBOX_TIMEOUT,
MYSTERYBOX_CONSISTENCY), then the selected profile of the config file (see
'mbox config --help'), then the defaults.`,
		SilenceErrors:     true,
		SilenceUsage:      true,
		Args:              cobra.NoArgs,
		RunE:              groupRunE,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error { return a.resolveGlobals(cmd) },
	}
	pf := root.PersistentFlags()
	pf.StringVar(&a.endpoints, "endpoints", defaultEndpoint, "comma-separated gRPC addresses of the region's nodes (env MYSTERYBOX_ENDPOINTS)")
	pf.StringVar(&a.token, "token", "", "access token (env MYSTERYBOX_TOKEN)")
	pf.StringVar(&a.tokenFile, "token-file", "", "read the access token from this file (env MYSTERYBOX_TOKEN_FILE)")
	pf.StringVarP(&a.format, "format", "o", "text", "output format: text, json or yaml (env MYSTERYBOX_FORMAT)")
	pf.DurationVar(&a.timeout, "timeout", 10*time.Second, "deadline of each call, retries included (0: none) (env MYSTERYBOX_TIMEOUT)")
	pf.StringVar(&a.consistency, "consistency", "", "read consistency: linearizable (default) or stale (env MYSTERYBOX_CONSISTENCY)")
	pf.StringVar(&a.profile, "profile", "", `profile of the config file to use (env MYSTERYBOX_PROFILE; default "default")`)
	pf.BoolVar(&a.tlsOn, "tls", false, "use TLS, verifying the servers against the system's CAs or --ca-file (env MYSTERYBOX_TLS)")
	pf.StringVar(&a.caFile, "ca-file", "", "PEM CA certificates that sign the servers' certificates; implies --tls (env MYSTERYBOX_CA_FILE)")
	pf.StringVar(&a.certFile, "cert-file", "", "PEM client certificate, for servers that verify clients; implies --tls (env MYSTERYBOX_CERT_FILE)")
	pf.StringVar(&a.keyFile, "key-file", "", "PEM key of --cert-file (env MYSTERYBOX_KEY_FILE)")
	root.RegisterFlagCompletionFunc("format", fixedCompletion("text", "json", "yaml"))
	root.RegisterFlagCompletionFunc("consistency", fixedCompletion(client.ConsistencyLinearizable, client.ConsistencyStale))
	root.RegisterFlagCompletionFunc("profile", profileCompletion)

	root.CompletionOptions.DisableDefaultCmd = true
	root.AddCommand(a.projectCmd(), a.secretCmd(), a.versionCmd(), a.payloadCmd(), a.runCmd(), a.clusterCmd(),
		a.benchCmd(), a.snapshotCmd(), a.auditCmd(),
		a.accountCmd(), a.tokenCmd(), a.accessBindingCmd(), a.adminCmd(), a.configCmd(), a.completionCmd(root))
	wrapRunE(root)
	return root
}

// resolveGlobals applies the environment and the selected profile to the
// global settings not given as flags, and validates them: flag > env >
// profile > default. The token never gets a default value so `--help`
// cannot show it.
func (a *app) resolveGlobals(cmd *cobra.Command) error {
	if cmd.Name() == cobra.ShellCompRequestCmd || cmd.Name() == cobra.ShellCompNoDescRequestCmd {
		return nil
	}
	pf := cmd.Flags()
	prof, profSrc, err := a.activeProfile(pf)
	if err != nil {
		return err
	}
	// setting returns the value of a setting that is not a flag: from the
	// environment, else from the profile; src names where it came from.
	setting := func(env, fromProfile string) (v, src string) {
		if e := strings.TrimSpace(os.Getenv(env)); e != "" {
			return e, env
		}
		if fromProfile != "" {
			return fromProfile, profSrc
		}
		return "", ""
	}
	if !pf.Changed("endpoints") {
		if v, _ := setting(envEndpoints, string(prof.Endpoints)); v != "" {
			a.endpoints = v
		}
	}
	formatSrc := "--format"
	if !pf.Changed("format") {
		if v, src := setting(envFormat, prof.Format); v != "" {
			a.format, formatSrc = v, src
		}
	}
	switch a.format {
	case "text", "json", "yaml":
	default:
		return usageErr("%s %q: want text, json or yaml", formatSrc, a.format)
	}
	consSrc := "--consistency"
	if !pf.Changed("consistency") {
		if v, src := setting(envConsistency, prof.Consistency); v != "" {
			a.consistency, consSrc = v, src
		}
	}
	switch a.consistency {
	case "", client.ConsistencyLinearizable, client.ConsistencyStale:
	default:
		return usageErr("%s %q: want linearizable or stale", consSrc, a.consistency)
	}
	if !pf.Changed("timeout") {
		if v, src := setting(envTimeout, prof.Timeout); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil {
				return usageErr("%s %q: want a duration such as 10s (0: none)", src, v)
			}
			a.timeout = d
		}
	}
	if a.timeout < 0 {
		return usageErr("--timeout must not be negative")
	}
	if err := a.resolveToken(pf, prof, profSrc); err != nil {
		return err
	}
	if err := a.resolveTLS(pf, prof, setting); err != nil {
		return err
	}
	if strings.ContainsAny(a.resolvedToken, "\r\n") {
		return usageErr("the token contains a line break")
	}
	return nil
}

// resolveToken picks the token by the same precedence; at each level the
// token and the token file exclude each other.
func (a *app) resolveToken(pf *pflag.FlagSet, prof *profile, profSrc string) error {
	envTok := strings.TrimSpace(os.Getenv(envToken))
	envFile := strings.TrimSpace(os.Getenv(envTokenFile))
	switch {
	case pf.Changed("token") && pf.Changed("token-file"):
		return usageErr("--token and --token-file are mutually exclusive")
	case pf.Changed("token"):
		a.resolvedToken = a.token
	case pf.Changed("token-file"):
		return a.readToken("--token-file", a.tokenFile)
	case envTok != "" && envFile != "":
		return usageErr("%s and %s are mutually exclusive", envToken, envTokenFile)
	case envTok != "":
		a.resolvedToken = envTok
	case envFile != "":
		return a.readToken(envTokenFile, envFile)
	case prof.Token != "" && prof.TokenFile != "":
		return usageErr("%s: token and token-file are mutually exclusive", profSrc)
	case prof.Token != "":
		a.resolvedToken = prof.Token
	case prof.TokenFile != "":
		return a.readToken("token-file of "+profSrc, expandHome(prof.TokenFile))
	}
	return nil
}

func (a *app) readToken(src, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return usageErr("%s: %v", src, err)
	}
	a.resolvedToken = strings.TrimSpace(string(b))
	return nil
}

// client returns the connection, creating it on first use so that commands
// that fail local validation never dial.
func (a *app) client(ctx context.Context) (*client.Client, error) {
	if a.cl != nil {
		return a.cl, nil
	}
	eps := splitEndpoints(a.endpoints)
	if len(eps) == 0 {
		return nil, usageErr("--endpoints is empty")
	}
	cfg := client.Config{
		Endpoints:   eps,
		Token:       a.resolvedToken,
		Timeout:     a.timeout,
		Consistency: a.consistency,
		TLS:         a.tlsConfig,
		// One invocation makes a few calls: failover over the given
		// endpoints is all it needs, not a background Members poll.
		DisableDiscovery: true,
	}
	if a.stderrTTY {
		cfg.OnRetry = a.onRetry
	}
	cl, err := client.New(ctx, cfg)
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

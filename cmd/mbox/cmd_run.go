package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"

	mbv1 "github.com/mysterybox/mysterybox/api/mysteryboxv1"
)

// Exit codes of mbox run when COMMAND cannot be started, as env(1) and
// POSIX shells use them.
const (
	exitCannotExec = 126
	exitNoCommand  = 127
)

// secretRef is SECRET or SECRET:VERSION.
type secretRef struct{ secret, version string }

func (r secretRef) String() string {
	if r.version == "" {
		return r.secret
	}
	return r.secret + ":" + r.version
}

func parseSecretRef(s string) (secretRef, bool) {
	sec, ver, hasVer := strings.Cut(s, ":")
	if sec == "" || (hasVer && (ver == "" || strings.Contains(ver, ":"))) {
		return secretRef{}, false
	}
	return secretRef{sec, ver}, true
}

// envMapping is --env NAME=SECRET[:VERSION]:KEY.
type envMapping struct {
	name string
	ref  secretRef
	key  string
}

func parseEnvMapping(s string) (envMapping, error) {
	name, rest, ok := strings.Cut(s, "=")
	i := strings.LastIndex(rest, ":")
	if !ok || i < 0 {
		return envMapping{}, usageErr("--env %q: want NAME=SECRET[:VERSION]:KEY", s)
	}
	if !validEnvName(name) {
		return envMapping{}, usageErr("--env %q: %q is not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*)", s, name)
	}
	ref, ok := parseSecretRef(rest[:i])
	if !ok || rest[i+1:] == "" {
		return envMapping{}, usageErr("--env %q: want NAME=SECRET[:VERSION]:KEY", s)
	}
	return envMapping{name: name, ref: ref, key: rest[i+1:]}, nil
}

// validEnvName reports whether s is [A-Za-z_][A-Za-z0-9_]*.
// execControlPrefixes and execControlNames are environment variables with
// which common loaders, shells and runtimes load or run code, or change
// whom they trust (the dynamic loader, sh and bash, Python, Perl, Ruby,
// Node.js, the JVM, Go, git, TLS roots, mbox itself). mbox run exports a
// whole secret's keys only when none is one of them: writing a version
// (the editor role) must not be a way to run code in whoever runs the
// secret (who may read payloads). An explicit --env mapping still sets
// them. Names are matched exactly, as the programs read them; the list is
// a safeguard for the usual suspects, not a sandbox.
var (
	execControlPrefixes = []string{"LD_", "DYLD_", "MYSTERYBOX_", "GIT_CONFIG"}
	execControlNames    = map[string]bool{
		"PATH": true, "IFS": true, "ENV": true, "BASH_ENV": true, "SHELLOPTS": true, "BASHOPTS": true, "PS4": true,
		"PROMPT_COMMAND": true, "CDPATH": true, "ZDOTDIR": true,
		"PYTHONPATH": true, "PYTHONHOME": true, "PYTHONSTARTUP": true, "PYTHONUSERBASE": true,
		"PERL5LIB": true, "PERL5OPT": true, "PERLLIB": true, "PERL5DB": true, "RUBYOPT": true, "RUBYLIB": true,
		"NODE_OPTIONS": true, "NODE_PATH": true, "JAVA_TOOL_OPTIONS": true, "_JAVA_OPTIONS": true, "JDK_JAVA_OPTIONS": true,
		"CLASSPATH": true, "GOFLAGS": true, "GIT_SSH": true, "GIT_SSH_COMMAND": true, "GIT_EXEC_PATH": true, "GIT_ASKPASS": true,
		"GCONV_PATH": true, "LOCPATH": true, "SSL_CERT_FILE": true, "SSL_CERT_DIR": true,
	}
)

func controlsExecution(name string) bool {
	if execControlNames[name] {
		return true
	}
	for _, p := range execControlPrefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

func validEnvName(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range s {
		switch {
		case c == '_', c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// envValue returns an entry's value as an environment string: text without
// NUL. Binary values qualify only when they are such text.
func envValue(ref secretRef, e *mbv1.PayloadEntry) (string, error) {
	v := string(entryBytes(e))
	if !utf8.ValidString(v) || strings.ContainsRune(v, 0) {
		return "", localErr(codes.FailedPrecondition,
			"key %q of %s is binary (not UTF-8 text without NUL bytes) and cannot be an environment variable; use 'mbox payload get-by-key --out-file'", e.GetKey(), ref)
	}
	return v, nil
}

// runEnv is the environment mbox run adds: names in order of first
// appearance, and where each value came from (for warnings; never the value).
type runEnv struct {
	names  []string
	values map[string]string
	source map[string]string
}

func (r *runEnv) set(name, value, source string, warn func(string, ...any)) {
	if prev, ok := r.source[name]; ok {
		warn("warning: %s from %s overrides the value from %s\n", name, source, prev)
	} else {
		r.names = append(r.names, name)
	}
	r.values[name] = value
	r.source[name] = source
}

// buildRunEnv turns the fetched payloads into variables. Entries of each
// --secret are exported under their keys, in order, a later secret
// overriding an earlier one; a key mapped by an --env (of the same secret)
// is exported only under the mapped name. --env mappings come last.
func buildRunEnv(refs []secretRef, maps []envMapping, payloads map[secretRef][]*mbv1.PayloadEntry, warn func(string, ...any)) (*runEnv, error) {
	out := &runEnv{values: map[string]string{}, source: map[string]string{}}
	mapped := map[[2]string]bool{}
	for _, m := range maps {
		mapped[[2]string{m.ref.secret, m.key}] = true
	}
	for _, ref := range refs {
		for _, e := range payloads[ref] {
			if mapped[[2]string{ref.secret, e.GetKey()}] {
				continue
			}
			if !validEnvName(e.GetKey()) {
				return nil, usageErr("key %q of %s is not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*); map it with --env NAME=%s:%s",
					e.GetKey(), ref, ref, e.GetKey())
			}
			if controlsExecution(e.GetKey()) {
				return nil, localErr(codes.FailedPrecondition, "key %q of %s would change how COMMAND runs (a loader, shell or interpreter variable, or mbox's own), so it is not exported from a whole secret: anyone who may add a version could otherwise run code with every secret of the run in reach; if it is meant, map it with --env %s=%s:%s",
					e.GetKey(), ref, e.GetKey(), ref, e.GetKey())
			}
			v, err := envValue(ref, e)
			if err != nil {
				return nil, err
			}
			out.set(e.GetKey(), v, ref.String(), warn)
		}
	}
	for _, m := range maps {
		var entry *mbv1.PayloadEntry
		for _, e := range payloads[m.ref] {
			if e.GetKey() == m.key {
				entry = e
			}
		}
		if entry == nil {
			return nil, localErr(codes.NotFound, "--env %s: %s has no key %q", m.name, m.ref, m.key)
		}
		v, err := envValue(m.ref, entry)
		if err != nil {
			return nil, err
		}
		out.set(m.name, v, fmt.Sprintf("--env %s=%s:%s", m.name, m.ref, m.key), warn)
	}
	return out, nil
}

// environ returns base with the variables of r set (replacing any with the
// same name).
func (r *runEnv) environ(base []string) []string {
	out := make([]string, 0, len(base)+len(r.names))
	for _, kv := range base {
		name, _, _ := strings.Cut(kv, "=")
		if _, ours := r.values[name]; !ours {
			out = append(out, kv)
		}
	}
	for _, n := range r.names {
		out = append(out, n+"="+r.values[n])
	}
	return out
}

func (a *app) runCmd() *cobra.Command {
	var secretFlags, envFlags []string
	cmd := &cobra.Command{
		Use:   "run --secret S[:VERSION]... [--env NAME=SECRET[:VERSION]:KEY]... -- COMMAND [ARGS...]",
		Short: "Run a command with secret payload entries in its environment",
		Long: `Read the payload of each --secret (its primary version, or VERSION) and run
COMMAND with every entry exported as an environment variable named by its key,
in addition to mbox's own environment. mbox replaces itself with COMMAND
(exec), so COMMAND's exit code, signals and stdio are its own.

- A key that is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*, e.g.
  "db-password") is refused (exit 2) unless mapped with
  --env NAME=SECRET[:VERSION]:KEY, which exports that entry as NAME (and not
  under its own key). --env can also pick single keys of secrets not given
  with --secret.
- When two secrets have the same key, the later --secret wins and a warning
  naming the variable (never the value) goes to stderr; --env mappings are
  applied last.
- A value must be text without NUL bytes; a binary one is refused
  (FAILED_PRECONDITION).
- Values are never printed. If COMMAND cannot be found the exit code is 127;
  if it cannot be executed, 126.`,
		Example: `  mbox run --secret "$DB_SECRET" -- ./migrate.sh
  mbox run --secret "$APP_SECRET" --env DB_PASSWORD="$DB_SECRET":db-password -- ./server --port 8080`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageErr("missing COMMAND: mbox run --secret S -- COMMAND [ARGS...]")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(secretFlags) == 0 && len(envFlags) == 0 {
				return usageErr("give at least one --secret or --env")
			}
			var refs []secretRef
			for _, s := range secretFlags {
				ref, ok := parseSecretRef(s)
				if !ok {
					return usageErr("--secret %q: want SECRET or SECRET:VERSION", s)
				}
				refs = append(refs, ref)
			}
			var maps []envMapping
			seen := map[string]bool{}
			for _, s := range envFlags {
				m, err := parseEnvMapping(s)
				if err != nil {
					return err
				}
				if seen[m.name] {
					return usageErr("--env %s given twice", m.name)
				}
				seen[m.name] = true
				maps = append(maps, m)
			}
			path, err := exec.LookPath(args[0])
			if err != nil {
				return &cliError{name: "NOT_FOUND", exit: exitNoCommand, msg: fmt.Sprintf("run: %v", err)}
			}

			cl, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			payloads := map[secretRef][]*mbv1.PayloadEntry{}
			fetch := func(ref secretRef) error {
				if _, ok := payloads[ref]; ok {
					return nil
				}
				resp, err := cl.Payloads().Get(cmd.Context(), &mbv1.GetPayloadRequest{SecretId: ref.secret, VersionId: ref.version})
				if err != nil {
					return err
				}
				payloads[ref] = resp.GetEntries()
				return nil
			}
			for _, ref := range refs {
				if err := fetch(ref); err != nil {
					return err
				}
			}
			for _, m := range maps {
				if err := fetch(m.ref); err != nil {
					return err
				}
			}
			warn := func(format string, args ...any) { fmt.Fprintf(a.stderr, format, args...) }
			env, err := buildRunEnv(refs, maps, payloads, warn)
			if err != nil {
				return err
			}
			a.spin.hide()
			a.cl.Close()
			a.cl = nil
			err = a.execFn(path, args, env.environ(os.Environ()))
			// Only reached when exec failed.
			var ee *exec.Error
			if errors.As(err, &ee) {
				err = ee.Err
			}
			return &cliError{name: "UNKNOWN", exit: exitCannotExec, msg: fmt.Sprintf("run: exec %s: %v", path, err)}
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&secretFlags, "secret", nil, "secret id, optionally :VERSION, whose entries to export (repeatable)")
	f.StringArrayVar(&envFlags, "env", nil, "export one entry as NAME: NAME=SECRET[:VERSION]:KEY (repeatable)")
	// Everything from COMMAND on belongs to COMMAND, "--" or not.
	f.SetInterspersed(false)
	return cmd
}

// completionCmd prints shell completion scripts.
func (a *app) completionCmd(root *cobra.Command) *cobra.Command {
	return &cobra.Command{
		Use:   "completion bash|zsh|fish",
		Short: "Print a shell completion script",
		Long: `Print the completion script for a shell to stdout.

  bash:  source <(mbox completion bash)
         # or: mbox completion bash > /etc/bash_completion.d/mbox
         # (needs the bash-completion package)
  zsh:   mbox completion zsh > "${fpath[1]}/_mbox"   # then start a new shell
         # (needs "autoload -U compinit; compinit" in ~/.zshrc)
  fish:  mbox completion fish > ~/.config/fish/completions/mbox.fish

Commands, flags, --format, --consistency and --profile (from the config file)
complete.`,
		Args:              cobra.ExactArgs(1),
		ValidArgs:         []string{"bash", "zsh", "fish"},
		PersistentPreRunE: func(*cobra.Command, []string) error { return nil },
		RunE: func(cmd *cobra.Command, args []string) error {
			switch args[0] {
			case "bash":
				return root.GenBashCompletionV2(a.stdout, true)
			case "zsh":
				return root.GenZshCompletion(a.stdout)
			case "fish":
				return root.GenFishCompletion(a.stdout, true)
			}
			return usageErr("unknown shell %q: want bash, zsh or fish", args[0])
		},
	}
}

func fixedCompletion(values ...string) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return values, cobra.ShellCompDirectiveNoFileComp
	}
}

// profileCompletion offers the profiles of the config file.
func profileCompletion(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	path, err := configPath()
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	cf, _, err := loadConfig(path)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var names []string
	for n := range cf.Profiles {
		names = append(names, n)
	}
	return names, cobra.ShellCompDirectiveNoFileComp
}

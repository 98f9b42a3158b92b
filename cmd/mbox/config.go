package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc/codes"
	"gopkg.in/yaml.v3"

	"github.com/mysterybox/mysterybox/api/client"
)

// The config file holds named profiles of global settings:
//
//	profiles:
//	  default:
//	    endpoints: 10.0.0.1:7700,10.0.0.2:7700
//	    token-file: ~/.config/mbox/token
//	  ci:
//	    endpoints: [10.1.0.1:7700, 10.1.0.2:7700]
//	    format: json
//	    timeout: 30s
//
// Precedence for every setting: flag > environment > profile > default.

const (
	envConfig      = "MYSTERYBOX_CONFIG"
	envProfile     = "MYSTERYBOX_PROFILE"
	envEndpoints   = "MYSTERYBOX_ENDPOINTS"
	envToken       = "MYSTERYBOX_TOKEN"
	envTokenFile   = "MYSTERYBOX_TOKEN_FILE"
	envFormat      = "MYSTERYBOX_FORMAT"
	envTimeout     = "MYSTERYBOX_TIMEOUT"
	envConsistency = "MYSTERYBOX_CONSISTENCY"
	envTLS         = "MYSTERYBOX_TLS"
	envCAFile      = "MYSTERYBOX_CA_FILE"
	envCertFile    = "MYSTERYBOX_CERT_FILE"
	envKeyFile     = "MYSTERYBOX_KEY_FILE"

	defaultProfile = "default"
	tokenHidden    = "(set; not shown)"
)

// configKeys are the settings a profile may hold, in display order.
var configKeys = []string{"endpoints", "token-file", "token", "format", "timeout", "consistency", "tls", "ca-file", "cert-file", "key-file"}

// endpointList is a comma-separated list; in the file it may also be a YAML
// sequence.
type endpointList string

func (e *endpointList) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.SequenceNode {
		var l []string
		if err := n.Decode(&l); err != nil {
			return err
		}
		*e = endpointList(strings.Join(l, ","))
		return nil
	}
	var s string
	if err := n.Decode(&s); err != nil {
		return err
	}
	*e = endpointList(s)
	return nil
}

type profile struct {
	Endpoints   endpointList `yaml:"endpoints,omitempty"`
	TokenFile   string       `yaml:"token-file,omitempty"`
	Token       string       `yaml:"token,omitempty"`
	Format      string       `yaml:"format,omitempty"`
	Timeout     string       `yaml:"timeout,omitempty"`
	Consistency string       `yaml:"consistency,omitempty"`
	TLS         string       `yaml:"tls,omitempty"`
	CAFile      string       `yaml:"ca-file,omitempty"`
	CertFile    string       `yaml:"cert-file,omitempty"`
	KeyFile     string       `yaml:"key-file,omitempty"`
}

func (p *profile) field(key string) *string {
	switch key {
	case "endpoints":
		return (*string)(&p.Endpoints)
	case "token-file":
		return &p.TokenFile
	case "token":
		return &p.Token
	case "format":
		return &p.Format
	case "timeout":
		return &p.Timeout
	case "consistency":
		return &p.Consistency
	case "tls":
		return &p.TLS
	case "ca-file":
		return &p.CAFile
	case "cert-file":
		return &p.CertFile
	case "key-file":
		return &p.KeyFile
	}
	return nil
}

type configFile struct {
	Profiles map[string]*profile `yaml:"profiles,omitempty"`
}

// configPath is $MYSTERYBOX_CONFIG, else $XDG_CONFIG_HOME/mbox/config.yaml,
// else ~/.config/mbox/config.yaml.
func configPath() (string, error) {
	if p := os.Getenv(envConfig); p != "" {
		return p, nil
	}
	if x := os.Getenv("XDG_CONFIG_HOME"); filepath.IsAbs(x) {
		return filepath.Join(x, "mbox", "config.yaml"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", usageErr("cannot locate the config file: %v (set %s or XDG_CONFIG_HOME)", err, envConfig)
	}
	return filepath.Join(home, ".config", "mbox", "config.yaml"), nil
}

// loadConfig reads the config file; a missing file is an empty config.
func loadConfig(path string) (*configFile, fs.FileMode, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return &configFile{}, 0, nil
	}
	if err != nil {
		return nil, 0, usageErr("config file: %v", err)
	}
	var mode fs.FileMode
	if st, err := os.Stat(path); err == nil {
		mode = st.Mode().Perm()
	}
	cf := &configFile{}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(cf); err != nil && !errors.Is(err, io.EOF) {
		msg := strings.Join(strings.Fields(err.Error()), " ")
		msg = strings.ReplaceAll(msg, " in type main.profile", "")
		msg = strings.ReplaceAll(msg, " in type main.configFile", "")
		return nil, 0, usageErr("config file %s: %s", path, msg)
	}
	for name, p := range cf.Profiles {
		if p == nil {
			cf.Profiles[name] = &profile{}
			continue
		}
		for _, k := range configKeys {
			if v := *p.field(k); v != "" {
				if err := checkSetting(k, v); err != nil {
					return nil, 0, usageErr("config file %s, profile %q: %v", path, name, err)
				}
			}
		}
	}
	return cf, mode, nil
}

// saveConfig writes cf with mode 0600 (also over a file with a wider mode),
// through a temporary file and a rename so a crash leaves the old or the new.
func saveConfig(path string, cf *configFile) error {
	b, err := yaml.Marshal(cf)
	if err != nil {
		return localErr(codes.Internal, "encode config: %v", err)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return localErr(codes.Unknown, "config file: %v", err)
	}
	tmp, err := os.CreateTemp(dir, ".config-*.yaml")
	if err != nil {
		return localErr(codes.Unknown, "config file: %v", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return localErr(codes.Unknown, "config file: %v", err)
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return localErr(codes.Unknown, "config file: %v", err)
	}
	if err := tmp.Close(); err != nil {
		return localErr(codes.Unknown, "config file: %v", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return localErr(codes.Unknown, "config file: %v", err)
	}
	return nil
}

// checkSetting validates one setting's value (never echoing a token).
func checkSetting(key, v string) error {
	switch key {
	case "endpoints":
		if len(splitEndpoints(v)) == 0 {
			return fmt.Errorf("endpoints: no address in %q", v)
		}
	case "token-file", "ca-file", "cert-file", "key-file":
		if strings.TrimSpace(v) == "" {
			return fmt.Errorf("%s is empty", key)
		}
	case "tls":
		if _, err := strconv.ParseBool(v); err != nil {
			return fmt.Errorf("tls %q: want true or false", v)
		}
	case "token":
		if strings.TrimSpace(v) == "" {
			return errors.New("token is empty")
		}
		if strings.ContainsAny(v, "\r\n") {
			return errors.New("the token contains a line break")
		}
	case "format":
		if v != "text" && v != "json" && v != "yaml" {
			return fmt.Errorf("format %q: want text, json or yaml", v)
		}
	case "timeout":
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return fmt.Errorf("timeout %q: want a duration such as 10s (0: none)", v)
		}
	case "consistency":
		if v != client.ConsistencyLinearizable && v != client.ConsistencyStale {
			return fmt.Errorf("consistency %q: want linearizable or stale", v)
		}
	default:
		return fmt.Errorf("unknown key %q: want one of %s", key, strings.Join(configKeys, ", "))
	}
	return nil
}

func splitEndpoints(s string) []string {
	var out []string
	for _, e := range strings.Split(s, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

// expandHome turns a leading "~/" into the home directory.
func expandHome(p string) string {
	if strings.HasPrefix(p, "~/") {
		if home, err := os.UserHomeDir(); err == nil {
			return filepath.Join(home, p[2:])
		}
	}
	return p
}

// profileName is --profile, else $MYSTERYBOX_PROFILE, else "default";
// explicit reports whether it was asked for (then it must exist).
func (a *app) profileName(pf *pflag.FlagSet) (name string, explicit bool) {
	if pf.Changed("profile") {
		return a.profile, true
	}
	if env := strings.TrimSpace(os.Getenv(envProfile)); env != "" {
		return env, true
	}
	return defaultProfile, false
}

// activeProfile returns the selected profile (empty when there is none), its
// name and where it comes from.
func (a *app) activeProfile(pf *pflag.FlagSet) (*profile, string, error) {
	name, explicit := a.profileName(pf)
	path, err := configPath()
	if err != nil {
		if explicit {
			return nil, "", err
		}
		return &profile{}, name, nil
	}
	cf, mode, err := loadConfig(path)
	if err != nil {
		return nil, "", err
	}
	p, ok := cf.Profiles[name]
	if !ok {
		if explicit {
			return nil, "", usageErr("profile %q not found in %s (profiles: %s)", name, path, profileNames(cf))
		}
		return &profile{}, name, nil
	}
	if p.Token != "" && mode&0o077 != 0 {
		fmt.Fprintf(a.stderr, "warning: %s holds a token and is readable by others (mode %04o); run chmod 600 %s\n", path, mode, path)
	}
	return p, fmt.Sprintf("profile %q in %s", name, path), nil
}

func profileNames(cf *configFile) string {
	var names []string
	for n := range cf.Profiles {
		names = append(names, n)
	}
	if len(names) == 0 {
		return "none"
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// ---------------------------------------------------------------- commands

func (a *app) configCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Manage profiles of global settings in the config file",
		Long: `Manage the config file ($MYSTERYBOX_CONFIG, else $XDG_CONFIG_HOME/mbox/config.yaml,
else ~/.config/mbox/config.yaml). It holds named profiles; --profile or
$MYSTERYBOX_PROFILE selects one, "default" is used otherwise.

Keys: endpoints, token-file, token, format, timeout, consistency, tls,
ca-file, cert-file, key-file (the global flags of the same names).
Precedence: flags > environment (MYSTERYBOX_<KEY>, e.g. MYSTERYBOX_TOKEN_FILE)
> profile > defaults.

The file is written with mode 0600. Prefer token-file over token: a token in
the config file sits next to settings that are often copied around.`,
		Args: cobra.NoArgs,
		RunE: groupRunE,
		// The config commands work on the file itself: a broken or missing
		// profile must not stop them.
		PersistentPreRunE: func(*cobra.Command, []string) error { return nil },
	}
	cmd.AddCommand(a.configSetCmd(), a.configGetCmd(), a.configUnsetCmd(), a.configListCmd(), a.configProfilesCmd(), a.configPathCmd())
	return cmd
}

// configTarget is the file and profile a config command works on.
func (a *app) configTarget(cmd *cobra.Command) (path string, cf *configFile, name string, err error) {
	path, err = configPath()
	if err != nil {
		return "", nil, "", err
	}
	cf, _, err = loadConfig(path)
	if err != nil {
		return "", nil, "", err
	}
	name, _ = a.profileName(cmd.Flags())
	return path, cf, name, nil
}

func (a *app) configSetCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "set KEY VALUE",
		Short: "Set a key of the selected profile (created if needed)",
		Long: `Set KEY to VALUE in the selected profile (--profile, $MYSTERYBOX_PROFILE or
"default"), creating the profile and the file as needed. For token, VALUE "-"
reads the token from stdin, which keeps it out of the process list and the
shell history. token and token-file exclude each other: unset one first.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			key, value := args[0], args[1]
			if key == "token" && value == "-" {
				b, err := io.ReadAll(a.stdin)
				if err != nil {
					return usageErr("read the token from stdin: %v", err)
				}
				value = strings.TrimSpace(string(b))
			}
			if err := checkSetting(key, value); err != nil {
				return usageErr("%v", err)
			}
			if key == "endpoints" {
				value = strings.Join(splitEndpoints(value), ",")
			}
			path, cf, name, err := a.configTarget(cmd)
			if err != nil {
				return err
			}
			if cf.Profiles == nil {
				cf.Profiles = map[string]*profile{}
			}
			p := cf.Profiles[name]
			if p == nil {
				p = &profile{}
				cf.Profiles[name] = p
			}
			if key == "token" && p.TokenFile != "" {
				return usageErr("profile %q has token-file; run 'mbox config unset token-file' first", name)
			}
			if key == "token-file" && p.Token != "" {
				return usageErr("profile %q has token; run 'mbox config unset token' first", name)
			}
			*p.field(key) = value
			if err := saveConfig(path, cf); err != nil {
				return err
			}
			if key == "token" {
				fmt.Fprintf(a.stderr, "warning: the token is stored in %s (mode 0600); a token-file, or MYSTERYBOX_TOKEN from a secret store, is safer\n", path)
			}
			return nil
		},
	}
}

func (a *app) configUnsetCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "unset KEY",
		Short: "Remove a key from the selected profile",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			key := args[0]
			if err := checkSetting(key, "-"); err != nil && strings.HasPrefix(err.Error(), "unknown key") {
				return usageErr("%v", err)
			}
			path, cf, name, err := a.configTarget(cmd)
			if err != nil {
				return err
			}
			p := cf.Profiles[name]
			if p == nil || *p.field(key) == "" {
				return nil
			}
			*p.field(key) = ""
			return saveConfig(path, cf)
		},
	}
}

func (a *app) configGetCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "get KEY",
		Short: "Print a key of the selected profile",
		Long: `Print the value of KEY in the selected profile and a newline. A token is
never printed: "(set; not shown)" stands for it. A key that is not set fails
with NOT_FOUND (exit 3).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			key := args[0]
			if err := checkSetting(key, "-"); err != nil && strings.HasPrefix(err.Error(), "unknown key") {
				return usageErr("%v", err)
			}
			path, cf, name, err := a.configTarget(cmd)
			if err != nil {
				return err
			}
			p := cf.Profiles[name]
			if p == nil || *p.field(key) == "" {
				return localErr(codes.NotFound, "%s is not set in profile %q of %s", key, name, path)
			}
			v := *p.field(key)
			if key == "token" {
				v = tokenHidden
			}
			_, err = fmt.Fprintln(a.stdout, v)
			return err
		},
	}
}

func (a *app) configListCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "Print the keys set in the selected profile",
		Long: `Print the keys set in the selected profile as "key: value" lines (with -o json,
one JSON object). A token is shown as "(set; not shown)".`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path, cf, name, err := a.configTarget(cmd)
			if err != nil {
				return err
			}
			p := cf.Profiles[name]
			if p == nil {
				if _, explicit := a.profileName(cmd.Flags()); explicit {
					return usageErr("profile %q not found in %s (profiles: %s)", name, path, profileNames(cf))
				}
				p = &profile{}
			}
			var pairs []kv
			for _, k := range configKeys {
				v := *p.field(k)
				if v == "" {
					continue
				}
				if k == "token" {
					v = tokenHidden
				}
				pairs = append(pairs, kv{k, v})
			}
			return a.emitPairs(pairs)
		},
	}
}

func (a *app) configProfilesCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "profiles",
		Short: "List the profiles of the config file, one per line",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, cf, _, err := a.configTarget(cmd)
			if err != nil {
				return err
			}
			var names []string
			for n := range cf.Profiles {
				names = append(names, n)
			}
			sort.Strings(names)
			for _, n := range names {
				fmt.Fprintln(a.stdout, n)
			}
			return nil
		},
	}
}

func (a *app) configPathCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "path",
		Short: "Print the config file's path",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			path, err := configPath()
			if err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, path)
			return nil
		},
	}
}

// emitPairs prints ordered key/value pairs as text, or as one JSON/YAML
// object in the same order.
func (a *app) emitPairs(pairs []kv) error {
	format := a.format
	var out []byte
	switch format {
	case "json", "yaml":
		var buf bytes.Buffer
		buf.WriteString("{")
		for i, p := range pairs {
			if i > 0 {
				buf.WriteString(",")
			}
			k, _ := json.Marshal(p.k)
			v, _ := json.Marshal(p.v)
			buf.Write(k)
			buf.WriteString(":")
			buf.Write(v)
		}
		buf.WriteString("}")
		if format == "json" {
			var ind bytes.Buffer
			if err := json.Indent(&ind, buf.Bytes(), "", "  "); err != nil {
				return localErr(codes.Internal, "encode json: %v", err)
			}
			ind.WriteString("\n")
			out = ind.Bytes()
		} else {
			b, err := jsonToYAML(buf.Bytes())
			if err != nil {
				return localErr(codes.Internal, "encode yaml: %v", err)
			}
			out = b
		}
	default:
		var buf bytes.Buffer
		writeKV(&buf, pairs)
		out = buf.Bytes()
	}
	if _, err := a.stdout.Write(out); err != nil {
		return localErr(codes.Unknown, "write stdout: %v", err)
	}
	return nil
}

// jsonToYAML re-encodes a JSON document as block YAML, keeping key order.
func jsonToYAML(js []byte) ([]byte, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(js, &doc); err != nil {
		return nil, err
	}
	resetStyle(&doc)
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// resolveTLS applies --tls, --ca-file, --cert-file and --key-file (flag >
// env > profile) and loads the files, so a bad one fails before any call.
func (a *app) resolveTLS(pf *pflag.FlagSet, prof *profile, setting func(env, fromProfile string) (string, string)) error {
	if !pf.Changed("tls") {
		if v, src := setting(envTLS, prof.TLS); v != "" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return usageErr("%s %q: want true or false", src, v)
			}
			a.tlsOn = b
		}
	}
	for _, f := range []struct {
		flag, env, fromProfile string
		dst                    *string
	}{
		{"ca-file", envCAFile, prof.CAFile, &a.caFile},
		{"cert-file", envCertFile, prof.CertFile, &a.certFile},
		{"key-file", envKeyFile, prof.KeyFile, &a.keyFile},
	} {
		if !pf.Changed(f.flag) {
			if v, _ := setting(f.env, f.fromProfile); v != "" {
				*f.dst = expandHome(v)
			}
		}
	}
	if !a.tlsOn && a.caFile == "" && a.certFile == "" && a.keyFile == "" {
		return nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if a.caFile != "" {
		b, err := os.ReadFile(a.caFile)
		if err != nil {
			return usageErr("--ca-file: %v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return usageErr("--ca-file %s: no PEM certificate in it", a.caFile)
		}
		cfg.RootCAs = pool
	}
	if (a.certFile == "") != (a.keyFile == "") {
		return usageErr("--cert-file and --key-file go together")
	}
	if a.certFile != "" {
		cert, err := tls.LoadX509KeyPair(a.certFile, a.keyFile)
		if err != nil {
			return usageErr("--cert-file/--key-file: %v", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	a.tlsConfig = cfg
	return nil
}

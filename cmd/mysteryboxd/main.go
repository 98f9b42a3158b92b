// Command mysteryboxd runs one MysteryBox node: flags and environment to a
// node.Config, signals, and the dev-mode conveniences. Everything else lives
// in the packages it wires.
package main

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/mysterybox/mysterybox/backup"
	"github.com/mysterybox/mysterybox/cluster"
	"github.com/mysterybox/mysterybox/node"
	"github.com/mysterybox/mysterybox/region"
	"github.com/mysterybox/mysterybox/store"
	"github.com/mysterybox/mysterybox/tlsutil"
)

type options struct {
	dev             bool
	region          string
	nodeID          string
	dataDir         string
	grpcAddr        string
	grpcAdvertise   string
	raftAddr        string
	raftAdvertise   string
	bootstrap       bool
	joinRaft        []string
	joinTokenFile   string
	gossipAddr      string
	gossipAdvertise string
	join            []string
	bootstrapExpect int
	gossipKeyFile   string
	reapAfter       time.Duration
	metricsAddr     string
	audit           bool
	auditFailOpen   bool
	auditRetention  time.Duration
	tls             tlsutil.Files
	adminTokenFile  string
	masterKeyFile   string
	purgeAfter      time.Duration
	logLevel        string
	shutdownTimeout time.Duration

	snapshotInterval  time.Duration
	snapshotThreshold uint64
	trailingLogs      uint64
	raftLogStore      string
}

func main() {
	// The node's Go heap is small (Pebble's block cache lives outside it),
	// so the default GOGC=100 collects very often under load: garbage
	// collection was about a quarter of a payload read's CPU. Twice the
	// headroom cut 10-25 % of the CPU per read in the parallel benchmarks
	// (docs/performance.md). GOGC in the environment still wins.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGCPercent)
	}
	// A soft limit keeps that headroom from growing the heap without bound
	// under heavy load (256 clients): the collector works harder near it.
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(defaultMemoryLimit)
	}
	os.Exit(run(os.Args[1:]))
}

const (
	defaultGCPercent   = 200
	defaultMemoryLimit = 256 << 20
)

func run(args []string) int {
	o := &options{}
	cmd := &cobra.Command{
		Use:           "mysteryboxd",
		Short:         "MysteryBox server: one node of a region's Raft cluster",
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE:          func(cmd *cobra.Command, _ []string) error { return serve(cmd, o) },
	}
	f := cmd.Flags()
	f.BoolVar(&o.dev, "dev", false, "one-node dev region local1: data in ./mysterybox-data, bootstraps itself, generates a keyring beside the data")
	f.StringVar(&o.region, "region", "", "region this node belongs to")
	f.StringVar(&o.nodeID, "node-id", "", "unique, stable id of this node")
	f.StringVar(&o.dataDir, "data-dir", "", "where the Raft log, snapshots and the store live")
	f.StringVar(&o.grpcAddr, "grpc-addr", "127.0.0.1:7700", "gRPC listen address")
	f.StringVar(&o.grpcAdvertise, "grpc-advertise", "", "gRPC address peers dial (default: --grpc-addr)")
	f.StringVar(&o.raftAddr, "raft-addr", ":7701", "Raft listen address")
	f.StringVar(&o.raftAdvertise, "raft-advertise", "", "Raft address peers dial (default: --raft-addr, with the gRPC host if none)")
	f.BoolVar(&o.bootstrap, "bootstrap", false, "start a new region with this node as its first voter (only when it has no Raft state)")
	f.StringSliceVar(&o.joinRaft, "join-raft", nil, "gRPC addresses (host:port,...) of members of the region to join through")
	f.StringVar(&o.gossipAddr, "gossip-addr", ":7702", "gossip listen address, TCP and UDP (\"\" disables gossip)")
	f.StringVar(&o.gossipAdvertise, "gossip-advertise", "", "gossip address peers dial (default: --gossip-addr, with the gRPC host if none)")
	f.StringSliceVar(&o.join, "join", nil, "gossip seeds: host:port of any node of any region")
	f.IntVar(&o.bootstrapExpect, "bootstrap-expect", 0, "bootstrap the region once this many of its nodes see each other through gossip (never when Raft state exists)")
	f.StringVar(&o.gossipKeyFile, "gossip-key-file", "", "file with the base64 gossip encryption key shared by every node of every region (`mysteryboxd keygen --gossip`)")
	f.DurationVar(&o.reapAfter, "dead-node-reap-after", 72*time.Hour, "the leader removes a node gossip has seen dead this long (never below a quorum)")
	f.StringVar(&o.metricsAddr, "metrics-addr", "", "serve Prometheus metrics on http://ADDR/metrics (off when empty)")
	f.BoolVar(&o.audit, "audit", true, "record every payload read and state change in the replicated, hash-chained audit log")
	f.BoolVar(&o.auditFailOpen, "audit-fail-open", false, "serve a payload read even when its audit record cannot be written (default: the read fails)")
	f.DurationVar(&o.auditRetention, "audit-retention", 2160*time.Hour, "how long audit records are kept (0: forever)")
	f.StringVar(&o.tls.CertFile, "tls-cert-file", "", "PEM certificate of the gRPC server (TLS on when set)")
	f.StringVar(&o.tls.KeyFile, "tls-key-file", "", "PEM key of the gRPC server")
	f.StringVar(&o.tls.ClientCAFile, "tls-client-ca-file", "", "CA of client certificates")
	f.StringVar(&o.tls.ClientAuth, "tls-client-auth", "none", "client certificates: none, verify-if-given or require")
	f.StringVar(&o.tls.PeerCAFile, "peer-ca-file", "", "the cluster CA: peers' certificates must chain to it")
	f.StringVar(&o.tls.PeerCertFile, "peer-cert-file", "", "this node's certificate for Raft, forwarding and joins (names its region)")
	f.StringVar(&o.tls.PeerKeyFile, "peer-key-file", "", "key of --peer-cert-file")
	f.StringVar(&o.joinTokenFile, "join-token-file", "", "file holding a region admin token, sent with --join-raft requests")
	f.StringVar(&o.adminTokenFile, "bootstrap-admin-token-file", "", "with --bootstrap: where to write the region's first admin token (mode 0600), once")
	f.StringVar(&o.masterKeyFile, "master-key-file", "", "the region's keyring (JSON; see docs/operations.md)")
	f.DurationVar(&o.purgeAfter, "purge-after", 720*time.Hour, "delay before soft-deleted secrets and versions are purged")
	f.StringVar(&o.logLevel, "log-level", "info", "trace, debug, info, warn or error")
	f.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 30*time.Second, "how long SIGTERM waits for in-flight calls")
	f.DurationVar(&o.snapshotInterval, "raft-snapshot-interval", 30*time.Second, "how often Raft checks whether to snapshot (randomly 1–2× this)")
	f.Uint64Var(&o.snapshotThreshold, "raft-snapshot-threshold", 8192, "Raft snapshots once this many log entries are past the last snapshot")
	f.Uint64Var(&o.trailingLogs, "raft-trailing-logs", 10240, "log entries kept after a snapshot, so a follower this far behind catches up without one")
	f.StringVar(&o.raftLogStore, "raft-log-store", "", "Raft log store: wal or boltdb; empty keeps the data directory's (wal when new); naming the other migrates the log at start")
	cmd.AddCommand(keygenCommand(), restoreCommand(), tlsCommand())
	cmd.SetArgs(args)
	if err := applyEnv(cmd, args); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		return 2
	}
	if err := cmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		var ue usageError
		if errors.As(err, &ue) || strings.Contains(err.Error(), "flag") {
			return 2
		}
		return 1
	}
	return 0
}

type usageError struct{ error }

// applyEnv fills every flag the command line leaves unset from
// MYSTERYBOX_<FLAG> (dashes become underscores).
func applyEnv(cmd *cobra.Command, args []string) error {
	if err := cmd.ParseFlags(args); err != nil {
		return nil // cobra reports it
	}
	var firstErr error
	cmd.Flags().VisitAll(func(fl *pflag.Flag) {
		if fl.Changed || fl.Name == "help" {
			return
		}
		env := "MYSTERYBOX_" + strings.ToUpper(strings.ReplaceAll(fl.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok {
			if err := cmd.Flags().Set(fl.Name, v); err != nil && firstErr == nil {
				firstErr = fmt.Errorf("%s=%q: %v", env, v, err)
			}
		}
	})
	return firstErr
}

// restoreCommand seeds the data directory of a new region's first node
// from a backup, offline: disaster recovery when every node is lost.
func restoreCommand() *cobra.Command {
	var dataDir, region string
	c := &cobra.Command{
		Use:   "restore --data-dir DIR FILE",
		Short: "seed an empty data directory from a backup (then start the node with --bootstrap)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if dataDir == "" {
				return usageError{errors.New("--data-dir is required")}
			}
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			h, err := backup.ReadHeader(f)
			if err != nil {
				return err
			}
			if region != "" && h.Region != region {
				return fmt.Errorf("the backup is of region %s, not %s", h.Region, region)
			}
			if _, err := os.Stat(filepath.Join(dataDir, "raft")); err == nil {
				return fmt.Errorf("%s already holds Raft state: restore only into an empty data directory", dataDir)
			}
			st, err := store.Open(filepath.Join(dataDir, "fsm"), nil)
			if err != nil {
				return err
			}
			defer st.Close()
			if empty, err := st.Empty(); err != nil || !empty {
				return fmt.Errorf("%s already holds data: restore only into an empty data directory (%v)", dataDir, err)
			}
			// The new region's Raft log starts again at 1: the restored
			// store's applied index is zero from the moment it exists.
			if err := st.RestoreForNewRegion(backup.BodyReader(f, h), h.SeededClusterID()); err != nil {
				return err
			}
			fmt.Printf("restored region %s (backup at raft index %d, %d bytes) into %s\n", h.Region, h.RaftIndex, h.BodyBytes, dataDir)
			fmt.Printf("start this node with --bootstrap and a keyring holding %v; add the other nodes as usual\n", h.KeyIDs)
			return nil
		},
	}
	c.Flags().StringVar(&dataDir, "data-dir", "", "an empty data directory")
	c.Flags().StringVar(&region, "region", "", "refuse a backup of another region")
	return c
}

// tlsCommand makes certificates for tests and small deployments.
func tlsCommand() *cobra.Command {
	c := &cobra.Command{Use: "tls", Short: "TLS certificates for tests and small deployments", Args: cobra.NoArgs, RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() }}
	var out, region string
	var nodes, hosts []string
	var validFor time.Duration
	initCmd := &cobra.Command{
		Use:   "init --out DIR --region R --nodes n1,n2,n3 [--hosts h1,h2]",
		Short: "create a CA (ECDSA P-256), one certificate per node (SANs 127.0.0.1, localhost and --hosts; region in a URI SAN) and a client certificate",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" || region == "" || len(nodes) == 0 {
				return usageError{errors.New("--out, --region and --nodes are required")}
			}
			if err := tlsutil.Init(out, region, nodes, hosts, validFor); err != nil {
				return err
			}
			fmt.Printf("wrote ca.pem, ca-key.pem, client.pem, client-key.pem and a certificate per node (%v) to %s\n", nodes, out)
			return nil
		},
	}
	initCmd.Flags().StringVar(&out, "out", "", "directory for the files (mode 0600)")
	initCmd.Flags().StringVar(&region, "region", "", "region the node certificates name")
	initCmd.Flags().StringSliceVar(&nodes, "nodes", nil, "node ids")
	initCmd.Flags().StringSliceVar(&hosts, "hosts", nil, "extra DNS names or IPs for the node certificates")
	initCmd.Flags().DurationVar(&validFor, "valid-for", 365*24*time.Hour, "validity of the certificates")
	c.AddCommand(initCmd)
	return c
}

func keygenCommand() *cobra.Command {
	id := ""
	gossip := false
	c := &cobra.Command{
		Use:   "keygen",
		Short: "print a new keyring with one random 256-bit key, or with --gossip a gossip key (redirect to a file of mode 0600)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if gossip {
				key := make([]byte, 32)
				if _, err := rand.Read(key); err != nil {
					return err
				}
				_, err := fmt.Println(base64.StdEncoding.EncodeToString(key))
				return err
			}
			if id == "" {
				id = "k" + time.Now().UTC().Format("20060102150405")
			}
			out, err := region.GenerateKeyringFile(id)
			if err != nil {
				return err
			}
			_, err = os.Stdout.Write(out)
			return err
		},
	}
	c.Flags().StringVar(&id, "key-id", "", "id of the key (default: k<UTC timestamp>)")
	c.Flags().BoolVar(&gossip, "gossip", false, "print a gossip encryption key (base64 of 32 random bytes) instead")
	return c
}

func serve(cmd *cobra.Command, o *options) error {
	logger := hclog.New(&hclog.LoggerOptions{Name: "mysteryboxd", Level: hclog.LevelFromString(o.logLevel), Output: os.Stderr})
	cfg := node.Config{
		Region:            o.region,
		NodeID:            o.nodeID,
		DataDir:           o.dataDir,
		GRPCAddr:          o.grpcAddr,
		GRPCAdvertise:     o.grpcAdvertise,
		RaftAddr:          o.raftAddr,
		RaftAdvertise:     o.raftAdvertise,
		Bootstrap:         o.bootstrap,
		JoinAddrs:         o.joinRaft,
		AdminTokenFile:    o.adminTokenFile,
		PurgeAfter:        o.purgeAfter,
		GossipAddr:        o.gossipAddr,
		GossipAdvertise:   o.gossipAdvertise,
		GossipSeeds:       o.join,
		BootstrapExpect:   o.bootstrapExpect,
		DeadNodeReapAfter: o.reapAfter,
		MetricsAddr:       o.metricsAddr,
		TLS:               o.tls,
		Audit:             o.audit,
		AuditFailOpen:     o.auditFailOpen,
		AuditRetention:    o.auditRetention,
		SnapshotInterval:  o.snapshotInterval,
		SnapshotThreshold: o.snapshotThreshold,
		TrailingLogs:      o.trailingLogs,
		RaftLogStore:      o.raftLogStore,
	}
	if o.snapshotInterval <= 0 || o.snapshotThreshold == 0 || o.trailingLogs == 0 {
		return usageError{errors.New("--raft-snapshot-interval, --raft-snapshot-threshold and --raft-trailing-logs must be positive")}
	}
	if !cluster.ValidLogStore(o.raftLogStore) {
		return usageError{fmt.Errorf("--raft-log-store must be %q or %q, not %q", cluster.LogStoreWAL, cluster.LogStoreBoltDB, o.raftLogStore)}
	}
	if o.tls.Enabled() {
		if o.tls.CertFile == "" || o.tls.KeyFile == "" || o.tls.PeerCAFile == "" || o.tls.PeerCertFile == "" || o.tls.PeerKeyFile == "" {
			return usageError{errors.New("TLS needs --tls-cert-file, --tls-key-file, --peer-ca-file, --peer-cert-file and --peer-key-file together")}
		}
		if cfg.GossipAddr != "" && o.gossipKeyFile == "" {
			return usageError{errors.New("with TLS, gossip must be encrypted too: set --gossip-key-file")}
		}
		if !isLoopback(cfg.GRPCAddr) && o.tls.ClientAuth == "none" {
			logger.Warn("TLS on a non-loopback address without client certificates: clients are authenticated by token only")
		}
	}
	if o.gossipKeyFile != "" {
		key, err := loadGossipKey(o.gossipKeyFile)
		if err != nil {
			return usageError{err}
		}
		cfg.GossipKey = key
	}
	if o.bootstrapExpect < 0 {
		return usageError{errors.New("--bootstrap-expect must be positive")}
	}
	if o.bootstrapExpect > 0 && cfg.GossipAddr == "" {
		return usageError{errors.New("--bootstrap-expect needs gossip (--gossip-addr)")}
	}
	if o.joinTokenFile != "" {
		raw, err := os.ReadFile(o.joinTokenFile)
		if err != nil {
			return usageError{fmt.Errorf("--join-token-file: %v", err)}
		}
		cfg.JoinToken = strings.TrimSpace(string(raw))
	}
	if o.dev {
		if err := devDefaults(cmd, &cfg, logger); err != nil {
			return err
		}
	} else {
		if cfg.Region == "" || cfg.NodeID == "" || cfg.DataDir == "" {
			return usageError{errors.New("--region, --node-id and --data-dir are required (or --dev)")}
		}
		if o.masterKeyFile == "" {
			return usageError{errors.New("--master-key-file is required (create one with `mysteryboxd keygen`), or use --dev")}
		}
		kr, err := region.LoadKeyring(o.masterKeyFile)
		if err != nil {
			return err
		}
		cfg.Keyring = kr
	}
	if !regionPattern.MatchString(cfg.Region) {
		return usageError{fmt.Errorf("--region %q must match %s", cfg.Region, regionPattern)}
	}
	if cfg.BootstrapExpect > 0 && cfg.AdminTokenFile == "" {
		logger.Warn("no --bootstrap-admin-token-file: this node will not hold the region's first admin token; give it to at least one node of the region")
	}
	if cfg.Bootstrap && cfg.AdminTokenFile == "" {
		return usageError{errors.New("--bootstrap needs --bootstrap-admin-token-file: the region's first admin token is written there")}
	}
	if o.purgeAfter <= 0 {
		return usageError{errors.New("--purge-after must be positive")}
	}
	if err := advertiseDefaults(&cfg); err != nil {
		return usageError{err}
	}

	n, err := node.Start(cfg, logger)
	if err != nil {
		return err
	}
	if o.dev {
		printDevBanner(n.GRPCAddr(), cfg.AdminTokenFile, n.AdminToken())
	}

	keyringPath := o.masterKeyFile
	if o.dev {
		keyringPath = filepath.Join(cfg.DataDir, devKeyringFile)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	sig := <-sigs
	for ; sig == syscall.SIGHUP; sig = <-sigs {
		reloadKeyring(n, keyringPath, logger)
		if err := n.ReloadTLS(); err != nil {
			logger.Error("TLS reload refused; keeping the current certificates", "error", err)
		}
	}
	logger.Info("shutting down", "signal", sig.String())
	if err := n.Shutdown(o.shutdownTimeout); err != nil {
		logger.Error("shutdown", "error", err)
		return err
	}
	logger.Info("stopped")
	return nil
}

// reloadKeyring re-reads the keyring file (SIGHUP). A keyring that cannot
// open the data already stored is refused and the old one stays.
func reloadKeyring(n *node.Node, path string, logger hclog.Logger) {
	kr, err := region.LoadKeyring(path)
	if err == nil {
		err = n.API.SetKeyring(kr)
	}
	if err != nil {
		logger.Error("keyring reload refused; keeping the current keyring", "file", path, "error", err)
	}
}

const devKeyringFile = "dev-keyring.json"

func devDefaults(cmd *cobra.Command, cfg *node.Config, logger hclog.Logger) error {
	if cfg.Region == "" {
		cfg.Region = "local1"
	}
	if cfg.NodeID == "" {
		cfg.NodeID = "dev1"
	}
	if cfg.DataDir == "" {
		cfg.DataDir = "./mysterybox-data"
	}
	if !cmd.Flags().Changed("raft-addr") && os.Getenv("MYSTERYBOX_RAFT_ADDR") == "" {
		cfg.RaftAddr = "127.0.0.1:7701"
	}
	if !cmd.Flags().Changed("gossip-addr") && os.Getenv("MYSTERYBOX_GOSSIP_ADDR") == "" {
		cfg.GossipAddr = "127.0.0.1:7702"
	}
	cfg.Bootstrap = true
	if cfg.AdminTokenFile == "" {
		cfg.AdminTokenFile = filepath.Join(cfg.DataDir, "admin.token")
	}
	for _, a := range []string{cfg.GRPCAddr, cfg.RaftAddr, cfg.GossipAddr} {
		if a != "" && !isLoopback(a) {
			return usageError{fmt.Errorf("--dev serves plaintext and listens on loopback only; %q is not a loopback address", a)}
		}
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return err
	}
	path := filepath.Join(cfg.DataDir, devKeyringFile)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		raw, err := region.GenerateKeyringFile("dev1")
		if err != nil {
			return err
		}
		if err := os.WriteFile(path, raw, 0o600); err != nil {
			return err
		}
	}
	kr, err := region.LoadKeyring(path)
	if err != nil {
		return err
	}
	logger.Warn("DEV MODE: the keyring sits beside the data it protects; never use --dev for real secrets", "keyring", path)
	cfg.Keyring = kr
	return nil
}

func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// advertiseDefaults fills advertised addresses: a bound address with a
// concrete host advertises itself; Raft on an unspecified host borrows the
// gRPC host.
func advertiseDefaults(cfg *node.Config) error {
	if cfg.GRPCAdvertise == "" {
		host, _, err := net.SplitHostPort(cfg.GRPCAddr)
		if err != nil {
			return fmt.Errorf("--grpc-addr %q: %v", cfg.GRPCAddr, err)
		}
		if unspecified(host) {
			return fmt.Errorf("--grpc-addr %q has no concrete host: set --grpc-advertise", cfg.GRPCAddr)
		}
	}
	if cfg.GossipAddr != "" && cfg.GossipAdvertise == "" {
		host, port, err := net.SplitHostPort(cfg.GossipAddr)
		if err != nil {
			return fmt.Errorf("--gossip-addr %q: %v", cfg.GossipAddr, err)
		}
		if unspecified(host) {
			ghost, _, _ := net.SplitHostPort(firstNonEmpty(cfg.GRPCAdvertise, cfg.GRPCAddr))
			if unspecified(ghost) {
				return fmt.Errorf("--gossip-addr %q has no concrete host: set --gossip-advertise", cfg.GossipAddr)
			}
			cfg.GossipAdvertise = net.JoinHostPort(ghost, port)
		}
	}
	if cfg.RaftAdvertise == "" {
		host, port, err := net.SplitHostPort(cfg.RaftAddr)
		if err != nil {
			return fmt.Errorf("--raft-addr %q: %v", cfg.RaftAddr, err)
		}
		if unspecified(host) {
			ghost, _, _ := net.SplitHostPort(firstNonEmpty(cfg.GRPCAdvertise, cfg.GRPCAddr))
			if unspecified(ghost) {
				return fmt.Errorf("--raft-addr %q has no concrete host: set --raft-advertise", cfg.RaftAddr)
			}
			cfg.RaftAdvertise = net.JoinHostPort(ghost, port)
		}
	}
	return nil
}

func unspecified(host string) bool {
	if host == "" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsUnspecified()
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// loadGossipKey reads a base64 key of 16, 24 or 32 bytes.
func loadGossipKey(path string) ([]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--gossip-key-file: %v", err)
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(raw)))
	if err != nil || (len(key) != 16 && len(key) != 24 && len(key) != 32) {
		return nil, fmt.Errorf("--gossip-key-file %s must hold base64 of 16, 24 or 32 bytes (make one with `mysteryboxd keygen --gossip`)", path)
	}
	return key, nil
}

var regionPattern = regexp.MustCompile(`^[a-z][a-z0-9-]{0,62}$`)

func printDevBanner(grpcAddr, tokenFile, newToken string) {
	tokenLine := "The region admin's token is in " + tokenFile + " (created at the first start)."
	if newToken != "" {
		tokenLine = "Region admin token (also in " + tokenFile + ", mode 0600):\n  " + newToken
	}
	fmt.Printf(`MysteryBox dev region "local1" is serving on %s.
%s

In another shell:
  export MYSTERYBOX_ENDPOINTS=%s
  export MYSTERYBOX_TOKEN=$(cat %s)
  bin/mbox project create --name demo
  bin/mbox secret create --parent-id <project-id> --name db --payload password=s3cret
  bin/mbox payload get-by-key --secret-id <secret-id> --key password

Stop with Ctrl-C; data survives a restart.
`, grpcAddr, tokenLine, grpcAddr, tokenFile)
}

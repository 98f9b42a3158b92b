package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/mysterybox/mysterybox/api/client"
	mbv1 "github.com/mysterybox/mysterybox/api/mysteryboxv1"
)

// Routing of a MysteryBox target's connections.
const (
	// RouteSpread pins connection i to endpoint i mod len(endpoints), so the
	// clients spread over every node and stale reads stay on their node;
	// writes and linearizable reads go to the leader once api/client knows
	// it (from the leader named in every response, or from discovery), as
	// for any product client; until then followers forward them.
	RouteSpread = "spread"
	// RouteClient lets api/client route each call: to the leader it learns
	// through discovery (needs the region's admin role), any node for stale
	// reads.
	RouteClient = "client"
)

// PayloadKey is the entry key of every version a MysteryBox target writes.
const PayloadKey = "value"

// MysteryBoxConfig configures a MysteryBox target.
type MysteryBoxConfig struct {
	// Endpoints are the gRPC addresses of the region's nodes.
	Endpoints []string
	// Token is sent as the bearer token.
	Token string
	// Conns is the number of connections (api/client instances); client
	// goroutine i uses connection i mod Conns. Default len(Endpoints).
	Conns int
	// Route is RouteSpread (default) or RouteClient.
	Route string
	// ValueSize is the payload size of each version in bytes. Default 1024.
	ValueSize int
	// ProjectID is an existing project to create the secrets in; empty: a
	// new project "bench-<time>" (needs the region's admin role).
	ProjectID string
	// SecretPrefix names the secrets: <prefix><key>. Default "bench-".
	SecretPrefix string
	// PrepareConcurrency bounds the parallel creations of Prepare.
	// Default 32.
	PrepareConcurrency int
	// NoIdempotencyKey sends writes without an x-idempotency-key, over
	// plain gRPC connections instead of api/client (which gives every
	// mutation a key, and retries). It shows what the idempotency record
	// costs the server; only with RouteSpread.
	NoIdempotencyKey bool
}

// MysteryBox is a Target on a MysteryBox region. A write creates a new
// version (one entry of ValueSize bytes) of the key's secret through
// SecretVersionService.Create; a read is PayloadService.GetByKey of the
// secret's primary version, linearizable or with x-consistency: stale.
type MysteryBox struct {
	cfg     MysteryBoxConfig
	conns   []grpc.ClientConnInterface
	closers []io.Closer
	value   string
	// md and staleMD are the outgoing metadata of linearizable and stale
	// calls: x-consistency, and with raw connections the bearer token.
	md, staleMD metadata.MD
	project     string
	secrets     []string
}

var (
	_ Target   = (*MysteryBox)(nil)
	_ Preparer = (*MysteryBox)(nil)
)

// NewMysteryBox creates the connections; they are made lazily, so it does
// not fail when a node is down.
func NewMysteryBox(cfg MysteryBoxConfig) (*MysteryBox, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("loadgen: no endpoints")
	}
	if cfg.Conns <= 0 {
		cfg.Conns = len(cfg.Endpoints)
	}
	if cfg.Route == "" {
		cfg.Route = RouteSpread
	}
	if cfg.ValueSize <= 0 {
		cfg.ValueSize = 1024
	}
	if cfg.SecretPrefix == "" {
		cfg.SecretPrefix = "bench-"
	}
	if cfg.PrepareConcurrency <= 0 {
		cfg.PrepareConcurrency = 32
	}
	m := &MysteryBox{cfg: cfg, value: Value(cfg.ValueSize), md: metadata.MD{},
		staleMD: metadata.Pairs(client.HeaderConsistency, client.ConsistencyStale)}
	if cfg.NoIdempotencyKey {
		if cfg.Route != RouteSpread {
			return nil, errors.New("loadgen: NoIdempotencyKey needs RouteSpread")
		}
		if cfg.Token != "" {
			m.md.Set(client.HeaderAuthorization, "Bearer "+cfg.Token)
			m.staleMD.Set(client.HeaderAuthorization, "Bearer "+cfg.Token)
		}
		for i := range cfg.Conns {
			cc, err := grpc.NewClient("passthrough:///"+cfg.Endpoints[i%len(cfg.Endpoints)],
				grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				m.Close()
				return nil, err
			}
			m.conns = append(m.conns, cc)
			m.closers = append(m.closers, cc)
		}
		return m, nil
	}
	for i := range cfg.Conns {
		cc := client.Config{Token: cfg.Token}
		switch cfg.Route {
		case RouteSpread:
			// Discovery stays on: with it off, api/client keeps to the
			// one endpoint and would not follow the leader it is told of.
			cc.Endpoints = []string{cfg.Endpoints[i%len(cfg.Endpoints)]}
		case RouteClient:
			cc.Endpoints = cfg.Endpoints
		default:
			m.Close()
			return nil, fmt.Errorf("loadgen: route %q: want %s or %s", cfg.Route, RouteSpread, RouteClient)
		}
		c, err := client.New(context.Background(), cc)
		if err != nil {
			m.Close()
			return nil, err
		}
		m.conns = append(m.conns, c)
		m.closers = append(m.closers, c)
	}
	return m, nil
}

// Value returns n bytes of printable ASCII (valid UTF-8 for a string entry).
func Value(n int) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	var b strings.Builder
	b.Grow(n)
	for i := range n {
		b.WriteByte(alphabet[(i*7+i/len(alphabet))%len(alphabet)])
	}
	return b.String()
}

// Close closes every connection.
func (m *MysteryBox) Close() error {
	var errs []error
	for _, c := range m.closers {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

// SecretIDs returns the secrets Prepare created, indexed by key.
func (m *MysteryBox) SecretIDs() []string { return append([]string(nil), m.secrets...) }

// Project returns the id of the project holding the secrets (after Prepare).
func (m *MysteryBox) Project() string { return m.project }

func (m *MysteryBox) conn(client int) grpc.ClientConnInterface { return m.conns[client%len(m.conns)] }

func (m *MysteryBox) secretsClient(ctx context.Context, client int) (context.Context, mbv1.SecretServiceClient) {
	return metadata.NewOutgoingContext(ctx, m.md), mbv1.NewSecretServiceClient(m.conn(client))
}

// Prepare creates the project (unless configured) and one secret per key,
// each with a first version, so that reads find a payload.
func (m *MysteryBox) Prepare(ctx context.Context, keys int) error {
	m.project = m.cfg.ProjectID
	if m.project == "" {
		p, err := mbv1.NewIdentityServiceClient(m.conn(0)).CreateProject(metadata.NewOutgoingContext(ctx, m.md), &mbv1.CreateProjectRequest{Project: &mbv1.Project{
			Metadata: &mbv1.Metadata{Name: fmt.Sprintf("bench-%s", time.Now().UTC().Format("20060102-150405.000"))},
		}})
		if err != nil {
			return fmt.Errorf("create project: %w", err)
		}
		m.project = p.GetMetadata().GetId()
	}
	m.secrets = make([]string, keys)
	return parallel(ctx, keys, m.cfg.PrepareConcurrency, func(ctx context.Context, k int) error {
		ctx, sc := m.secretsClient(ctx, k)
		s, err := sc.Create(ctx, &mbv1.CreateSecretRequest{Secret: &mbv1.Secret{
			Metadata: &mbv1.Metadata{ParentId: m.project, Name: fmt.Sprintf("%s%d", m.cfg.SecretPrefix, k)},
			Spec:     &mbv1.SecretSpec{SecretVersion: &mbv1.SecretVersionSpec{Payload: m.payload()}},
		}})
		if err != nil {
			return fmt.Errorf("create secret %d: %w", k, err)
		}
		m.secrets[k] = s.GetMetadata().GetId()
		return nil
	})
}

// parallel runs fn(ctx, i) for i in [0, n) with at most limit at a time and
// returns the first error; after one, the remaining calls are skipped.
func parallel(parent context.Context, n, limit int, fn func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	sem := make(chan struct{}, max(limit, 1))
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	for i := 0; i < n && ctx.Err() == nil; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := fn(ctx, i); err != nil {
				once.Do(func() { first = err; cancel() })
			}
		}()
	}
	wg.Wait()
	if first == nil {
		first = parent.Err()
	}
	return first
}

// Cleanup schedules every secret Prepare created for deletion (best
// effort: it returns the first error). The project, if Prepare created
// it, stays: a project with secrets scheduled for deletion cannot be
// deleted before they are purged.
func (m *MysteryBox) Cleanup(ctx context.Context) error {
	return parallel(ctx, len(m.secrets), m.cfg.PrepareConcurrency, func(ctx context.Context, k int) error {
		if m.secrets[k] == "" {
			return nil
		}
		ctx, sc := m.secretsClient(ctx, k)
		_, err := sc.Delete(ctx, &mbv1.DeleteSecretRequest{Id: m.secrets[k]})
		return err
	})
}

func (m *MysteryBox) payload() *mbv1.Payload {
	return &mbv1.Payload{Entries: []*mbv1.PayloadEntry{{
		Key:   PayloadKey,
		Value: &mbv1.PayloadEntry_StringValue{StringValue: m.value},
	}}}
}

// Write implements Target.
func (m *MysteryBox) Write(ctx context.Context, client, key int) error {
	ctx = metadata.NewOutgoingContext(ctx, m.md)
	_, err := mbv1.NewSecretVersionServiceClient(m.conn(client)).Create(ctx, &mbv1.CreateSecretVersionRequest{Version: &mbv1.SecretVersion{
		Metadata: &mbv1.Metadata{ParentId: m.secrets[key]},
		Spec:     &mbv1.SecretVersionSpec{Payload: m.payload()},
	}})
	return err
}

// Read implements Target.
func (m *MysteryBox) Read(ctx context.Context, client, key int) error {
	return m.read(metadata.NewOutgoingContext(ctx, m.md), client, key)
}

// StaleRead implements Target.
func (m *MysteryBox) StaleRead(ctx context.Context, client, key int) error {
	return m.read(metadata.NewOutgoingContext(ctx, m.staleMD), client, key)
}

func (m *MysteryBox) read(ctx context.Context, client, key int) error {
	r, err := mbv1.NewPayloadServiceClient(m.conn(client)).GetByKey(ctx, &mbv1.GetPayloadByKeyRequest{SecretId: m.secrets[key], Key: PayloadKey})
	if err != nil {
		return err
	}
	if n := len(r.GetEntry().GetStringValue()); n != len(m.value) {
		return fmt.Errorf("read %d bytes, want %d", n, len(m.value))
	}
	return nil
}

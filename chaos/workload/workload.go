// Package workload is the chaos campaign's client side: concurrent workers
// that create secret versions with unique values, pin and unpin the
// primary, delete and undelete versions, read the primary's payload
// (linearizably) and list versions, through the Go client (api/client) with
// its failover and idempotency keys, and record every operation in a
// history.Recorder.
//
// Values are canaries: "<Prefix><run>-w<worker>-<seq>-<random>", unique in
// the campaign, so a value names a version and a leaked plaintext can be
// found on disk.
//
// A mutation whose outcome is unknown (UNAVAILABLE, a deadline) is retried
// with the same idempotency key until it gets a definite answer or
// Config.ResolveFor passes, as a careful client would: the server must then
// answer with the first call's result, never apply twice. Only operations
// still unresolved stay "unknown" in the history.
//
// Workers spread over a few active secrets at a time; a secret retires
// after Config.OpsPerSecret operations and a fresh one replaces it, which
// keeps each secret's history short enough to check.
package workload

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/mysterybox/mysterybox/api/client"
	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/chaos/checker"
	"github.com/mysterybox/mysterybox/chaos/history"
)

// Prefix starts every value the workload writes: the canary scan looks for
// it (raw, hex, base64) on disk.
const Prefix = "MBXCANARY"

// EntryKey is the payload entry every version carries.
const EntryKey = "v"

// Config configures a workload.
type Config struct {
	Endpoints []string
	Token     string
	// RunID makes names and values unique to the campaign.
	RunID   string
	Seed    uint64
	Workers int
	// ActiveSecrets are written concurrently; each retires after
	// OpsPerSecret operations.
	ActiveSecrets int
	OpsPerSecret  int
	// OpTimeout bounds one call (the client's retries across nodes
	// included); AttemptTimeout one attempt on one node.
	OpTimeout      time.Duration
	AttemptTimeout time.Duration
	// ResolveFor is how long a mutation with an unknown outcome is retried
	// with its idempotency key before it is recorded as unknown.
	ResolveFor time.Duration
	// Think bounds the random pause between a worker's operations, which
	// keeps the load (and the history) reasonable on a small machine.
	Think time.Duration
	// StaleReads makes reads "x-consistency: stale" (any node answers from
	// its own state). Not linearizable: a self-test of the checker, which
	// must catch it under partitions.
	StaleReads bool
	Logf       func(format string, args ...any)
}

func (c *Config) defaults() {
	if c.Workers <= 0 {
		c.Workers = 6
	}
	if c.ActiveSecrets <= 0 {
		c.ActiveSecrets = 3
	}
	if c.OpsPerSecret <= 0 {
		c.OpsPerSecret = 60
	}
	if c.Think < 0 {
		c.Think = 0
	}
	if c.OpTimeout <= 0 {
		c.OpTimeout = 5 * time.Second
	}
	if c.AttemptTimeout <= 0 {
		c.AttemptTimeout = 2 * time.Second
	}
	if c.ResolveFor <= 0 {
		c.ResolveFor = 20 * time.Second
	}
}

// Stats summarise what the workload did.
type Stats struct {
	Ops     int64 `json:"ops"`
	OK      int64 `json:"ok"`
	Failed  int64 `json:"failed"`
	Unknown int64 `json:"unknown"`
	// Resolved: unknown outcomes later settled by retrying with the same
	// idempotency key.
	Resolved int64 `json:"resolved"`
	// LongestUnavailable is the longest a worker went without a successful
	// operation while it kept trying.
	LongestUnavailable time.Duration `json:"longest_unavailable_ns"`
	LongestAt          time.Duration `json:"longest_unavailable_at_ns"`
	// StaleReads counts payload reads of an acknowledged version by id
	// with x-consistency: stale (answered by any node from its own state;
	// with audit on, a follower ships the record to the leader first).
	// They are not in the linearizability history: a version is immutable,
	// so one that answers must return exactly the acknowledged value, and
	// StaleWrong lists those that did not.
	StaleReads   int64    `json:"stale_reads"`
	StaleReadsOK int64    `json:"stale_reads_ok"`
	StaleWrong   []string `json:"stale_wrong,omitempty"`
}

type version struct {
	id, value string
}

type secret struct {
	id      string
	budget  int
	retired bool
	// acked are the versions whose creation was acknowledged.
	acked []version
}

// Workload runs workers against one project.
type Workload struct {
	cfg     Config
	rec     *history.Recorder
	project string
	clients []*client.Client

	mu       sync.Mutex
	secrets  []*secret // every secret, retired ones included
	creating int
	nextName int

	nextClient atomic.Int64
	ops, ok    atomic.Int64
	failed     atomic.Int64
	unknown    atomic.Int64
	resolved   atomic.Int64
	unavailMu  sync.Mutex
	longest    time.Duration
	longestAt  time.Duration

	staleReads, staleOK atomic.Int64
	staleMu             sync.Mutex
	staleWrong          []string
}

// New creates the workload's project (retrying until ctx ends) and one
// client per worker: even workers discover the region and go to the
// leader, odd ones stick to the endpoint list (rotated), so that followers
// forward.
func New(ctx context.Context, cfg Config, rec *history.Recorder) (*Workload, error) {
	cfg.defaults()
	w := &Workload{cfg: cfg, rec: rec}
	for i := 0; i < cfg.Workers; i++ {
		eps := append(append([]string(nil), cfg.Endpoints[i%len(cfg.Endpoints):]...), cfg.Endpoints[:i%len(cfg.Endpoints)]...)
		consistency := client.ConsistencyDefault
		if cfg.StaleReads {
			consistency = client.ConsistencyStale
		}
		c, err := client.New(ctx, client.Config{
			Consistency:      consistency,
			Endpoints:        eps,
			Token:            cfg.Token,
			Timeout:          cfg.OpTimeout,
			AttemptTimeout:   cfg.AttemptTimeout,
			MaxBackoff:       500 * time.Millisecond,
			DisableDiscovery: i%2 == 1,
		})
		if err != nil {
			w.Close()
			return nil, err
		}
		w.clients = append(w.clients, c)
	}
	key := client.NewIdempotencyKey()
	for {
		p, err := w.clients[0].Identity().CreateProject(client.WithIdempotencyKey(ctx, key), &pb.CreateProjectRequest{Project: &pb.Project{Metadata: &pb.Metadata{Name: "chaos-" + cfg.RunID}}})
		if err == nil {
			w.project = p.GetMetadata().GetId()
			return w, nil
		}
		if ctx.Err() != nil || !retryable(err) {
			w.Close()
			return nil, fmt.Errorf("workload: create project: %w", err)
		}
	}
}

// Project is the id of the workload's project.
func (w *Workload) Project() string { return w.project }

// Client returns worker 0's client (for the final checks).
func (w *Workload) Client() *client.Client { return w.clients[0] }

// Close closes the clients.
func (w *Workload) Close() {
	for _, c := range w.clients {
		c.Close()
	}
}

func (w *Workload) logf(format string, args ...any) {
	if w.cfg.Logf != nil {
		w.cfg.Logf(format, args...)
	}
}

// Stats returns the counters so far.
func (w *Workload) Stats() Stats {
	w.unavailMu.Lock()
	defer w.unavailMu.Unlock()
	w.staleMu.Lock()
	wrong := append([]string(nil), w.staleWrong...)
	w.staleMu.Unlock()
	return Stats{Ops: w.ops.Load(), OK: w.ok.Load(), Failed: w.failed.Load(), Unknown: w.unknown.Load(),
		Resolved: w.resolved.Load(), LongestUnavailable: w.longest, LongestAt: w.longestAt,
		StaleReads: w.staleReads.Load(), StaleReadsOK: w.staleOK.Load(), StaleWrong: wrong}
}

// Run runs the workers until ctx ends; a worker in the middle of resolving
// an unknown outcome keeps at it for up to ResolveFor after that (under
// drain, which bounds everything).
func (w *Workload) Run(ctx, drain context.Context) {
	var wg sync.WaitGroup
	for i := 0; i < w.cfg.Workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.worker(ctx, drain, i)
		}()
	}
	wg.Wait()
}

type worker struct {
	w        *Workload
	id       int
	client   int
	c        *client.Client
	rng      *mrand.Rand
	seq      int
	lastOK   time.Time
	stopping context.Context
	drain    context.Context
}

func (w *Workload) worker(ctx, drain context.Context, i int) {
	wk := &worker{w: w, id: i, client: int(w.nextClient.Add(1) - 1), c: w.clients[i],
		rng: mrand.New(mrand.NewPCG(w.cfg.Seed, uint64(i))), lastOK: time.Now(), stopping: ctx, drain: drain}
	for ctx.Err() == nil {
		s := w.pick(wk.rng)
		if s == nil {
			wk.createSecret()
			continue
		}
		wk.step(s)
		if w.cfg.Think > 0 {
			t := time.NewTimer(time.Duration(wk.rng.Int64N(int64(w.cfg.Think))))
			select {
			case <-ctx.Done():
			case <-t.C:
			}
			t.Stop()
		}
	}
}

// pick returns an active secret with budget left, spending one operation
// of it, or nil when this worker should create a secret.
func (w *Workload) pick(rng *mrand.Rand) *secret {
	w.mu.Lock()
	defer w.mu.Unlock()
	var active []*secret
	for _, s := range w.secrets {
		if !s.retired {
			active = append(active, s)
		}
	}
	if len(active)+w.creating < w.cfg.ActiveSecrets {
		w.creating++
		return nil
	}
	if len(active) == 0 {
		return nil
	}
	s := active[rng.IntN(len(active))]
	s.budget--
	if s.budget <= 0 {
		s.retired = true
	}
	return s
}

func (wk *worker) value() string {
	wk.seq++
	var b [6]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s%s-w%d-%d-%s", Prefix, wk.w.cfg.RunID, wk.id, wk.seq, hex.EncodeToString(b[:]))
}

func payload(v string) *pb.Payload {
	return &pb.Payload{Entries: []*pb.PayloadEntry{{Key: EntryKey, Value: &pb.PayloadEntry_StringValue{StringValue: v}}}}
}

// retryable: the outcome of a mutation is unknown, a read saw nothing.
func retryable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.Unknown, codes.Internal, codes.ResourceExhausted:
		return true
	}
	return false
}

// noted tracks availability as the worker sees it: the time from one
// successful (or definitely failed, which also means the region answered)
// operation to the next is how long the worker could not get an answer.
func (wk *worker) noted(err error) {
	if err != nil && retryable(err) {
		return
	}
	now := time.Now()
	gap := now.Sub(wk.lastOK)
	w := wk.w
	w.unavailMu.Lock()
	if gap > w.longest {
		w.longest, w.longestAt = gap, now.Sub(w.rec.Start())
	}
	w.unavailMu.Unlock()
	wk.lastOK = now
}

// mutate runs call with one idempotency key until it gets a definite
// answer, or the worker is stopping and ResolveFor has passed since the
// first unknown outcome. It fills op's outcome and times.
func (wk *worker) mutate(op *history.Op, call func(ctx context.Context) error) {
	key := client.NewIdempotencyKey()
	op.Call = wk.w.rec.Now()
	var firstUnknown time.Time
	for {
		op.Attempts++
		ctx, cancel := context.WithTimeout(client.WithIdempotencyKey(wk.drain, key), wk.w.cfg.OpTimeout)
		err := call(ctx)
		cancel()
		wk.noted(err)
		if err == nil {
			op.Outcome, op.Code, op.Err = history.OK, "", ""
			break
		}
		st, _ := status.FromError(err)
		op.Code, op.Err = st.Code().String(), st.Message()
		if !retryable(err) {
			op.Outcome = history.Fail
			break
		}
		if firstUnknown.IsZero() {
			firstUnknown = time.Now()
		}
		if wk.drain.Err() != nil || time.Since(firstUnknown) > wk.w.cfg.ResolveFor {
			op.Outcome = history.Unknown
			break
		}
	}
	op.Return = wk.w.rec.Now()
	if op.Attempts > 1 && op.Outcome != history.Unknown && !firstUnknown.IsZero() {
		wk.w.resolved.Add(1)
	}
}

func (wk *worker) record(op history.Op) {
	w := wk.w
	op.Worker = wk.id
	op.Client = wk.client
	w.rec.Add(op)
	w.ops.Add(1)
	switch op.Outcome {
	case history.OK:
		w.ok.Add(1)
	case history.Fail:
		w.failed.Add(1)
	case history.Unknown:
		w.unknown.Add(1)
		// The operation stays open for ever: the worker continues as a
		// new porcupine client.
		wk.client = int(w.nextClient.Add(1) - 1)
	}
}

// createSecret creates a secret with a first version, as one operation,
// and adds it to the pool of active secrets.
func (wk *worker) createSecret() {
	s := wk.newSecret(wk.w.cfg.OpsPerSecret)
	w := wk.w
	w.mu.Lock()
	w.creating--
	if s != nil {
		w.secrets = append(w.secrets, s)
	}
	w.mu.Unlock()
}

// newSecret creates a secret with a first version, as one operation; nil
// when its creation was not acknowledged.
func (wk *worker) newSecret(budget int) *secret {
	w := wk.w
	w.mu.Lock()
	w.nextName++
	name := fmt.Sprintf("s%d-%s", w.nextName, w.cfg.RunID)
	w.mu.Unlock()
	val := wk.value()
	op := history.Op{Kind: history.Create, Value: val}
	var resp *pb.Secret
	wk.mutate(&op, func(ctx context.Context) error {
		r, err := wk.c.Secrets().Create(ctx, &pb.CreateSecretRequest{Secret: &pb.Secret{
			Metadata: &pb.Metadata{ParentId: w.project, Name: name},
			Spec:     &pb.SecretSpec{SecretVersion: &pb.SecretVersionSpec{Payload: payload(val)}},
		}})
		resp = r
		return err
	})
	if op.Outcome != history.OK {
		// Its fate is settled by the final check (it lists every secret of
		// the project); an unknown secret takes no further operations.
		op.Secret = "?" + name
		wk.record(op)
		return nil
	}
	op.Secret = resp.GetMetadata().GetId()
	op.VersionID = resp.GetStatus().GetPrimaryVersionId()
	op.Number = 1
	wk.record(op)
	return &secret{id: op.Secret, budget: budget, acked: []version{{op.VersionID, val}}}
}

// Fill creates versions as fast as it can with the given number of
// writers until ctx ends, each writer on secrets of its own (a new one
// every 500 versions), all recorded like the workers' operations. It is
// what pushes the Raft log far enough for a snapshot.
func (w *Workload) Fill(ctx context.Context, writers int) {
	var wg sync.WaitGroup
	for i := 0; i < writers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			wk := &worker{w: w, id: 1000 + i, client: int(w.nextClient.Add(1) - 1), c: w.clients[i%len(w.clients)],
				rng: mrand.New(mrand.NewPCG(w.cfg.Seed, uint64(1000+i))), lastOK: time.Now(), stopping: ctx, drain: ctx}
			var s *secret
			for ctx.Err() == nil {
				if s == nil || s.budget <= 0 {
					s = wk.newSecret(500)
					continue
				}
				s.budget--
				wk.create(s)
			}
		}()
	}
	wg.Wait()
}

func (wk *worker) target(s *secret) (version, bool) {
	wk.w.mu.Lock()
	defer wk.w.mu.Unlock()
	if len(s.acked) == 0 {
		return version{}, false
	}
	// Favour recent versions: they are the contended ones.
	n := len(s.acked)
	i := n - 1 - min(wk.rng.IntN(n), wk.rng.IntN(n))
	return s.acked[i], true
}

// step runs one random operation on s.
func (wk *worker) step(s *secret) {
	r := wk.rng.IntN(100)
	switch {
	case r < 5:
		wk.staleRead(s)
	case r < 35:
		wk.read(s)
	case r < 65:
		wk.create(s)
	case r < 73:
		wk.list(s)
	case r < 81:
		wk.byVersion(s, history.Pin)
	case r < 86:
		wk.unpin(s)
	case r < 94:
		wk.byVersion(s, history.Delete)
	default:
		wk.byVersion(s, history.Undelete)
	}
}

func (wk *worker) create(s *secret) {
	val := wk.value()
	op := history.Op{Kind: history.Create, Secret: s.id, Value: val, SetPrimary: wk.rng.IntN(10) == 0}
	var resp *pb.SecretVersion
	wk.mutate(&op, func(ctx context.Context) error {
		r, err := wk.c.Versions().Create(ctx, &pb.CreateSecretVersionRequest{Version: &pb.SecretVersion{
			Metadata: &pb.Metadata{ParentId: s.id},
			Spec:     &pb.SecretVersionSpec{Payload: payload(val), SetPrimary: op.SetPrimary},
		}})
		resp = r
		return err
	})
	if op.Outcome == history.OK {
		op.VersionID = resp.GetMetadata().GetId()
		op.Number = resp.GetStatus().GetNumber()
		wk.w.mu.Lock()
		s.acked = append(s.acked, version{op.VersionID, val})
		wk.w.mu.Unlock()
	}
	wk.record(op)
}

func (wk *worker) byVersion(s *secret, kind history.Kind) {
	v, ok := wk.target(s)
	if !ok {
		return
	}
	op := history.Op{Kind: kind, Secret: s.id, Value: v.value, VersionID: v.id}
	wk.mutate(&op, func(ctx context.Context) error {
		var err error
		switch kind {
		case history.Pin:
			_, err = wk.c.Secrets().Update(ctx, &pb.UpdateSecretRequest{
				Secret:     &pb.Secret{Metadata: &pb.Metadata{Id: s.id}, Spec: &pb.SecretSpec{PrimaryVersionId: v.id}},
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"spec.primary_version_id"}},
			})
		case history.Delete:
			_, err = wk.c.Versions().Delete(ctx, &pb.DeleteSecretVersionRequest{Id: v.id})
		case history.Undelete:
			_, err = wk.c.Versions().Undelete(ctx, &pb.UndeleteSecretVersionRequest{Id: v.id})
		}
		return err
	})
	wk.record(op)
}

func (wk *worker) unpin(s *secret) {
	op := history.Op{Kind: history.Unpin, Secret: s.id}
	wk.mutate(&op, func(ctx context.Context) error {
		_, err := wk.c.Secrets().Update(ctx, &pb.UpdateSecretRequest{
			Secret:     &pb.Secret{Metadata: &pb.Metadata{Id: s.id}, Spec: &pb.SecretSpec{}},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"spec.primary_version_id"}},
		})
		return err
	})
	wk.record(op)
}

// query runs a read once (a read that fails says nothing; the next
// operation will try again).
func (wk *worker) query(op *history.Op, call func(ctx context.Context) error) {
	op.Attempts = 1
	op.Call = wk.w.rec.Now()
	ctx, cancel := context.WithTimeout(wk.stopping, wk.w.cfg.OpTimeout)
	err := call(ctx)
	cancel()
	op.Return = wk.w.rec.Now()
	wk.noted(err)
	switch {
	case err == nil:
		op.Outcome = history.OK
	case retryable(err):
		op.Outcome = history.Unknown
	default:
		op.Outcome = history.Fail
	}
	if err != nil {
		st, _ := status.FromError(err)
		op.Code, op.Err = st.Code().String(), st.Message()
	}
}

func (wk *worker) read(s *secret) {
	op := history.Op{Kind: history.Read, Secret: s.id}
	wk.query(&op, func(ctx context.Context) error {
		r, err := wk.c.Payloads().GetByKey(ctx, &pb.GetPayloadByKeyRequest{SecretId: s.id, Key: EntryKey})
		op.ReadValue, op.ReadVersion = r.GetEntry().GetStringValue(), r.GetVersionId()
		return err
	})
	if op.Outcome == history.Unknown {
		// Not recorded: it constrains nothing. Counted for availability.
		wk.w.ops.Add(1)
		wk.w.unknown.Add(1)
		return
	}
	wk.record(op)
}

// staleRead reads an acknowledged version's payload by id with
// x-consistency: stale. Any node may answer from its own state, so it may
// not have the version yet (NOT_FOUND), or have it scheduled for deletion;
// but a version never changes, so a payload it returns must be the one
// acknowledged.
func (wk *worker) staleRead(s *secret) {
	v, ok := wk.target(s)
	if !ok {
		return
	}
	w := wk.w
	w.staleReads.Add(1)
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(wk.stopping, "x-consistency", "stale"), w.cfg.OpTimeout)
	r, err := wk.c.Payloads().GetByKey(ctx, &pb.GetPayloadByKeyRequest{SecretId: s.id, VersionId: v.id, Key: EntryKey})
	cancel()
	if err != nil {
		return
	}
	w.staleOK.Add(1)
	if wrong := wrongStaleRead(s.id, v, r); wrong != "" {
		w.staleMu.Lock()
		w.staleWrong = append(w.staleWrong, wrong)
		w.staleMu.Unlock()
	}
}

// wrongStaleRead describes how an answer to a stale read of acknowledged
// version v of secret secretID differs from what was acknowledged, or
// returns "" when it is that version's payload.
func wrongStaleRead(secretID string, v version, r *pb.GetPayloadByKeyResponse) string {
	got := r.GetEntry().GetStringValue()
	if r.GetVersionId() == v.id && got == v.value {
		return ""
	}
	return fmt.Sprintf("stale read of version %s of %s returned version %s value %q, acknowledged value %q", v.id, secretID, r.GetVersionId(), got, v.value)
}

func (wk *worker) list(s *secret) {
	op := history.Op{Kind: history.List, Secret: s.id}
	wk.query(&op, func(ctx context.Context) error {
		r, err := wk.c.Versions().List(ctx, &pb.ListSecretVersionsRequest{ParentId: s.id, PageSize: 1000, ShowScheduledForDeletion: true})
		for _, v := range r.GetVersions() {
			op.Items = append(op.Items, history.Item{ID: v.GetMetadata().GetId(), Active: v.GetStatus().GetState() == pb.State_ACTIVE, Number: v.GetStatus().GetNumber()})
		}
		if err == nil && r.GetNextPageToken() != "" {
			return errors.New("more than one page of versions")
		}
		return err
	})
	if op.Outcome == history.Unknown {
		wk.w.ops.Add(1)
		wk.w.unknown.Add(1)
		return
	}
	wk.record(op)
}

// Final reads the state after healing: every secret of the project and
// every version with its value. The version lists are recorded in the
// history (one List per secret, after every other operation), so the
// linearizability check covers the final state too. Reading a scheduled
// version's payload needs it ACTIVE, so scheduled versions are undeleted
// first (after their listing). Operations with unknown outcomes on secrets
// whose creation was unknown are attributed to the secret by name.
func (w *Workload) Final(parent context.Context) (checker.Final, error) {
	c := w.clients[0]
	ctx, cancel := context.WithTimeout(parent, 3*time.Minute)
	defer cancel()
	final := checker.Final{Versions: map[string]checker.FinalVersion{}}
	byName := map[string]string{}
	token := ""
	for {
		var r *pb.ListSecretsResponse
		err := retry(ctx, func(ctx context.Context) error {
			var err error
			r, err = c.Secrets().List(ctx, &pb.ListSecretsRequest{ParentId: w.project, PageSize: 1000, PageToken: token, ShowScheduledForDeletion: true})
			return err
		})
		if err != nil {
			return final, fmt.Errorf("list secrets: %w", err)
		}
		for _, s := range r.GetSecrets() {
			final.Secrets = append(final.Secrets, s.GetMetadata().GetId())
			byName[s.GetMetadata().GetName()] = s.GetMetadata().GetId()
		}
		if token = r.GetNextPageToken(); token == "" {
			break
		}
	}
	clientID := int(w.nextClient.Add(1) - 1)
	var scheduled []string
	for _, sid := range final.Secrets {
		op := history.Op{Client: clientID, Worker: -1, Kind: history.List, Secret: sid, Attempts: 1, Outcome: history.OK, Call: w.rec.Now()}
		token := ""
		for {
			var r *pb.ListSecretVersionsResponse
			err := retry(ctx, func(ctx context.Context) error {
				var err error
				r, err = c.Versions().List(ctx, &pb.ListSecretVersionsRequest{ParentId: sid, PageSize: 1000, PageToken: token, ShowScheduledForDeletion: true})
				return err
			})
			if err != nil {
				return final, fmt.Errorf("list versions of %s: %w", sid, err)
			}
			for _, v := range r.GetVersions() {
				active := v.GetStatus().GetState() == pb.State_ACTIVE
				id := v.GetMetadata().GetId()
				op.Items = append(op.Items, history.Item{ID: id, Active: active, Number: v.GetStatus().GetNumber()})
				final.Versions[id] = checker.FinalVersion{Secret: sid, ID: id, Number: v.GetStatus().GetNumber(), Active: active}
				if !active {
					scheduled = append(scheduled, id)
				}
			}
			if token = r.GetNextPageToken(); token == "" {
				break
			}
		}
		op.Return = w.rec.Now()
		w.rec.Add(op)
	}
	w.rec.Rename(func(secret string) string {
		if len(secret) > 0 && secret[0] == '?' {
			if id, ok := byName[secret[1:]]; ok {
				return id
			}
		}
		return secret
	})
	// Reading every version takes a while in a long campaign.
	ctx, cancel2 := context.WithTimeout(parent, 3*time.Minute+time.Duration(len(final.Versions))*5*time.Millisecond)
	defer cancel2()
	for _, id := range scheduled {
		err := retry(ctx, func(ctx context.Context) error {
			_, err := c.Versions().Undelete(ctx, &pb.UndeleteSecretVersionRequest{Id: id})
			if status.Code(err) == codes.FailedPrecondition {
				return nil // undone by an earlier attempt
			}
			return err
		})
		if err != nil {
			return final, fmt.Errorf("undelete %s: %w", id, err)
		}
	}
	ids := make(chan string)
	errs := make(chan error, 8)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range ids {
				mu.Lock()
				v := final.Versions[id]
				mu.Unlock()
				err := retry(ctx, func(ctx context.Context) error {
					r, err := c.Payloads().GetByKey(ctx, &pb.GetPayloadByKeyRequest{SecretId: v.Secret, VersionId: id, Key: EntryKey})
					v.Value = r.GetEntry().GetStringValue()
					return err
				})
				if err != nil {
					errs <- fmt.Errorf("read version %s: %w", id, err)
					return
				}
				mu.Lock()
				final.Versions[id] = v
				mu.Unlock()
			}
		}()
	}
	all := make([]string, 0, len(final.Versions))
	for id := range final.Versions {
		all = append(all, id)
	}
	var ferr error
feed:
	for _, id := range all {
		select {
		case ids <- id:
		case ferr = <-errs:
			break feed
		}
	}
	close(ids)
	wg.Wait()
	if ferr == nil {
		select {
		case ferr = <-errs:
		default:
		}
	}
	if ferr != nil {
		return final, ferr
	}
	return final, nil
}

// retry calls fn until it succeeds, fails definitely, or ctx ends.
func retry(ctx context.Context, fn func(ctx context.Context) error) error {
	for {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := fn(cctx)
		cancel()
		if err == nil || !retryable(err) || ctx.Err() != nil {
			return err
		}
		t := time.NewTimer(200 * time.Millisecond)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
}

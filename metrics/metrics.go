// Package metrics exposes a node's Prometheus metrics: gRPC calls, Raft,
// the FSM, Pebble, forwarding, idempotency, the data it holds and gossip,
// plus Go runtime and process metrics. docs/metrics.md lists them.
package metrics

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/mysterybox/mysterybox/cluster"
	"github.com/mysterybox/mysterybox/store"
)

const ns = "mysterybox"

// Metrics holds a node's metrics and their registry.
type Metrics struct {
	Registry *prometheus.Registry

	requests     *prometheus.CounterVec
	latency      *prometheus.HistogramVec
	forwarded    *prometheus.CounterVec
	idemReplays  prometheus.Counter
	auditRefused prometheus.Counter
	applyTime    prometheus.Histogram
	applyBatch   prometheus.Histogram
	checkpoint   prometheus.Histogram
}

// Source is what the collectors read on each scrape.
type Source struct {
	Region       string
	NodeID       string
	Raft         *cluster.Node
	AppliedIndex func() uint64
	Store        *store.Store
	Gossip       func() []cluster.GossipMember // nil without gossip
}

// New builds the metrics of a node reading src.
func New(src Source) *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		Registry: reg,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "grpc_requests_total",
			Help: "gRPC calls served, by method and status code."}, []string{"method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "grpc_request_duration_seconds",
			Help: "Latency of gRPC calls, by method.", Buckets: prometheus.ExponentialBuckets(0.0002, 2, 16)}, []string{"method"}),
		forwarded: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "forwarded_calls_total",
			Help: "Calls this node forwarded to the leader, by method."}, []string{"method"}),
		idemReplays: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "idempotency_replays_total",
			Help: "Mutations answered from an idempotency record instead of applied again."}),
		auditRefused: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "audit_records_refused_total",
			Help: "Audit records refused because too many were waiting for Raft: payload reads failed, other calls went unrecorded."}),
		applyTime: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "fsm_apply_duration_seconds",
			Help: "Time to apply one Raft batch to the store.", Buckets: prometheus.ExponentialBuckets(0.00005, 2, 16)}),
		applyBatch: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "fsm_apply_batch_entries",
			Help: "Raft entries per applied batch.", Buckets: prometheus.ExponentialBuckets(1, 2, 11)}),
		checkpoint: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "fsm_snapshot_checkpoint_duration_seconds",
			Help: "Time to take the store checkpoint of a Raft snapshot; nothing is applied meanwhile.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}),
	}
	reg.MustRegister(m.requests, m.latency, m.forwarded, m.idemReplays, m.auditRefused, m.applyTime, m.applyBatch, m.checkpoint,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&nodeCollector{src: src})
	return m
}

// UnaryInterceptor counts and times every unary call.
func (m *Metrics) UnaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	m.observe(info.FullMethod, err, start)
	return resp, err
}

// StreamInterceptor counts and times every streaming call.
func (m *Metrics) StreamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	start := time.Now()
	err := handler(srv, ss)
	m.observe(info.FullMethod, err, start)
	return err
}

func (m *Metrics) observe(method string, err error, start time.Time) {
	m.requests.WithLabelValues(method, status.Code(err).String()).Inc()
	m.latency.WithLabelValues(method).Observe(time.Since(start).Seconds())
}

// Forwarded counts a call forwarded to the leader.
func (m *Metrics) Forwarded(method string) { m.forwarded.WithLabelValues(method).Inc() }

// AuditRefused counts an audit record refused because too many wait for
// Raft.
func (m *Metrics) AuditRefused() { m.auditRefused.Inc() }

// IdempotencyReplay counts a mutation answered from its idempotency record.
func (m *Metrics) IdempotencyReplay() { m.idemReplays.Inc() }

// Applied records one applied Raft batch.
func (m *Metrics) Applied(entries int, d time.Duration) {
	m.applyTime.Observe(d.Seconds())
	m.applyBatch.Observe(float64(entries))
}

// Checkpointed records the time a snapshot's checkpoint took.
func (m *Metrics) Checkpointed(d time.Duration) { m.checkpoint.Observe(d.Seconds()) }

// nodeCollector reads Raft, Pebble, the data counts and gossip on scrape.
type nodeCollector struct {
	src Source

	mu       sync.Mutex
	countsAt time.Time
	secrets  int64
	versions int64
}

var (
	descRaftState    = prometheus.NewDesc(ns+"_raft_state", "1 for this node's Raft state (leader, follower, candidate, shutdown).", []string{"state"}, nil)
	descRaftTerm     = prometheus.NewDesc(ns+"_raft_term", "Current Raft term.", nil, nil)
	descCommitIndex  = prometheus.NewDesc(ns+"_raft_commit_index", "Highest Raft index known committed.", nil, nil)
	descAppliedIndex = prometheus.NewDesc(ns+"_raft_applied_index", "Highest Raft index applied to the store.", nil, nil)
	descLastIndex    = prometheus.NewDesc(ns+"_raft_last_log_index", "Last index in the Raft log.", nil, nil)
	descSnapIndex    = prometheus.NewDesc(ns+"_raft_last_snapshot_index", "Index of the last Raft snapshot.", nil, nil)
	descLastContact  = prometheus.NewDesc(ns+"_raft_last_contact_seconds", "Time since a follower last heard from the leader (0 on the leader).", nil, nil)
	descVoters       = prometheus.NewDesc(ns+"_raft_voters", "Voters in the Raft configuration.", nil, nil)
	descNonvoters    = prometheus.NewDesc(ns+"_raft_nonvoters", "Non-voters in the Raft configuration: nodes added that have not caught up yet.", nil, nil)
	descDisk         = prometheus.NewDesc(ns+"_pebble_disk_bytes", "Disk space used by the store.", nil, nil)
	descCompactions  = prometheus.NewDesc(ns+"_pebble_compactions_total", "Compactions run by the store.", nil, nil)
	descWritten      = prometheus.NewDesc(ns+"_pebble_written_bytes_total", "Bytes the store wrote to sstables (flushes and compactions, not its WAL) since it was opened: against the bytes applied, its write amplification.", nil, nil)
	descMemtable     = prometheus.NewDesc(ns+"_pebble_memtable_bytes", "Bytes in the store's memtables.", nil, nil)
	descTables       = prometheus.NewDesc(ns+"_pebble_sstables", "Live sstables.", nil, nil)
	descSecrets      = prometheus.NewDesc(ns+"_secrets", "Secrets in the store, including those scheduled for deletion.", nil, nil)
	descVersions     = prometheus.NewDesc(ns+"_versions", "Secret versions in the store, including those scheduled for deletion.", nil, nil)
	descGossip       = prometheus.NewDesc(ns+"_gossip_members", "Gossip members by region and health.", []string{"region", "health"}, nil)
)

func (c *nodeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRaftState, descRaftTerm, descCommitIndex, descAppliedIndex, descLastIndex, descSnapIndex,
		descLastContact, descVoters, descNonvoters, descDisk, descCompactions, descWritten, descMemtable, descTables, descSecrets, descVersions, descGossip} {
		ch <- d
	}
}

func gauge(ch chan<- prometheus.Metric, d *prometheus.Desc, v float64, labels ...string) {
	ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
}

func (c *nodeCollector) Collect(ch chan<- prometheus.Metric) {
	src := c.src
	stats := src.Raft.Stats()
	state := strings.ToLower(stats["state"])
	for _, s := range []string{"leader", "follower", "candidate", "shutdown"} {
		v := 0.0
		if s == state {
			v = 1
		}
		gauge(ch, descRaftState, v, s)
	}
	num := func(k string) float64 {
		n, _ := strconv.ParseUint(stats[k], 10, 64)
		return float64(n)
	}
	gauge(ch, descRaftTerm, num("term"))
	gauge(ch, descCommitIndex, num("commit_index"))
	gauge(ch, descAppliedIndex, float64(src.AppliedIndex()))
	gauge(ch, descLastIndex, num("last_log_index"))
	gauge(ch, descSnapIndex, num("last_snapshot_index"))
	contact := 0.0
	if lc := stats["last_contact"]; state != "leader" && lc != "" && lc != "0" && lc != "never" {
		if d, err := time.ParseDuration(lc); err == nil {
			contact = d.Seconds()
		}
	}
	gauge(ch, descLastContact, contact)
	if servers, err := src.Raft.Servers(); err == nil {
		voters := 0
		for _, s := range servers {
			if s.Voter {
				voters++
			}
		}
		gauge(ch, descVoters, float64(voters))
		gauge(ch, descNonvoters, float64(len(servers)-voters))
	}
	st := src.Store.Stats()
	gauge(ch, descDisk, float64(st.DiskBytes))
	ch <- prometheus.MustNewConstMetric(descCompactions, prometheus.CounterValue, float64(st.Compactions))
	ch <- prometheus.MustNewConstMetric(descWritten, prometheus.CounterValue, float64(st.WrittenBytes))
	gauge(ch, descMemtable, float64(st.MemtableBytes))
	gauge(ch, descTables, float64(st.Tables))
	secrets, versions := c.counts()
	gauge(ch, descSecrets, float64(secrets))
	gauge(ch, descVersions, float64(versions))
	if src.Gossip != nil {
		byKey := map[[2]string]int{}
		for _, m := range src.Gossip() {
			byKey[[2]string{m.Meta.Region, m.Health}]++
		}
		for k, n := range byKey {
			gauge(ch, descGossip, float64(n), k[0], k[1])
		}
	}
}

// counts scans the store at most every 15 s: a scrape must stay cheap on a
// store of millions of versions.
func (c *nodeCollector) counts() (int64, int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.countsAt) > 15*time.Second {
		if s, v, err := c.src.Store.Counts(); err == nil {
			c.secrets, c.versions = s, v
		}
		c.countsAt = time.Now()
	}
	return c.secrets, c.versions
}

// Package history records what the chaos workload's clients did and saw:
// one Op per logical operation, with its invocation and response times, so
// the checker can decide whether the whole is linearizable and whether any
// acknowledged write was lost.
//
// Times are nanoseconds since the start of the campaign (monotonic). An
// operation whose outcome is unknown (every attempt timed out or the server
// said "outcome unknown", and retrying with the same idempotency key never
// got a definite answer) has Outcome Unknown: it may have taken effect at
// any moment after its call, or never.
package history

import (
	"encoding/json"
	"os"
	"sort"
	"sync"
	"time"
)

// Kind is the kind of an operation.
type Kind string

// Operations of the workload on one secret (its versions and primary).
const (
	// Create makes a new version (SecretVersionService.Create) with a
	// unique value; with SetPrimary it pins it. The secret's creation with
	// its first version is recorded as a Create too (number 1).
	Create Kind = "create"
	// Pin sets the primary to a version (SecretService.Update of
	// spec.primary_version_id); Unpin resets it to "latest".
	Pin   Kind = "pin"
	Unpin Kind = "unpin"
	// Delete / Undelete a version (soft delete).
	Delete   Kind = "delete"
	Undelete Kind = "undelete"
	// Read the primary's payload (PayloadService.GetByKey, linearizable).
	Read Kind = "read"
	// List the versions, scheduled ones included (SecretVersionService.List).
	List Kind = "list"
)

// Outcome of an operation.
type Outcome string

// Outcomes.
const (
	OK      Outcome = "ok"      // succeeded
	Fail    Outcome = "fail"    // failed definitely (Code says how); no effect
	Unknown Outcome = "unknown" // may or may not have taken effect
)

// Item is one version in a List result.
type Item struct {
	ID     string `json:"id"`
	Active bool   `json:"active"`
	Number int64  `json:"number"`
}

// Op is one logical operation of one client.
type Op struct {
	// Client is the porcupine client id: a worker gets a new one after an
	// operation with an unknown outcome, since that operation stays open.
	Client int    `json:"client"`
	Worker int    `json:"worker"`
	Kind   Kind   `json:"kind"`
	Secret string `json:"secret"`
	// Value: Create: the new version's value; Pin, Delete, Undelete: the
	// target version's value (its id is in VersionID).
	Value      string `json:"value,omitempty"`
	VersionID  string `json:"version_id,omitempty"`
	SetPrimary bool   `json:"set_primary,omitempty"`

	Outcome Outcome `json:"outcome"`
	// Code is the gRPC code of a failure, or of the last attempt of an
	// unknown outcome.
	Code string `json:"code,omitempty"`
	Err  string `json:"error,omitempty"`
	// Number: Create: the version's number (position in its secret).
	Number int64 `json:"number,omitempty"`
	// ReadValue / ReadVersion: Read: what was read.
	ReadValue   string `json:"read_value,omitempty"`
	ReadVersion string `json:"read_version,omitempty"`
	// Items: List: the versions in order.
	Items []Item `json:"items,omitempty"`
	// Attempts counts the calls made (retries with the same idempotency
	// key after an unknown outcome included).
	Attempts int `json:"attempts,omitempty"`

	Call   int64 `json:"call"`
	Return int64 `json:"return"`
}

// Mutation reports whether the operation changes state.
func (o Op) Mutation() bool { return o.Kind != Read && o.Kind != List }

// Recorder collects operations from concurrent clients.
type Recorder struct {
	start time.Time
	mu    sync.Mutex
	ops   []Op
}

// NewRecorder starts the clock.
func NewRecorder() *Recorder { return &Recorder{start: time.Now()} }

// Start is the campaign's time zero.
func (r *Recorder) Start() time.Time { return r.start }

// Now is the time since the start, in nanoseconds.
func (r *Recorder) Now() int64 { return int64(time.Since(r.start)) }

// Add records an operation.
func (r *Recorder) Add(op Op) {
	r.mu.Lock()
	r.ops = append(r.ops, op)
	r.mu.Unlock()
}

// Rename rewrites every operation's secret through fn.
func (r *Recorder) Rename(fn func(secret string) string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range r.ops {
		r.ops[i].Secret = fn(r.ops[i].Secret)
	}
}

// Ops returns the operations recorded so far, by call time.
func (r *Recorder) Ops() []Op {
	r.mu.Lock()
	out := append([]Op(nil), r.ops...)
	r.mu.Unlock()
	sort.SliceStable(out, func(i, j int) bool { return out[i].Call < out[j].Call })
	return out
}

// WriteJSON saves ops to path, one JSON document.
func WriteJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", " ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// Load reads a history saved with WriteJSON.
func Load(path string) ([]Op, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var ops []Op
	return ops, json.Unmarshal(b, &ops)
}

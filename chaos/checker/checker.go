// Package checker decides whether a chaos run kept MysteryBox's promises:
//
//  1. the history is linearizable, per secret, against the model of
//     versions and primary pointer in model.go (porcupine), with unknown
//     outcomes for writes that timed out;
//  2. every acknowledged write is present after healing, exactly once, in
//     the right secret with the right value; nothing that was never written
//     (or that definitely failed) appears;
//  3. all replicas hold identical state: the same store hash at the same
//     applied index;
//  4. no canary plaintext (a payload value, raw, hex or base64) is in any
//     data directory or log;
//  5. no node crashed except by the nemesis, and no log holds a panic.
package checker

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/mysterybox/mysterybox/chaos/history"
)

// FinalVersion is a version as found after healing.
type FinalVersion struct {
	Secret string `json:"secret"`
	ID     string `json:"id"`
	Number int64  `json:"number"`
	Value  string `json:"value"`
	Active bool   `json:"active"`
}

// Final is the state read after healing: every version of every secret of
// the workload's project, with its value.
type Final struct {
	Secrets  []string                `json:"secrets"`
	Versions map[string]FinalVersion `json:"versions"`
}

// expected reports whether a definite failure code is one the model
// predicts for this kind of operation; any other definite failure is
// unexpected (and treated as an unknown outcome by the linearizability
// check, so that it is reported once, as what it is).
func expected(k history.Kind, code string) bool {
	switch k {
	case history.Pin, history.Undelete, history.Read:
		return code == "NotFound" || code == "FailedPrecondition"
	case history.Delete:
		return code == "NotFound"
	}
	return false
}

// Unexpected counts operations that failed with a code the model does not
// predict, by "kind:code".
func Unexpected(ops []history.Op) map[string]int {
	out := map[string]int{}
	for _, op := range ops {
		if op.Outcome == history.Fail && !expected(op.Kind, op.Code) {
			out[string(op.Kind)+":"+op.Code]++
		}
	}
	return out
}

// LinResult is the outcome of the linearizability check.
type LinResult struct {
	// Result: "yes", "no", or "unknown" when the checker timed out.
	Result     string   `json:"result"`
	Ops        int      `json:"ops"`
	Secrets    int      `json:"secrets"`
	Unknown    int      `json:"unknown_outcomes"`
	Illegal    []string `json:"illegal_secrets,omitempty"`
	Violations int      `json:"violations"`
	HTML       string   `json:"html,omitempty"`
}

// Operations converts a history to porcupine operations. Version ids in
// List results become values through final; an id final does not know
// becomes "?lost:<id>", which no model state matches.
func Operations(ops []history.Op, final Final) []porcupine.Operation {
	var maxT int64
	for _, op := range ops {
		maxT = max(maxT, op.Return, op.Call)
	}
	var out []porcupine.Operation
	for _, op := range ops {
		in := input{kind: op.Kind, value: op.Value, setPrimary: op.SetPrimary}
		o := output{outcome: op.Outcome, code: op.Code, number: op.Number, read: op.ReadValue}
		if op.Outcome == history.Fail && !expected(op.Kind, op.Code) {
			o.outcome = history.Unknown
		}
		if !op.Mutation() && o.outcome == history.Unknown {
			continue // a read that saw nothing says nothing
		}
		for _, it := range op.Items {
			v, ok := final.Versions[it.ID]
			val := v.Value
			if !ok {
				val = "?lost:" + it.ID
			}
			o.items = append(o.items, item{value: val, active: it.Active})
		}
		ret := op.Return
		if o.outcome == history.Unknown {
			// Open until the end of time: after every other operation.
			maxT++
			ret = maxT + 1_000_000_000
		}
		out = append(out, porcupine.Operation{
			ClientId: op.Client,
			Input:    in,
			Output:   o,
			Call:     op.Call,
			Return:   ret,
			Metadata: meta{secret: op.Secret, info: fmt.Sprintf("worker %d, %d attempt(s), %s", op.Worker, op.Attempts, op.Err)},
		})
	}
	return out
}

// CheckLinearizable checks ops with the model. When the history is not
// linearizable and htmlPath is set, porcupine's visualisation is written
// there.
func CheckLinearizable(ops []history.Op, final Final, timeout time.Duration, htmlPath string) LinResult {
	pops := Operations(ops, final)
	res := LinResult{Ops: len(pops)}
	secrets := map[string]bool{}
	for _, op := range pops {
		secrets[op.Metadata.(meta).secret] = true
		if op.Output.(output).outcome == history.Unknown {
			res.Unknown++
		}
	}
	res.Secrets = len(secrets)
	r, info := porcupine.CheckOperationsVerbose(Model, pops, timeout)
	switch r {
	case porcupine.Ok:
		res.Result = "yes"
	case porcupine.Illegal:
		res.Result = "no"
		// Name the partitions (secrets) that are illegal: check each alone.
		for _, part := range Model.Partition(pops) {
			if porcupine.CheckOperationsTimeout(Model, part, timeout) == porcupine.Illegal {
				res.Illegal = append(res.Illegal, part[0].Metadata.(meta).secret)
			}
		}
		res.Violations = max(len(res.Illegal), 1)
		if htmlPath != "" {
			if err := porcupine.VisualizePath(Model, info, htmlPath); err == nil {
				res.HTML = htmlPath
			}
		}
	default:
		res.Result = "unknown"
	}
	return res
}

// LostResult is the outcome of the lost-write check.
type LostResult struct {
	// Acked counts acknowledged mutations of every kind; AckedCreates the
	// acknowledged version creations, each of which must be present.
	Acked        int `json:"acked_writes"`
	AckedCreates int `json:"acked_creates"`
	// Lost: acknowledged creations missing or changed after healing.
	Lost []string `json:"lost,omitempty"`
	// Duplicated: values present more than once.
	Duplicated []string `json:"duplicated,omitempty"`
	// Phantoms: values present that no create carried, or whose create
	// failed definitely.
	Phantoms []string `json:"phantoms,omitempty"`
	// Of the creates with an unknown outcome, how many took effect.
	UnknownApplied int `json:"unknown_applied"`
	UnknownAbsent  int `json:"unknown_absent"`
}

// LongestSilence is the longest time during which no client got a
// definite answer (success or predicted failure) from the region, among
// the silences that began between from and to (nanoseconds on the
// history's clock), and when it ended.
func LongestSilence(ops []history.Op, from, to int64) (gap, endedAt int64) {
	var rets []int64
	for _, op := range ops {
		if op.Outcome != history.Unknown && op.Worker >= 0 && op.Return >= from {
			rets = append(rets, op.Return)
		}
	}
	sort.Slice(rets, func(i, j int) bool { return rets[i] < rets[j] })
	prev := from
	for _, r := range rets {
		if prev > to {
			break
		}
		if r-prev > gap {
			gap, endedAt = r-prev, r
		}
		prev = r
	}
	return gap, endedAt
}

// CountAcked counts the acknowledged mutations of ops, and of them the
// version creations.
func CountAcked(ops []history.Op) (acked, creates int) {
	for _, op := range ops {
		if op.Mutation() && op.Outcome == history.OK {
			acked++
			if op.Kind == history.Create {
				creates++
			}
		}
	}
	return acked, creates
}

// CheckLostWrites compares the acknowledged creates of ops with final.
func CheckLostWrites(ops []history.Op, final Final) LostResult {
	var res LostResult
	byValue := map[string][]FinalVersion{}
	for _, v := range final.Versions {
		byValue[v.Value] = append(byValue[v.Value], v)
	}
	written := map[string]history.Op{}
	for _, op := range ops {
		if op.Mutation() && op.Outcome == history.OK {
			res.Acked++
		}
		if op.Kind != history.Create {
			continue
		}
		written[op.Value] = op
		found := byValue[op.Value]
		switch op.Outcome {
		case history.OK:
			res.AckedCreates++
			switch {
			case len(found) == 0:
				res.Lost = append(res.Lost, fmt.Sprintf("version %s (secret %s, number %d, value %s) acknowledged at %.3fs is missing", op.VersionID, op.Secret, op.Number, op.Value, float64(op.Return)/1e9))
			case found[0].ID != op.VersionID || found[0].Secret != op.Secret || found[0].Number != op.Number:
				res.Lost = append(res.Lost, fmt.Sprintf("value %s acknowledged as version %s #%d of %s is version %s #%d of %s", op.Value, op.VersionID, op.Number, op.Secret, found[0].ID, found[0].Number, found[0].Secret))
			}
		case history.Unknown:
			if len(found) > 0 {
				res.UnknownApplied++
			} else {
				res.UnknownAbsent++
			}
		case history.Fail:
			if len(found) > 0 {
				res.Phantoms = append(res.Phantoms, fmt.Sprintf("value %s is version %s although its create failed (%s)", op.Value, found[0].ID, op.Code))
			}
		}
	}
	for val, vs := range byValue {
		if len(vs) > 1 {
			var ids []string
			for _, v := range vs {
				ids = append(ids, v.ID)
			}
			sort.Strings(ids)
			res.Duplicated = append(res.Duplicated, fmt.Sprintf("value %s is in %d versions: %s", val, len(vs), strings.Join(ids, ", ")))
		}
		if _, ok := written[val]; !ok {
			res.Phantoms = append(res.Phantoms, fmt.Sprintf("value %q (version %s) was never written", val, vs[0].ID))
		}
	}
	sort.Strings(res.Lost)
	sort.Strings(res.Duplicated)
	sort.Strings(res.Phantoms)
	return res
}

// Replica is one node's store, opened offline after the run.
type Replica struct {
	Slot    int    `json:"slot"`
	ID      string `json:"id"`
	Applied uint64 `json:"applied_index"`
	Term    uint64 `json:"applied_term"`
	Hash    string `json:"hash"`
	Err     string `json:"error,omitempty"`
	// KilledAtStop: the node had to be killed when stopping, so its store
	// may lag (unsynced writes lost) without having diverged.
	KilledAtStop bool `json:"killed_at_stop,omitempty"`
}

// CheckReplicas requires every replica to have been read and all to have
// the same hash at the same applied index. A replica killed at stop that
// lags is not compared (the hang is reported by itself); at least two
// replicas must be compared.
func CheckReplicas(rs []Replica) []string {
	var problems []string
	var ref Replica
	for _, r := range rs {
		if r.Err == "" && r.Applied >= ref.Applied {
			ref = r
		}
	}
	compared := 0
	for _, r := range rs {
		if r.Err != "" {
			problems = append(problems, fmt.Sprintf("%s: %s", r.ID, r.Err))
			continue
		}
		if r.KilledAtStop && r.Applied < ref.Applied {
			continue
		}
		compared++
		if r.Applied != ref.Applied {
			problems = append(problems, fmt.Sprintf("%s is at applied index %d, %s at %d", r.ID, r.Applied, ref.ID, ref.Applied))
		} else if r.Hash != ref.Hash {
			problems = append(problems, fmt.Sprintf("%s and %s differ at applied index %d: hash %.12s vs %.12s", r.ID, ref.ID, r.Applied, r.Hash, ref.Hash))
		}
	}
	if compared < 2 {
		problems = append(problems, fmt.Sprintf("only %d replica(s) could be compared", compared))
	}
	return problems
}

// CanaryPatterns returns the byte patterns that betray a plaintext value
// starting with prefix: the prefix itself, in hex (both cases), and in
// base64 (standard and URL alphabets) at each of the three alignments,
// keeping only the characters that depend on the prefix alone.
func CanaryPatterns(prefix string) [][]byte {
	p := []byte(prefix)
	pats := [][]byte{p, []byte(hex.EncodeToString(p)), []byte(strings.ToUpper(hex.EncodeToString(p)))}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding} {
		for a := 0; a < 3; a++ {
			in := append(make([]byte, a), p...)
			out := enc.EncodeToString(in)
			// Character j covers input bits [6j, 6j+6); keep those within
			// the prefix's bits [8a, 8a+8len).
			first := (8*a + 5) / 6
			last := (8*(a+len(p)))/6 - 1
			if last >= first {
				pats = append(pats, []byte(out[first:last+1]))
			}
		}
	}
	return pats
}

// Finding is a match of a pattern in a file.
type Finding struct {
	File    string `json:"file"`
	Offset  int64  `json:"offset"`
	Pattern string `json:"pattern"`
}

func (f Finding) String() string { return fmt.Sprintf("%s@%d: %q", f.File, f.Offset, f.Pattern) }

// ScanFiles searches every regular file under roots (files or directories)
// for any of patterns, reading in chunks with an overlap so that no match
// across a chunk boundary is missed. At most one finding per file and
// pattern is reported.
func ScanFiles(roots []string, patterns [][]byte) ([]Finding, error) {
	maxLen := 0
	for _, p := range patterns {
		maxLen = max(maxLen, len(p))
	}
	var out []Finding
	for _, root := range roots {
		err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				if os.IsNotExist(err) {
					return nil
				}
				return err
			}
			if !d.Type().IsRegular() {
				return nil
			}
			fs, err := scanFile(path, patterns, maxLen)
			out = append(out, fs...)
			return err
		})
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

func scanFile(path string, patterns [][]byte, maxLen int) ([]Finding, error) {
	f, err := os.Open(path)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil // removed meanwhile (a compaction)
		}
		return nil, err
	}
	defer f.Close()
	var out []Finding
	seen := map[int]bool{}
	buf := make([]byte, 0, 1<<20+maxLen)
	var base int64 // file offset of buf[0]
	chunk := make([]byte, 1<<20)
	for {
		n, rerr := io.ReadFull(f, chunk)
		buf = append(buf, chunk[:n]...)
		for i, p := range patterns {
			if seen[i] {
				continue
			}
			if at := bytes.Index(buf, p); at >= 0 {
				seen[i] = true
				out = append(out, Finding{File: path, Offset: base + int64(at), Pattern: string(p)})
			}
		}
		if rerr != nil {
			if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
				return out, nil
			}
			return out, rerr
		}
		keep := min(maxLen-1, len(buf))
		base += int64(len(buf) - keep)
		copy(buf, buf[len(buf)-keep:])
		buf = buf[:keep]
	}
}

// PanicMarkers are the lines that betray a crashed Go process or a
// detected race in a node's log.
var PanicMarkers = [][]byte{[]byte("panic: "), []byte("fatal error: "), []byte("WARNING: DATA RACE")}

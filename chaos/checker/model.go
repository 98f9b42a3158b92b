package checker

import (
	"fmt"
	"hash/fnv"
	"strings"

	"github.com/anishathalye/porcupine"

	"github.com/mysterybox/mysterybox/chaos/history"
)

// The porcupine model of one secret: its versions in creation order, each
// ACTIVE or SCHEDULED_FOR_DELETION, and the pinned primary (if any). Values
// are unique across the campaign, so a version is named by its value.
//
// Sequential specification (SPEC section 2, "Primary version"):
//
//	create(v, pin)  append v as ACTIVE; number = len+1; with pin, pin it
//	pin(v)          v ACTIVE: pin it; v scheduled: FAILED_PRECONDITION;
//	                v absent: NOT_FOUND
//	unpin           unpin (primary is the latest ACTIVE again)
//	delete(v)       v ACTIVE: schedule it; otherwise NOT_FOUND
//	undelete(v)     v scheduled: make it ACTIVE; v ACTIVE:
//	                FAILED_PRECONDITION; absent: NOT_FOUND
//	read            pinned: its value, or FAILED_PRECONDITION if scheduled;
//	                unpinned: the latest ACTIVE value, or NOT_FOUND if none
//	list            every version, in order, with its state
//
// An operation with an unknown outcome is applied (as it would have been,
// at its linearization point) and returns at "infinity", after every other
// operation: placed last, it is as if it never happened.
type state struct {
	vals   []string
	active []bool
	pinned int // index into vals, -1 when unpinned
}

func (s state) index(v string) int {
	for i, x := range s.vals {
		if x == v {
			return i
		}
	}
	return -1
}

func (s state) clone() state {
	return state{vals: append([]string(nil), s.vals...), active: append([]bool(nil), s.active...), pinned: s.pinned}
}

// primary returns the index read by a payload read without version id, or
// -1 with the error code the read must fail with.
func (s state) primary() (int, string) {
	if s.pinned >= 0 {
		if !s.active[s.pinned] {
			return -1, "FailedPrecondition"
		}
		return s.pinned, ""
	}
	for i := len(s.vals) - 1; i >= 0; i-- {
		if s.active[i] {
			return i, ""
		}
	}
	return -1, "NotFound"
}

// meta is the porcupine metadata of an operation: its secret (the
// partition) and a line for the visualisation.
type meta struct {
	secret string
	info   string
}

// input and output are what porcupine sees of a history.Op.
type input struct {
	kind       history.Kind
	value      string
	setPrimary bool
}

type output struct {
	outcome history.Outcome
	code    string
	number  int64
	read    string
	items   []item
}

type item struct {
	value  string
	active bool
}

func step(st, in, out any) (bool, any) {
	s := st.(state)
	i := in.(input)
	o := out.(output)
	unknown := o.outcome == history.Unknown
	switch i.kind {
	case history.Create:
		if o.outcome == history.Fail {
			return false, s
		}
		if !unknown && o.number != int64(len(s.vals)+1) {
			return false, s
		}
		n := s.clone()
		n.vals = append(n.vals, i.value)
		n.active = append(n.active, true)
		if i.setPrimary {
			n.pinned = len(n.vals) - 1
		}
		return true, n
	case history.Pin:
		x := s.index(i.value)
		want := ""
		switch {
		case x < 0:
			want = "NotFound"
		case !s.active[x]:
			want = "FailedPrecondition"
		}
		if unknown || (o.outcome == history.OK && want == "") {
			if want != "" {
				return true, s
			}
			n := s.clone()
			n.pinned = x
			return true, n
		}
		return o.outcome == history.Fail && o.code == want && want != "", s
	case history.Unpin:
		if o.outcome == history.Fail {
			return false, s
		}
		n := s.clone()
		n.pinned = -1
		return true, n
	case history.Delete:
		x := s.index(i.value)
		ok := x >= 0 && s.active[x]
		if unknown || (o.outcome == history.OK && ok) {
			if !ok {
				return true, s
			}
			n := s.clone()
			n.active[x] = false
			return true, n
		}
		return o.outcome == history.Fail && o.code == "NotFound" && !ok, s
	case history.Undelete:
		x := s.index(i.value)
		want := ""
		switch {
		case x < 0:
			want = "NotFound"
		case s.active[x]:
			want = "FailedPrecondition"
		}
		if unknown || (o.outcome == history.OK && want == "") {
			if want != "" {
				return true, s
			}
			n := s.clone()
			n.active[x] = true
			return true, n
		}
		return o.outcome == history.Fail && o.code == want && want != "", s
	case history.Read:
		p, code := s.primary()
		if o.outcome == history.Fail {
			return o.code == code && code != "", s
		}
		return p >= 0 && s.vals[p] == o.read, s
	case history.List:
		if o.outcome != history.OK || len(o.items) != len(s.vals) {
			return false, s
		}
		for k, it := range o.items {
			if it.value != s.vals[k] || it.active != s.active[k] {
				return false, s
			}
		}
		return true, s
	}
	return false, s
}

func equal(a, b any) bool {
	x, y := a.(state), b.(state)
	if x.pinned != y.pinned || len(x.vals) != len(y.vals) {
		return false
	}
	for i := range x.vals {
		if x.vals[i] != y.vals[i] || x.active[i] != y.active[i] {
			return false
		}
	}
	return true
}

func hash(a any) uint64 {
	s := a.(state)
	h := fnv.New64a()
	fmt.Fprintf(h, "%d|", s.pinned)
	for i, v := range s.vals {
		h.Write([]byte(v))
		if s.active[i] {
			h.Write([]byte{1})
		} else {
			h.Write([]byte{0})
		}
	}
	return h.Sum64()
}

// short abbreviates a canary value for the visualisation: its unique tail.
func short(v string) string {
	if i := strings.LastIndexByte(v, '-'); i >= 0 && len(v)-i > 4 {
		parts := strings.Split(v, "-")
		if len(parts) >= 3 {
			return parts[len(parts)-3] + "-" + parts[len(parts)-2]
		}
	}
	if len(v) > 12 {
		return "…" + v[len(v)-12:]
	}
	return v
}

func describeOp(in, out any) string {
	i := in.(input)
	o := out.(output)
	var res string
	switch o.outcome {
	case history.Unknown:
		res = "?"
	case history.Fail:
		res = o.code
	default:
		switch i.kind {
		case history.Create:
			res = fmt.Sprintf("#%d", o.number)
		case history.Read:
			res = short(o.read)
		case history.List:
			var b []string
			for _, it := range o.items {
				s := short(it.value)
				if !it.active {
					s += "(del)"
				}
				b = append(b, s)
			}
			res = "[" + strings.Join(b, " ") + "]"
		default:
			res = "ok"
		}
	}
	arg := ""
	if i.value != "" {
		arg = short(i.value)
	}
	if i.setPrimary {
		arg += ",pin"
	}
	return fmt.Sprintf("%s(%s) -> %s", i.kind, arg, res)
}

func describeState(a any) string {
	s := a.(state)
	var b []string
	for i, v := range s.vals {
		x := short(v)
		if !s.active[i] {
			x += "(del)"
		}
		if i == s.pinned {
			x = "*" + x
		}
		b = append(b, x)
	}
	return "[" + strings.Join(b, " ") + "]"
}

// Model is the porcupine model of a secret's versions and primary pointer;
// operations are partitioned by secret.
var Model = porcupine.Model{
	Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
		by := map[string][]porcupine.Operation{}
		var order []string
		for _, op := range h {
			k := op.Metadata.(meta).secret
			if _, ok := by[k]; !ok {
				order = append(order, k)
			}
			by[k] = append(by[k], op)
		}
		out := make([][]porcupine.Operation, 0, len(order))
		for _, k := range order {
			out = append(out, by[k])
		}
		return out
	},
	Init:                      func() any { return state{pinned: -1} },
	Step:                      step,
	Equal:                     equal,
	Hash:                      hash,
	DescribeOperation:         describeOp,
	DescribeState:             describeState,
	DescribeOperationMetadata: func(m any) string { return m.(meta).info },
}

package checker

import (
	"encoding/base64"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/mysterybox/mysterybox/chaos/history"
)

const s1 = "mbsec-1"

func create(client int, val, id string, number int64, call, ret int64) history.Op {
	return history.Op{Client: client, Kind: history.Create, Secret: s1, Value: val, VersionID: id, Outcome: history.OK, Number: number, Call: call, Return: ret}
}

func read(client int, val string, call, ret int64) history.Op {
	return history.Op{Client: client, Kind: history.Read, Secret: s1, Outcome: history.OK, ReadValue: val, Call: call, Return: ret}
}

func finalOf(vs ...FinalVersion) Final {
	f := Final{Secrets: []string{s1}, Versions: map[string]FinalVersion{}}
	for _, v := range vs {
		f.Versions[v.ID] = v
	}
	return f
}

func TestModel(t *testing.T) {
	final := finalOf(
		FinalVersion{Secret: s1, ID: "v1", Number: 1, Value: "a", Active: true},
		FinalVersion{Secret: s1, ID: "v2", Number: 2, Value: "b", Active: true},
		FinalVersion{Secret: s1, ID: "v3", Number: 3, Value: "c", Active: true},
	)
	base := []history.Op{
		create(0, "a", "v1", 1, 0, 10),
		create(1, "b", "v2", 2, 20, 30),
	}
	cases := []struct {
		name string
		ops  []history.Op
		want string
	}{
		{"reads follow writes", append(base[:2:2], read(0, "b", 40, 50)), "yes"},
		{"stale read", append(base[:2:2], read(0, "a", 40, 50)), "no"},
		{"concurrent read may see either", append(base[:1:1],
			create(1, "b", "v2", 2, 20, 60), read(0, "a", 30, 40), read(2, "b", 45, 50)), "yes"},
		{"read goes back in time", append(base[:1:1],
			create(1, "b", "v2", 2, 20, 60), read(0, "b", 30, 40), read(2, "a", 45, 50)), "no"},
		{"pin then read", append(base[:2:2],
			history.Op{Client: 0, Kind: history.Pin, Secret: s1, Value: "a", Outcome: history.OK, Call: 40, Return: 50},
			create(1, "c", "v3", 3, 60, 70),
			read(0, "a", 80, 90)), "yes"},
		{"pinned deleted primary fails the read", append(base[:2:2],
			history.Op{Client: 0, Kind: history.Pin, Secret: s1, Value: "b", Outcome: history.OK, Call: 40, Return: 50},
			history.Op{Client: 0, Kind: history.Delete, Secret: s1, Value: "b", Outcome: history.OK, Call: 60, Return: 70},
			history.Op{Client: 0, Kind: history.Read, Secret: s1, Outcome: history.Fail, Code: "FailedPrecondition", Call: 80, Return: 90},
			history.Op{Client: 0, Kind: history.Unpin, Secret: s1, Outcome: history.OK, Call: 100, Return: 110},
			read(0, "a", 120, 130)), "yes"},
		{"unknown create may appear later", append(base[:2:2],
			history.Op{Client: 0, Kind: history.Create, Secret: s1, Value: "c", Outcome: history.Unknown, Call: 40, Return: 50},
			read(1, "b", 60, 70), read(1, "c", 80, 90),
			history.Op{Client: 1, Kind: history.List, Secret: s1, Outcome: history.OK, Call: 100, Return: 110,
				Items: []history.Item{{ID: "v1", Active: true}, {ID: "v2", Active: true}, {ID: "v3", Active: true}}}), "yes"},
		{"unknown create may never appear", append(base[:2:2],
			history.Op{Client: 0, Kind: history.Create, Secret: s1, Value: "c", Outcome: history.Unknown, Call: 40, Return: 50},
			read(1, "b", 60, 70)), "yes"},
		{"list misses an acknowledged version", append(base[:2:2],
			history.Op{Client: 1, Kind: history.List, Secret: s1, Outcome: history.OK, Call: 100, Return: 110,
				Items: []history.Item{{ID: "v1", Active: true}}}), "no"},
		{"wrong version number", []history.Op{create(0, "a", "v1", 1, 0, 10), create(1, "b", "v2", 3, 20, 30)}, "no"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			res := CheckLinearizable(c.ops, final, 10*time.Second, filepath.Join(dir, "viz.html"))
			if res.Result != c.want {
				t.Fatalf("linearizable = %s, want %s (%+v)", res.Result, c.want, res)
			}
			if c.want == "no" {
				if _, err := os.Stat(res.HTML); err != nil {
					t.Fatalf("no visualisation: %v", err)
				}
			}
		})
	}
}

func TestLostWrites(t *testing.T) {
	ops := []history.Op{
		create(0, "a", "v1", 1, 0, 10),
		create(0, "b", "v2", 2, 20, 30),
		{Kind: history.Create, Secret: s1, Value: "c", Outcome: history.Unknown},
		{Kind: history.Create, Secret: s1, Value: "d", Outcome: history.Unknown},
	}
	res := CheckLostWrites(ops, finalOf(
		FinalVersion{Secret: s1, ID: "v1", Number: 1, Value: "a"},
		FinalVersion{Secret: s1, ID: "v3", Number: 3, Value: "c"},
		FinalVersion{Secret: s1, ID: "v4", Number: 4, Value: "zz"},
	))
	if res.AckedCreates != 2 || len(res.Lost) != 1 || res.UnknownApplied != 1 || res.UnknownAbsent != 1 || len(res.Phantoms) != 1 {
		t.Fatalf("%+v", res)
	}
}

func TestCanaryPatternsFindEncodings(t *testing.T) {
	prefix := "MBXCANARY"
	pats := CanaryPatterns(prefix)
	dir := t.TempDir()
	for i, pad := range []string{"", "x", "xy", "xyz"} {
		val := []byte(pad + prefix + "-run-w1-7-abcdef")
		for j, enc := range [][]byte{
			val,
			[]byte(hex.EncodeToString(val)),
			[]byte(base64.StdEncoding.EncodeToString(val)),
			[]byte(base64.RawURLEncoding.EncodeToString(val)),
		} {
			path := filepath.Join(dir, "f")
			junk := make([]byte, 1<<20-3) // push the match across a chunk boundary
			if err := os.WriteFile(path, append(junk, enc...), 0o600); err != nil {
				t.Fatal(err)
			}
			found, err := ScanFiles([]string{dir}, pats)
			if err != nil || len(found) == 0 {
				t.Fatalf("pad %d encoding %d: not found (%v)", i, j, err)
			}
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "f"), []byte("nothing to see"), 0o600); err != nil {
		t.Fatal(err)
	}
	if found, _ := ScanFiles([]string{dir}, pats); len(found) != 0 {
		t.Fatalf("false positive: %v", found)
	}
}

func TestCheckReplicas(t *testing.T) {
	same := []Replica{{ID: "n1", Applied: 7, Hash: "aa"}, {ID: "n2", Applied: 7, Hash: "aa"}}
	if p := CheckReplicas(same); len(p) != 0 {
		t.Fatal(p)
	}
	diff := []Replica{{ID: "n1", Applied: 7, Hash: "aa"}, {ID: "n2", Applied: 7, Hash: "ab"}, {ID: "n3", Applied: 6, Hash: "aa"}}
	if p := CheckReplicas(diff); len(p) != 2 {
		t.Fatal(p)
	}
}

func TestLongestSilence(t *testing.T) {
	ops := []history.Op{
		{Outcome: history.OK, Return: 10},
		{Outcome: history.Unknown, Return: 20},
		{Outcome: history.Fail, Return: 40},
		{Outcome: history.OK, Return: 45},
		{Outcome: history.OK, Return: 100}, // after the window, ends a silence that began in it
		{Outcome: history.OK, Return: 300},
	}
	if gap, at := LongestSilence(ops, 0, 50); gap != 55 || at != 100 {
		t.Fatalf("LongestSilence = %d at %d, want 55 at 100", gap, at)
	}
}

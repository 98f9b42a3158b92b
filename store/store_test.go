package store_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/fsm/fsmpb"
	"github.com/mysterybox/mysterybox/store"
)

// ---------------------------------------------------------------- helpers

func openStore(t *testing.T, dir string) *store.Store {
	t.Helper()
	st, err := store.Open(dir, nil)
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// write runs fn in one batch and commits it.
func write(t *testing.T, st *store.Store, fn func(b *store.Batch) error) {
	t.Helper()
	b := st.NewBatch()
	defer b.Close()
	if err := fn(b); err != nil {
		t.Fatalf("batch: %v", err)
	}
	if err := b.Commit(); err != nil {
		t.Fatalf("commit: %v", err)
	}
}

func read(t *testing.T, st *store.Store, fn func(v *store.View) error) {
	t.Helper()
	if err := st.Read(fn); err != nil {
		t.Fatalf("read: %v", err)
	}
}

func hashOf(t *testing.T, st *store.Store) string {
	t.Helper()
	h, err := st.Hash()
	if err != nil {
		t.Fatalf("Hash: %v", err)
	}
	return h
}

func project(id, name string) *pb.Project {
	return &pb.Project{
		Metadata: &pb.Metadata{Id: id, Name: name, ResourceVersion: 1},
		Status:   &pb.ProjectStatus{Region: "local1"},
	}
}

func secretRec(id, projectID, name string) *fsmpb.SecretRecord {
	return &fsmpb.SecretRecord{
		Secret: &pb.Secret{
			Metadata: &pb.Metadata{Id: id, ParentId: projectID, Name: name, ResourceVersion: 1},
			Spec:     &pb.SecretSpec{},
			Status:   &pb.SecretStatus{State: pb.State_ACTIVE},
		},
		NextVersionNumber: 1,
	}
}

func versionRec(id, secretID string, number int64) *fsmpb.VersionRecord {
	return &fsmpb.VersionRecord{
		Version: &pb.SecretVersion{
			Metadata: &pb.Metadata{Id: id, ParentId: secretID, ResourceVersion: 1},
			Status:   &pb.SecretVersionStatus{State: pb.State_ACTIVE, Number: number},
		},
		KekId:     "k1",
		EntryKeys: []string{"a", "b"},
	}
}

// populate fills a store with a bit of everything.
func populate(t *testing.T, st *store.Store) {
	t.Helper()
	write(t, st, func(b *store.Batch) error {
		for i := 0; i < 5; i++ {
			if err := b.PutProject(project(fmt.Sprintf("project-%02d", i), fmt.Sprintf("name-%d", i))); err != nil {
				return err
			}
		}
		for i := 0; i < 3; i++ {
			sid := fmt.Sprintf("mbsec-%02d", i)
			if err := b.PutSecret(secretRec(sid, "project-00", fmt.Sprintf("s%d", i))); err != nil {
				return err
			}
			if err := b.PutSecretName("project-00", fmt.Sprintf("s%d", i), sid); err != nil {
				return err
			}
			for n := int64(1); n <= 3; n++ {
				vid := fmt.Sprintf("mbsecver-%s-%d", sid, n)
				if err := b.PutVersion(versionRec(vid, sid, n)); err != nil {
					return err
				}
				for _, k := range []string{"a", "b"} {
					if err := b.PutEntry(vid, &fsmpb.SealedEntry{Key: k, Nonce: []byte("nonce"), Ciphertext: []byte("ct-" + vid + k)}); err != nil {
						return err
					}
				}
			}
		}
		if err := b.SchedulePurge(1000, "mbsec-02"); err != nil {
			return err
		}
		if err := b.PutIdempotency("key-1", &fsmpb.IdempotencyRecord{RequestHash: []byte("h"), ExpiresUnixNano: 5000}); err != nil {
			return err
		}
		if err := b.PutNode(&fsmpb.NodeRecord{NodeId: "node-1", RaftAddress: "127.0.0.1:7701", GrpcAddress: "127.0.0.1:7700"}); err != nil {
			return err
		}
		return b.SetAppliedIndex(42, 3)
	})
}

func snapshotBytes(t *testing.T, st *store.Store) []byte {
	t.Helper()
	ck, err := st.Checkpoint()
	if err != nil {
		t.Fatalf("Checkpoint: %v", err)
	}
	defer ck.Remove()
	var buf bytes.Buffer
	n, err := ck.WriteTo(&buf)
	if err != nil {
		t.Fatalf("WriteTo: %v", err)
	}
	if n != int64(buf.Len()) {
		t.Fatalf("WriteTo reported %d bytes, wrote %d", n, buf.Len())
	}
	return buf.Bytes()
}

func dbDirs(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() && strings.HasPrefix(e.Name(), "db-") {
			out = append(out, e.Name())
		}
	}
	return out
}

func currentFile(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "CURRENT"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// ---------------------------------------------------------------- open / close

func TestOpenCloseReopenKeepsData(t *testing.T) {
	dir := t.TempDir()
	st, err := store.Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	populate(t, st)
	want := hashOf(t, st)
	if err := st.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := st.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := st.Read(func(*store.View) error { return nil }); err == nil {
		t.Fatal("Read on a closed store succeeded")
	}
	if _, err := st.Checkpoint(); err == nil {
		t.Fatal("Checkpoint on a closed store succeeded")
	}

	st2 := openStore(t, dir)
	if got := hashOf(t, st2); got != want {
		t.Fatalf("hash after reopen = %s, want %s", got, want)
	}
	idx, term, err := st2.AppliedIndex()
	if err != nil || idx != 42 || term != 3 {
		t.Fatalf("AppliedIndex = %d, %d, %v; want 42, 3", idx, term, err)
	}
	read(t, st2, func(v *store.View) error {
		p, err := v.Project("project-03")
		if err != nil {
			return err
		}
		if !proto.Equal(p, project("project-03", "name-3")) {
			t.Errorf("project-03 = %v", p)
		}
		id, err := v.ProjectIDByName("name-3")
		if err != nil || id != "project-03" {
			t.Errorf("ProjectIDByName = %q, %v", id, err)
		}
		sid, err := v.SecretIDByName("project-00", "s1")
		if err != nil || sid != "mbsec-01" {
			t.Errorf("SecretIDByName = %q, %v", sid, err)
		}
		e, err := v.Entry("mbsecver-mbsec-01-2", "b")
		if err != nil || string(e.GetCiphertext()) != "ct-mbsecver-mbsec-01-2b" {
			t.Errorf("Entry = %v, %v", e, err)
		}
		n, err := v.Node("node-1")
		if err != nil || n.GetGrpcAddress() != "127.0.0.1:7700" {
			t.Errorf("Node = %v, %v", n, err)
		}
		return nil
	})
	if got := currentFile(t, dir); got != "db-000001" {
		t.Errorf("CURRENT = %q, want db-000001", got)
	}
}

func TestNewStoreIsEmpty(t *testing.T) {
	st := openStore(t, t.TempDir())
	idx, term, err := st.AppliedIndex()
	if err != nil || idx != 0 || term != 0 {
		t.Fatalf("AppliedIndex of a new store = %d, %d, %v", idx, term, err)
	}
	read(t, st, func(v *store.View) error {
		n := 0
		if err := v.ForEach(func(_, _ []byte) error { n++; return nil }); err != nil {
			return err
		}
		if n != 0 {
			t.Errorf("new store has %d keys", n)
		}
		return nil
	})
}

func TestOpenRejectsCorruptCurrent(t *testing.T) {
	for _, content := range []string{"garbage\n", "db-0\n", "db--5\n", ""} {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "CURRENT"), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if st, err := store.Open(dir, nil); err == nil {
			st.Close()
			t.Errorf("Open with CURRENT %q succeeded", content)
		}
	}
}

func TestTypedReadsNotFound(t *testing.T) {
	st := openStore(t, t.TempDir())
	read(t, st, func(v *store.View) error {
		checks := map[string]error{}
		_, checks["Project"] = v.Project("project-x")
		_, checks["ProjectIDByName"] = v.ProjectIDByName("x")
		_, checks["Secret"] = v.Secret("mbsec-x")
		_, checks["SecretIDByName"] = v.SecretIDByName("project-x", "x")
		_, checks["Version"] = v.Version("mbsecver-x")
		_, checks["Entry"] = v.Entry("mbsecver-x", "k")
		_, checks["Idempotency"] = v.Idempotency("k")
		_, checks["Node"] = v.Node("n")
		for name, err := range checks {
			if !errors.Is(err, store.ErrNotFound) {
				t.Errorf("%s: err = %v, want ErrNotFound", name, err)
			}
		}
		return nil
	})
}

// ---------------------------------------------------------------- batches

func TestBatchSeesOwnWritesAndIsAtomic(t *testing.T) {
	st := openStore(t, t.TempDir())
	b := st.NewBatch()
	if err := b.PutProject(project("project-a", "a")); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Project("project-a"); err != nil {
		t.Fatalf("batch does not see its own write: %v", err)
	}
	read(t, st, func(v *store.View) error {
		if _, err := v.Project("project-a"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("uncommitted write visible to readers: %v", err)
		}
		return nil
	})
	b.Close() // discard
	b.Close() // idempotent
	if err := b.Commit(); err == nil {
		t.Fatal("Commit after Close succeeded")
	}
	read(t, st, func(v *store.View) error {
		if _, err := v.Project("project-a"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("discarded write visible: %v", err)
		}
		return nil
	})

	b = st.NewBatch()
	if err := b.PutProject(project("project-b", "b")); err != nil {
		t.Fatal(err)
	}
	if err := b.SetAppliedIndex(7, 2); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); err == nil {
		t.Fatal("second Commit succeeded")
	}
	b.Close() // safe after Commit
	idx, term, err := st.AppliedIndex()
	if err != nil || idx != 7 || term != 2 {
		t.Fatalf("AppliedIndex = %d, %d, %v", idx, term, err)
	}
	read(t, st, func(v *store.View) error {
		if _, err := v.Project("project-b"); err != nil {
			t.Errorf("committed project: %v", err)
		}
		return nil
	})
}

func TestDeleteHelpers(t *testing.T) {
	st := openStore(t, t.TempDir())
	populate(t, st)
	write(t, st, func(b *store.Batch) error {
		p, err := b.Project("project-01")
		if err != nil {
			return err
		}
		if err := b.DeleteProject(p); err != nil {
			return err
		}
		v, err := b.Version("mbsecver-mbsec-01-2")
		if err != nil {
			return err
		}
		if err := b.DeleteVersion(v); err != nil {
			return err
		}
		s, err := b.Secret("mbsec-02")
		if err != nil {
			return err
		}
		if err := b.DeleteSecretName("project-00", "s2"); err != nil {
			return err
		}
		if err := b.DeleteSecret(s); err != nil {
			return err
		}
		if err := b.UnschedulePurge(1000, "mbsec-02"); err != nil {
			return err
		}
		rec, err := b.Idempotency("key-1")
		if err != nil {
			return err
		}
		if err := b.DeleteIdempotency("key-1", rec); err != nil {
			return err
		}
		return b.DeleteNode("node-1")
	})
	read(t, st, func(v *store.View) error {
		if _, err := v.Project("project-01"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("deleted project: %v", err)
		}
		if _, err := v.ProjectIDByName("name-1"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("deleted project name: %v", err)
		}
		if _, err := v.Version("mbsecver-mbsec-01-2"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("deleted version: %v", err)
		}
		for _, k := range []string{"a", "b"} {
			if _, err := v.Entry("mbsecver-mbsec-01-2", k); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("entry %s of deleted version: %v", k, err)
			}
			// Entries of the neighbouring versions stay.
			for _, vid := range []string{"mbsecver-mbsec-01-1", "mbsecver-mbsec-01-3"} {
				if _, err := v.Entry(vid, k); err != nil {
					t.Errorf("entry %s of %s: %v", k, vid, err)
				}
			}
		}
		var nums []int64
		if err := v.ScanVersions("mbsec-01", 0, false, func(r *fsmpb.VersionRecord) (bool, error) {
			nums = append(nums, r.GetVersion().GetStatus().GetNumber())
			return true, nil
		}); err != nil {
			return err
		}
		if fmt.Sprint(nums) != "[1 3]" {
			t.Errorf("versions after delete = %v", nums)
		}
		if _, err := v.Secret("mbsec-02"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("deleted secret: %v", err)
		}
		if _, err := v.SecretIDByName("project-00", "s2"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("released secret name: %v", err)
		}
		var ids []string
		if err := v.ScanSecrets("project-00", "", func(r *fsmpb.SecretRecord) (bool, error) {
			ids = append(ids, r.GetSecret().GetMetadata().GetId())
			return true, nil
		}); err != nil {
			return err
		}
		if fmt.Sprint(ids) != "[mbsec-00 mbsec-01]" {
			t.Errorf("secrets after delete = %v", ids)
		}
		due, err := v.DuePurges(1<<62, 10)
		if err != nil || len(due) != 0 {
			t.Errorf("DuePurges after unschedule = %v, %v", due, err)
		}
		exp, err := v.ExpiredIdempotency(1<<62, 10)
		if err != nil || len(exp) != 0 {
			t.Errorf("ExpiredIdempotency after delete = %v, %v", exp, err)
		}
		if _, err := v.Idempotency("key-1"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("deleted idempotency key: %v", err)
		}
		nodes, err := v.Nodes()
		if err != nil || len(nodes) != 0 {
			t.Errorf("Nodes after delete = %v, %v", nodes, err)
		}
		return nil
	})
}

// ---------------------------------------------------------------- paging

func TestListProjectsPaging(t *testing.T) {
	st := openStore(t, t.TempDir())
	// Insert out of order; ids sort lexicographically.
	ids := []string{"project-c", "project-a", "project-e", "project-b", "project-d"}
	write(t, st, func(b *store.Batch) error {
		for _, id := range ids {
			if err := b.PutProject(project(id, "n-"+id)); err != nil {
				return err
			}
		}
		// Keys of other tables sort around "p/" and must not leak in.
		if err := b.PutSecretName("project-a", "zz", "mbsec-1"); err != nil {
			return err
		}
		return b.PutSecret(secretRec("mbsec-1", "project-a", "zz"))
	})
	list := func(after string, limit int) ([]string, bool) {
		t.Helper()
		var got []string
		var more bool
		read(t, st, func(v *store.View) error {
			ps, m, err := v.ListProjects(after, limit)
			for _, p := range ps {
				got = append(got, p.GetMetadata().GetId())
			}
			more = m
			return err
		})
		return got, more
	}
	got, more := list("", 100)
	if fmt.Sprint(got) != "[project-a project-b project-c project-d project-e]" || more {
		t.Fatalf("all = %v more=%v", got, more)
	}
	// Page through two at a time.
	var all []string
	after := ""
	pages := 0
	for {
		page, more := list(after, 2)
		pages++
		all = append(all, page...)
		if !more {
			break
		}
		after = page[len(page)-1]
		if pages > 10 {
			t.Fatal("paging does not end")
		}
	}
	if fmt.Sprint(all) != "[project-a project-b project-c project-d project-e]" || pages != 3 {
		t.Fatalf("paged = %v in %d pages", all, pages)
	}
	// An exact fit reports no more.
	if got, more := list("project-c", 2); fmt.Sprint(got) != "[project-d project-e]" || more {
		t.Fatalf("after c = %v more=%v", got, more)
	}
	// The cursor need not exist.
	if got, more := list("project-bb", 1); fmt.Sprint(got) != "[project-c]" || !more {
		t.Fatalf("after bb = %v more=%v", got, more)
	}
	if got, more := list("project-e", 5); len(got) != 0 || more {
		t.Fatalf("after last = %v more=%v", got, more)
	}
}

func TestScanSecretsOrderAndCursor(t *testing.T) {
	st := openStore(t, t.TempDir())
	write(t, st, func(b *store.Batch) error {
		for _, id := range []string{"mbsec-3", "mbsec-1", "mbsec-2", "mbsec-10"} {
			if err := b.PutSecret(secretRec(id, "project-1", "n"+id)); err != nil {
				return err
			}
		}
		// A project whose id extends project-1 must not be mixed in.
		if err := b.PutSecret(secretRec("mbsec-0", "project-10", "x")); err != nil {
			return err
		}
		return b.PutSecret(secretRec("mbsec-9", "project-0", "y"))
	})
	scan := func(project, after string, max int) []string {
		t.Helper()
		var got []string
		read(t, st, func(v *store.View) error {
			return v.ScanSecrets(project, after, func(r *fsmpb.SecretRecord) (bool, error) {
				got = append(got, r.GetSecret().GetMetadata().GetId())
				return len(got) < max, nil
			})
		})
		return got
	}
	if got := scan("project-1", "", 100); fmt.Sprint(got) != "[mbsec-1 mbsec-10 mbsec-2 mbsec-3]" {
		t.Fatalf("scan = %v", got)
	}
	if got := scan("project-1", "mbsec-10", 100); fmt.Sprint(got) != "[mbsec-2 mbsec-3]" {
		t.Fatalf("scan after mbsec-10 = %v", got)
	}
	if got := scan("project-1", "", 2); fmt.Sprint(got) != "[mbsec-1 mbsec-10]" {
		t.Fatalf("scan stopped = %v", got)
	}
	if got := scan("project-10", "", 100); fmt.Sprint(got) != "[mbsec-0]" {
		t.Fatalf("scan project-10 = %v", got)
	}
	if got := scan("project-2", "", 100); len(got) != 0 {
		t.Fatalf("scan of empty project = %v", got)
	}
	read(t, st, func(v *store.View) error {
		for proj, want := range map[string]bool{"project-1": true, "project-10": true, "project-2": false, "project-": false} {
			has, err := v.ProjectHasSecrets(proj)
			if err != nil || has != want {
				t.Errorf("ProjectHasSecrets(%s) = %v, %v; want %v", proj, has, err, want)
			}
		}
		// An error from fn stops the scan and is returned.
		boom := errors.New("boom")
		if err := v.ScanSecrets("project-1", "", func(*fsmpb.SecretRecord) (bool, error) { return true, boom }); !errors.Is(err, boom) {
			t.Errorf("ScanSecrets error = %v", err)
		}
		return nil
	})
}

func TestScanVersionsOrderAndCursor(t *testing.T) {
	st := openStore(t, t.TempDir())
	// Numbers crossing byte boundaries: order must be numeric.
	nums := []int64{300, 1, 256, 2, 255, 70000, 47}
	write(t, st, func(b *store.Batch) error {
		for _, n := range nums {
			if err := b.PutVersion(versionRec(fmt.Sprintf("mbsecver-%d", n), "mbsec-a", n)); err != nil {
				return err
			}
		}
		// Another secret whose id extends mbsec-a.
		return b.PutVersion(versionRec("mbsecver-other", "mbsec-ab", 5))
	})
	scan := func(after int64, reverse bool, max int) []int64 {
		t.Helper()
		var got []int64
		read(t, st, func(v *store.View) error {
			return v.ScanVersions("mbsec-a", after, reverse, func(r *fsmpb.VersionRecord) (bool, error) {
				if r.GetVersion().GetMetadata().GetId() != fmt.Sprintf("mbsecver-%d", r.GetVersion().GetStatus().GetNumber()) {
					t.Errorf("index points at the wrong version: %v", r)
				}
				got = append(got, r.GetVersion().GetStatus().GetNumber())
				return len(got) < max, nil
			})
		})
		return got
	}
	cases := []struct {
		after   int64
		reverse bool
		max     int
		want    string
	}{
		{0, false, 100, "[1 2 47 255 256 300 70000]"},
		{0, true, 100, "[70000 300 256 255 47 2 1]"},
		{47, false, 100, "[255 256 300 70000]"},
		{47, true, 100, "[2 1]"},
		{255, false, 2, "[256 300]"},
		{300, true, 2, "[256 255]"},
		{100, false, 100, "[255 256 300 70000]"}, // cursor need not exist
		{100, true, 100, "[47 2 1]"},
		{70000, false, 100, "[]"},
		{1, true, 100, "[]"},
		{0, false, 3, "[1 2 47]"},
		{0, true, 3, "[70000 300 256]"},
	}
	for _, c := range cases {
		if got := fmt.Sprint(scan(c.after, c.reverse, c.max)); got != c.want {
			t.Errorf("ScanVersions(after=%d, reverse=%v, max=%d) = %s, want %s", c.after, c.reverse, c.max, got, c.want)
		}
	}
	// Page through newest first, two at a time, as a List would.
	var paged []int64
	after := int64(0)
	for i := 0; i < 10; i++ {
		page := scan(after, true, 2)
		paged = append(paged, page...)
		if len(page) < 2 {
			break
		}
		after = page[len(page)-1]
	}
	if fmt.Sprint(paged) != "[70000 300 256 255 47 2 1]" {
		t.Fatalf("paged reverse = %v", paged)
	}
}

func TestDuePurgesOrderingAndLimit(t *testing.T) {
	st := openStore(t, t.TempDir())
	write(t, st, func(b *store.Batch) error {
		for _, p := range []struct {
			at int64
			id string
		}{
			{300, "mbsec-c"}, {100, "mbsecver-b"}, {100, "mbsec-a"}, {200, "mbsec-z"},
			{256, "mbsec-y"}, {1 << 40, "mbsec-late"}, {400, "mbsec-d"},
		} {
			if err := b.SchedulePurge(p.at, p.id); err != nil {
				return err
			}
		}
		// Keys of other tables around "d/" must not leak in.
		return b.PutIdempotency("k", &fsmpb.IdempotencyRecord{ExpiresUnixNano: 1})
	})
	due := func(now int64, limit int) string {
		t.Helper()
		var ids []string
		read(t, st, func(v *store.View) error {
			var err error
			ids, err = v.DuePurges(now, limit)
			return err
		})
		return fmt.Sprint(ids)
	}
	cases := []struct {
		now   int64
		limit int
		want  string
	}{
		{99, 10, "[]"},
		{100, 10, "[mbsec-a mbsecver-b]"}, // inclusive; same time ordered by id
		{255, 10, "[mbsec-a mbsecver-b mbsec-z]"},
		{256, 10, "[mbsec-a mbsecver-b mbsec-z mbsec-y]"},
		{1000, 10, "[mbsec-a mbsecver-b mbsec-z mbsec-y mbsec-c mbsec-d]"},
		{1000, 2, "[mbsec-a mbsecver-b]"},
		{1000, 0, "[]"},
		{1 << 41, 100, "[mbsec-a mbsecver-b mbsec-z mbsec-y mbsec-c mbsec-d mbsec-late]"},
	}
	for _, c := range cases {
		if got := due(c.now, c.limit); got != c.want {
			t.Errorf("DuePurges(%d, %d) = %s, want %s", c.now, c.limit, got, c.want)
		}
	}
	write(t, st, func(b *store.Batch) error { return b.UnschedulePurge(100, "mbsec-a") })
	if got := due(100, 10); got != "[mbsecver-b]" {
		t.Errorf("after unschedule: %s", got)
	}
	// Unscheduling with the wrong time leaves the entry in place.
	write(t, st, func(b *store.Batch) error { return b.UnschedulePurge(101, "mbsecver-b") })
	if got := due(100, 10); got != "[mbsecver-b]" {
		t.Errorf("after unschedule at another time: %s", got)
	}
}

func TestExpiredIdempotencyOrderingAndLimit(t *testing.T) {
	st := openStore(t, t.TempDir())
	recs := map[string]int64{"k-b": 100, "k-a": 100, "k-late": 1 << 40, "k-c": 50, "k-d": 300}
	write(t, st, func(b *store.Batch) error {
		for _, k := range []string{"k-b", "k-a", "k-late", "k-c", "k-d"} {
			if err := b.PutIdempotency(k, &fsmpb.IdempotencyRecord{RequestHash: []byte(k), ExpiresUnixNano: recs[k]}); err != nil {
				return err
			}
		}
		return b.SchedulePurge(1, "mbsec-1")
	})
	expired := func(now int64, limit int) string {
		t.Helper()
		var keys []string
		read(t, st, func(v *store.View) error {
			var err error
			keys, err = v.ExpiredIdempotency(now, limit)
			return err
		})
		return fmt.Sprint(keys)
	}
	cases := []struct {
		now   int64
		limit int
		want  string
	}{
		{49, 10, "[]"},
		{50, 10, "[k-c]"},
		{100, 10, "[k-c k-a k-b]"},
		{299, 10, "[k-c k-a k-b]"},
		{300, 10, "[k-c k-a k-b k-d]"},
		{300, 2, "[k-c k-a]"},
		{1 << 41, 10, "[k-c k-a k-b k-d k-late]"},
	}
	for _, c := range cases {
		if got := expired(c.now, c.limit); got != c.want {
			t.Errorf("ExpiredIdempotency(%d, %d) = %s, want %s", c.now, c.limit, got, c.want)
		}
	}
	read(t, st, func(v *store.View) error {
		r, err := v.Idempotency("k-d")
		if err != nil || r.GetExpiresUnixNano() != 300 || string(r.GetRequestHash()) != "k-d" {
			t.Errorf("Idempotency(k-d) = %v, %v", r, err)
		}
		return nil
	})
}

func TestNodesInIDOrder(t *testing.T) {
	st := openStore(t, t.TempDir())
	write(t, st, func(b *store.Batch) error {
		for _, id := range []string{"node-c", "node-a", "node-b"} {
			if err := b.PutNode(&fsmpb.NodeRecord{NodeId: id, RaftAddress: id + ":1"}); err != nil {
				return err
			}
		}
		return nil
	})
	read(t, st, func(v *store.View) error {
		nodes, err := v.Nodes()
		if err != nil {
			return err
		}
		var ids []string
		for _, n := range nodes {
			ids = append(ids, n.GetNodeId())
		}
		if fmt.Sprint(ids) != "[node-a node-b node-c]" {
			t.Errorf("Nodes = %v", ids)
		}
		return nil
	})
}

// ---------------------------------------------------------------- snapshots

func TestSnapshotRestoreIdenticalHash(t *testing.T) {
	src := openStore(t, t.TempDir())
	populate(t, src)
	want := hashOf(t, src)
	data := snapshotBytes(t, src)

	dstDir := t.TempDir()
	dst := openStore(t, dstDir)
	// The destination has content of its own, which Restore replaces.
	write(t, dst, func(b *store.Batch) error {
		if err := b.PutProject(project("project-zzz", "only-in-dst")); err != nil {
			return err
		}
		return b.SetAppliedIndex(999, 9)
	})
	if err := dst.Restore(bytes.NewReader(data)); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if got := hashOf(t, dst); got != want {
		t.Fatalf("hash after restore = %s, want %s", got, want)
	}
	idx, term, err := dst.AppliedIndex()
	if err != nil || idx != 42 || term != 3 {
		t.Fatalf("AppliedIndex after restore = %d, %d, %v", idx, term, err)
	}
	read(t, dst, func(v *store.View) error {
		if _, err := v.ProjectIDByName("only-in-dst"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("old content survived restore: %v", err)
		}
		return nil
	})
	// The restored store keeps working.
	write(t, dst, func(b *store.Batch) error { return b.PutProject(project("project-new", "new")) })
	if hashOf(t, dst) == want {
		t.Fatal("hash did not change after a write")
	}

	// An empty store round-trips too.
	empty := openStore(t, t.TempDir())
	emptyHash := hashOf(t, empty)
	if err := dst.Restore(bytes.NewReader(snapshotBytes(t, empty))); err != nil {
		t.Fatalf("Restore of an empty snapshot: %v", err)
	}
	if got := hashOf(t, dst); got != emptyHash {
		t.Fatalf("hash after empty restore = %s, want %s", got, emptyHash)
	}
	// Snapshots are deterministic: same content, same bytes.
	if !bytes.Equal(snapshotBytes(t, src), data) {
		t.Fatal("two snapshots of the same content differ")
	}
}

func TestRestoreRefusesCorruptSnapshot(t *testing.T) {
	src := openStore(t, t.TempDir())
	populate(t, src)
	data := snapshotBytes(t, src)

	dir := t.TempDir()
	dst := openStore(t, dir)
	write(t, dst, func(b *store.Batch) error {
		if err := b.PutProject(project("project-keep", "keep")); err != nil {
			return err
		}
		return b.SetAppliedIndex(5, 1)
	})
	want := hashOf(t, dst)

	refuse := func(name string, bad []byte) {
		t.Helper()
		if err := dst.Restore(bytes.NewReader(bad)); err == nil {
			t.Fatalf("%s: Restore accepted a corrupt snapshot", name)
		}
		if got := hashOf(t, dst); got != want {
			t.Fatalf("%s: failed restore changed the store (hash %s, want %s)", name, got, want)
		}
	}

	// Flip one byte: in the magic, in lengths, keys, values, the end marker
	// and the checksum. Sample positions across the whole stream.
	positions := map[int]bool{0: true, 7: true, 8: true, 9: true, len(data) - 33: true, len(data) - 32: true, len(data) - 1: true}
	for i := 0; i < len(data); i += len(data)/40 + 1 {
		positions[i] = true
	}
	for pos := range positions {
		for _, mask := range []byte{0x01, 0x80} {
			bad := append([]byte(nil), data...)
			bad[pos] ^= mask
			refuse(fmt.Sprintf("flip byte %d of %d with %#x", pos, len(data), mask), bad)
		}
	}
	// Truncate anywhere: empty, inside the magic, inside records, just
	// before the end marker, inside the checksum.
	for _, n := range []int{0, 4, 8, 9, len(data) / 2, len(data) - 33, len(data) - 32, len(data) - 1} {
		refuse(fmt.Sprintf("truncate to %d of %d", n, len(data)), data[:n])
	}
	refuse("not a snapshot", []byte("hello, this is not a MysteryBox snapshot at all, but long enough"))
	refuse("huge record length", append(append([]byte("MBXSNAP1"), 0xff, 0xff, 0xff, 0xff, 0x7f), make([]byte, 40)...))

	// After all those failures: no stray database directory, CURRENT
	// unchanged, the store survives a reopen with its old content, and a
	// good snapshot still restores.
	if got := dbDirs(t, dir); fmt.Sprint(got) != "[db-000001]" {
		t.Fatalf("database directories after failed restores: %v", got)
	}
	if got := currentFile(t, dir); got != "db-000001" {
		t.Fatalf("CURRENT after failed restores = %q", got)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	dst = openStore(t, dir)
	if got := hashOf(t, dst); got != want {
		t.Fatalf("hash after reopen = %s, want %s", got, want)
	}
	if err := dst.Restore(bytes.NewReader(data)); err != nil {
		t.Fatalf("good restore after failures: %v", err)
	}
	if hashOf(t, dst) != hashOf(t, src) {
		t.Fatal("good restore after failures is not exact")
	}
}

func TestRestoreSurvivesReopen(t *testing.T) {
	src := openStore(t, t.TempDir())
	populate(t, src)
	want := hashOf(t, src)
	data := snapshotBytes(t, src)

	dir := t.TempDir()
	dst, err := store.Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	write(t, dst, func(b *store.Batch) error { return b.PutProject(project("project-old", "old")) })
	if err := dst.Restore(bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if got := currentFile(t, dir); got != "db-000002" {
		t.Fatalf("CURRENT after restore = %q, want db-000002", got)
	}
	if got := dbDirs(t, dir); fmt.Sprint(got) != "[db-000002]" {
		t.Fatalf("database directories after restore = %v", got)
	}
	// A second restore moves on to the next directory.
	if err := dst.Restore(bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if got := currentFile(t, dir); got != "db-000003" {
		t.Fatalf("CURRENT after second restore = %q, want db-000003", got)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}

	reopened := openStore(t, dir)
	if got := hashOf(t, reopened); got != want {
		t.Fatalf("hash after restore + reopen = %s, want %s", got, want)
	}
	if got := dbDirs(t, dir); fmt.Sprint(got) != "[db-000003]" {
		t.Fatalf("database directories after reopen = %v", got)
	}
	// Writes after reopen land in the restored database and persist.
	write(t, reopened, func(b *store.Batch) error { return b.PutProject(project("project-after", "after")) })
	h := hashOf(t, reopened)
	if err := reopened.Close(); err != nil {
		t.Fatal(err)
	}
	again := openStore(t, dir)
	if got := hashOf(t, again); got != h {
		t.Fatalf("write after restore lost across reopen")
	}
}

func TestOpenRemovesStaleDatabases(t *testing.T) {
	dir := t.TempDir()
	st, err := store.Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	populate(t, st)
	want := hashOf(t, st)
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	// Leftovers of a restore that crashed before the CURRENT switch (the
	// next directory, half written), an in-progress marker, and some
	// unrelated directory that must survive.
	for _, d := range []string{"db-000002", "db-000002.restoring", "db-000099"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, d, "MANIFEST-000001"), []byte("junk"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "other"), 0o700); err != nil {
		t.Fatal(err)
	}
	st = openStore(t, dir)
	if got := hashOf(t, st); got != want {
		t.Fatalf("hash after reopen with stale dirs = %s, want %s", got, want)
	}
	if got := dbDirs(t, dir); fmt.Sprint(got) != "[db-000001]" {
		t.Fatalf("database directories = %v, want only db-000001", got)
	}
	if _, err := os.Stat(filepath.Join(dir, "other")); err != nil {
		t.Fatalf("unrelated directory removed: %v", err)
	}
	// A restore that crashed after the CURRENT switch: the old directory is
	// still there. Open uses the new one and removes the old.
	data := snapshotBytes(t, st)
	if err := st.Restore(bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "db-000001"), 0o700); err != nil {
		t.Fatal(err)
	}
	st = openStore(t, dir)
	if got := hashOf(t, st); got != want {
		t.Fatalf("hash = %s, want %s", got, want)
	}
	if got := dbDirs(t, dir); fmt.Sprint(got) != "[db-000002]" {
		t.Fatalf("database directories = %v, want only db-000002", got)
	}
}

// A checkpoint being streamed (a backup, a Raft snapshot sent to a node)
// holds nothing of the live store: a Restore completes while it is open —
// a reader that held the store's read lock would make the Restore, and
// every read queued behind it, wait for the slowest client — and it still
// streams the content it was taken with.
func TestCheckpointBeingReadDoesNotHoldARestore(t *testing.T) {
	st := openStore(t, t.TempDir())
	populate(t, st)
	oldHash := hashOf(t, st)
	other := openStore(t, t.TempDir())
	write(t, other, func(b *store.Batch) error { return b.PutProject(project("project-other", "other")) })
	newData, newHash := snapshotBytes(t, other), hashOf(t, other)

	ck, err := st.Checkpoint()
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Remove()
	r, err := store.OpenCheckpoint(ck.Dir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	done := make(chan error, 1)
	go func() { done <- st.Restore(bytes.NewReader(newData)) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Restore: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Restore waited for a checkpoint being read")
	}
	if got := hashOf(t, st); got != newHash {
		t.Fatalf("hash after restore = %s, want %s", got, newHash)
	}
	var buf bytes.Buffer
	if _, err := r.WriteTo(&buf); err != nil {
		t.Fatalf("streaming a checkpoint taken before the restore: %v", err)
	}
	check := openStore(t, t.TempDir())
	if err := check.Restore(&buf); err != nil {
		t.Fatalf("the checkpoint's stream does not restore: %v", err)
	}
	if got := hashOf(t, check); got != oldHash {
		t.Fatalf("the checkpoint streamed other content (hash %s, want %s)", got, oldHash)
	}
}

// ---------------------------------------------------------------- concurrency

func TestReadsConcurrentWithBatches(t *testing.T) {
	st := openStore(t, t.TempDir())
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for r := 0; r < 2; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				// A view is consistent: the applied index and the number of
				// projects always move together.
				if err := st.Read(func(v *store.View) error {
					idx, _, err := v.AppliedIndex()
					if err != nil {
						return err
					}
					ps, _, err := v.ListProjects("", 1000)
					if err != nil {
						return err
					}
					if uint64(len(ps)) != idx {
						return fmt.Errorf("view shows %d projects at applied index %d", len(ps), idx)
					}
					return nil
				}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	for i := 1; i <= 50; i++ {
		write(t, st, func(b *store.Batch) error {
			if err := b.PutProject(project(fmt.Sprintf("project-%03d", i), fmt.Sprintf("n%d", i))); err != nil {
				return err
			}
			return b.SetAppliedIndex(uint64(i), 1)
		})
	}
	close(stop)
	wg.Wait()
}

// ---------------------------------------------------------------- key-encryption keys

func kekVersions(t *testing.T, st *store.Store) string {
	t.Helper()
	var parts []string
	read(t, st, func(v *store.View) error {
		ids, err := v.KeyIDsInUse()
		if err != nil {
			return err
		}
		for _, id := range ids {
			vs, total, err := v.VersionsWrappedBy(id, 100)
			if err != nil {
				return err
			}
			if total != len(vs) {
				t.Errorf("VersionsWrappedBy(%s): total %d for %d ids", id, total, len(vs))
			}
			parts = append(parts, fmt.Sprintf("%s:%v", id, vs))
		}
		return nil
	})
	return strings.Join(parts, " ")
}

func TestKeyIDsInUseAndVersionsWrappedBy(t *testing.T) {
	st := openStore(t, t.TempDir())
	if got := kekVersions(t, st); got != "" {
		t.Fatalf("empty store: %s", got)
	}
	// Key ids that extend one another, and characters sorting on both
	// sides of '/'.
	kek := map[string]string{
		"mbsecver-1": "k1", "mbsecver-2": "k1", "mbsecver-3": "k10", "mbsecver-4": "k1-a",
		"mbsecver-5": "k1.x", "mbsecver-6": "k2", "mbsecver-7": "K_upper", "mbsecver-8": "k1",
	}
	write(t, st, func(b *store.Batch) error {
		for i := 1; i <= 8; i++ {
			vid := fmt.Sprintf("mbsecver-%d", i)
			rec := versionRec(vid, "mbsec-1", int64(i))
			rec.KekId = kek[vid]
			if err := b.PutVersion(rec); err != nil {
				return err
			}
		}
		return nil
	})
	want := "K_upper:[mbsecver-7] k1-a:[mbsecver-4] k1.x:[mbsecver-5] k1:[mbsecver-1 mbsecver-2 mbsecver-8] k10:[mbsecver-3] k2:[mbsecver-6]"
	if got := kekVersions(t, st); got != want {
		t.Fatalf("in use:\n got %s\nwant %s", got, want)
	}
	read(t, st, func(v *store.View) error {
		ids, total, err := v.VersionsWrappedBy("k1", 2)
		if err != nil || total != 3 || fmt.Sprint(ids) != "[mbsecver-1 mbsecver-2]" {
			t.Errorf("VersionsWrappedBy(k1, 2) = %v, %d, %v", ids, total, err)
		}
		ids, total, err = v.VersionsWrappedBy("k", 10)
		if err != nil || total != 0 || len(ids) != 0 {
			t.Errorf("VersionsWrappedBy(k) = %v, %d, %v (a prefix of real ids)", ids, total, err)
		}
		return nil
	})

	// Rewrap moves versions between keys; a key with no versions left is no
	// longer in use. Re-putting a version (state change) keeps one index entry.
	write(t, st, func(b *store.Batch) error {
		for _, vid := range []string{"mbsecver-3", "mbsecver-4", "mbsecver-5"} {
			rec, err := b.Version(vid)
			if err != nil {
				return err
			}
			if err := b.RewrapVersion(rec, "k2", []byte("rewrapped-"+vid)); err != nil {
				return err
			}
		}
		rec, err := b.Version("mbsecver-6")
		if err != nil {
			return err
		}
		rec.Version.Status.State = pb.State_SCHEDULED_FOR_DELETION
		return b.PutVersion(rec)
	})
	want = "K_upper:[mbsecver-7] k1:[mbsecver-1 mbsecver-2 mbsecver-8] k2:[mbsecver-3 mbsecver-4 mbsecver-5 mbsecver-6]"
	if got := kekVersions(t, st); got != want {
		t.Fatalf("after rewrap:\n got %s\nwant %s", got, want)
	}
	read(t, st, func(v *store.View) error {
		rec, err := v.Version("mbsecver-4")
		if err != nil || rec.GetKekId() != "k2" || string(rec.GetWrappedDek()) != "rewrapped-mbsecver-4" {
			t.Errorf("rewrapped record = %v, %v", rec, err)
		}
		return err
	})
	// Deleting a version drops it from its key's list.
	write(t, st, func(b *store.Batch) error {
		rec, err := b.Version("mbsecver-7")
		if err != nil {
			return err
		}
		return b.DeleteVersion(rec)
	})
	want = "k1:[mbsecver-1 mbsecver-2 mbsecver-8] k2:[mbsecver-3 mbsecver-4 mbsecver-5 mbsecver-6]"
	if got := kekVersions(t, st); got != want {
		t.Fatalf("after delete:\n got %s\nwant %s", got, want)
	}
}

// A version recorded without a key id (no payload) must not hide the keys
// that do wrap versions: KeyIDsInUse is what tells an operator whether a
// key can leave the keyring.
func TestKeyIDsInUseWithEmptyKeyID(t *testing.T) {
	st := openStore(t, t.TempDir())
	write(t, st, func(b *store.Batch) error {
		for i, kek := range []string{"", "k1", "k2"} {
			rec := versionRec(fmt.Sprintf("mbsecver-%d", i), "mbsec-1", int64(i+1))
			rec.KekId = kek
			if err := b.PutVersion(rec); err != nil {
				return err
			}
		}
		return nil
	})
	read(t, st, func(v *store.View) error {
		ids, err := v.KeyIDsInUse()
		if err != nil {
			return err
		}
		has := map[string]bool{}
		for _, id := range ids {
			has[id] = true
		}
		if !has["k1"] || !has["k2"] {
			t.Errorf("KeyIDsInUse = %q: keys k1 and k2 wrap versions but are not listed", ids)
		}
		return nil
	})
}

func TestKeyCheckKeepsTheFirst(t *testing.T) {
	st := openStore(t, t.TempDir())
	write(t, st, func(b *store.Batch) error {
		if err := b.PutKeyCheck("k1", nil); err != nil { // nothing to record
			return err
		}
		if _, err := b.KeyCheck("k1"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("empty check recorded: %v", err)
		}
		if err := b.PutKeyCheck("k1", []byte("first")); err != nil {
			return err
		}
		// Within the same batch, the first one already counts.
		return b.PutKeyCheck("k1", []byte("second"))
	})
	write(t, st, func(b *store.Batch) error { return b.PutKeyCheck("k1", []byte("third")) })
	write(t, st, func(b *store.Batch) error { return b.PutKeyCheck("k2", []byte("k2-check")) })
	read(t, st, func(v *store.View) error {
		for id, want := range map[string]string{"k1": "first", "k2": "k2-check"} {
			got, err := v.KeyCheck(id)
			if err != nil || string(got) != want {
				t.Errorf("KeyCheck(%s) = %q, %v; want %q", id, got, err, want)
			}
		}
		if _, err := v.KeyCheck("k3"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("KeyCheck(k3): %v", err)
		}
		return nil
	})
}

// TestStatsCountBytesWritten: the figures behind the write-amplification
// metric move once Pebble flushes what was written.
func TestStatsCountBytesWritten(t *testing.T) {
	st := openStore(t, t.TempDir())
	if got := st.Stats().WrittenBytes; got != 0 {
		t.Fatalf("WrittenBytes of a new store = %d, want 0", got)
	}
	// More than a memtable (4 MiB) of incompressible entries, so that
	// Pebble flushes at least once.
	const entries, size = 6000, 1024
	for i := 0; i < entries; i += 100 {
		write(t, st, func(b *store.Batch) error {
			for j := i; j < i+100; j++ {
				ct := make([]byte, size)
				if _, err := rand.Read(ct); err != nil {
					return err
				}
				if err := b.PutEntry(fmt.Sprintf("mbsecver-%06d", j), &fsmpb.SealedEntry{Key: "k", Ciphertext: ct}); err != nil {
					return err
				}
			}
			return nil
		})
	}
	deadline := time.Now().Add(20 * time.Second)
	for st.Stats().WrittenBytes < 1<<20 {
		if time.Now().After(deadline) {
			t.Fatalf("WrittenBytes = %d after writing %d bytes, want at least one flush (1 MiB)", st.Stats().WrittenBytes, entries*size)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got, limit := st.Stats().WrittenBytes, uint64(10*entries*size); got > limit {
		t.Errorf("WrittenBytes = %d after writing %d bytes: more than 10 times over", got, entries*size)
	}
}

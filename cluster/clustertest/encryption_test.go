package clustertest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/fsm/fsmpb"
	"github.com/mysterybox/mysterybox/region"
	"github.com/mysterybox/mysterybox/store"
)

// syncBuffer collects log output from many goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]byte(nil), b.buf.Bytes()...)
}

// encodings of a canary that must never appear at rest.
func encodings(canary []byte) map[string][]byte {
	return map[string][]byte{
		"raw":       canary,
		"base64":    []byte(base64.StdEncoding.EncodeToString(canary)),
		"base64url": []byte(base64.RawURLEncoding.EncodeToString(canary)),
		"hex":       []byte(hex.EncodeToString(canary)),
		"HEX":       []byte(strings.ToUpper(hex.EncodeToString(canary))),
	}
}

func TestNoPlaintextAtRest(t *testing.T) {
	logs := &syncBuffer{}
	c := New(t, Options{Nodes: 3, SnapshotThreshold: 8, TrailingLogs: 4, LogLevel: hclog.Debug, LogSink: logs})
	leader := c.WaitLeader()
	projectID, _ := setup(t, c, leader)

	var canaries [][]byte
	for i := 0; i < 12; i++ {
		canary := make([]byte, 32)
		if _, err := rand.Read(canary); err != nil {
			t.Fatal(err)
		}
		canaries = append(canaries, canary)
		// Half binary, half a printable string (hex of fresh randomness,
		// itself a canary) to cover both kinds of entry.
		entry := &pb.PayloadEntry{Key: "bin", Value: &pb.PayloadEntry_BinaryValue{BinaryValue: canary}}
		if i%2 == 1 {
			str := []byte(hex.EncodeToString(canary))
			canaries[len(canaries)-1] = str
			entry = &pb.PayloadEntry{Key: "str", Value: &pb.PayloadEntry_StringValue{StringValue: string(str)}}
		}
		n := c.Running()[i%3]
		_, err := pb.NewSecretServiceClient(c.Conn(n)).Create(ctxT(t), &pb.CreateSecretRequest{Secret: &pb.Secret{
			Metadata: &pb.Metadata{ParentId: projectID, Name: fmt.Sprintf("canary-%d", i)},
			Spec:     &pb.SecretSpec{SecretVersion: &pb.SecretVersionSpec{Payload: &pb.Payload{Entries: []*pb.PayloadEntry{entry}}}},
		}})
		if err != nil {
			t.Fatal(err)
		}
	}
	// Read every payload back once, so the read path is in the logs too.
	list, err := pb.NewSecretServiceClient(c.Conn(leader)).List(ctxT(t), &pb.ListSecretsRequest{ParentId: projectID})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range list.GetSecrets() {
		if _, err := pb.NewPayloadServiceClient(c.Conn(c.Followers()[0])).Get(ctxT(t), &pb.GetPayloadRequest{SecretId: s.GetMetadata().GetId()}); err != nil {
			t.Fatal(err)
		}
	}
	c.WaitConverged()
	for _, n := range c.Running() {
		if err := n.N.Raft.Snapshot(); err != nil && !strings.Contains(err.Error(), "nothing new") {
			t.Fatalf("snapshot on %s: %v", n.ID, err)
		}
	}
	f := c.Followers()[0]
	c.Stop(f)
	c.Restart(f)
	c.WaitConverged()
	for _, n := range c.Nodes {
		c.Stop(n)
	}

	scanned := 0
	for _, n := range c.Nodes {
		err := filepath.WalkDir(n.Dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			scanned++
			for i, canary := range canaries {
				for enc, needle := range encodings(canary) {
					if bytes.Contains(data, needle) {
						t.Errorf("canary %d (%s) found in %s", i, enc, path)
					}
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	logData := logs.Bytes()
	for i, canary := range canaries {
		for enc, needle := range encodings(canary) {
			if bytes.Contains(logData, needle) {
				t.Errorf("canary %d (%s) found in the logs", i, enc)
			}
		}
	}
	if scanned < 6 || len(logData) == 0 {
		t.Fatalf("scanned %d files and %d bytes of logs: the scan saw nothing", scanned, len(logData))
	}
	// The scan would have found plaintext: the snapshot files exist and
	// hold the (sealed) payloads.
	t.Logf("scanned %d files and %d bytes of logs for %d canaries", scanned, len(logData), len(canaries))
}

func TestTamperedCiphertextFailsThatReadOnly(t *testing.T) {
	c := New(t, Options{Nodes: 3})
	leader := c.WaitLeader()
	projectID, victim := setup(t, c, leader)
	other, err := pb.NewSecretServiceClient(c.Conn(leader)).Create(ctxT(t), &pb.CreateSecretRequest{Secret: &pb.Secret{
		Metadata: &pb.Metadata{ParentId: projectID, Name: "other"},
		Spec:     &pb.SecretSpec{SecretVersion: &pb.SecretVersionSpec{Payload: payload("k", "fine")}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	c.WaitConverged()
	versionID := victim.GetStatus().GetPrimaryVersionId()
	// Flip one byte of the stored ciphertext on every replica.
	for _, n := range c.Running() {
		var e *fsmpb.SealedEntry
		if err := n.N.Store.Read(func(v *store.View) error {
			var err error
			e, err = v.Entry(versionID, "password")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		e.Ciphertext[0] ^= 0x01
		b := n.N.Store.NewBatch()
		if err := b.PutEntry(versionID, e); err != nil {
			t.Fatal(err)
		}
		if err := b.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range c.Running() {
		_, err := pb.NewPayloadServiceClient(c.Conn(n)).GetByKey(ctxT(t), &pb.GetPayloadByKeyRequest{SecretId: victim.GetMetadata().GetId(), Key: "password"})
		if status.Code(err) != codes.DataLoss || !strings.Contains(err.Error(), versionID) {
			t.Fatalf("read of tampered entry via %s: %v, want DATA_LOSS naming %s", n.ID, err, versionID)
		}
		got, err := pb.NewPayloadServiceClient(c.Conn(n)).GetByKey(ctxT(t), &pb.GetPayloadByKeyRequest{SecretId: other.GetMetadata().GetId(), Key: "k"})
		if err != nil || got.GetEntry().GetStringValue() != "fine" {
			t.Fatalf("other secret via %s after tampering: %v %v", n.ID, got, err)
		}
		// Metadata reads never decrypt, so they are unaffected.
		if _, err := pb.NewSecretServiceClient(c.Conn(n)).Get(ctxT(t), &pb.GetSecretRequest{Id: victim.GetMetadata().GetId()}); err != nil {
			t.Fatalf("metadata of tampered secret via %s: %v", n.ID, err)
		}
		if _, err := pb.NewSecretVersionServiceClient(c.Conn(n)).Get(ctxT(t), &pb.GetSecretVersionRequest{Id: versionID}); err != nil {
			t.Fatalf("metadata of tampered version via %s: %v", n.ID, err)
		}
	}
}

func TestSwappedCiphertextsFailToOpen(t *testing.T) {
	c := New(t, Options{Nodes: 1})
	n := c.WaitLeader()
	projectID, a := setup(t, c, n)
	b, err := pb.NewSecretServiceClient(c.Conn(n)).Create(ctxT(t), &pb.CreateSecretRequest{Secret: &pb.Secret{
		Metadata: &pb.Metadata{ParentId: projectID, Name: "b"},
		Spec:     &pb.SecretSpec{SecretVersion: &pb.SecretVersionSpec{Payload: payload("password", "vb", "other", "vo")}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	va, vb := a.GetStatus().GetPrimaryVersionId(), b.GetStatus().GetPrimaryVersionId()
	read := func(v *store.View, version, key string) *fsmpb.SealedEntry {
		e, err := v.Entry(version, key)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	var eb, eo *fsmpb.SealedEntry
	_ = n.N.Store.Read(func(v *store.View) error {
		eb, eo = read(v, vb, "password"), read(v, vb, "other")
		return nil
	})
	// Swap the same key across versions (different data keys), and two
	// keys within one version (same data key, other additional data).
	batch := n.N.Store.NewBatch()
	clone := func(e *fsmpb.SealedEntry, key string) *fsmpb.SealedEntry {
		c := proto.Clone(e).(*fsmpb.SealedEntry)
		c.Key = key
		return c
	}
	eaMoved := clone(eb, "password") // b's ciphertext under a's version
	eoMoved := clone(eo, "password") // b's "other" under b's "password"
	ebAsOther := clone(eb, "other")  // and the reverse
	for _, put := range []struct {
		version string
		e       *fsmpb.SealedEntry
	}{{va, eaMoved}, {vb, eoMoved}, {vb, ebAsOther}} {
		if err := batch.PutEntry(put.version, put.e); err != nil {
			t.Fatal(err)
		}
	}
	if err := batch.Commit(); err != nil {
		t.Fatal(err)
	}
	for _, r := range []struct{ secret, key string }{{a.GetMetadata().GetId(), "password"}, {b.GetMetadata().GetId(), "password"}, {b.GetMetadata().GetId(), "other"}} {
		got, err := pb.NewPayloadServiceClient(c.Conn(n)).GetByKey(ctxT(t), &pb.GetPayloadByKeyRequest{SecretId: r.secret, Key: r.key})
		if status.Code(err) != codes.DataLoss {
			t.Errorf("moved ciphertext %s/%s opened: %v %v, want DATA_LOSS", r.secret, r.key, got, err)
		}
	}
}

func newKeyring(t *testing.T, active string, keys map[string][]byte) *region.Keyring {
	t.Helper()
	var parts []string
	for id, k := range keys {
		parts = append(parts, fmt.Sprintf(`{"id": %q, "key": %q}`, id, base64.StdEncoding.EncodeToString(k)))
	}
	kr, err := region.ParseKeyring([]byte(fmt.Sprintf(`{"active": %q, "keys": [%s]}`, active, strings.Join(parts, ","))))
	if err != nil {
		t.Fatal(err)
	}
	return kr
}

func randomKey(t *testing.T) []byte {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func TestKeyRotationAndRewrap(t *testing.T) {
	k1, k2 := randomKey(t), randomKey(t)
	c := New(t, Options{Nodes: 3})
	// Start over with a keyring whose key material the test knows.
	for _, n := range c.Running() {
		n.Cfg.Keyring = newKeyring(t, "k1", map[string][]byte{"k1": k1})
		if err := n.N.API.SetKeyring(n.Cfg.Keyring); err != nil {
			t.Fatal(err)
		}
	}
	leader := c.WaitLeader()
	projectID, _ := setup(t, c, leader)
	var secrets []string
	for i := 0; i < 25; i++ {
		s, err := pb.NewSecretServiceClient(c.Conn(leader)).Create(ctxT(t), &pb.CreateSecretRequest{Secret: &pb.Secret{
			Metadata: &pb.Metadata{ParentId: projectID, Name: fmt.Sprintf("s%d", i)},
			Spec:     &pb.SecretSpec{SecretVersion: &pb.SecretVersionSpec{Payload: payload("v", fmt.Sprintf("value-%d", i))}},
		}})
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, s.GetMetadata().GetId())
	}
	// Rotate: k2 becomes active on every node; k1 stays for old data.
	both := newKeyring(t, "k2", map[string][]byte{"k1": k1, "k2": k2})
	for _, n := range c.Running() {
		n.Cfg.Keyring = both
		if err := n.N.API.SetKeyring(both); err != nil {
			t.Fatal(err)
		}
	}
	// Removing k1 now is refused: data still needs it.
	onlyK2 := newKeyring(t, "k2", map[string][]byte{"k2": k2})
	if err := leader.N.API.SetKeyring(onlyK2); err == nil || !strings.Contains(err.Error(), `k1`) {
		t.Fatalf("keyring without k1 accepted while data needs it: %v", err)
	}
	// A keyring with a different key under the id k1 is refused too.
	if err := leader.N.API.SetKeyring(newKeyring(t, "k1", map[string][]byte{"k1": k2})); err == nil {
		t.Fatal("keyring with another key under id k1 accepted")
	}
	// Rewrap in small batches through a follower, until nothing remains.
	// A follower restarts mid-rewrap; the rewrap goes on through the other.
	followers := c.Followers()
	admin := pb.NewAdminServiceClient(c.Conn(followers[0]))
	total := int64(0)
	for round := 0; ; round++ {
		resp, err := admin.Rewrap(ctxT(t), &pb.RewrapRequest{BatchSize: 10})
		if err != nil {
			t.Fatal(err)
		}
		total += resp.GetRewrapped()
		if round == 0 {
			c.Stop(followers[1])
		}
		if round == 1 {
			c.Restart(followers[1])
		}
		if resp.GetRemaining() == 0 {
			if len(resp.GetKeysInUse()) != 1 || resp.GetKeysInUse()[0] != "k2" {
				t.Fatalf("keys in use after rewrap: %v", resp.GetKeysInUse())
			}
			break
		}
		if round > 10 {
			t.Fatalf("rewrap does not finish: %v", resp)
		}
	}
	if total != 26 { // 25 secrets + the one from setup
		t.Fatalf("rewrapped %d versions, want 26", total)
	}
	// Running it again changes nothing.
	if resp, err := admin.Rewrap(ctxT(t), &pb.RewrapRequest{}); err != nil || resp.GetRewrapped() != 0 || resp.GetRemaining() != 0 {
		t.Fatalf("second rewrap: %v %v", resp, err)
	}
	c.WaitConverged()
	// Now k1 can go, on every node, and every payload still opens.
	for _, n := range c.Running() {
		n.Cfg.Keyring = onlyK2
		if err := n.N.API.SetKeyring(onlyK2); err != nil {
			t.Fatalf("%s: %v", n.ID, err)
		}
	}
	for i, id := range secrets {
		got, err := pb.NewPayloadServiceClient(c.Conn(leader)).GetByKey(ctxT(t), &pb.GetPayloadByKeyRequest{SecretId: id, Key: "v"})
		if err != nil || got.GetEntry().GetStringValue() != fmt.Sprintf("value-%d", i) {
			t.Fatalf("secret %d after rewrap: %v %v", i, got, err)
		}
	}
}

func TestNodeRefusesKeyringThatCannotOpenItsData(t *testing.T) {
	c := New(t, Options{Nodes: 3})
	leader := c.WaitLeader()
	_, secret := setup(t, c, leader)
	c.WaitConverged()
	f := c.Followers()[0]
	c.Stop(f)
	good := f.Cfg.Keyring
	f.Cfg.Bootstrap, f.Cfg.JoinAddrs = false, nil

	f.Cfg.Keyring = newKeyring(t, "other", map[string][]byte{"other": randomKey(t)})
	err := c.TryStart(f)
	if err == nil || !strings.Contains(err.Error(), "test1") {
		t.Fatalf("start with a keyring missing key test1: %v, want a refusal naming test1", err)
	}
	f.Cfg.Keyring = newKeyring(t, "test1", map[string][]byte{"test1": randomKey(t)})
	if err := c.TryStart(f); err == nil || !strings.Contains(err.Error(), "different key") {
		t.Fatalf("start with another key under id test1: %v, want a refusal", err)
	}
	// Nothing was damaged: with the right keyring the node serves again.
	f.Cfg.Keyring = good
	c.Restart(f)
	c.WaitConverged()
	got, err := pb.NewPayloadServiceClient(c.Conn(f)).GetByKey(context.Background(), &pb.GetPayloadByKeyRequest{SecretId: secret.GetMetadata().GetId(), Key: "password"})
	if err != nil || got.GetEntry().GetStringValue() != "v1" {
		t.Fatalf("after restart with the right keyring: %v %v", got, err)
	}
}

// TestIdempotentRetryAcrossKeyRotation: a call and its retry (same
// x-idempotency-key) with a key rotation in between. The retry is hashed
// with the new active key first; the FSM answers that the record used the
// old one, and the leader hashes it again with that key: the retry gets the
// first call's result, and a different request under the same key is still
// refused.
func TestIdempotentRetryAcrossKeyRotation(t *testing.T) {
	k1, k2 := randomKey(t), randomKey(t)
	c := New(t, Options{Nodes: 3})
	setKeyring := func(kr *region.Keyring) {
		for _, n := range c.Running() {
			n.Cfg.Keyring = kr
			if err := n.N.API.SetKeyring(kr); err != nil {
				t.Fatal(err)
			}
		}
	}
	setKeyring(newKeyring(t, "k1", map[string][]byte{"k1": k1}))
	leader := c.WaitLeader()
	_, secret := setup(t, c, leader)
	versions := pb.NewSecretVersionServiceClient(c.Conn(leader))
	create := func(value string) (*pb.SecretVersion, error) {
		ctx := metadata.AppendToOutgoingContext(ctxT(t), "x-idempotency-key", "rotation-retry")
		return versions.Create(ctx, &pb.CreateSecretVersionRequest{Version: &pb.SecretVersion{
			Metadata: &pb.Metadata{ParentId: secret.GetMetadata().GetId()},
			Spec:     &pb.SecretVersionSpec{Payload: payload("password", value)},
		}})
	}
	first, err := create("before-rotation")
	if err != nil {
		t.Fatal(err)
	}
	setKeyring(newKeyring(t, "k2", map[string][]byte{"k1": k1, "k2": k2}))
	retry, err := create("before-rotation")
	if err != nil {
		t.Fatalf("retry after the rotation: %v", err)
	}
	if retry.GetMetadata().GetId() != first.GetMetadata().GetId() {
		t.Fatalf("retry created version %s, want the first call's %s", retry.GetMetadata().GetId(), first.GetMetadata().GetId())
	}
	if _, err := create("another-request"); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("another request under the same key after the rotation: %v, want INVALID_ARGUMENT", err)
	}
	list, err := versions.List(ctxT(t), &pb.ListSecretVersionsRequest{ParentId: secret.GetMetadata().GetId()})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(list.GetVersions()); n != 2 { // setup's version and the first call's
		t.Fatalf("%d versions, want 2", n)
	}
	// Once every data key is rewrapped and k1 is gone from the keyring, the
	// record's request hash cannot be recomputed: a retry under that
	// idempotency key is refused, naming the retired key, and applies nothing.
	for round := 0; ; round++ {
		resp, err := pb.NewAdminServiceClient(c.Conn(leader)).Rewrap(ctxT(t), &pb.RewrapRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetRemaining() == 0 {
			break
		}
		if round > 10 {
			t.Fatalf("rewrap does not finish: %v", resp)
		}
	}
	c.WaitConverged()
	setKeyring(newKeyring(t, "k2", map[string][]byte{"k2": k2}))
	if _, err := create("before-rotation"); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "k1") {
		t.Fatalf("retry after its hash key was retired: %v, want INVALID_ARGUMENT naming k1", err)
	}
	list, err = versions.List(ctxT(t), &pb.ListSecretVersionsRequest{ParentId: secret.GetMetadata().GetId()})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(list.GetVersions()); n != 2 {
		t.Fatalf("%d versions after the refused retry, want 2", n)
	}
}

package region_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/fsm/fsmpb"
	"github.com/mysterybox/mysterybox/region"
)

// ---------------------------------------------------------------- helpers

func keyB64(fill byte) string {
	return base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{fill}, 32))
}

type keySpec struct{ id, key string }

func keyringJSON(active string, keys ...keySpec) []byte {
	type k struct {
		ID  string `json:"id"`
		Key string `json:"key"`
	}
	f := struct {
		Active string `json:"active"`
		Keys   []k    `json:"keys"`
	}{Active: active}
	for _, ks := range keys {
		f.Keys = append(f.Keys, k{ks.id, ks.key})
	}
	raw, _ := json.Marshal(f)
	return raw
}

func mustKeyring(t *testing.T, active string, keys ...keySpec) *region.Keyring {
	t.Helper()
	kr, err := region.ParseKeyring(keyringJSON(active, keys...))
	if err != nil {
		t.Fatalf("ParseKeyring: %v", err)
	}
	return kr
}

const (
	secretID  = "mbsec-1"
	versionID = "mbsecver-1"
)

// plaintexts are distinctive enough to search for in the ciphertext.
var (
	stringPlain = "correct-horse-battery-staple-0123456789"
	binaryPlain = append([]byte("\x00\x01\xfe\xffBINARY-PLAINTEXT-MARKER"), bytes.Repeat([]byte{0xab}, 100)...)
)

func entries() []*pb.PayloadEntry {
	return []*pb.PayloadEntry{
		{Key: "password", Value: &pb.PayloadEntry_StringValue{StringValue: stringPlain}},
		{Key: "cert.der", Value: &pb.PayloadEntry_BinaryValue{BinaryValue: binaryPlain}},
		{Key: "empty_string", Value: &pb.PayloadEntry_StringValue{StringValue: ""}},
		{Key: "unicode", Value: &pb.PayloadEntry_StringValue{StringValue: "pässwörd ✓ 密码"}},
	}
}

func seal(t *testing.T, kr *region.Keyring) *fsmpb.SealedPayload {
	t.Helper()
	sp, err := kr.Seal(secretID, versionID, entries())
	if err != nil {
		t.Fatalf("Seal: %v", err)
	}
	return sp
}

func cloneEntries(in []*fsmpb.SealedEntry) []*fsmpb.SealedEntry {
	out := make([]*fsmpb.SealedEntry, len(in))
	for i, e := range in {
		out[i] = proto.Clone(e).(*fsmpb.SealedEntry)
	}
	return out
}

func equalEntries(t *testing.T, got, want []*pb.PayloadEntry) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d entries, want %d", len(got), len(want))
	}
	for i := range want {
		if !proto.Equal(got[i], want[i]) {
			t.Fatalf("entry %d = %v, want %v", i, got[i], want[i])
		}
	}
}

// wantTampered opens and expects ErrTampered with no plaintext returned.
func wantTampered(t *testing.T, what string, kr *region.Keyring, sid, vid, kek string, wrapped []byte, sealed []*fsmpb.SealedEntry) {
	t.Helper()
	var got []*pb.PayloadEntry
	var err error
	func() {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("PANIC: %v", r)
			}
		}()
		got, err = kr.Open(sid, vid, kek, wrapped, sealed)
	}()
	if !errors.Is(err, region.ErrTampered) {
		t.Fatalf("%s: err = %v, want ErrTampered", what, err)
	}
	if got != nil {
		t.Fatalf("%s: returned entries along with the error: %v", what, got)
	}
}

// ---------------------------------------------------------------- seal / open

func TestSealOpenRoundTrip(t *testing.T) {
	kr := mustKeyring(t, "k1", keySpec{"k1", keyB64(1)})
	sp := seal(t, kr)
	if sp.GetKekId() != "k1" {
		t.Fatalf("kek id = %q", sp.GetKekId())
	}
	if len(sp.GetEntries()) != len(entries()) {
		t.Fatalf("%d sealed entries", len(sp.GetEntries()))
	}
	for i, e := range sp.GetEntries() {
		if e.GetKey() != entries()[i].GetKey() {
			t.Errorf("sealed entry %d key %q", i, e.GetKey())
		}
		_, isBinary := entries()[i].GetValue().(*pb.PayloadEntry_BinaryValue)
		if e.GetBinary() != isBinary {
			t.Errorf("sealed entry %d binary=%v", i, e.GetBinary())
		}
		if len(e.GetNonce()) != 12 {
			t.Errorf("sealed entry %d nonce of %d bytes", i, len(e.GetNonce()))
		}
	}
	got, err := kr.Open(secretID, versionID, sp.GetKekId(), sp.GetWrappedDek(), sp.GetEntries())
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	equalEntries(t, got, entries())
	// The string/binary distinction survives: a binary entry opens as binary.
	if _, ok := got[1].GetValue().(*pb.PayloadEntry_BinaryValue); !ok {
		t.Fatalf("binary entry opened as %T", got[1].GetValue())
	}
	// Opening a subset of entries (GetByKey) works.
	one, err := kr.Open(secretID, versionID, sp.GetKekId(), sp.GetWrappedDek(), sp.GetEntries()[1:2])
	if err != nil {
		t.Fatal(err)
	}
	equalEntries(t, one, entries()[1:2])

	// The sealed payload survives serialization (Raft log, Pebble).
	raw, err := proto.Marshal(sp)
	if err != nil {
		t.Fatal(err)
	}
	back := &fsmpb.SealedPayload{}
	if err := proto.Unmarshal(raw, back); err != nil {
		t.Fatal(err)
	}
	got, err = kr.Open(secretID, versionID, back.GetKekId(), back.GetWrappedDek(), back.GetEntries())
	if err != nil {
		t.Fatal(err)
	}
	equalEntries(t, got, entries())

	// Another keyring with the same key material opens it (another node).
	other := mustKeyring(t, "k1", keySpec{"k1", keyB64(1)})
	if _, err := other.Open(secretID, versionID, "k1", sp.GetWrappedDek(), sp.GetEntries()); err != nil {
		t.Fatalf("Open on another node: %v", err)
	}
}

func TestSealIsRandomized(t *testing.T) {
	kr := mustKeyring(t, "k1", keySpec{"k1", keyB64(1)})
	a, b := seal(t, kr), seal(t, kr)
	if bytes.Equal(a.GetWrappedDek(), b.GetWrappedDek()) {
		t.Fatal("two seals share a wrapped data key")
	}
	for i := range a.GetEntries() {
		if bytes.Equal(a.GetEntries()[i].GetNonce(), b.GetEntries()[i].GetNonce()) ||
			bytes.Equal(a.GetEntries()[i].GetCiphertext(), b.GetEntries()[i].GetCiphertext()) {
			t.Fatalf("entry %d: nonce or ciphertext repeated across seals", i)
		}
	}
	// Entries of one version never share a nonce.
	seen := map[string]bool{}
	for _, e := range a.GetEntries() {
		if seen[string(e.GetNonce())] {
			t.Fatal("nonce reused within a version")
		}
		seen[string(e.GetNonce())] = true
	}
}

func TestCiphertextDoesNotContainPlaintext(t *testing.T) {
	kr := mustKeyring(t, "k1", keySpec{"k1", keyB64(1)})
	sp := seal(t, kr)
	raw, err := proto.Marshal(sp)
	if err != nil {
		t.Fatal(err)
	}
	for _, plain := range [][]byte{[]byte(stringPlain), binaryPlain, []byte("BINARY-PLAINTEXT-MARKER"), []byte("horse-battery"), []byte("pässwörd")} {
		if bytes.Contains(raw, plain) {
			t.Fatalf("sealed payload contains plaintext %q", plain)
		}
	}
	// Nor the data key or KEK in the clear.
	if bytes.Contains(raw, bytes.Repeat([]byte{1}, 32)) {
		t.Fatal("sealed payload contains the KEK")
	}
}

func TestOpenWithWrongAdditionalDataFails(t *testing.T) {
	// k1 and k1-alias hold the same key bytes, so only the kek id in the
	// additional data tells them apart.
	kr := mustKeyring(t, "k1", keySpec{"k1", keyB64(1)}, keySpec{"k1-alias", keyB64(1)})
	sp := seal(t, kr)
	w, es := sp.GetWrappedDek(), sp.GetEntries()

	wantTampered(t, "other secret id", kr, "mbsec-2", versionID, "k1", w, es)
	wantTampered(t, "other version id", kr, secretID, "mbsecver-2", "k1", w, es)
	wantTampered(t, "kek id of a key with the same bytes", kr, secretID, versionID, "k1-alias", w, es)

	// Entry key: rename an entry, or swap two entries' ciphertexts.
	renamed := cloneEntries(es)
	renamed[0].Key = "password2"
	wantTampered(t, "renamed entry key", kr, secretID, versionID, "k1", w, renamed)
	swapped := cloneEntries(es)
	swapped[0].Nonce, swapped[3].Nonce = swapped[3].Nonce, swapped[0].Nonce
	swapped[0].Ciphertext, swapped[3].Ciphertext = swapped[3].Ciphertext, swapped[0].Ciphertext
	wantTampered(t, "swapped entries", kr, secretID, versionID, "k1", w, swapped)
	// The string/binary flag is bound too.
	flag := cloneEntries(es)
	flag[1].Binary = false
	wantTampered(t, "binary flag cleared", kr, secretID, versionID, "k1", w, flag)
	flag = cloneEntries(es)
	flag[0].Binary = true
	wantTampered(t, "binary flag set", kr, secretID, versionID, "k1", w, flag)

	// An entry moved to another version (same secret, same KEK) fails even
	// though that version's data key opens.
	other, err := kr.Seal(secretID, "mbsecver-2", entries())
	if err != nil {
		t.Fatal(err)
	}
	wantTampered(t, "entry from another version", kr, secretID, "mbsecver-2", "k1", other.GetWrappedDek(), es[:1])
	// A data key moved to another version fails.
	wantTampered(t, "data key of another version", kr, secretID, versionID, "k1", other.GetWrappedDek(), es)
}

func TestFlippedBytesFailAuthentication(t *testing.T) {
	kr := mustKeyring(t, "k1", keySpec{"k1", keyB64(1)})
	sp := seal(t, kr)
	w, es := sp.GetWrappedDek(), sp.GetEntries()

	for i := range w {
		bad := append([]byte(nil), w...)
		bad[i] ^= 0x01
		wantTampered(t, fmt.Sprintf("wrapped DEK byte %d", i), kr, secretID, versionID, "k1", bad, es)
	}
	for _, n := range []int{0, 5, 11, 12, len(w) - 1} {
		wantTampered(t, fmt.Sprintf("wrapped DEK truncated to %d", n), kr, secretID, versionID, "k1", w[:n], es)
	}
	for ei := range es {
		for i := range es[ei].GetCiphertext() {
			bad := cloneEntries(es)
			bad[ei].Ciphertext[i] ^= 0x80
			wantTampered(t, fmt.Sprintf("entry %d ciphertext byte %d", ei, i), kr, secretID, versionID, "k1", w, bad)
		}
		for i := range es[ei].GetNonce() {
			bad := cloneEntries(es)
			bad[ei].Nonce[i] ^= 0x01
			wantTampered(t, fmt.Sprintf("entry %d nonce byte %d", ei, i), kr, secretID, versionID, "k1", w, bad)
		}
		bad := cloneEntries(es)
		bad[ei].Ciphertext = bad[ei].Ciphertext[:len(bad[ei].Ciphertext)-1]
		wantTampered(t, fmt.Sprintf("entry %d ciphertext truncated", ei), kr, secretID, versionID, "k1", w, bad)
		bad = cloneEntries(es)
		bad[ei].Ciphertext = append(bad[ei].Ciphertext, 0)
		wantTampered(t, fmt.Sprintf("entry %d ciphertext extended", ei), kr, secretID, versionID, "k1", w, bad)
	}
	// Nothing was modified in place: the original still opens.
	if _, err := kr.Open(secretID, versionID, "k1", w, es); err != nil {
		t.Fatalf("original no longer opens: %v", err)
	}
}

// Stored data with a nonce of the wrong length is tampered data, not a
// reason to crash the node: crypto/cipher's GCM Open panics on it.
func TestBadNonceLengthIsTamperedNotPanic(t *testing.T) {
	kr := mustKeyring(t, "k1", keySpec{"k1", keyB64(1)})
	sp := seal(t, kr)
	for _, n := range []int{0, 11, 13} {
		bad := cloneEntries(sp.GetEntries())
		nonce := append([]byte(nil), bad[0].Nonce...)
		for len(nonce) < n {
			nonce = append(nonce, 0)
		}
		bad[0].Nonce = nonce[:n]
		wantTampered(t, fmt.Sprintf("entry nonce of %d bytes", n), kr, secretID, versionID, "k1", sp.GetWrappedDek(), bad)
	}
}

func TestUnknownKeyID(t *testing.T) {
	kr1 := mustKeyring(t, "k1", keySpec{"k1", keyB64(1)})
	sp := seal(t, kr1)
	kr2 := mustKeyring(t, "k2", keySpec{"k2", keyB64(2)}, keySpec{"k3", keyB64(3)})
	got, err := kr2.Open(secretID, versionID, "k1", sp.GetWrappedDek(), sp.GetEntries())
	if !errors.Is(err, region.ErrUnknownKey) {
		t.Fatalf("err = %v, want ErrUnknownKey", err)
	}
	if got != nil {
		t.Fatalf("returned entries: %v", got)
	}
	if !strings.Contains(err.Error(), `"k1"`) {
		t.Fatalf("error does not name the missing key id: %v", err)
	}
	if errors.Is(err, region.ErrTampered) {
		t.Fatal("unknown key reported as tampering")
	}
	// A keyring holding a different key under the same id: tampered (the
	// key check, below, tells this case apart at start-up).
	wrong := mustKeyring(t, "k1", keySpec{"k1", keyB64(9)})
	wantTampered(t, "same id, other key", wrong, secretID, versionID, "k1", sp.GetWrappedDek(), sp.GetEntries())
}

func TestKeyRotation(t *testing.T) {
	old := mustKeyring(t, "k1", keySpec{"k1", keyB64(1)})
	sp := seal(t, old)
	// The rotated keyring keeps k1 to open old data and seals with k2.
	rotated := mustKeyring(t, "k2", keySpec{"k1", keyB64(1)}, keySpec{"k2", keyB64(2)})
	if rotated.ActiveKeyID() != "k2" || fmt.Sprint(rotated.KeyIDs()) != "[k1 k2]" {
		t.Fatalf("active %q, ids %v", rotated.ActiveKeyID(), rotated.KeyIDs())
	}
	got, err := rotated.Open(secretID, versionID, sp.GetKekId(), sp.GetWrappedDek(), sp.GetEntries())
	if err != nil {
		t.Fatalf("rotated keyring cannot open old data: %v", err)
	}
	equalEntries(t, got, entries())
	if sp2 := seal(t, rotated); sp2.GetKekId() != "k2" {
		t.Fatalf("new data sealed with %q, want k2", sp2.GetKekId())
	}

	// Rewrap moves the data key under the active KEK; entries unchanged.
	toID, wrapped, err := rotated.Rewrap(secretID, versionID, "k1", sp.GetWrappedDek())
	if err != nil || toID != "k2" {
		t.Fatalf("Rewrap = %q, %v", toID, err)
	}
	got, err = rotated.Open(secretID, versionID, "k2", wrapped, sp.GetEntries())
	if err != nil {
		t.Fatalf("open after rewrap: %v", err)
	}
	equalEntries(t, got, entries())
	// Once rewrapped, k1 can go.
	onlyK2 := mustKeyring(t, "k2", keySpec{"k2", keyB64(2)})
	if _, err := onlyK2.Open(secretID, versionID, "k2", wrapped, sp.GetEntries()); err != nil {
		t.Fatalf("open with k2 only: %v", err)
	}
	// The rewrapped key is bound to its version like the original.
	wantTampered(t, "rewrapped key on another version", rotated, secretID, "mbsecver-2", "k2", wrapped, sp.GetEntries())
	// Rewrap refuses what it cannot authenticate.
	bad := append([]byte(nil), sp.GetWrappedDek()...)
	bad[len(bad)-1] ^= 1
	if _, _, err := rotated.Rewrap(secretID, versionID, "k1", bad); !errors.Is(err, region.ErrTampered) {
		t.Fatalf("Rewrap of a tampered key: %v", err)
	}
	if _, _, err := rotated.Rewrap(secretID, versionID, "k1", bad[:4]); !errors.Is(err, region.ErrTampered) {
		t.Fatalf("Rewrap of a truncated key: %v", err)
	}
	if _, _, err := rotated.Rewrap(secretID, "mbsecver-2", "k1", sp.GetWrappedDek()); !errors.Is(err, region.ErrTampered) {
		t.Fatalf("Rewrap with the wrong version: %v", err)
	}
	if _, _, err := onlyK2.Rewrap(secretID, versionID, "k1", sp.GetWrappedDek()); !errors.Is(err, region.ErrUnknownKey) || !strings.Contains(err.Error(), `"k1"`) {
		t.Fatalf("Rewrap with an unknown key: %v", err)
	}
}

func TestKeyCheck(t *testing.T) {
	kr := mustKeyring(t, "k1", keySpec{"k1", keyB64(1)}, keySpec{"k2", keyB64(2)})
	sp := seal(t, kr)
	if len(sp.GetKekCheck()) == 0 {
		t.Fatal("Seal recorded no key check value")
	}
	if err := kr.VerifyKeyCheck("k1", sp.GetKekCheck()); err != nil {
		t.Fatalf("VerifyKeyCheck of own check: %v", err)
	}
	check2, err := kr.KeyCheck("k2")
	if err != nil {
		t.Fatal(err)
	}
	if err := kr.VerifyKeyCheck("k2", check2); err != nil {
		t.Fatal(err)
	}
	// A check value is bound to its key id.
	if err := kr.VerifyKeyCheck("k2", sp.GetKekCheck()); !errors.Is(err, region.ErrWrongKey) {
		t.Fatalf("check of k1 verified as k2: %v", err)
	}
	// Same id, different key: ErrWrongKey.
	wrong := mustKeyring(t, "k1", keySpec{"k1", keyB64(7)})
	if err := wrong.VerifyKeyCheck("k1", sp.GetKekCheck()); !errors.Is(err, region.ErrWrongKey) {
		t.Fatalf("different key under the same id: %v", err)
	}
	// Missing id: ErrUnknownKey naming it.
	if err := wrong.VerifyKeyCheck("k2", check2); !errors.Is(err, region.ErrUnknownKey) || !strings.Contains(err.Error(), `"k2"`) {
		t.Fatalf("unknown key: %v", err)
	}
	if _, err := wrong.KeyCheck("k2"); !errors.Is(err, region.ErrUnknownKey) {
		t.Fatalf("KeyCheck of an unknown key: %v", err)
	}
	// Truncated check value.
	if err := kr.VerifyKeyCheck("k1", sp.GetKekCheck()[:5]); !errors.Is(err, region.ErrTampered) {
		t.Fatalf("truncated check: %v", err)
	}
}

func TestRequestMAC(t *testing.T) {
	kr := mustKeyring(t, "k1", keySpec{"k1", keyB64(1)}, keySpec{"k2", keyB64(2)})
	m1, err := kr.RequestMAC("k1", []byte("request"))
	if err != nil || len(m1) != 32 {
		t.Fatalf("RequestMAC = %x, %v", m1, err)
	}
	again, _ := kr.RequestMAC("k1", []byte("request"))
	other, _ := mustKeyring(t, "k1", keySpec{"k1", keyB64(1)}).RequestMAC("k1", []byte("request"))
	if !bytes.Equal(m1, again) || !bytes.Equal(m1, other) {
		t.Fatal("RequestMAC is not deterministic across calls and nodes")
	}
	diffData, _ := kr.RequestMAC("k1", []byte("request2"))
	diffKey, _ := kr.RequestMAC("k2", []byte("request"))
	if bytes.Equal(m1, diffData) || bytes.Equal(m1, diffKey) {
		t.Fatal("RequestMAC collides across data or keys")
	}
	if _, err := kr.RequestMAC("k9", []byte("x")); !errors.Is(err, region.ErrUnknownKey) {
		t.Fatalf("unknown key: %v", err)
	}
	if !kr.Has("k1") || !kr.Has("k2") || kr.Has("k9") {
		t.Fatal("Has")
	}
}

// ---------------------------------------------------------------- parsing

func TestParseKeyringRejects(t *testing.T) {
	long := strings.Repeat("a", 65)
	cases := map[string]struct {
		raw  []byte
		want string // a piece of the error message
	}{
		"bad JSON":          {[]byte(`{"active": "k1", "keys": [`), "JSON"},
		"not an object":     {[]byte(`"k1"`), "JSON"},
		"no keys":           {keyringJSON("k1"), "no keys"},
		"short key":         {keyringJSON("k1", keySpec{"k1", base64.StdEncoding.EncodeToString(make([]byte, 16))}), "keys[0].key"},
		"long key":          {keyringJSON("k1", keySpec{"k1", base64.StdEncoding.EncodeToString(make([]byte, 33))}), "keys[0].key"},
		"key not base64":    {keyringJSON("k1", keySpec{"k1", "!!!not base64!!!"}), "keys[0].key"},
		"empty key":         {keyringJSON("k1", keySpec{"k1", ""}), "keys[0].key"},
		"duplicate id":      {keyringJSON("k1", keySpec{"k1", keyB64(1)}, keySpec{"k1", keyB64(2)}), "twice"},
		"missing active":    {keyringJSON("k9", keySpec{"k1", keyB64(1)}), "k9"},
		"empty active":      {keyringJSON("", keySpec{"k1", keyB64(1)}), "active"},
		"empty id":          {keyringJSON("", keySpec{"", keyB64(1)}), "keys[0].id"},
		"id with slash":     {keyringJSON("a/b", keySpec{"a/b", keyB64(1)}), "keys[0].id"},
		"id too long":       {keyringJSON(long, keySpec{long, keyB64(1)}), "keys[0].id"},
		"second key short":  {keyringJSON("k1", keySpec{"k1", keyB64(1)}, keySpec{"k2", "AAAA"}), "keys[1].key"},
		"second id invalid": {keyringJSON("k1", keySpec{"k1", keyB64(1)}, keySpec{"k 2", keyB64(2)}), "keys[1].id"},
	}
	for name, c := range cases {
		kr, err := region.ParseKeyring(c.raw)
		if err == nil {
			t.Errorf("%s: accepted (%v)", name, kr.KeyIDs())
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %q does not mention %q", name, err, c.want)
		}
		// The error never echoes key material.
		if strings.Contains(err.Error(), keyB64(1)) || strings.Contains(err.Error(), keyB64(2)) {
			t.Errorf("%s: error leaks a key: %v", name, err)
		}
	}
}

func TestLoadAndGenerateKeyring(t *testing.T) {
	raw, err := region.GenerateKeyringFile("main-2026")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "keyring.json")
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	kr, err := region.LoadKeyring(path)
	if err != nil {
		t.Fatalf("LoadKeyring of a generated file: %v", err)
	}
	if kr.ActiveKeyID() != "main-2026" || fmt.Sprint(kr.KeyIDs()) != "[main-2026]" {
		t.Fatalf("active %q ids %v", kr.ActiveKeyID(), kr.KeyIDs())
	}
	sp, err := kr.Seal(secretID, versionID, entries())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kr.Open(secretID, versionID, sp.GetKekId(), sp.GetWrappedDek(), sp.GetEntries()); err != nil {
		t.Fatal(err)
	}
	// Two generated keyrings have different keys.
	raw2, _ := region.GenerateKeyringFile("main-2026")
	kr2, err := region.ParseKeyring(raw2)
	if err != nil {
		t.Fatal(err)
	}
	wantTampered(t, "other generated key", kr2, secretID, versionID, sp.GetKekId(), sp.GetWrappedDek(), sp.GetEntries())

	if _, err := region.LoadKeyring(filepath.Join(t.TempDir(), "missing.json")); err == nil {
		t.Fatal("LoadKeyring of a missing file succeeded")
	}
	bad := filepath.Join(t.TempDir(), "bad.json")
	if err := os.WriteFile(bad, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := region.LoadKeyring(bad); err == nil || !strings.Contains(err.Error(), bad) {
		t.Fatalf("LoadKeyring of a bad file: %v (should name the file)", err)
	}
}

func TestKeyIDsSorted(t *testing.T) {
	kr := mustKeyring(t, "b", keySpec{"c", keyB64(3)}, keySpec{"a", keyB64(1)}, keySpec{"b", keyB64(2)})
	if fmt.Sprint(kr.KeyIDs()) != "[a b c]" {
		t.Fatalf("KeyIDs = %v", kr.KeyIDs())
	}
}

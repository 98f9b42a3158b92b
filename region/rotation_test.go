package region

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"testing"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
)

func keyringOf(t *testing.T, active string, keys map[string]byte) *Keyring {
	t.Helper()
	js := fmt.Sprintf(`{"active": %q, "keys": [`, active)
	first := true
	for id, fill := range keys {
		if !first {
			js += ","
		}
		first = false
		js += fmt.Sprintf(`{"id": %q, "key": %q}`, id, base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{fill}, 32)))
	}
	kr, err := ParseKeyring([]byte(js + "]}"))
	if err != nil {
		t.Fatal(err)
	}
	return kr
}

func TestKeyCheckDetectsAnotherKeyUnderTheSameID(t *testing.T) {
	a := keyringOf(t, "k1", map[string]byte{"k1": 1})
	b := keyringOf(t, "k1", map[string]byte{"k1": 2})
	check, err := a.KeyCheck("k1")
	if err != nil {
		t.Fatal(err)
	}
	if err := a.VerifyKeyCheck("k1", check); err != nil {
		t.Fatalf("own check: %v", err)
	}
	if err := b.VerifyKeyCheck("k1", check); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("other key under k1: %v, want ErrWrongKey", err)
	}
	if err := keyringOf(t, "k9", map[string]byte{"k9": 1}).VerifyKeyCheck("k1", check); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("missing k1: %v, want ErrUnknownKey", err)
	}
}

func TestRewrapKeepsPayloadOpenable(t *testing.T) {
	old := keyringOf(t, "k1", map[string]byte{"k1": 1})
	sealed, err := old.Seal("s", "v", []*pb.PayloadEntry{{Key: "p", Value: &pb.PayloadEntry_StringValue{StringValue: "hunter2"}}})
	if err != nil {
		t.Fatal(err)
	}
	both := keyringOf(t, "k2", map[string]byte{"k1": 1, "k2": 2})
	to, wrapped, err := both.Rewrap("s", "v", "k1", sealed.GetWrappedDek())
	if err != nil || to != "k2" {
		t.Fatalf("rewrap: %v %v", to, err)
	}
	onlyNew := keyringOf(t, "k2", map[string]byte{"k2": 2})
	got, err := onlyNew.Open("s", "v", "k2", wrapped, sealed.GetEntries())
	if err != nil || got[0].GetStringValue() != "hunter2" {
		t.Fatalf("open after rewrap with only the new key: %v %v", got, err)
	}
	// The re-wrapped key is bound to its version like the original.
	if _, err := onlyNew.Open("s", "other", "k2", wrapped, sealed.GetEntries()); !errors.Is(err, ErrTampered) {
		t.Fatalf("re-wrapped key used for another version: %v", err)
	}
}

func TestRequestMACIsKeyedAndStable(t *testing.T) {
	a := keyringOf(t, "k1", map[string]byte{"k1": 1, "k2": 2})
	m1, err := a.RequestMAC("k1", []byte("req"))
	if err != nil {
		t.Fatal(err)
	}
	m1again, _ := a.RequestMAC("k1", []byte("req"))
	m2, _ := a.RequestMAC("k2", []byte("req"))
	other, _ := a.RequestMAC("k1", []byte("req2"))
	if !bytes.Equal(m1, m1again) || bytes.Equal(m1, m2) || bytes.Equal(m1, other) {
		t.Fatal("MAC must be deterministic per key and differ across keys and requests")
	}
	if _, err := a.RequestMAC("nope", []byte("req")); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("unknown key: %v", err)
	}
}

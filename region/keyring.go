// Package region holds what is specific to one region: its identity and its
// keyring, the key-encryption keys (KEKs) that wrap every version's data key.
//
// Sealing happens on the leader before a version enters the Raft log, so the
// log, snapshots and Pebble only ever hold ciphertext; opening happens only
// when a payload is read.
package region

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"sort"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/fsm/fsmpb"
)

// Errors of the keyring. ErrUnknownKey: the data was wrapped by a KEK this
// node's keyring does not hold; ErrWrongKey: the keyring holds another key
// under that id; ErrTampered: authentication of stored ciphertext failed.
var (
	ErrUnknownKey = errors.New("key-encryption key not in keyring")
	ErrWrongKey   = errors.New("keyring key does not match the data")
	ErrTampered   = errors.New("ciphertext failed authentication")
)

const keySize = 32

var keyIDPattern = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)

// Keyring is a set of 256-bit KEKs by id, one of them active (used to wrap
// new data keys). It is immutable once loaded.
type Keyring struct {
	active string
	keys   map[string]cipher.AEAD
	macs   map[string][]byte // per key: HMAC key derived for request hashes
}

// keyringFile is the on-disk format of --master-key-file:
//
//	{"active": "k1", "keys": [{"id": "k1", "key": "<base64 of 32 bytes>"}]}
type keyringFile struct {
	Active string `json:"active"`
	Keys   []struct {
		ID  string `json:"id"`
		Key string `json:"key"`
	} `json:"keys"`
}

// LoadKeyring reads a keyring file.
func LoadKeyring(path string) (*Keyring, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("keyring: %w", err)
	}
	kr, err := ParseKeyring(raw)
	if err != nil {
		return nil, fmt.Errorf("keyring %s: %w", path, err)
	}
	return kr, nil
}

// ParseKeyring parses the JSON keyring format.
func ParseKeyring(raw []byte) (*Keyring, error) {
	var f keyringFile
	if err := json.Unmarshal(raw, &f); err != nil {
		return nil, fmt.Errorf("not valid JSON: %w", err)
	}
	if len(f.Keys) == 0 {
		return nil, errors.New("no keys")
	}
	kr := &Keyring{active: f.Active, keys: map[string]cipher.AEAD{}, macs: map[string][]byte{}}
	for i, k := range f.Keys {
		if !keyIDPattern.MatchString(k.ID) {
			return nil, fmt.Errorf("keys[%d].id %q must be 1-64 chars of [A-Za-z0-9_.-]", i, k.ID)
		}
		if _, dup := kr.keys[k.ID]; dup {
			return nil, fmt.Errorf("keys[%d].id %q appears twice", i, k.ID)
		}
		key, err := base64.StdEncoding.DecodeString(k.Key)
		if err != nil || len(key) != keySize {
			return nil, fmt.Errorf("keys[%d].key (id %q) must be base64 of exactly %d bytes", i, k.ID, keySize)
		}
		aead, err := newAEAD(key)
		if err != nil {
			return nil, err
		}
		kr.keys[k.ID] = aead
		mk, err := hkdf.Key(sha256.New, key, nil, "mysterybox/request-mac/v1", keySize)
		if err != nil {
			return nil, err
		}
		kr.macs[k.ID] = mk
	}
	if _, ok := kr.keys[f.Active]; !ok {
		return nil, fmt.Errorf("active key %q is not among the keys", f.Active)
	}
	return kr, nil
}

// GenerateKeyringFile returns a new keyring file with one random key, id.
func GenerateKeyringFile(id string) ([]byte, error) {
	key := make([]byte, keySize)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	f := map[string]any{
		"active": id,
		"keys":   []map[string]string{{"id": id, "key": base64.StdEncoding.EncodeToString(key)}},
	}
	out, err := json.MarshalIndent(f, "", "  ")
	return append(out, '\n'), err
}

// ActiveKeyID is the id of the KEK that wraps new data keys.
func (k *Keyring) ActiveKeyID() string { return k.active }

// KeyIDs lists the ids of every key in the keyring, sorted.
func (k *Keyring) KeyIDs() []string {
	ids := make([]string, 0, len(k.keys))
	for id := range k.keys {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// Seal encrypts a payload for a version: a fresh data key, each entry
// sealed under it with the (secret, version, entry key) as additional data,
// the data key wrapped by the active KEK.
func (k *Keyring) Seal(secretID, versionID string, entries []*pb.PayloadEntry) (*fsmpb.SealedPayload, error) {
	dek := make([]byte, keySize)
	if _, err := rand.Read(dek); err != nil {
		return nil, fmt.Errorf("keyring: random data key: %w", err)
	}
	defer clear(dek)
	dekAEAD, err := newAEAD(dek)
	if err != nil {
		return nil, err
	}
	out := &fsmpb.SealedPayload{KekId: k.active}
	for _, e := range entries {
		var plain []byte
		binary := false
		switch v := e.GetValue().(type) {
		case *pb.PayloadEntry_StringValue:
			plain = []byte(v.StringValue)
		case *pb.PayloadEntry_BinaryValue:
			plain, binary = v.BinaryValue, true
		}
		nonce, ct, err := seal(dekAEAD, plain, entryAD(secretID, versionID, e.GetKey(), binary))
		if err != nil {
			return nil, err
		}
		out.Entries = append(out.Entries, &fsmpb.SealedEntry{Key: e.GetKey(), Binary: binary, Nonce: nonce, Ciphertext: ct})
	}
	nonce, wrapped, err := seal(k.keys[k.active], dek, dekAD(secretID, versionID, k.active))
	if err != nil {
		return nil, err
	}
	out.WrappedDek = append(nonce, wrapped...)
	if out.KekCheck, err = k.KeyCheck(k.active); err != nil {
		return nil, err
	}
	return out, nil
}

// Open decrypts sealed entries of a version whose data key was wrapped by
// kekID.
func (k *Keyring) Open(secretID, versionID, kekID string, wrappedDEK []byte, sealed []*fsmpb.SealedEntry) ([]*pb.PayloadEntry, error) {
	kek, ok := k.keys[kekID]
	if !ok {
		return nil, fmt.Errorf("%w: version %s needs key id %q (keyring has %v)", ErrUnknownKey, versionID, kekID, k.KeyIDs())
	}
	ns := kek.NonceSize()
	if len(wrappedDEK) < ns {
		return nil, fmt.Errorf("%w: wrapped data key of version %s is truncated", ErrTampered, versionID)
	}
	dek, err := kek.Open(nil, wrappedDEK[:ns], wrappedDEK[ns:], dekAD(secretID, versionID, kekID))
	if err != nil {
		return nil, fmt.Errorf("%w: data key of version %s", ErrTampered, versionID)
	}
	defer clear(dek)
	dekAEAD, err := newAEAD(dek)
	if err != nil {
		return nil, err
	}
	out := make([]*pb.PayloadEntry, 0, len(sealed))
	for _, s := range sealed {
		if len(s.GetNonce()) != dekAEAD.NonceSize() {
			// GCM panics on a nonce of the wrong size: stored data is not
			// allowed to crash the node.
			return nil, fmt.Errorf("%w: entry %q of version %s has a malformed nonce", ErrTampered, s.GetKey(), versionID)
		}
		plain, err := dekAEAD.Open(nil, s.GetNonce(), s.GetCiphertext(), entryAD(secretID, versionID, s.GetKey(), s.GetBinary()))
		if err != nil {
			return nil, fmt.Errorf("%w: entry %q of version %s", ErrTampered, s.GetKey(), versionID)
		}
		e := &pb.PayloadEntry{Key: s.GetKey()}
		if s.GetBinary() {
			e.Value = &pb.PayloadEntry_BinaryValue{BinaryValue: plain}
		} else {
			e.Value = &pb.PayloadEntry_StringValue{StringValue: string(plain)}
		}
		out = append(out, e)
	}
	return out, nil
}

func seal(aead cipher.AEAD, plain, ad []byte) (nonce, ct []byte, err error) {
	nonce = make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, nil, fmt.Errorf("keyring: random nonce: %w", err)
	}
	return nonce, aead.Seal(nil, nonce, plain, ad), nil
}

// Additional data binds ciphertext to where it belongs, so an entry or a
// data key copied to another version, secret or entry fails to open.
func entryAD(secretID, versionID, key string, binary bool) []byte {
	kind := "s"
	if binary {
		kind = "b"
	}
	return []byte("mysterybox/entry/v1\x00" + secretID + "\x00" + versionID + "\x00" + key + "\x00" + kind)
}

func dekAD(secretID, versionID, kekID string) []byte {
	return []byte("mysterybox/dek/v1\x00" + secretID + "\x00" + versionID + "\x00" + kekID)
}

// checkPlaintext is what a key check value seals.
var checkPlaintext = []byte("mysterybox key check v1")

// KeyCheck seals a known value under KEK id, so a keyring can later prove it
// holds the same key under that id (VerifyKeyCheck).
func (k *Keyring) KeyCheck(id string) ([]byte, error) {
	kek, ok := k.keys[id]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownKey, id)
	}
	nonce, ct, err := seal(kek, checkPlaintext, []byte("mysterybox/check/v1\x00"+id))
	if err != nil {
		return nil, err
	}
	return append(nonce, ct...), nil
}

// VerifyKeyCheck tells whether this keyring holds the key that made check
// under id.
func (k *Keyring) VerifyKeyCheck(id string, check []byte) error {
	kek, ok := k.keys[id]
	if !ok {
		return fmt.Errorf("%w: data is wrapped by key id %q, which this keyring (ids %v) does not hold", ErrUnknownKey, id, k.KeyIDs())
	}
	ns := kek.NonceSize()
	if len(check) < ns {
		return fmt.Errorf("%w: check value of key %q is truncated", ErrTampered, id)
	}
	if _, err := kek.Open(nil, check[:ns], check[ns:], []byte("mysterybox/check/v1\x00"+id)); err != nil {
		return fmt.Errorf("%w: key %q of this keyring is not the key that wrapped the data (same id, different key)", ErrWrongKey, id)
	}
	return nil
}

// Rewrap unwraps a version's data key with fromID and wraps it again with
// the active key; the payload ciphertext does not change.
func (k *Keyring) Rewrap(secretID, versionID, fromID string, wrapped []byte) (toID string, rewrapped []byte, err error) {
	kek, ok := k.keys[fromID]
	if !ok {
		return "", nil, fmt.Errorf("%w: version %s needs key id %q", ErrUnknownKey, versionID, fromID)
	}
	ns := kek.NonceSize()
	if len(wrapped) < ns {
		return "", nil, fmt.Errorf("%w: wrapped data key of version %s is truncated", ErrTampered, versionID)
	}
	dek, err := kek.Open(nil, wrapped[:ns], wrapped[ns:], dekAD(secretID, versionID, fromID))
	if err != nil {
		return "", nil, fmt.Errorf("%w: data key of version %s", ErrTampered, versionID)
	}
	defer clear(dek)
	nonce, ct, err := seal(k.keys[k.active], dek, dekAD(secretID, versionID, k.active))
	if err != nil {
		return "", nil, err
	}
	return k.active, append(nonce, ct...), nil
}

// RequestMAC returns HMAC-SHA256 of data under a key derived from KEK id:
// a fingerprint of a request that reveals nothing about its payload to
// whoever reads the Raft log.
func (k *Keyring) RequestMAC(id string, data []byte) ([]byte, error) {
	mk, ok := k.macs[id]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownKey, id)
	}
	m := hmac.New(sha256.New, mk)
	m.Write(data)
	return m.Sum(nil), nil
}

// Has reports whether the keyring holds key id.
func (k *Keyring) Has(id string) bool {
	_, ok := k.keys[id]
	return ok
}

// SealValue seals a small secret value (such as a token's secret, kept
// only so that a retried call can return it) under the active KEK, bound
// to ad.
func (k *Keyring) SealValue(ad string, plain []byte) (kekID string, sealed []byte, err error) {
	nonce, ct, err := seal(k.keys[k.active], plain, []byte("mysterybox/value/v1\x00"+ad))
	if err != nil {
		return "", nil, err
	}
	return k.active, append(nonce, ct...), nil
}

// OpenValue opens what SealValue sealed.
func (k *Keyring) OpenValue(kekID, ad string, sealed []byte) ([]byte, error) {
	kek, ok := k.keys[kekID]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownKey, kekID)
	}
	ns := kek.NonceSize()
	if len(sealed) < ns {
		return nil, fmt.Errorf("%w: sealed value is truncated", ErrTampered)
	}
	plain, err := kek.Open(nil, sealed[:ns], sealed[ns:], []byte("mysterybox/value/v1\x00"+ad))
	if err != nil {
		return nil, fmt.Errorf("%w: sealed value", ErrTampered)
	}
	return plain, nil
}

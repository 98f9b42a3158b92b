package server

import (
	"crypto/rand"
	"encoding/base32"
	"encoding/base64"
	"encoding/binary"
	"strings"
	"time"
)

// ID prefixes of the resource types.
const (
	prefixProject        = "project-"
	prefixSecret         = "mbsec-"
	prefixVersion        = "mbsecver-"
	prefixAccountService = "serviceaccount-"
	prefixAccountUser    = "useraccount-"
	prefixToken          = "token-"
	prefixBinding        = "accessbinding-"
)

var idEncoding = base32.HexEncoding.WithPadding(base32.NoPadding)

// newID returns prefix + 21 chars: 48 bits of milliseconds then 56 random
// bits, in an order-preserving base32, so ids sort by creation time (as
// lists show them) and are never reused.
func newID(prefix string) string {
	var b [13]byte
	ms := uint64(time.Now().UnixMilli())
	binary.BigEndian.PutUint64(b[:8], ms<<16)
	if _, err := rand.Read(b[6:]); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	return prefix + strings.ToLower(idEncoding.EncodeToString(b[:]))
}

// NewToken returns a new bearer token of region: mbt1.<region>.<token-id>.<secret>
// with 256 bits of randomness in the secret.
func NewToken(region string) string {
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	return tokenVersion + "." + region + "." + newID(prefixToken) + "." + base64.RawURLEncoding.EncodeToString(secret)
}

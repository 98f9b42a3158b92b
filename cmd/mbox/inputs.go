package main

import (
	"crypto/rand"
	"encoding/base64"
	"io"
	"math/big"
	"os"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"

	mbv1 "github.com/mysterybox/mysterybox/api/mysteryboxv1"
)

const (
	defaultGenerateLength = 32
	maxGenerateLength     = 65536
)

// passwordAlphabet is letters, digits and symbols that need no quoting in
// POSIX shells, URLs' userinfo aside: a generated password can be pasted.
const passwordAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.@%+="

// payloadFlags are the flags that build a version's payload.
type payloadFlags struct {
	values    []string // KEY=VALUE
	files     []string // KEY=PATH, PATH "-" is stdin
	generates []string // KEY or KEY=LENGTH
}

func (p *payloadFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringArrayVar(&p.values, "payload", nil, "payload entry KEY=VALUE (repeatable)")
	f.StringArrayVar(&p.files, "payload-file", nil, "payload entry KEY=PATH read from a file, '-' for stdin; non-UTF-8 content is stored as binary (repeatable)")
	f.StringArrayVar(&p.generates, "generate", nil, "payload entry KEY[=LENGTH] with a random password, default length 32; never printed (repeatable)")
}

func (p *payloadFlags) empty() bool {
	return len(p.values) == 0 && len(p.files) == 0 && len(p.generates) == 0
}

// build turns the flags into a payload. Only the syntax is checked here; keys
// and sizes are validated by the server (it names the offending field).
// Error messages never include a value: it may be a secret.
func (p *payloadFlags) build(stdin io.Reader) (*mbv1.Payload, error) {
	var entries []*mbv1.PayloadEntry
	for i, s := range p.values {
		k, v, ok := strings.Cut(s, "=")
		if !ok {
			return nil, usageErr("--payload #%d: want KEY=VALUE", i+1)
		}
		entries = append(entries, &mbv1.PayloadEntry{Key: k, Value: &mbv1.PayloadEntry_StringValue{StringValue: v}})
	}
	stdinUsed := false
	for _, s := range p.files {
		k, path, ok := strings.Cut(s, "=")
		if !ok || path == "" {
			return nil, usageErr("--payload-file %q: want KEY=PATH", s)
		}
		var b []byte
		var err error
		if path == "-" {
			if stdinUsed {
				return nil, usageErr("--payload-file: stdin ('-') can be read only once")
			}
			stdinUsed = true
			b, err = io.ReadAll(stdin)
		} else {
			b, err = os.ReadFile(path)
		}
		if err != nil {
			return nil, usageErr("--payload-file %s: %v", k, err)
		}
		e := &mbv1.PayloadEntry{Key: k}
		if utf8.Valid(b) {
			e.Value = &mbv1.PayloadEntry_StringValue{StringValue: string(b)}
		} else {
			e.Value = &mbv1.PayloadEntry_BinaryValue{BinaryValue: b}
		}
		entries = append(entries, e)
	}
	for _, s := range p.generates {
		k, ls, hasLen := strings.Cut(s, "=")
		n := defaultGenerateLength
		if hasLen {
			v, err := strconv.Atoi(ls)
			if err != nil || v < 1 || v > maxGenerateLength {
				return nil, usageErr("--generate %q: LENGTH must be an integer in 1..%d", s, maxGenerateLength)
			}
			n = v
		}
		pw, err := generatePassword(n)
		if err != nil {
			return nil, localErr(codes.Internal, "generate: %v", err)
		}
		entries = append(entries, &mbv1.PayloadEntry{Key: k, Value: &mbv1.PayloadEntry_StringValue{StringValue: pw}})
	}
	return &mbv1.Payload{Entries: entries}, nil
}

// generatePassword returns n characters drawn uniformly from passwordAlphabet
// with crypto/rand (rand.Int avoids the modulo bias of byte % len).
func generatePassword(n int) (string, error) {
	max := big.NewInt(int64(len(passwordAlphabet)))
	b := make([]byte, n)
	for i := range b {
		r, err := rand.Int(rand.Reader, max)
		if err != nil {
			return "", err
		}
		b[i] = passwordAlphabet[r.Int64()]
	}
	return string(b), nil
}

// parseLabels turns k=v flags into a map; a repeated key is a usage error.
func parseLabels(flags []string) (map[string]string, error) {
	if len(flags) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(flags))
	for _, s := range flags {
		k, v, ok := strings.Cut(s, "=")
		if !ok || k == "" {
			return nil, usageErr("--label %q: want KEY=VALUE", s)
		}
		if _, dup := m[k]; dup {
			return nil, usageErr("--label %q: key given twice", k)
		}
		m[k] = v
	}
	return m, nil
}

func base64Std(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

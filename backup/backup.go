// Package backup defines MysteryBox's backup file: a header that says what
// the backup holds and what it needs, then the store snapshot stream.
//
//	"MBXBACKUP1\n" | header length (4 bytes, big endian) | header (JSON) | body
//
// The body is the store's snapshot stream (its own magic and SHA-256
// trailer); the header repeats the body's SHA-256 and size so that a file
// can be checked before anything is restored.
package backup

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
)

// Format is the version of the header.
const Format = 1

var magic = []byte("MBXBACKUP1\n")

const maxHeader = 1 << 20

// Header describes a backup.
type Header struct {
	Format    int      `json:"format"`
	Region    string   `json:"region"`
	ClusterID string   `json:"cluster_id,omitempty"`
	RaftIndex uint64   `json:"raft_index"`
	RaftTerm  uint64   `json:"raft_term"`
	KeyIDs    []string `json:"key_ids"`
	BodySHA   string   `json:"body_sha256"`
	BodyBytes int64    `json:"body_bytes"`
	CreatedAt string   `json:"created_at"`
}

// SeededClusterID is the cluster id of a new region seeded from this
// backup (`mysteryboxd restore`): not the backup's own, so that discovery
// tells the new cluster from the old one's nodes should any come back
// under the same region name, and the same for every node seeded from
// this file, so that their stores agree.
func (h Header) SeededClusterID() string {
	sum := sha256.Sum256([]byte("mysterybox seeded region\x00" + h.Region + "\x00" + h.ClusterID + "\x00" + h.BodySHA))
	return "cluster-s" + hex.EncodeToString(sum[:10])
}

// ErrCorrupt marks a file that is not a complete, intact backup.
var ErrCorrupt = errors.New("backup is corrupt or truncated")

// WriteHeader writes the magic and the header.
func WriteHeader(w io.Writer, h Header) error {
	h.Format = Format
	raw, err := json.Marshal(h)
	if err != nil {
		return err
	}
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(raw)))
	for _, b := range [][]byte{magic, n[:], raw} {
		if _, err := w.Write(b); err != nil {
			return err
		}
	}
	return nil
}

// ReadHeader reads the magic and header, leaving r at the body.
func ReadHeader(r io.Reader) (Header, error) {
	var h Header
	m := make([]byte, len(magic))
	if _, err := io.ReadFull(r, m); err != nil || !bytes.Equal(m, magic) {
		return h, fmt.Errorf("%w: not a MysteryBox backup (bad magic)", ErrCorrupt)
	}
	var n [4]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return h, fmt.Errorf("%w: header length: %v", ErrCorrupt, err)
	}
	size := binary.BigEndian.Uint32(n[:])
	if size == 0 || size > maxHeader {
		return h, fmt.Errorf("%w: header of %d bytes", ErrCorrupt, size)
	}
	raw := make([]byte, size)
	if _, err := io.ReadFull(r, raw); err != nil {
		return h, fmt.Errorf("%w: header: %v", ErrCorrupt, err)
	}
	if err := json.Unmarshal(raw, &h); err != nil {
		return h, fmt.Errorf("%w: header: %v", ErrCorrupt, err)
	}
	if h.Format != Format {
		return h, fmt.Errorf("backup format %d; this build reads format %d", h.Format, Format)
	}
	if len(h.BodySHA) != 64 || h.BodyBytes <= 0 {
		return h, fmt.Errorf("%w: header lacks the body's checksum or size", ErrCorrupt)
	}
	return h, nil
}

// BodyReader reads exactly the header's body bytes from r and, at EOF,
// fails unless they hash to the header's checksum and nothing follows.
func BodyReader(r io.Reader, h Header) io.Reader {
	return &bodyReader{r: r, left: h.BodyBytes, want: h.BodySHA, h: sha256.New()}
}

type bodyReader struct {
	r    io.Reader
	left int64
	want string
	h    hash.Hash
	done bool
}

func (b *bodyReader) Read(p []byte) (int, error) {
	if b.left == 0 {
		if !b.done {
			b.done = true
			if got := hex.EncodeToString(b.h.Sum(nil)); got != b.want {
				return 0, fmt.Errorf("%w: body checksum %s, header says %s", ErrCorrupt, got, b.want)
			}
			var extra [1]byte
			if n, _ := b.r.Read(extra[:]); n > 0 {
				return 0, fmt.Errorf("%w: data after the body", ErrCorrupt)
			}
		}
		return 0, io.EOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.r.Read(p)
	b.h.Write(p[:n])
	b.left -= int64(n)
	if err == io.EOF && b.left > 0 {
		return n, fmt.Errorf("%w: body ends %d bytes early", ErrCorrupt, b.left)
	}
	if err == io.EOF {
		err = nil
	}
	return n, err
}

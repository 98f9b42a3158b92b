package backup

import (
	"strings"
	"testing"
)

// Every node seeded from one backup gets one cluster id (their stores
// must agree), which is not the backed-up cluster's (discovery must tell
// the new region from the old one's nodes).
func TestSeededClusterID(t *testing.T) {
	h := Header{Region: "eu1", ClusterID: "cluster-06h4en2dgc7c7uku32b1a", BodySHA: strings.Repeat("ab", 32)}
	id := h.SeededClusterID()
	if id != h.SeededClusterID() {
		t.Fatal("two seedings from one backup got different cluster ids")
	}
	if id == h.ClusterID || !strings.HasPrefix(id, "cluster-") {
		t.Fatalf("seeded cluster id %q (backup's %q)", id, h.ClusterID)
	}
	other := h
	other.BodySHA = strings.Repeat("cd", 32)
	if other.SeededClusterID() == id {
		t.Fatal("seedings from two backups got the same cluster id")
	}
}

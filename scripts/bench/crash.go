package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mysterybox/mysterybox/api/client"
	mbv1 "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/loadgen"
)

// runCrash checks durability under the settings being benchmarked: 64
// clients write for a while, every node is killed with SIGKILL at once
// while writes are in flight, all are restarted, and every write that was
// acknowledged must be readable (linearizable SecretVersionService.Get).
func runCrash(ctx context.Context, o options, repo, dir string, writeFor time.Duration) error {
	c, t, stop, err := preparedRegion(ctx, o, repo, dir, o.keys)
	if err != nil {
		return err
	}
	defer stop()
	// Writers through api/client (idempotency keys, retries), recording the
	// id of every acknowledged version.
	wc, err := client.New(ctx, client.Config{Endpoints: c.endpoints, Token: c.token, Timeout: 5 * time.Second})
	if err != nil {
		return err
	}
	secrets := t.SecretIDs()
	var mu sync.Mutex
	var acked []string
	wctx, stopWriters := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for w := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; wctx.Err() == nil; i += 64 {
				v, err := wc.Versions().Create(wctx, &mbv1.CreateSecretVersionRequest{Version: &mbv1.SecretVersion{
					Metadata: &mbv1.Metadata{ParentId: secrets[i%len(secrets)]},
					Spec: &mbv1.SecretVersionSpec{Payload: &mbv1.Payload{Entries: []*mbv1.PayloadEntry{
						{Key: loadgen.PayloadKey, Value: &mbv1.PayloadEntry_StringValue{StringValue: loadgen.Value(o.valueSize)}},
					}}},
				}})
				if err == nil {
					mu.Lock()
					acked = append(acked, v.GetMetadata().GetId())
					mu.Unlock()
				}
			}
		}()
	}
	time.Sleep(writeFor)
	for _, pid := range c.pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	logf("killed every node with SIGKILL")
	stopWriters()
	wg.Wait()
	wc.Close()
	// Responses already on their way count too: the server sent them.
	nAcked := len(acked)
	for i, pid := range c.pids {
		waitGone(pid, 10*time.Second)
		// cluster.sh counts a pid that answers kill -0 as running, and an
		// unreaped zombie does (here orphans are reaped late): forget it.
		_ = os.Remove(filepath.Join(c.dir, c.names[i], "pid"))
	}
	for _, name := range c.names {
		out, err := c.script("start", name, "--dir", c.dir)
		if err != nil {
			return err
		}
		if len(out) > 0 {
			logf("cluster.sh start %s: %s", name, out)
		}
	}
	if err := c.waitReady(ctx, len(c.names)); err != nil {
		return err
	}
	rc, err := client.New(ctx, client.Config{Endpoints: c.endpoints, Token: c.token, Timeout: 30 * time.Second})
	if err != nil {
		return err
	}
	defer rc.Close()
	var missing []string
	for _, id := range acked {
		if _, err := rc.Versions().Get(ctx, &mbv1.GetSecretVersionRequest{Id: id}); err != nil {
			missing = append(missing, fmt.Sprintf("%s (%v)", id, err))
		}
	}
	fmt.Printf("\ncrash test: %d writes acknowledged before SIGKILL of all 3 nodes; after restart %d missing\n", nAcked, len(missing))
	for i, m := range missing {
		if i == 10 {
			fmt.Printf("  ... and %d more\n", len(missing)-10)
			break
		}
		fmt.Println("  missing:", m)
	}
	if len(missing) > 0 {
		return fmt.Errorf("%d acknowledged writes lost", len(missing))
	}
	return nil
}

// waitGone waits until process pid has exited (or is a zombie).
func waitGone(pid int, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return
		}
		if i := strings.LastIndexByte(string(b), ')'); i >= 0 && i+2 < len(b) && b[i+2] == 'Z' {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

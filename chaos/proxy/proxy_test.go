package proxy

import (
	"bufio"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// echoServer answers every line with the same line.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

func startProxy(t *testing.T, rules *Rules, from int) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := New(ln, 2, echoServer(t), func(net.Conn) int { return from }, rules)
	t.Cleanup(func() { p.Close() })
	return p
}

// roundTrip sends a line and waits for its echo, up to d.
func roundTrip(c net.Conn, r *bufio.Reader, d time.Duration) (time.Duration, error) {
	start := time.Now()
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return 0, err
	}
	c.SetReadDeadline(time.Now().Add(d))
	_, err := r.ReadString('\n')
	return time.Since(start), err
}

func TestBlockHoldsBytesUntilHeal(t *testing.T) {
	rules := NewRules(1)
	p := startProxy(t, rules, 1)
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	if _, err := roundTrip(c, r, 5*time.Second); err != nil {
		t.Fatalf("healthy link: %v", err)
	}
	// One-way: 2 -> 1 blocked; the request gets through, the echo does not.
	rules.Set([]Link{{2, 1}}, nil)
	if _, err := roundTrip(c, r, 300*time.Millisecond); err == nil {
		t.Fatal("echo crossed a blocked link")
	}
	rules.Heal()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if line, err := r.ReadString('\n'); err != nil || line != "ping\n" {
		t.Fatalf("after heal: %q, %v; want the held echo", line, err)
	}
	// A new connection across a blocked link is held, then served.
	rules.Set([]Link{{1, 2}}, nil)
	c2, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	r2 := bufio.NewReader(c2)
	if _, err := roundTrip(c2, r2, 300*time.Millisecond); err == nil {
		t.Fatal("new connection crossed a blocked link")
	}
	rules.Heal()
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if line, err := r2.ReadString('\n'); err != nil || line != "ping\n" {
		t.Fatalf("held connection after heal: %q, %v", line, err)
	}
}

func TestDelayAndExternalLinks(t *testing.T) {
	rules := NewRules(1)
	rules.Set(nil, map[Link]Quality{{1, 2}: {Delay: 150 * time.Millisecond}, {2, 1}: {Delay: 150 * time.Millisecond}})
	p := startProxy(t, rules, 1)
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	d, err := roundTrip(c, r, 5*time.Second)
	if err != nil || d < 300*time.Millisecond {
		t.Fatalf("round trip %v, %v; want >= 300ms", d, err)
	}
	// External clients are never faulted.
	rules.Set([]Link{{1, 2}, {2, 1}}, nil)
	q := startProxy(t, rules, External)
	e, err := net.Dial("tcp", q.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if _, err := roundTrip(e, bufio.NewReader(e), 5*time.Second); err != nil {
		t.Fatalf("external client: %v", err)
	}
}

func TestDialerPID(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if pid, ok := DialerPID(s, []int{os.Getpid() + 1_000_000, os.Getpid()}); !ok || pid != os.Getpid() {
		t.Fatalf("DialerPID = %d, %v; want %d", pid, ok, os.Getpid())
	}
	if _, ok := DialerPID(s, []int{os.Getpid() + 1_000_000}); ok {
		t.Fatal("found an owner among processes that do not own the socket")
	}
}

package harness

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/mysterybox/mysterybox/chaos/proxy"
	"github.com/mysterybox/mysterybox/internal/testnet"
)

// Network is where a cluster's nodes live and how node-to-node links are
// cut. Node-to-node Raft and gRPC traffic always goes through the
// fault-injecting proxies (delay, loss); partitions are done by the
// network when it can (KernelCuts) and by the proxies otherwise.
type Network interface {
	// Name is "loopback" or "netns".
	Name() string
	// Addrs returns the real listen addresses of slot's gRPC, Raft and
	// gossip ports; they stay the same across restarts.
	Addrs(slot int) (grpc, raft, gossip string, err error)
	// ProxyListen opens the listener of slot's proxy of the given port
	// ("grpc" or "raft"): what peers dial.
	ProxyListen(slot int, port string) (net.Listener, error)
	// Command returns the command that runs bin with args as slot.
	Command(slot int, bin string, args ...string) *exec.Cmd
	// Identify returns the slot of the node that dialled c, if any.
	Identify(c net.Conn, pids map[int]int) (int, bool)
	// KernelCuts reports whether Cut drops packets in the kernel; if not,
	// the proxies hold the bytes of cut links.
	KernelCuts() bool
	// Cut replaces the set of cut directed links.
	Cut(links []proxy.Link) error
	// Close releases what the network holds (not the namespaces of a
	// netns network, which scripts/chaos/netns.sh owns).
	Close() error
}

// Loopback runs every node on 127.0.0.1 with its own ports. It needs no
// privileges: partitions are done by the proxies, which tell nodes apart by
// the process owning the dialling socket (proxy.DialerPID). Gossip, when
// used, is not proxied and so never partitioned.
type Loopback struct {
	mu    sync.Mutex
	addrs map[int][3]string
}

// NewLoopback returns a loopback network.
func NewLoopback() *Loopback { return &Loopback{addrs: map[int][3]string{}} }

// Name implements Network.
func (*Loopback) Name() string { return "loopback" }

// Addrs implements Network: free ports, picked once per slot.
func (l *Loopback) Addrs(slot int) (string, string, string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if a, ok := l.addrs[slot]; ok {
		return a[0], a[1], a[2], nil
	}
	var a [3]string
	for i := range a {
		p, err := freePort(i == 2)
		if err != nil {
			return "", "", "", err
		}
		a[i] = p
	}
	l.addrs[slot] = a
	return a[0], a[1], a[2], nil
}

// freePort returns a 127.0.0.1 address whose TCP port (and UDP port, for
// gossip) is free now, below the ephemeral range (testnet.FreeAddr).
func freePort(udp bool) (string, error) { return testnet.FreeAddr(udp) }

// ProxyListen implements Network.
func (*Loopback) ProxyListen(int, string) (net.Listener, error) {
	return net.Listen("tcp", "127.0.0.1:0")
}

// Command implements Network.
func (*Loopback) Command(_ int, bin string, args ...string) *exec.Cmd {
	return exec.Command(bin, args...)
}

// Identify implements Network: the dialler is whichever node process owns
// the other end of c.
func (*Loopback) Identify(c net.Conn, pids map[int]int) (int, bool) {
	list := make([]int, 0, len(pids))
	for pid := range pids {
		list = append(list, pid)
	}
	pid, ok := proxy.DialerPID(c, list)
	if !ok {
		return 0, false
	}
	return pids[pid], true
}

// KernelCuts implements Network.
func (*Loopback) KernelCuts() bool { return false }

// Cut implements Network: nothing to do, the proxies hold cut links.
func (*Loopback) Cut([]proxy.Link) error { return nil }

// Close implements Network.
func (*Loopback) Close() error { return nil }

// Netns runs node i in the network namespace PREFIX-n<i>, at 10.77.0.<10+i>
// on a bridge in PREFIX-hub, where the driver itself must run (so that it
// reaches every node and nothing touches the host's network). The
// namespaces are made by `scripts/chaos/netns.sh up PREFIX N`; a cut link
// i -> j drops i's packets to j in i's egress (tc u32 + mirred to a down
// device: silently, like a lost packet), so partitions cover Raft, gRPC and
// gossip alike. Each proxy listens inside its node's namespace, on the
// node's address, so that cuts apply to proxied traffic too.
type Netns struct {
	Prefix  string
	Script  string // path of scripts/chaos/netns.sh
	Subnet  string // "10.77.0", fixed by netns.sh
	mu      sync.Mutex
	lastCut string
}

// NewNetns checks that the namespaces exist and that the driver runs in
// the hub (it must own 10.77.0.1).
func NewNetns(prefix, script string, nodes int) (*Netns, error) {
	n := &Netns{Prefix: prefix, Script: script, Subnet: "10.77.0"}
	for i := 1; i <= nodes; i++ {
		if _, err := os.Stat(n.nsPath(i)); err != nil {
			return nil, fmt.Errorf("harness: namespace %s-n%d missing (run `%s up %s %d`): %w", prefix, i, script, prefix, nodes, err)
		}
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	inHub := false
	for _, a := range addrs {
		if strings.HasPrefix(a.String(), n.Subnet+".1/") {
			inHub = true
		}
	}
	if !inHub {
		return nil, fmt.Errorf("harness: the driver must run in namespace %s-hub (ip netns exec %s-hub ...; scripts/chaos/run.sh does)", prefix, prefix)
	}
	return n, nil
}

func (n *Netns) nsPath(slot int) string {
	return filepath.Join("/var/run/netns", fmt.Sprintf("%s-n%d", n.Prefix, slot))
}

func (n *Netns) ip(slot int) string { return fmt.Sprintf("%s.%d", n.Subnet, 10+slot) }

// Name implements Network.
func (*Netns) Name() string { return "netns" }

// Addrs implements Network.
func (n *Netns) Addrs(slot int) (string, string, string, error) {
	ip := n.ip(slot)
	return ip + ":7700", ip + ":7701", ip + ":7702", nil
}

// ProxyListen implements Network: inside the node's namespace.
func (n *Netns) ProxyListen(slot int, port string) (net.Listener, error) {
	p := "8700"
	if port == "raft" {
		p = "8701"
	}
	return listenInNetns(n.nsPath(slot), n.ip(slot)+":"+p)
}

// Command implements Network.
func (n *Netns) Command(slot int, bin string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", fmt.Sprintf("%s-n%d", n.Prefix, slot), bin}, args...)...)
}

// Identify implements Network: by source address.
func (n *Netns) Identify(c net.Conn, _ map[int]int) (int, bool) {
	a, ok := c.RemoteAddr().(*net.TCPAddr)
	if !ok {
		return 0, false
	}
	var s int
	if _, err := fmt.Sscanf(a.IP.String(), n.Subnet+".%d", &s); err != nil || s <= 10 {
		return 0, false
	}
	return s - 10, true
}

// KernelCuts implements Network.
func (*Netns) KernelCuts() bool { return true }

// Cut implements Network.
func (n *Netns) Cut(links []proxy.Link) error {
	var b []string
	for _, l := range links {
		b = append(b, fmt.Sprintf("%d>%d", l.From, l.To))
	}
	spec := strings.Join(b, " ")
	n.mu.Lock()
	defer n.mu.Unlock()
	if spec == n.lastCut {
		return nil
	}
	out, err := exec.Command(n.Script, "cut", n.Prefix, spec).CombinedOutput()
	if err != nil {
		return fmt.Errorf("harness: %s cut %s %q: %v: %s", n.Script, n.Prefix, spec, err, out)
	}
	n.lastCut = spec
	return nil
}

// Close implements Network: heals every cut.
func (n *Netns) Close() error { return n.Cut(nil) }

// listenInNetns opens a TCP listener inside the network namespace at
// nsPath. A socket belongs to the namespace it was created in, so the
// listener keeps working from any thread. The switch happens on a locked
// thread of a goroutine of its own; if switching back fails, the goroutine
// exits still locked and the runtime discards the thread.
func listenInNetns(nsPath, addr string) (net.Listener, error) {
	type result struct {
		ln  net.Listener
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open(fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, err}
			return
		}
		defer orig.Close()
		target, err := os.Open(nsPath)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, err}
			return
		}
		defer target.Close()
		if err := setns(target.Fd()); err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, fmt.Errorf("setns %s: %w", nsPath, err)}
			return
		}
		ln, lerr := net.Listen("tcp", addr)
		if err := setns(orig.Fd()); err != nil {
			if ln != nil {
				ln.Close()
			}
			ch <- result{nil, fmt.Errorf("setns back: %w", err)}
			return // still locked: the thread is discarded
		}
		runtime.UnlockOSThread()
		ch <- result{ln, lerr}
	}()
	r := <-ch
	return r.ln, r.err
}

func setns(fd uintptr) error { return unix.Setns(int(fd), unix.CLONE_NEWNET) }

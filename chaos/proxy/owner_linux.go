package proxy

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// DialerPID returns which of pids owns the other end of c, an accepted
// loopback TCP connection: the socket whose local address is c's remote
// address and whose remote address is c's local address. It reads
// /proc/net/tcp{,6} for the socket's inode and /proc/PID/fd of each
// candidate for a descriptor of that inode, so it needs no privileges for
// the caller's own child processes. It lets a proxy on loopback, where every
// node dials from 127.0.0.1, tell which node a connection comes from.
func DialerPID(c net.Conn, pids []int) (int, bool) {
	local, ok1 := c.RemoteAddr().(*net.TCPAddr)
	remote, ok2 := c.LocalAddr().(*net.TCPAddr)
	if !ok1 || !ok2 {
		return 0, false
	}
	inode, ok := socketInode(local, remote)
	if !ok {
		return 0, false
	}
	want := "socket:[" + inode + "]"
	for _, pid := range pids {
		fds := fmt.Sprintf("/proc/%d/fd", pid)
		ents, err := os.ReadDir(fds)
		if err != nil {
			continue
		}
		for _, e := range ents {
			if l, err := os.Readlink(filepath.Join(fds, e.Name())); err == nil && l == want {
				return pid, true
			}
		}
	}
	return 0, false
}

// socketInode finds the inode of the TCP socket local <-> remote.
func socketInode(local, remote *net.TCPAddr) (string, bool) {
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		if ino, ok := scanSockets(f, procAddrs(local), procAddrs(remote)); ok {
			return ino, true
		}
	}
	return "", false
}

// procAddrs renders an address the way /proc/net/tcp{,6} does, in both the
// IPv4 and the IPv4-mapped IPv6 form.
func procAddrs(a *net.TCPAddr) []string {
	port := fmt.Sprintf("%04X", a.Port)
	var out []string
	if ip4 := a.IP.To4(); ip4 != nil {
		out = append(out, fmt.Sprintf("%02X%02X%02X%02X:%s", ip4[3], ip4[2], ip4[1], ip4[0], port))
		out = append(out, fmt.Sprintf("0000000000000000FFFF0000%02X%02X%02X%02X:%s", ip4[3], ip4[2], ip4[1], ip4[0], port))
	}
	if ip16 := a.IP.To16(); ip16 != nil && a.IP.To4() == nil {
		var b strings.Builder
		for i := 0; i < 16; i += 4 {
			fmt.Fprintf(&b, "%02X%02X%02X%02X", ip16[i+3], ip16[i+2], ip16[i+1], ip16[i])
		}
		out = append(out, b.String()+":"+port)
	}
	return out
}

func scanSockets(path string, locals, remotes []string) (string, bool) {
	f, err := os.Open(path)
	if err != nil {
		return "", false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 || !contains(locals, fields[1]) || !contains(remotes, fields[2]) {
			continue
		}
		if _, err := strconv.ParseUint(fields[9], 10, 64); err == nil && fields[9] != "0" {
			return fields[9], true
		}
	}
	return "", false
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

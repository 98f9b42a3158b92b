// Package testnet picks loopback addresses for tests whose nodes must keep
// their ports across restarts.
package testnet

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
)

// lowest is the lowest port FreeAddr picks.
const lowest = 10000

// FreeAddr returns a 127.0.0.1 address whose TCP port (and UDP port, with
// udp, for gossip) is free now. The port lies below the kernel's ephemeral
// range: one from that range can be taken, while its node is stopped, as
// the source port of any outgoing connection on the machine, and the node
// then cannot start again on it ("address already in use").
func FreeAddr(udp bool) (string, error) {
	top := ephemeralLow()
	for range 200 {
		port := 0 // the kernel's choice, when there is no room below the range
		if top > lowest {
			port = lowest + rand.IntN(top-lowest)
		}
		addr, err := bind(port, udp)
		if err == nil {
			return addr, nil
		}
	}
	return "", errors.New("testnet: no free port")
}

func bind(port int, udp bool) (string, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return "", err
	}
	defer ln.Close()
	addr := ln.Addr().String()
	if udp {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return "", err
		}
		pc.Close()
	}
	return addr, nil
}

// ephemeralLow is the first port of the kernel's ephemeral range (Linux's
// default when it cannot be read).
func ephemeralLow() int {
	raw, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err == nil {
		var low, high int
		if _, err := fmt.Sscan(strings.TrimSpace(string(raw)), &low, &high); err == nil && low > 0 {
			return low
		}
	}
	return 32768
}

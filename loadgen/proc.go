package loadgen

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Sampler reports the cumulative CPU time of each server of a run.
type Sampler interface {
	// Sample returns the CPU seconds (user + system) used so far, one value
	// per server, in the order of Labels.
	Sample() ([]float64, error)
	// Labels names the servers.
	Labels() []string
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat times. It is 100 on
// every Linux architecture Go supports (sysconf(_SC_CLK_TCK) without cgo).
const clockTicks = 100

// ProcSampler samples processes on this machine from /proc/<pid>/stat.
type ProcSampler struct {
	PIDs  []int
	Names []string // optional; defaults to "pid <n>"
}

var _ Sampler = (*ProcSampler)(nil)

// Labels implements Sampler.
func (p *ProcSampler) Labels() []string {
	out := make([]string, len(p.PIDs))
	for i, pid := range p.PIDs {
		if i < len(p.Names) && p.Names[i] != "" {
			out[i] = p.Names[i]
		} else {
			out[i] = "pid " + strconv.Itoa(pid)
		}
	}
	return out
}

// Sample implements Sampler.
func (p *ProcSampler) Sample() ([]float64, error) {
	out := make([]float64, len(p.PIDs))
	for i, pid := range p.PIDs {
		s, err := ProcCPUSeconds(pid)
		if err != nil {
			return nil, err
		}
		out[i] = s
	}
	return out, nil
}

// ProcCPUSeconds returns the user + system CPU time of process pid (all
// its threads) in seconds, from /proc/<pid>/stat.
func ProcCPUSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseProcStat(string(b))
}

// parseProcStat extracts utime + stime (fields 14 and 15) from the text of
// /proc/<pid>/stat. The command name (field 2) is in parentheses and may
// contain spaces and parentheses, so fields are counted after the last ')'.
func parseProcStat(s string) (float64, error) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("proc stat: no command name in %q", s)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state), so field n is f[n-3].
	if len(f) < 13 {
		return 0, fmt.Errorf("proc stat: %d fields after the name, want >= 13", len(f))
	}
	utime, err1 := strconv.ParseUint(f[11], 10, 64)
	stime, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("proc stat: bad utime/stime %q %q", f[11], f[12])
	}
	return float64(utime+stime) / clockTicks, nil
}

package main

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mysterybox/mysterybox/api/client"
)

// spinner draws one status line on stderr ("\r| message") and redraws it
// until hidden, which erases it. It is used only when stderr is a terminal.
type spinner struct {
	w io.Writer

	mu      sync.Mutex
	msg     string
	running bool
	stop    chan struct{}
	done    chan struct{}
}

const spinnerFrames = `|/-\`

func newSpinner(w io.Writer) *spinner { return &spinner{w: w} }

// show sets the message and starts the spinner if it is not running.
func (s *spinner) show(msg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.msg = msg
	if s.running {
		return
	}
	s.running = true
	s.stop, s.done = make(chan struct{}), make(chan struct{})
	go s.loop(s.stop, s.done)
}

func (s *spinner) loop(stop, done chan struct{}) {
	defer close(done)
	t := time.NewTicker(120 * time.Millisecond)
	defer t.Stop()
	for i := 0; ; i++ {
		s.mu.Lock()
		fmt.Fprintf(s.w, "\r%c %s\x1b[K", spinnerFrames[i%len(spinnerFrames)], s.msg)
		s.mu.Unlock()
		select {
		case <-stop:
			return
		case <-t.C:
		}
	}
}

// hide stops the spinner and erases its line; it does nothing when the
// spinner is not running.
func (s *spinner) hide() {
	s.mu.Lock()
	if !s.running {
		s.mu.Unlock()
		return
	}
	s.running = false
	stop, done := s.stop, s.done
	s.mu.Unlock()
	close(stop)
	<-done
	fmt.Fprint(s.w, "\r\x1b[K")
}

// onRetry is the client's OnRetry hook: a spinner while a call waits for the
// region (no leader, node down), gone when the call ends.
func (a *app) onRetry(e client.RetryEvent) {
	if e.Done {
		a.spin.hide()
		return
	}
	a.spin.show(fmt.Sprintf("waiting for the region: %s (attempt %d)", retryReason(e.Err), e.Attempt))
}

// retryReason is a short, single-line description of a retried error.
func retryReason(err error) string {
	st, _ := status.FromError(err)
	msg := st.Message()
	switch {
	case st.Code() == codes.DeadlineExceeded:
		msg = "a node did not answer in time"
	case strings.Contains(msg, "no leader"), strings.Contains(msg, "leadership"), strings.Contains(msg, "becoming leader"):
		msg = "electing a leader"
	case errors.Is(err, io.EOF), strings.Contains(msg, "connection"), strings.Contains(msg, "transport"):
		msg = "node unreachable"
	}
	msg = oneLine(msg)
	if len(msg) > 60 {
		msg = msg[:57] + "..."
	}
	return msg
}

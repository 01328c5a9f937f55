//go:build unix

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gosd/gosd/binding"
	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// syncBuffer is a bytes.Buffer the server's goroutines and the test share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestServe runs the server on the demo model on a loopback port, generates through it,
// then stops it with SIGTERM while a long job runs: the job is cancelled when the grace
// period ends and serve exits 0.
func TestServe(t *testing.T) {
	root := testutil.RepoRoot(t)
	lib := filepath.Join(root, "build")
	if _, err := binding.Load(binding.LoadOptions{Path: lib, Backend: binding.PreferCPU}); err != nil {
		t.Skipf("native library not available (run `make`): %v", err)
	}
	var stdout, stderr syncBuffer
	a := newApp(&stdout, &stderr)
	a.demoDirs = []string{root}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	code := make(chan int, 1)
	go func() {
		code <- a.run(ctx, []string{"serve", "--addr", "127.0.0.1:0", "--lib", lib, "--device", "cpu", "--threads", "1",
			"--api-key", "k", "--grace", "500ms"})
	}()
	addr := regexp.MustCompile(`serving on (http://127\.0\.0\.1:\d+)`)
	var base string
	require.Eventually(t, func() bool {
		m := addr.FindStringSubmatch(stderr.String())
		if m != nil {
			base = m[1]
		}
		return m != nil
	}, 30*time.Second, 10*time.Millisecond, "stderr: %s", stderr.String())

	req, _ := http.NewRequest("POST", base+"/sdapi/v1/txt2img", strings.NewReader(`{"prompt":"a red apple","steps":2,"seed":1}`))
	req.Header.Set("Authorization", "Bearer k")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode, "%s", body)
	var res struct{ Images []string }
	require.NoError(t, json.Unmarshal(body, &res))
	assert.Len(t, res.Images, 1)

	req, _ = http.NewRequest("POST", base+"/v1/jobs", strings.NewReader(`{"prompt":"x","steps":150}`))
	req.Header.Set("Authorization", "Bearer k")
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, 202, resp.StatusCode)

	// serve has registered for SIGTERM before it printed its address.
	require.NoError(t, syscall.Kill(os.Getpid(), syscall.SIGTERM))
	select {
	case c := <-code:
		assert.Equal(t, exitOK, c, "stderr: %s", stderr.String())
	case <-time.After(20 * time.Second):
		t.Fatal("serve did not stop")
	}
	assert.Contains(t, stderr.String(), "grace period over")
	log := stderr.String()
	assert.Contains(t, log, `"msg":"request"`)
	assert.Contains(t, log, `"route":"POST /sdapi/v1/txt2img"`)
	assert.Contains(t, log, "stopped")
}

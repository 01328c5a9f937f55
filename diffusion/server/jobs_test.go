package server

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// sseEvents reads a Server-Sent Events stream into (event, data) pairs.
func sseEvents(t testing.TB, resp *http.Response, each func(name string, data []byte) bool) {
	t.Helper()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	var name string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "event: "):
			name = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			if !each(name, []byte(strings.TrimPrefix(line, "data: "))) {
				return
			}
		}
	}
}

func TestJobs(t *testing.T) {
	_, hs := testServer(t, nil)
	var j jobJSON
	resp := call(t, "POST", hs.URL+"/v1/jobs", `{"prompt":"a red apple","steps":8,"seed":3,"sampler":"ddim"}`, &j)
	require.Equal(t, 202, resp.StatusCode)
	assert.Equal(t, "/v1/jobs/"+j.ID, resp.Header.Get("Location"))

	ev, err := http.Get(hs.URL + "/v1/jobs/" + j.ID + "/events")
	require.NoError(t, err)
	defer ev.Body.Close()
	var steps []int
	var previews int
	var done jobJSON
	sseEvents(t, ev, func(name string, data []byte) bool {
		var v jobJSON
		require.NoError(t, json.Unmarshal(data, &v))
		switch name {
		case "progress":
			steps = append(steps, v.Progress.Step)
			if v.Progress.Preview != "" {
				previews++
			}
			return true
		case "done":
			done = v
		}
		return false
	})
	assert.Equal(t, stateSucceeded, done.Status)
	require.Len(t, done.Images, 1)
	assert.Equal(t, uint64(3), done.Images[0].Seed)
	assert.Contains(t, done.Images[0].Parameters, "Sampler: DDIM")
	assert.NotEmpty(t, steps)
	assert.Positive(t, previews)
	for i := 1; i < len(steps); i++ {
		assert.GreaterOrEqual(t, steps[i], steps[i-1])
	}

	var got jobJSON
	require.Equal(t, 200, call(t, "GET", hs.URL+"/v1/jobs/"+j.ID, "", &got).StatusCode)
	assert.Equal(t, stateSucceeded, got.Status)
	assert.Len(t, got.Images, 1)

	// DELETE cancels a running job.
	call(t, "POST", hs.URL+"/v1/jobs", `{"prompt":"x","steps":150}`, &j)
	require.Eventually(t, func() bool {
		call(t, "GET", hs.URL+"/v1/jobs/"+j.ID, "", &got)
		return got.Progress.Step > 0
	}, 20*time.Second, 5*time.Millisecond)
	require.Equal(t, 200, call(t, "DELETE", hs.URL+"/v1/jobs/"+j.ID, "", &got).StatusCode)
	assert.Equal(t, stateCancelled, got.Status)
	require.NotNil(t, got.Error)
	assert.Equal(t, "cancelled", got.Error.Type)

	assert.Equal(t, 404, call(t, "GET", hs.URL+"/v1/jobs/job_nope", "", nil).StatusCode)

	// A generation's own error fails the job: SDXL's second prompt on an SD 1.x model.
	require.Equal(t, 202, call(t, "POST", hs.URL+"/v1/jobs", `{"prompt":"x","prompt_2":"y","steps":2}`, &j).StatusCode)
	var failed jobJSON
	require.Eventually(t, func() bool {
		failed = jobJSON{}
		call(t, "GET", hs.URL+"/v1/jobs/"+j.ID, "", &failed)
		return failed.Status != stateQueued && failed.Status != stateRunning
	}, 20*time.Second, 5*time.Millisecond)
	assert.Equal(t, stateFailed, failed.Status)
	require.NotNil(t, failed.Error)
	assert.Contains(t, failed.Error.Message, "SDXL")
	assert.Empty(t, failed.Images)
}

// TestQueueFull fills a queue of 2 behind one long job: the next submission is a 429
// with Retry-After, in each API's error shape.
func TestQueueFullAndDeadline(t *testing.T) {
	s, hs := testServer(t, func(c *Config) { c.Queue = 2; c.Timeout = 3 * time.Second })
	var ids []string
	for i := range 3 { // one runs, two wait
		var j jobJSON
		require.Equal(t, 202, call(t, "POST", hs.URL+"/v1/jobs", `{"prompt":"x","steps":150}`, &j).StatusCode)
		ids = append(ids, j.ID)
		if i == 0 {
			require.Eventually(t, func() bool { return len(s.queue) == 0 }, 5*time.Second, time.Millisecond)
		}
	}
	require.Eventually(t, func() bool { return len(s.queue) == 2 }, 5*time.Second, time.Millisecond)
	resp := call(t, "POST", hs.URL+"/v1/jobs", `{"prompt":"x","steps":1}`, nil)
	assert.Equal(t, 429, resp.StatusCode)
	assert.Equal(t, "1", resp.Header.Get("Retry-After"))
	var oe struct {
		Error map[string]any `json:"error"`
	}
	resp = call(t, "POST", hs.URL+"/v1/images/generations", `{"prompt":"x","steps":1}`, &oe)
	assert.Equal(t, 429, resp.StatusCode)
	assert.Equal(t, "rate_limit_error", oe.Error["type"])
	var ae map[string]any
	assert.Equal(t, 429, call(t, "POST", hs.URL+"/sdapi/v1/txt2img", `{"steps":1}`, &ae).StatusCode)
	assert.Equal(t, "queue_full", ae["error"])
	// Queued jobs end at once when cancelled, not when a worker reaches them.
	for _, id := range ids[1:] {
		start := time.Now()
		var got jobJSON
		require.Equal(t, 200, call(t, "DELETE", hs.URL+"/v1/jobs/"+id, "", &got).StatusCode)
		assert.Equal(t, stateCancelled, got.Status)
		assert.Nil(t, got.StartedAt, "it never ran")
		assert.Less(t, time.Since(start), time.Second)
	}
	// The first one runs past the 3 s deadline (150 steps at about 40 ms).
	var got jobJSON
	require.Eventually(t, func() bool {
		call(t, "GET", hs.URL+"/v1/jobs/"+ids[0], "", &got)
		return got.Status != stateRunning && got.Status != stateQueued
	}, 20*time.Second, 50*time.Millisecond)
	if got.Status == stateSucceeded {
		t.Skip("the machine ran 150 steps within the deadline")
	}
	assert.Equal(t, stateFailed, got.Status)
	assert.Equal(t, "timeout", got.Error.Type)
}

// TestClientDisconnectCancels: a synchronous request whose client goes cancels its
// generation, which frees the worker at once.
func TestClientDisconnectCancels(t *testing.T) {
	s, hs := testServer(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "POST", hs.URL+"/sdapi/v1/txt2img", strings.NewReader(`{"steps":150}`))
	errc := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			err = fmt.Errorf("answered %s", resp.Status)
		}
		errc <- err
	}()
	require.Eventually(t, func() bool {
		j, _ := s.currentJob()
		if j == nil {
			return false
		}
		v, _ := j.view()
		return v.Progress.Step > 0
	}, 20*time.Second, 5*time.Millisecond)
	cancel()
	require.ErrorIs(t, <-errc, context.Canceled)
	start := time.Now()
	require.Eventually(t, func() bool { return len(s.liveJobs()) == 0 }, 5*time.Second, 5*time.Millisecond)
	assert.Less(t, time.Since(start), 2*time.Second)
	var res a1111Response
	require.Equal(t, 200, call(t, "POST", hs.URL+"/sdapi/v1/txt2img", `{"steps":1}`, &res).StatusCode)
}

// TestShutdownGrace: Shutdown lets a short job finish, and cancels a long one when the
// grace period ends.
func TestShutdownGrace(t *testing.T) {
	s, hs := testServer(t, nil)
	var short, long jobJSON
	call(t, "POST", hs.URL+"/v1/jobs", `{"prompt":"x","steps":2}`, &short)
	call(t, "POST", hs.URL+"/v1/jobs", `{"prompt":"x","steps":150}`, &long)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	assert.ErrorIs(t, s.Shutdown(ctx), context.DeadlineExceeded)
	var got jobJSON
	call(t, "GET", hs.URL+"/v1/jobs/"+short.ID, "", &got)
	assert.Equal(t, stateSucceeded, got.Status)
	call(t, "GET", hs.URL+"/v1/jobs/"+long.ID, "", &got)
	assert.Equal(t, stateCancelled, got.Status)
	assert.Equal(t, 503, call(t, "POST", hs.URL+"/v1/jobs", `{"prompt":"x"}`, nil).StatusCode)
}

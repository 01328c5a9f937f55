package server

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"mime/multipart"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestLoad sends 200 requests at a concurrency of 16 to two workers behind a queue of 8:
// a quarter are cancelled by their client mid-way and one in ten is invalid; a client
// answered 429 backs off before its next request. Every
// request gets exactly one answer (or, cancelled, none), nothing is lost, the full queue
// answers 429, and no goroutine is left behind.
func TestLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("load test: skipped with -short")
	}
	s, hs := testServer(t, func(c *Config) { c.Workers, c.Queue = 2, 8 })
	tr := &http.Transport{MaxIdleConnsPerHost: 16}
	client := &http.Client{Transport: tr}
	before := runtime.NumGoroutine()

	const total, concurrency = 200, 16
	type outcome struct {
		kind    string // ok, invalid, queue_full, cancelled, other
		latency time.Duration
	}
	outcomes := make([]outcome, total)
	answered := make([]int, total) // answers per request: must be exactly one
	var mu sync.Mutex
	next := 0
	start := time.Now()
	var wg sync.WaitGroup
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= total {
					return
				}
				body := fmt.Sprintf(`{"prompt":"a red apple","steps":2,"seed":%d}`, i)
				invalid := i%10 == 3
				if invalid {
					body = []string{`{"steps":0}`, `{"prompt":`, `{"width":12}`}[i%3]
				}
				cancelled := !invalid && i%4 == 1
				ctx, cancel := context.WithCancel(context.Background())
				if cancelled {
					time.AfterFunc(time.Duration(5+rand.IntN(60))*time.Millisecond, cancel)
				}
				req, _ := http.NewRequestWithContext(ctx, "POST", hs.URL+"/sdapi/v1/txt2img", strings.NewReader(body))
				t0 := time.Now()
				resp, err := client.Do(req)
				o := outcome{latency: time.Since(t0)}
				switch {
				case err != nil && errors.Is(err, context.Canceled):
					o.kind = "cancelled"
				case err != nil:
					o.kind = "error: " + err.Error()
				default:
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					switch {
					case err != nil && errors.Is(err, context.Canceled):
						o.kind = "cancelled"
					case resp.StatusCode == 200:
						o.kind = "ok"
					case resp.StatusCode == 422:
						o.kind = "invalid"
					case resp.StatusCode == 429:
						o.kind = "queue_full"
						assert.Equal(t, "1", resp.Header.Get("Retry-After"))
					default:
						o.kind = fmt.Sprintf("status %d", resp.StatusCode)
					}
				}
				cancel()
				mu.Lock()
				outcomes[i] = o
				answered[i]++
				mu.Unlock()
				if !cancelled && o.kind == "cancelled" {
					t.Errorf("request %d: cancelled without its client cancelling", i)
				}
				if invalid && o.kind != "invalid" {
					t.Errorf("invalid request %d (%s): %s", i, body, o.kind)
				}
				if o.kind == "queue_full" {
					// Back off before the next request, as Retry-After asks (shortened:
					// the test would otherwise mostly measure 429s).
					time.Sleep(150 * time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)

	counts := map[string]int{}
	var latencies []time.Duration
	for i, o := range outcomes {
		require.Equal(t, 1, answered[i], "request %d", i)
		counts[o.kind]++
		if o.kind == "ok" {
			latencies = append(latencies, o.latency)
		}
	}
	t.Logf("outcomes: %v", counts)
	for k := range counts {
		assert.Contains(t, []string{"ok", "invalid", "queue_full", "cancelled"}, k)
	}
	assert.Equal(t, total/10, counts["invalid"])
	assert.Positive(t, counts["queue_full"], "16 clients on 2 workers and a queue of 8 fill it")
	assert.Positive(t, counts["cancelled"])
	require.NotEmpty(t, latencies)
	slices.Sort(latencies)
	pct := func(p float64) time.Duration { return latencies[int(p*float64(len(latencies)-1))] }
	t.Logf("%d images in %s: %.1f requests/s answered 200; latency p50 %s, p99 %s",
		len(latencies), elapsed.Round(time.Millisecond), float64(len(latencies))/elapsed.Seconds(),
		pct(0.5).Round(time.Millisecond), pct(0.99).Round(time.Millisecond))

	// Nothing is left running, queued or leaking.
	require.Eventually(t, func() bool { return len(s.liveJobs()) == 0 && len(s.queue) == 0 }, 10*time.Second, 10*time.Millisecond)
	tr.CloseIdleConnections()
	hs.CloseClientConnections()
	require.Eventually(t, func() bool { return runtime.NumGoroutine() <= before+2 }, 10*time.Second, 20*time.Millisecond,
		"goroutines: %d before, %d after", before, runtime.NumGoroutine())
}

// TestHostileInput: malformed, oversized and absurd requests get a 4xx, never a crash,
// and the server still generates afterwards.
func TestHostileInput(t *testing.T) {
	_, hs := testServer(t, func(c *Config) { c.MaxBodyBytes = 1 << 20 })
	declaring := base64.StdEncoding.EncodeToString(testutil.DeclaringPNG(t, 100000, 100000))
	bigPNG := base64.StdEncoding.EncodeToString(testutil.DeclaringPNG(t, 4000, 4000))
	huge := `{"prompt":"` + strings.Repeat("a", 2<<20) + `"}`
	for _, c := range []struct {
		name, path, body string
		status           int
	}{
		{"malformed JSON", "/v1/images/generations", `{"prompt": "x",`, 400},
		{"not JSON", "/v1/images/generations", `hello`, 400},
		{"empty body", "/v1/jobs", ``, 400},
		{"two values", "/v1/jobs", `{} {}`, 400},
		{"wrong type", "/v1/images/generations", `{"prompt": 7}`, 400},
		{"huge body", "/v1/images/generations", huge, 413},
		{"huge body (A1111)", "/sdapi/v1/txt2img", huge, 413},
		{"absurd size", "/v1/images/generations", `{"prompt":"x","size":"99999x99999"}`, 400},
		{"size overflow", "/v1/images/generations", `{"prompt":"x","size":"99999999999999999999x8"}`, 400},
		{"negative size", "/v1/images/generations", `{"prompt":"x","size":"-64x64"}`, 400},
		{"absurd n", "/v1/images/generations", `{"prompt":"x","n":1000000}`, 400},
		{"absurd steps", "/sdapi/v1/txt2img", `{"steps":1000000000}`, 422},
		{"absurd width", "/sdapi/v1/txt2img", `{"width":1000000000,"height":8}`, 422},
		{"integer overflow", "/sdapi/v1/txt2img", `{"width":1e30}`, 422},
		{"NaN-ish cfg", "/sdapi/v1/txt2img", `{"cfg_scale":1e999}`, 422},
		{"absurd batch", "/sdapi/v1/txt2img", `{"batch_size":100000,"n_iter":100000}`, 422},
		{"bad base64", "/sdapi/v1/img2img", `{"init_images":["%%%not base64"]}`, 422},
		{"not an image", "/sdapi/v1/img2img", `{"init_images":["` + base64.StdEncoding.EncodeToString([]byte("GIF89a....")) + `"]}`, 422},
		{"declares 100000x100000", "/sdapi/v1/img2img", `{"init_images":["` + declaring + `"]}`, 422},
		{"over max size", "/sdapi/v1/img2img", `{"init_images":["` + bigPNG + `"]}`, 422},
		{"bad mask", "/sdapi/v1/img2img", `{"init_images":["` + bigPNG + `"],"width":64,"height":64,"mask":"AAAA"}`, 422},
		{"png-info of garbage", "/sdapi/v1/png-info", `{"image":"AAAA"}`, 422},
		{"jobs: bad image", "/v1/jobs", `{"prompt":"x","image":"AAAA"}`, 400},
		{"jobs: mask without image", "/v1/jobs", `{"prompt":"x","mask":"AAAA"}`, 400},
		{"options: bad JSON", "/sdapi/v1/options", `[`, 422},
	} {
		resp := call(t, "POST", hs.URL+c.path, c.body, nil)
		assert.Equal(t, c.status, resp.StatusCode, c.name)
	}

	// Multipart edits: no image, a non-image, a huge declared size, not multipart.
	edit := func(files map[string][]byte, fields map[string]string, contentType string) int {
		var buf bytes.Buffer
		mw := multipart.NewWriter(&buf)
		for k, v := range fields {
			require.NoError(t, mw.WriteField(k, v))
		}
		for k, v := range files {
			fw, err := mw.CreateFormFile(k, k+".png")
			require.NoError(t, err)
			_, _ = fw.Write(v)
		}
		require.NoError(t, mw.Close())
		if contentType == "" {
			contentType = mw.FormDataContentType()
		}
		resp, err := http.Post(hs.URL+"/v1/images/edits", contentType, &buf)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	prompt := map[string]string{"prompt": "x"}
	assert.Equal(t, 400, edit(nil, prompt, ""), "no image")
	assert.Equal(t, 400, edit(map[string][]byte{"image": []byte("not an image")}, prompt, ""))
	assert.Equal(t, 400, edit(map[string][]byte{"image": testutil.DeclaringPNG(t, 100000, 100000)}, prompt, ""))
	assert.Equal(t, 400, edit(map[string][]byte{"image": testutil.DeclaringPNG(t, 64, 64)}, map[string]string{"prompt": "x", "n": "many"}, ""))
	assert.Equal(t, 400, edit(nil, prompt, "application/json"), "not multipart")

	var res a1111Response
	require.Equal(t, 200, call(t, "POST", hs.URL+"/sdapi/v1/txt2img", `{"steps":1}`, &res).StatusCode)
	assert.Len(t, res.Images, 1)
}

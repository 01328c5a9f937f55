package server

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"image"
	"image/color"
	"image/png"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gosd/gosd/binding"
	"github.com/gosd/gosd/diffusion"
	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// demoModel is the bundled demo model (64x64), skipping the test when the native
// library is not built.
func demoModel(t testing.TB) (model, lib string) {
	t.Helper()
	root := testutil.RepoRoot(t)
	lib = filepath.Join(root, "build")
	if _, err := binding.Load(binding.LoadOptions{Path: lib, Backend: binding.PreferCPU}); err != nil {
		t.Skipf("native library not available (run `make`): %v", err)
	}
	return filepath.Join(root, "models", "gosd-emoji"), lib
}

// testServer serves the demo model on a loopback httptest server; change applies to the
// config first.
func testServer(t testing.TB, change func(*Config)) (*Server, *httptest.Server) {
	t.Helper()
	model, lib := demoModel(t)
	cfg := Config{
		Models: []string{model},
		Open: func(ctx context.Context, path string) (*diffusion.Pipeline, error) {
			return diffusion.OpenContext(ctx, path, diffusion.WithDevice(diffusion.DeviceCPU), diffusion.WithThreads(1),
				diffusion.WithLibrary(lib))
		},
		Logger: slog.New(slog.NewJSONHandler(io.Discard, nil)),
	}
	if testing.Verbose() {
		cfg.Logger = slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	if change != nil {
		change(&cfg)
	}
	s, err := New(context.Background(), cfg)
	require.NoError(t, err)
	hs := httptest.NewServer(s)
	t.Cleanup(func() {
		hs.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		assert.NoError(t, s.Shutdown(ctx))
	})
	return s, hs
}

// call sends a request and decodes a JSON answer into out (when not nil).
func call(t testing.TB, method, url, body string, out any, header ...string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	require.NoError(t, err)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	if out != nil {
		require.NoError(t, json.Unmarshal(b, out), "body: %.300s", b)
	}
	return resp
}

func decodePNG(t testing.TB, b64 string) (image.Image, map[string]string) {
	t.Helper()
	raw, err := base64.StdEncoding.DecodeString(b64)
	require.NoError(t, err)
	img, err := png.Decode(bytes.NewReader(raw))
	require.NoError(t, err)
	text, err := pngText(raw)
	require.NoError(t, err)
	return img, text
}

func pngBase64(t testing.TB, img image.Image) string {
	t.Helper()
	var buf bytes.Buffer
	require.NoError(t, png.Encode(&buf, img))
	return base64.StdEncoding.EncodeToString(buf.Bytes())
}

func solid(w, h int, c color.Color) *image.NRGBA {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, c)
		}
	}
	return img
}

func TestHealthReadyMetrics(t *testing.T) {
	s, hs := testServer(t, nil)
	var v map[string]any
	assert.Equal(t, 200, call(t, "GET", hs.URL+"/healthz", "", &v).StatusCode)
	resp := call(t, "GET", hs.URL+"/readyz", "", &v)
	assert.Equal(t, 200, resp.StatusCode)
	assert.NotEmpty(t, resp.Header.Get("X-Request-Id"))
	resp = call(t, "GET", hs.URL+"/healthz", "", nil, "X-Request-Id", "my-id-1")
	assert.Equal(t, "my-id-1", resp.Header.Get("X-Request-Id"))

	call(t, "POST", hs.URL+"/v1/jobs", `{"prompt":"a red apple","steps":2,"seed":1}`, nil)
	call(t, "POST", hs.URL+"/sdapi/v1/txt2img", `{"steps":0}`, nil)
	require.Eventually(t, func() bool { return len(s.liveJobs()) == 0 }, 20*time.Second, 20*time.Millisecond)
	req, _ := http.NewRequest("GET", hs.URL+"/metrics", nil)
	mr, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	body, _ := io.ReadAll(mr.Body)
	mr.Body.Close()
	for _, series := range []string{"gosd_queue_depth 0", "gosd_jobs_running 0", "gosd_step_seconds_bucket",
		`gosd_http_request_seconds_bucket{code="202",route="POST /v1/jobs"`, `gosd_jobs_total{state="succeeded"} 1`,
		`gosd_errors_total{kind="invalid_request"} 1`} {
		assert.Contains(t, string(body), series)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, s.Shutdown(ctx))
	assert.Equal(t, 503, call(t, "GET", hs.URL+"/readyz", "", &v).StatusCode)
	var e map[string]map[string]any
	resp = call(t, "POST", hs.URL+"/v1/images/generations", `{"prompt":"x","steps":1}`, &e)
	assert.Equal(t, 503, resp.StatusCode)
	assert.Equal(t, "1", resp.Header.Get("Retry-After"))
}

func TestAPIKeyAndCORS(t *testing.T) {
	_, hs := testServer(t, func(c *Config) { c.APIKey, c.CORSOrigin = "s3cret", "http://ui.example" })
	var e struct {
		Error map[string]any `json:"error"`
	}
	resp := call(t, "GET", hs.URL+"/v1/models", "", &e)
	assert.Equal(t, 401, resp.StatusCode)
	assert.Equal(t, "authentication_error", e.Error["type"])
	assert.Equal(t, 401, call(t, "GET", hs.URL+"/v1/models", "", nil, "Authorization", "Bearer s3cre").StatusCode)
	assert.Equal(t, 200, call(t, "GET", hs.URL+"/v1/models", "", nil, "Authorization", "Bearer s3cret").StatusCode)
	assert.Equal(t, 200, call(t, "GET", hs.URL+"/healthz", "", nil).StatusCode, "health checks need no key")
	assert.Equal(t, 200, call(t, "GET", hs.URL+"/", "", nil).StatusCode, "the page asks for the key itself")

	resp = call(t, "OPTIONS", hs.URL+"/v1/images/generations", "", nil,
		"Origin", "http://ui.example", "Access-Control-Request-Method", "POST")
	assert.Equal(t, 204, resp.StatusCode)
	assert.Equal(t, "http://ui.example", resp.Header.Get("Access-Control-Allow-Origin"))
	resp = call(t, "GET", hs.URL+"/healthz", "", nil, "Origin", "http://evil.example")
	assert.Empty(t, resp.Header.Get("Access-Control-Allow-Origin"))
}

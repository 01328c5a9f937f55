// Package server is an image-generation HTTP server over package diffusion. It speaks
// OpenAI's Images API (/v1/images/...), AUTOMATIC1111's web UI API (/sdapi/v1/...) and
// an API of its own for queued jobs (/v1/jobs), serves a web page at / and Prometheus
// metrics at /metrics.
//
// A Server is an http.Handler, so a Go service can mount it in its own mux or server:
//
//	s, err := server.New(ctx, server.Config{Models: []string{path}, Open: open})
//	...
//	http.Handle("/", s)
//	...
//	s.Shutdown(graceCtx) // finish or cancel the work, free the pipelines
//
// Every generation goes through one bounded queue to a fixed set of workers, each with a
// pipeline of its own; a full queue answers 429 with Retry-After. A request's generation
// is cancelled when its client disconnects, when its deadline passes, or when its job is
// cancelled.
package server

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/gosd/gosd/diffusion"
)

// OpenFunc opens a pipeline of the model at path; the server calls it once per worker
// and again when a client switches the model.
type OpenFunc func(ctx context.Context, path string) (*diffusion.Pipeline, error)

// Config configures a Server. Zero values are the documented defaults.
type Config struct {
	// Models are the model files or folders clients may choose from; the first is
	// loaded at start. Required.
	Models []string
	// Open opens a pipeline. Required.
	Open OpenFunc
	// Workers is the number of generations run at once, each on a pipeline of its own
	// (default 1: a pipeline already uses every CPU core or the whole GPU).
	Workers int
	// Queue is the number of generations that may wait for a worker (default 16); one
	// more is answered 429.
	Queue int
	// MaxSize is the largest image side in pixels a request may ask for (default 1024).
	MaxSize int
	// MaxSteps is the most sampling steps a request may ask for (default 150).
	MaxSteps int
	// MaxImages is the most images one request may ask for, all batches together
	// (default 8).
	MaxImages int
	// MaxBodyBytes bounds a request body (default 32 MiB): init images and masks come
	// base64-encoded or as multipart uploads.
	MaxBodyBytes int64
	// Timeout is a generation's deadline, from its submission (default 10 minutes).
	Timeout time.Duration
	// LoRADir, when set, is the folder (with its subfolders) whose adapters prompts may
	// name in AUTOMATIC1111 tags <lora:NAME:SCALE>, listed by GET /sdapi/v1/loras;
	// without it a tag is an error. EmbeddingDir likewise holds textual-inversion
	// embeddings that prompts use by file name.
	LoRADir, EmbeddingDir string
	// ControlNetDir, when set, is the folder (with its subfolders) of ControlNets
	// (diffusers folders, single files) that AUTOMATIC1111 requests may use through
	// alwayson_scripts.controlnet, listed by GET /controlnet/model_list.
	ControlNetDir string
	// APIKey, when set, is required of every API request as "Authorization: Bearer KEY"
	// (the page at /, /healthz and /readyz stay open; the page asks for the key).
	APIKey string
	// CORSOrigin, when set, is the origin allowed to call the API from a browser ("*"
	// for any).
	CORSOrigin string
	// ResultTTL is how long images served by URL (OpenAI's response_format "url") and
	// finished jobs are kept (default 1 hour).
	ResultTTL time.Duration
	// Logger receives one JSON line per request and the server's events (default:
	// discarded).
	Logger *slog.Logger
}

func (c *Config) defaults() error {
	if len(c.Models) == 0 {
		return errors.New("server: no model")
	}
	if c.Open == nil {
		return errors.New("server: no Open function")
	}
	for _, d := range []struct{ field, dir string }{{"LoRADir", c.LoRADir}, {"EmbeddingDir", c.EmbeddingDir}, {"ControlNetDir", c.ControlNetDir}} {
		if d.dir == "" {
			continue
		}
		if st, err := os.Stat(d.dir); err != nil || !st.IsDir() {
			return fmt.Errorf("server: %s %s is not a folder", d.field, d.dir)
		}
	}
	setInt := func(v *int, def int) {
		if *v <= 0 {
			*v = def
		}
	}
	setInt(&c.Workers, 1)
	setInt(&c.Queue, 16)
	setInt(&c.MaxSize, 1024)
	setInt(&c.MaxSteps, 150)
	setInt(&c.MaxImages, 8)
	c.MaxSize = min(c.MaxSize, diffusion.MaxSide)
	c.MaxSteps = min(c.MaxSteps, diffusion.MaxSteps)
	c.MaxImages = min(c.MaxImages, diffusion.MaxBatchSize)
	if c.MaxBodyBytes <= 0 {
		c.MaxBodyBytes = 32 << 20
	}
	if c.Timeout <= 0 {
		c.Timeout = 10 * time.Minute
	}
	if c.ResultTTL <= 0 {
		c.ResultTTL = time.Hour
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewJSONHandler(io.Discard, nil))
	}
	return nil
}

// Server is the HTTP server's handler and its generation queue.
type Server struct {
	cfg     Config
	log     *slog.Logger
	models  []Model
	pool    *pool
	metrics *metrics
	handler http.Handler
	files   *fileStore
	started time.Time

	// stop cancels every job: Shutdown calls it when the grace period ends.
	stop context.CancelCauseFunc
	base context.Context

	// subMu orders submissions against Shutdown, which closes the queue.
	subMu    sync.RWMutex
	draining bool
	queue    chan *job
	workers  sync.WaitGroup

	jobsMu sync.Mutex
	jobs   map[string]*job
}

// New opens the first model (Workers pipelines of it) and starts the workers.
func New(ctx context.Context, cfg Config) (*Server, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger, started: time.Now(), jobs: map[string]*job{},
		queue: make(chan *job, cfg.Queue), files: newFileStore(cfg.ResultTTL, 4*cfg.Queue+64)}
	for _, p := range cfg.Models {
		s.models = append(s.models, modelOf(p))
	}
	var err error
	if s.pool, err = newPool(ctx, cfg.Open, cfg.Workers, s.models[0]); err != nil {
		return nil, err
	}
	s.base, s.stop = context.WithCancelCause(context.Background())
	s.metrics = newMetrics(s)
	s.handler = s.middleware(s.routes())
	for range cfg.Workers {
		s.workers.Add(1)
		go s.worker()
	}
	s.log.Info("server ready", "model", s.models[0].Name, "workers", cfg.Workers, "queue", cfg.Queue)
	return s, nil
}

// ServeHTTP serves the APIs, the page and the operational endpoints.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.handler.ServeHTTP(w, r) }

var (
	errQueueFull = errors.New("the queue is full; retry later")
	errDraining  = errors.New("the server is shutting down")
	// Causes of a job's cancellation.
	errCancelled   = errors.New("cancelled")
	errInterrupted = errors.New("interrupted")
	errShutdown    = errors.New("cancelled: the server shut down")
	errClientGone  = errors.New("cancelled: the client disconnected")
)

// Shutdown stops taking work (readyz turns 503, new generations 503), lets the queued and
// running generations finish until ctx ends, then cancels what is left, waits for the
// workers and closes the pipelines. Stop the http.Server as well (its Shutdown waits for
// the handlers, which return once their jobs end).
func (s *Server) Shutdown(ctx context.Context) error {
	s.subMu.Lock()
	if !s.draining {
		s.draining = true
		close(s.queue)
	}
	s.subMu.Unlock()
	done := make(chan struct{})
	go func() {
		s.workers.Wait()
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
		s.stop(errShutdown)
		<-done
	}
	s.stop(errShutdown)
	s.pool.close()
	s.log.Info("server stopped", "grace_expired", err != nil)
	return err
}

func (s *Server) isDraining() bool {
	s.subMu.RLock()
	defer s.subMu.RUnlock()
	return s.draining
}

func (s *Server) routes() *http.ServeMux {
	mux := http.NewServeMux()
	open := func(pattern string, h http.HandlerFunc) { mux.Handle(pattern, h) }
	api := func(pattern string, h http.HandlerFunc) { mux.Handle(pattern, s.auth(h)) }

	open("GET /{$}", s.handlePage)
	open("GET /healthz", s.handleHealth)
	open("GET /readyz", s.handleReady)
	api("GET /metrics", s.metrics.handler().ServeHTTP)

	api("POST /v1/images/generations", s.handleOpenAIGenerate)
	api("POST /v1/images/edits", s.handleOpenAIEdit)
	api("GET /v1/models", s.handleOpenAIModels)
	// The URLs of response_format "url" are capabilities (unguessable ids), fetched by
	// whatever the client hands them to, without the key.
	open("GET /v1/files/{id}", s.handleFile)

	api("POST /v1/jobs", s.handleJobCreate)
	api("GET /v1/jobs/{id}", s.handleJobGet)
	api("GET /v1/jobs/{id}/events", s.handleJobEvents)
	api("DELETE /v1/jobs/{id}", s.handleJobDelete)

	api("POST /sdapi/v1/txt2img", s.handleA1111Txt2Img)
	api("POST /sdapi/v1/img2img", s.handleA1111Img2Img)
	api("GET /sdapi/v1/progress", s.handleA1111Progress)
	api("POST /sdapi/v1/interrupt", s.handleA1111Interrupt)
	api("POST /sdapi/v1/skip", s.handleA1111Skip)
	api("GET /sdapi/v1/options", s.handleA1111GetOptions)
	api("POST /sdapi/v1/options", s.handleA1111SetOptions)
	api("GET /sdapi/v1/sd-models", s.handleA1111Models)
	api("GET /sdapi/v1/samplers", s.handleA1111Samplers)
	api("GET /sdapi/v1/schedulers", s.handleA1111Schedulers)
	api("GET /sdapi/v1/upscalers", s.handleA1111Upscalers)
	api("GET /sdapi/v1/loras", s.handleA1111Loras)
	api("GET /controlnet/model_list", s.handleControlNetModels)
	api("GET /controlnet/module_list", s.handleControlNetModules)
	api("POST /sdapi/v1/png-info", s.handleA1111PNGInfo)
	return mux
}

func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"status": "ok"})
}

// handleReady is 200 while the server takes work: a model is loaded and it is not
// shutting down.
func (s *Server) handleReady(w http.ResponseWriter, r *http.Request) {
	_, _, loaded := s.pool.current()
	switch {
	case s.isDraining():
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "shutting down"})
	case !loaded:
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "no model loaded (a switch is loading one, or failed)"})
	default:
		writeJSON(w, http.StatusOK, map[string]any{"status": "ready", "queued": len(s.queue)})
	}
}

type ctxKey int

const (
	requestIDKey ctxKey = iota
	errKindKey          // *string: the kind of the error writeError wrote, for the metrics
)

// statusWriter records the status a handler wrote, for the log and the metrics; it
// passes Flush through for the event streams.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// middleware gives every request an id (the client's X-Request-Id when it sends a
// sane one), the CORS headers, the body limit, its log line and its metrics.
func (s *Server) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		id := r.Header.Get("X-Request-Id")
		if len(id) == 0 || len(id) > 64 || strings.ContainsFunc(id, func(c rune) bool { return c < 0x21 || c > 0x7e }) {
			id = newID("req")
		}
		w.Header().Set("X-Request-Id", id)
		if o := s.cfg.CORSOrigin; o != "" {
			if o == "*" || r.Header.Get("Origin") == o {
				w.Header().Set("Access-Control-Allow-Origin", o)
				w.Header().Set("Access-Control-Allow-Headers", "Authorization, Content-Type, X-Request-Id")
				w.Header().Set("Access-Control-Allow-Methods", "GET, POST, DELETE, OPTIONS")
				w.Header().Set("Access-Control-Expose-Headers", "X-Request-Id, Retry-After")
				w.Header().Add("Vary", "Origin")
			}
			if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
				w.WriteHeader(http.StatusNoContent)
				return
			}
		}
		r.Body = http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes)
		var errKind string
		ctx := context.WithValue(r.Context(), requestIDKey, id)
		r = r.WithContext(context.WithValue(ctx, errKindKey, &errKind))
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		if sw.status == 0 {
			sw.status = http.StatusOK // nothing written: net/http sends 200
		}
		route := r.Pattern
		if route == "" {
			route = "unmatched"
		}
		elapsed := time.Since(start)
		s.metrics.request(route, sw.status, elapsed, errKind)
		level := slog.LevelInfo
		if sw.status >= 500 {
			level = slog.LevelError
		}
		s.log.Log(r.Context(), level, "request", "request_id", id, "method", r.Method, "path", r.URL.Path,
			"route", route, "status", sw.status, "duration_ms", float64(elapsed.Microseconds())/1000, "remote", r.RemoteAddr)
	})
}

// auth requires the API key when one is configured, comparing in constant time.
func (s *Server) auth(next http.Handler) http.Handler {
	if s.cfg.APIKey == "" {
		return next
	}
	want := []byte("Bearer " + s.cfg.APIKey)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := []byte(r.Header.Get("Authorization"))
		if subtle.ConstantTimeCompare(got, want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="gosd"`)
			writeError(w, r, &apiError{status: http.StatusUnauthorized, kind: "unauthorized", msg: "missing or wrong API key (send Authorization: Bearer KEY)"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// newID is a random id with a prefix saying what it names.
func newID(prefix string) string {
	var b [12]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return prefix + "_" + hex.EncodeToString(b[:])
}

func requestID(r *http.Request) string {
	id, _ := r.Context().Value(requestIDKey).(string)
	return id
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v) // the client may be gone; nothing to do then
}

// apiError is an error with its HTTP status and kind (the metrics' label, and the type
// of OpenAI's error object); each API writes it in its own shape.
type apiError struct {
	status int
	kind   string
	msg    string
	param  string // the request field at fault, when known
}

func (e *apiError) Error() string { return e.msg }

func badRequest(param, format string, args ...any) *apiError {
	return &apiError{status: http.StatusBadRequest, kind: "invalid_request", msg: fmt.Sprintf(format, args...), param: param}
}

// classify maps an error of a generation to its HTTP status and kind.
func classify(err error) *apiError {
	var ae *apiError
	var mb *http.MaxBytesError
	switch {
	case errors.As(err, &ae):
		return ae
	case errors.As(err, &mb):
		return &apiError{status: http.StatusRequestEntityTooLarge, kind: "too_large", msg: fmt.Sprintf("the request body is over %d bytes", mb.Limit)}
	case errors.Is(err, errQueueFull):
		return &apiError{status: http.StatusTooManyRequests, kind: "queue_full", msg: err.Error()}
	case errors.Is(err, errDraining), errors.Is(err, errShutdown), errors.Is(err, diffusion.ErrClosed), errors.Is(err, errNoModel):
		return &apiError{status: http.StatusServiceUnavailable, kind: "unavailable", msg: err.Error()}
	case errors.Is(err, context.DeadlineExceeded):
		return &apiError{status: http.StatusGatewayTimeout, kind: "timeout", msg: "the generation ran past its deadline"}
	case errors.Is(err, errCancelled), errors.Is(err, errInterrupted), errors.Is(err, errClientGone), errors.Is(err, context.Canceled):
		return &apiError{status: http.StatusConflict, kind: "cancelled", msg: err.Error()}
	case errors.Is(err, diffusion.ErrInvalidRequest), errors.Is(err, diffusion.ErrUnsupported):
		return &apiError{status: http.StatusBadRequest, kind: "invalid_request", msg: err.Error()}
	}
	return &apiError{status: http.StatusInternalServerError, kind: "internal", msg: err.Error()}
}

// writeError writes err in the shape of the API the request is for.
func writeError(w http.ResponseWriter, r *http.Request, err error) {
	e := classify(err)
	if kind, ok := r.Context().Value(errKindKey).(*string); ok {
		*kind = e.kind
	}
	if e.status == http.StatusTooManyRequests || e.status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	switch {
	case strings.HasPrefix(r.URL.Path, "/sdapi/"):
		writeA1111Error(w, e)
	case strings.HasPrefix(r.URL.Path, "/v1/images/"), r.URL.Path == "/v1/models":
		writeOpenAIError(w, e)
	default:
		writeJSON(w, e.status, map[string]any{"error": map[string]any{"message": e.msg, "type": e.kind, "param": nullable(e.param)}})
	}
}

func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}

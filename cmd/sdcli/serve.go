package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os/signal"
	"syscall"
	"time"

	"github.com/gosd/gosd/diffusion"
	"github.com/gosd/gosd/diffusion/server"
)

// serveOptions are the flags of serve.
type serveOptions struct {
	addr           string
	model          string
	workers, queue int
	maxSize        int
	maxSteps       int
	apiKey, cors   string
	timeout, grace time.Duration
	pipe           pipelineOptions
	lora           loraOptions
	controlNetDir  string
}

func serveCommand(a *app, fs *flagSet) func(context.Context, []string) error {
	o := &serveOptions{}
	fs.stringVar(&o.addr, "addr", "host:port", "127.0.0.1:7860", "address to listen on (default 127.0.0.1:7860: this machine only;\n0.0.0.0:7860 serves the network, with --api-key)")
	fs.stringVar(&o.model, "m", "path", "", "model file (.safetensors, .ckpt) or diffusers folder\n(default: the demo model "+demoModel+")")
	fs.intVar(&o.workers, "workers", "N", 1, "generations run at once, each on a pipeline of its own (default 1)", intRange(1, 64))
	fs.intVar(&o.queue, "queue", "N", 16, "generations that may wait for a worker; more are answered 429 (default 16)", intRange(1, 10000))
	fs.intVar(&o.maxSize, "max-size", "px", 1024, "largest image side a request may ask for (default 1024)", side(diffusion.MaxSide))
	fs.intVar(&o.maxSteps, "max-steps", "N", 150, "most sampling steps a request may ask for (default 150)", intRange(1, diffusion.MaxSteps))
	fs.stringVar(&o.apiKey, "api-key", "KEY", "", "require Authorization: Bearer KEY of API requests (default: none)")
	fs.stringVar(&o.cors, "cors", "ORIGIN", "", "origin allowed to call the API from a browser, or * (default: none)")
	fs.funcVar("timeout", "duration", "deadline of a generation from its submission (default 10m)", durationFlag(&o.timeout))
	fs.funcVar("grace", "duration", "on SIGINT or SIGTERM, how long running work may finish before it is cancelled (default 30s)", durationFlag(&o.grace))
	o.timeout, o.grace = 10*time.Minute, 30*time.Second
	fs.stringVar(&o.pipe.taesd, "taesd", "path", "", "a TAESD folder or file: live previews are its decoding at full size\n(default: none, the linear preview at latent size)")
	fs.stringVar(&o.lora.dir, "lora-dir", "DIR", "", "folder (searched with its subfolders) whose adapters prompts may name in tags\n<lora:NAME:SCALE>; GET /sdapi/v1/loras lists them (default: none; a tag is then an error)")
	fs.stringVar(&o.lora.embeddingDir, "embedding-dir", "DIR", "", "folder (searched with its subfolders) of textual-inversion embeddings that prompts\nuse by file name (default: none)")
	fs.stringVar(&o.controlNetDir, "controlnet-dir", "DIR", "", "folder (searched with its subfolders) of ControlNets (diffusers folders, single files)\nfor AUTOMATIC1111's alwayson_scripts.controlnet; GET /controlnet/model_list lists them (default: none)")
	o.pipe.define(fs)
	return func(ctx context.Context, args []string) error { return a.serve(ctx, o, args) }
}

// openServing opens a pipeline as the flags say, logging to the server's JSON log.
func (o *pipelineOptions) openServing(ctx context.Context, path string, logger *slog.Logger) (*diffusion.Pipeline, error) {
	opts := []diffusion.Option{diffusion.WithDevice(o.device), diffusion.WithThreads(o.threads),
		diffusion.WithPrecision(o.precision), diffusion.WithLogger(logger.With("component", "pipeline")), diffusion.WithModelOptions(o.model.options()...)}
	if o.lib != "" {
		opts = append(opts, diffusion.WithLibrary(o.lib))
	}
	if o.taesd != "" {
		opts = append(opts, diffusion.WithTAESD(o.taesd))
	}
	p, err := diffusion.OpenContext(ctx, path, opts...)
	if errors.Is(err, diffusion.ErrLibraryNotFound) {
		return nil, fmt.Errorf("%w; or pass --lib", err)
	}
	return p, err
}

func durationFlag(p *time.Duration) func(string) error {
	return func(s string) error {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			return errors.New("want a positive duration such as 30s or 5m")
		}
		*p = d
		return nil
	}
}

func (a *app) serve(ctx context.Context, o *serveOptions, args []string) error {
	if len(args) > 0 {
		return usagef("unexpected argument %q", args[0])
	}
	modelPath, err := a.modelPath(o.model)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", o.addr)
	if err != nil {
		return err
	}
	defer ln.Close()
	// SIGTERM (a service manager's stop) ends the server as Ctrl-C does.
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM)
	defer stop()

	level := slog.LevelInfo
	if o.pipe.verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewJSONHandler(a.stderr, &slog.HandlerOptions{Level: level}))
	fmt.Fprintf(a.stderr, "loading %s (%d worker(s))\n", modelPath, o.workers)
	s, err := server.New(ctx, server.Config{
		Models: []string{modelPath},
		Open: func(ctx context.Context, path string) (*diffusion.Pipeline, error) {
			return o.pipe.openServing(ctx, path, logger)
		},
		Workers: o.workers, Queue: o.queue, MaxSize: o.maxSize, MaxSteps: o.maxSteps,
		Timeout: o.timeout, APIKey: o.apiKey, CORSOrigin: o.cors, Logger: logger,
		LoRADir: o.lora.dir, EmbeddingDir: o.lora.embeddingDir, ControlNetDir: o.controlNetDir,
	})
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn)}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()
	fmt.Fprintf(a.stderr, "serving on http://%s\n", ln.Addr())

	select {
	case err = <-served: // the listener failed
		s.Shutdown(context.Background())
		return err
	case <-ctx.Done():
	}
	fmt.Fprintf(a.stderr, "shutting down: finishing the running work (at most %s)\n", o.grace)
	grace, cancel := context.WithTimeout(context.Background(), o.grace)
	defer cancel()
	httpDone := make(chan error, 1)
	go func() { httpDone <- hs.Shutdown(grace) }()
	if err := s.Shutdown(grace); err != nil {
		fmt.Fprintf(a.stderr, "grace period over: the remaining work was cancelled\n")
	}
	// The handlers return once their jobs end; what is left of the connections is
	// closed after a last second.
	select {
	case <-httpDone:
	case <-time.After(time.Second):
		hs.Close()
	}
	fmt.Fprintln(a.stderr, "stopped")
	return nil
}

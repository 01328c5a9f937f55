package server

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/gosd/gosd/diffusion"
)

// pool holds the pipelines the workers generate with: one per worker, all of the same
// model. It is the one place that opens and closes pipelines, so that a model-sharing
// API (one set of weights, several activation arenas) changes only this file.
type pool struct {
	open OpenFunc
	n    int
	// mu is held shared by every generation and exclusively by a model switch, which
	// so waits for the running work and holds back the queued work until it is done.
	mu    sync.RWMutex
	free  chan *diffusion.Pipeline
	pipes []*diffusion.Pipeline
	// loaded is what current reports, kept apart from mu so that health checks and
	// request checks do not wait for a switch's load.
	loaded atomic.Pointer[loadedModel]
	// controlNets are the ControlNets loaded for the pipelines, by path: loaded by the
	// first generation that names one, closed with the pipelines.
	cnMu        sync.Mutex
	controlNets map[string]*diffusion.ControlNet
}

type loadedModel struct {
	model Model
	info  diffusion.ModelInfo
	ok    bool // false while no model is loaded (a switch in progress, or failed)
}

// Model is a model the server can load.
type Model struct {
	Name string // the file or folder name, the id clients use
	Path string
}

func modelOf(path string) Model {
	return Model{Name: filepath.Base(filepath.Clean(path)), Path: path}
}

func newPool(ctx context.Context, open OpenFunc, n int, m Model) (*pool, error) {
	p := &pool{open: open, n: n}
	p.loaded.Store(&loadedModel{model: m})
	if err := p.load(ctx, m); err != nil {
		return nil, err
	}
	return p, nil
}

// load opens m once and clones the pipeline for the other workers, so that they all run
// one copy of the weights; mu must be held exclusively (or p be new). On failure nothing
// of m stays open and p holds no pipeline.
func (p *pool) load(ctx context.Context, m Model) error {
	pipes := make([]*diffusion.Pipeline, 0, p.n)
	for range p.n {
		var pl *diffusion.Pipeline
		var err error
		if len(pipes) == 0 {
			pl, err = p.open(ctx, m.Path)
		} else {
			pl, err = pipes[0].Clone()
		}
		if err != nil {
			for _, q := range pipes {
				q.Close()
			}
			return fmt.Errorf("opening %s: %w", m.Name, err)
		}
		pipes = append(pipes, pl)
	}
	p.pipes = pipes
	p.loaded.Store(&loadedModel{model: m, info: pipes[0].Info(), ok: true})
	p.free = make(chan *diffusion.Pipeline, p.n)
	for _, pl := range pipes {
		p.free <- pl
	}
	return nil
}

// with runs f on a free pipeline. Workers call it, never more at once than there are
// pipelines, so a free one is always there once the shared lock is held.
func (p *pool) with(f func(*diffusion.Pipeline, diffusion.ModelInfo)) error {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if len(p.pipes) == 0 {
		return errNoModel
	}
	pl := <-p.free
	defer func() { p.free <- pl }()
	f(pl, p.loaded.Load().info)
	return nil
}

var errNoModel = errors.New("no model is loaded (the last switch failed)")

// current is the loaded model and its description; during a switch, the previous one
// and false.
func (p *pool) current() (Model, diffusion.ModelInfo, bool) {
	l := p.loaded.Load()
	return l.model, l.info, l.ok
}

// switchTo replaces the pipelines with m's once the running generations end. When m
// fails to open, the previous model is reopened so that the server keeps working.
func (p *pool) switchTo(ctx context.Context, m Model) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	prev := p.loaded.Load().model
	if m.Path == prev.Path && len(p.pipes) > 0 {
		return nil
	}
	p.closeLocked()
	err := p.load(ctx, m)
	if err != nil && prev.Path != "" {
		if err2 := p.load(context.WithoutCancel(ctx), prev); err2 != nil {
			return errors.Join(err, err2)
		}
	}
	return err
}

// controlNet is the ControlNet at path for the loaded model's pipelines (its clones
// share it), loading it with pl, a pipeline the caller holds, the first time.
func (p *pool) controlNet(pl *diffusion.Pipeline, path string) (*diffusion.ControlNet, error) {
	p.cnMu.Lock()
	defer p.cnMu.Unlock()
	if cn, ok := p.controlNets[path]; ok {
		return cn, nil
	}
	cn, err := pl.LoadControlNet(path)
	if err != nil {
		return nil, err
	}
	if p.controlNets == nil {
		p.controlNets = map[string]*diffusion.ControlNet{}
	}
	p.controlNets[path] = cn
	return cn, nil
}

func (p *pool) closeLocked() {
	for _, cn := range p.controlNets {
		cn.Close()
	}
	p.controlNets = nil
	for _, pl := range p.pipes {
		pl.Close()
	}
	p.pipes = nil
	l := *p.loaded.Load()
	l.ok = false
	p.loaded.Store(&l)
}

// close frees the pipelines; call it once no worker runs.
func (p *pool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closeLocked()
}

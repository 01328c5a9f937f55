package server

import (
	"context"
	"errors"
	"image"
	"slices"
	"sync"
	"time"

	"github.com/gosd/gosd/diffusion"
)

// mode is what a generation does.
type mode int

const (
	modeTxt2Img mode = iota
	modeImg2Img
	modeInpaint
)

// spec is one generation, in package diffusion's terms.
type spec struct {
	mode        mode
	req         diffusion.Request
	image, mask image.Image
	strength    float64
	// iterations run one after another (AUTOMATIC1111's n_iter), each a batch of
	// req.BatchSize whose seeds follow the previous batch's.
	iterations int
	// controls become req.Controls once the worker has the ControlNets loaded.
	controls []controlUnit
}

func (sp spec) images() int { return max(1, sp.req.BatchSize) * max(1, sp.iterations) }

// jobState is where a job is in its life.
type jobState string

const (
	stateQueued    jobState = "queued"
	stateRunning   jobState = "running"
	stateSucceeded jobState = "succeeded"
	stateFailed    jobState = "failed"
	stateCancelled jobState = "cancelled"
)

// job is a queued generation and what became of it.
type job struct {
	id      string
	spec    spec
	ctx     context.Context
	cancel  context.CancelCauseFunc
	created time.Time
	done    chan struct{} // closed when the job ends

	mu        sync.Mutex
	state     jobState
	started   time.Time
	finished  time.Time
	iteration int // the one running, 0-based
	progress  diffusion.Progress
	results   []*diffusion.Result
	err       error
	skip      context.CancelFunc // ends the running iteration only
	model     diffusion.ModelInfo
	// changed is closed and replaced at every update, waking the event streams.
	changed chan struct{}
}

// jobView is a consistent copy of a job's state.
type jobView struct {
	ID        string
	State     jobState
	Created   time.Time
	Started   time.Time
	Finished  time.Time
	Iteration int
	Progress  diffusion.Progress
	Results   []*diffusion.Result
	Err       error
	Model     diffusion.ModelInfo
}

func (j *job) view() (jobView, <-chan struct{}) {
	j.mu.Lock()
	defer j.mu.Unlock()
	return jobView{ID: j.id, State: j.state, Created: j.created, Started: j.started, Finished: j.finished,
		Iteration: j.iteration, Progress: j.progress, Results: j.results, Err: j.err, Model: j.model}, j.changed
}

// update changes the job under its lock and wakes its watchers.
func (j *job) update(f func()) {
	j.mu.Lock()
	defer j.mu.Unlock()
	f()
	j.notifyLocked()
}

func (j *job) notifyLocked() {
	close(j.changed)
	j.changed = make(chan struct{})
}

// start moves a queued job to running; false when it ended while queued.
func (j *job) start(info diffusion.ModelInfo) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.state != stateQueued {
		return false
	}
	j.state, j.started, j.model = stateRunning, time.Now(), info
	j.notifyLocked()
	return true
}

// dropIfQueued ends a job that no worker has taken yet, so that a cancellation or a
// deadline answers at once rather than when a worker reaches it in the queue.
func (j *job) dropIfQueued(cause error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.state == stateQueued {
		j.finishLocked(cause)
	}
}

// submitOptions say how a job lives.
type submitOptions struct {
	// parent ends the job when it ends: the request's context for the synchronous
	// APIs, so that a client that disconnects cancels its work; nil for /v1/jobs, whose
	// jobs outlive their request.
	parent context.Context
	// keep lists the job under its id after it ends (for /v1/jobs), for ResultTTL.
	keep bool
}

// submit queues a generation, or fails at once with errQueueFull or errDraining.
func (s *Server) submit(sp spec, o submitOptions) (*job, error) {
	if n := sp.images(); n > s.cfg.MaxImages {
		return nil, badRequest("n", "%d images asked for; at most %d a request", n, s.cfg.MaxImages)
	}
	ctx, cancel := context.WithCancelCause(s.base)
	ctx, cancelTimeout := context.WithTimeoutCause(ctx, s.cfg.Timeout, context.DeadlineExceeded)
	j := &job{id: newID("job"), spec: sp, ctx: ctx, created: time.Now(), done: make(chan struct{}),
		state: stateQueued, changed: make(chan struct{})}
	var stopParent func() bool
	j.cancel = func(cause error) {
		cancel(cause)
		cancelTimeout()
	}
	context.AfterFunc(ctx, func() { j.dropIfQueued(context.Cause(ctx)) })
	if o.parent != nil {
		stopParent = context.AfterFunc(o.parent, func() { j.cancel(errClientGone) })
	}
	s.subMu.RLock()
	defer s.subMu.RUnlock()
	if s.draining {
		j.release(stopParent)
		return nil, errDraining
	}
	s.jobsMu.Lock()
	s.pruneJobsLocked()
	s.jobs[j.id] = j
	s.jobsMu.Unlock()
	select {
	case s.queue <- j:
	default:
		s.forget(j)
		j.release(stopParent)
		return nil, errQueueFull
	}
	go func() {
		<-j.done
		j.release(stopParent)
		if !o.keep {
			s.forget(j)
		}
	}()
	return j, nil
}

func (j *job) release(stopParent func() bool) {
	if stopParent != nil {
		stopParent()
	}
	j.cancel(errCancelled) // frees the contexts; a no-op on an ended job's state
}

func (s *Server) forget(j *job) {
	s.jobsMu.Lock()
	delete(s.jobs, j.id)
	s.jobsMu.Unlock()
}

// pruneJobsLocked drops the finished jobs kept for longer than ResultTTL.
func (s *Server) pruneJobsLocked() {
	for id, j := range s.jobs {
		v, _ := j.view()
		if !v.Finished.IsZero() && time.Since(v.Finished) > s.cfg.ResultTTL {
			delete(s.jobs, id)
		}
	}
}

func (s *Server) job(id string) *job {
	s.jobsMu.Lock()
	defer s.jobsMu.Unlock()
	return s.jobs[id]
}

// liveJobs are the queued and running jobs, oldest first.
func (s *Server) liveJobs() []*job {
	s.jobsMu.Lock()
	defer s.jobsMu.Unlock()
	var out []*job
	for _, j := range s.jobs {
		select {
		case <-j.done:
		default:
			out = append(out, j)
		}
	}
	slices.SortFunc(out, func(a, b *job) int { return a.created.Compare(b.created) })
	return out
}

func (s *Server) worker() {
	defer s.workers.Done()
	for j := range s.queue {
		s.run(j)
		v, _ := j.view()
		s.metrics.jobEnded(v)
	}
}

// run runs a job's iterations on a pipeline of the pool.
func (s *Server) run(j *job) {
	if err := j.ctx.Err(); err != nil {
		j.finish(context.Cause(j.ctx))
		return
	}
	err := s.pool.with(func(p *diffusion.Pipeline, info diffusion.ModelInfo) {
		if !j.start(info) {
			return // cancelled while queued
		}
		s.metrics.running.Inc()
		defer s.metrics.running.Dec()
		sp := j.spec
		controls, err := s.pool.controls(p, sp.controls)
		if err != nil {
			j.finish(err)
			return
		}
		for it := range max(1, sp.iterations) {
			itCtx, skip := context.WithCancel(j.ctx)
			j.update(func() { j.iteration, j.skip, j.progress = it, skip, diffusion.Progress{} })
			req := sp.req
			req.Controls = controls
			req.Seed += uint64(it * max(1, req.BatchSize))
			req.Preview = true
			req.Progress = func(pr diffusion.Progress) { j.update(func() { j.progress = pr }) }
			var res *diffusion.Result
			switch sp.mode {
			case modeTxt2Img:
				res, err = p.Txt2Img(itCtx, req)
			case modeImg2Img:
				res, err = p.Img2Img(itCtx, diffusion.Img2ImgRequest{Request: req, Image: sp.image, Strength: sp.strength})
			case modeInpaint:
				res, err = p.Inpaint(itCtx, diffusion.InpaintRequest{Request: req, Image: sp.image, Mask: sp.mask, Strength: sp.strength})
			}
			// Skipped: the iteration's context ended but not the job's (read before skip()
			// below cancels it anyway, else every error would pass for a skip).
			skipped := itCtx.Err() != nil && j.ctx.Err() == nil
			skip()
			if err != nil && skipped {
				err = nil // on to the next iteration
				continue
			}
			if err != nil {
				break
			}
			for _, d := range res.Timings.Steps {
				s.metrics.steps.Observe(d.Seconds())
			}
			j.update(func() { j.results = append(j.results, res) })
		}
		if err != nil && j.ctx.Err() != nil {
			err = context.Cause(j.ctx)
		}
		j.finish(err)
	})
	if err != nil {
		j.finish(err)
	}
}

// finish records how the job ended (once: later calls do nothing) and closes done.
func (j *job) finish(err error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.finishLocked(err)
}

func (j *job) finishLocked(err error) {
	if !j.finished.IsZero() {
		return
	}
	j.finished, j.err, j.skip = time.Now(), err, nil
	switch {
	case err == nil:
		j.state = stateSucceeded
	case errors.Is(err, context.DeadlineExceeded):
		j.state = stateFailed
	case j.ctx.Err() != nil:
		j.state = stateCancelled
	default:
		j.state = stateFailed
	}
	j.notifyLocked()
	close(j.done)
}

// skipIteration ends the running iteration of the job; the next one starts.
func (j *job) skipIteration() {
	j.mu.Lock()
	skip := j.skip
	j.mu.Unlock()
	if skip != nil {
		skip()
	}
}

// images are the job's images so far with the params and batch index of each.
func (v jobView) images() []generated {
	var out []generated
	for _, r := range v.Results {
		for i, img := range r.Images {
			out = append(out, generated{img: img, params: r.Params, index: i})
		}
	}
	return out
}

type generated struct {
	img    image.Image
	params diffusion.Params
	index  int // in its batch
}

func (g generated) seed() uint64 { return g.params.Seed + uint64(g.index) }

// outputSize is the size of the job's images: the one asked for, else the input image's
// rounded down to 8, else the model's native size.
func (j *job) outputSize(v jobView) (int, int) {
	if w, h := j.spec.req.Width, j.spec.req.Height; w != 0 && h != 0 {
		return w, h
	}
	if j.spec.image != nil {
		b := j.spec.image.Bounds()
		return b.Dx() / 8 * 8, b.Dy() / 8 * 8
	}
	return v.Model.Width, v.Model.Height
}

// wait waits for the job to end or for the request to go; false when it went.
func wait(r interface{ Done() <-chan struct{} }, j *job) bool {
	select {
	case <-j.done:
		return true
	case <-r.Done():
		return false
	}
}

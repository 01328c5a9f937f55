package diffusion

import (
	"context"
	"errors"
	"fmt"
	"image"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/gosd/gosd/binding"
	"github.com/gosd/gosd/diffusion/modelfile"
	"github.com/gosd/gosd/diffusion/schedule"
	"github.com/gosd/gosd/diffusion/tokenizer"
)

// Pipeline is an opened Stable Diffusion model ready to generate images.
//
// A Pipeline is safe for concurrent use: calls are serialised, one at a time, on its
// native context (which uses every CPU thread or the whole GPU on its own). A call
// waiting for its turn returns its context's error as soon as the context ends. To
// generate in parallel, Clone the Pipeline: each clone has a native context of its own
// and shares the loaded weights (Pipelines opened separately each load their own copy).
type Pipeline struct {
	// turn is held by the call using the native context (a one-slot semaphore, so that
	// waiting for it can be abandoned when the caller's context ends).
	turn chan struct{}
	// closing is cancelled by Close: it interrupts the running call and every waiter.
	closing   context.Context
	stopAll   context.CancelFunc
	closeOnce sync.Once
	closeErr  error
	model     *modelfile.Model
	eng       *engine
	tok       *tokenizer.Tokenizer
	padID     int
	tok2      *tokenizer.Tokenizer // SDXL's tokenizer_2; nil for one text encoder
	padID2    int
	desc      modelDesc
	hash      *modelHash
	log       *slog.Logger
	taesd     *modelfile.TAESD // nil unless opened WithTAESD
}

// ModelInfo describes an opened model.
type ModelInfo struct {
	Name           string // file or folder name
	Path           string
	Family         modelfile.Family
	Prediction     schedule.PredictionType
	Width, Height  int     // native image size
	DefaultSampler Sampler // the scheduler its config names
	TextLayers     int
	Inpainting     bool   // a 9-channel inpainting UNet
	Upscaler       bool   // an x4 upscaler: use Upscale
	Device         Device // where it runs
	Backend        string // the runtime's description of the device
	Summary        modelfile.Summary
}

// Open loads a model: a single-file checkpoint (.safetensors, .ckpt) or a diffusers folder.
// The family is detected (override with WithFamily).
func Open(path string, opts ...Option) (*Pipeline, error) {
	return OpenContext(context.Background(), path, opts...)
}

// OpenContext is Open with a context: a load that ctx cancels stops at the next of its
// phases (reading the files, loading each network into the runtime) and returns ctx's
// error, with everything it had loaded freed.
func OpenContext(ctx context.Context, path string, opts ...Option) (*Pipeline, error) {
	if ctx == nil {
		return nil, invalid("nil context")
	}
	o, log := applyOptions(opts)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m, err := modelfile.Load(path, o.model...)
	if err != nil {
		return nil, err
	}
	var taesd *modelfile.TAESD
	if o.taesd != "" {
		if taesd, err = modelfile.LoadTAESD(o.taesd); err == nil {
			if err = checkTAESD(taesd, m); err != nil {
				taesd.Close()
			}
		}
		if err != nil {
			m.Close()
			return nil, err
		}
	}
	p, err := open(ctx, m, taesd, o, log)
	if err != nil {
		m.Close()
		if taesd != nil {
			taesd.Close()
		}
		return nil, err
	}
	return p, nil
}

func open(ctx context.Context, m *modelfile.Model, taesd *modelfile.TAESD, o openOptions, log *slog.Logger) (*Pipeline, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	lib, backend, device, err := loadRuntime(o, log)
	if err != nil {
		return nil, err
	}
	precision, err := runtimePrecision(o.precision)
	if err != nil {
		return nil, err
	}
	eng, err := newEngineWithPrecision(lib, backend, o.threads, precision)
	if err != nil {
		return nil, err
	}
	lib.CtxSetLog(eng.ctx, runtimeLog(log))
	if err := eng.load(ctx, m); err != nil {
		eng.close()
		return nil, err
	}
	if taesd != nil {
		if err := eng.loadTAESD(taesd); err != nil {
			eng.close()
			return nil, err
		}
	}
	p := &Pipeline{turn: make(chan struct{}, 1), model: m, eng: eng, hash: hashModelFile(m.Path), log: log, taesd: taesd}
	p.closing, p.stopAll = context.WithCancel(context.Background())
	if err := p.setup(m, device); err != nil {
		eng.close()
		return nil, err
	}
	log.Info("model opened", "path", m.Path, "family", m.Family, "device", device, "backend", lib.CtxBackendDescription(eng.ctx))
	return p, nil
}

// loadRuntime loads the runtime library for the options' device and picks its backend.
func loadRuntime(o openOptions, log *slog.Logger) (*binding.Library, binding.Backend, Device, error) {
	pref := binding.PreferAuto
	switch o.device {
	case DeviceCPU:
		pref = binding.PreferCPU
	case DeviceCUDA:
		pref = binding.PreferCUDA
	case DeviceAuto:
	default:
		return nil, 0, 0, fmt.Errorf("%w: unknown device %d", ErrInvalidRequest, int(o.device))
	}
	lib, err := binding.Load(binding.LoadOptions{Path: o.library, Backend: pref})
	if err != nil {
		return nil, 0, 0, err
	}
	if r := lib.FallbackReason(); r != "" {
		log.Warn("the GPU build of the runtime is not usable; using the CPU", "reason", r)
	}
	backend, device := binding.BackendCPU, DeviceCPU
	if pref != binding.PreferCPU {
		if ok, why := lib.BackendAvailable(binding.BackendCUDA); ok {
			backend, device = binding.BackendCUDA, DeviceCUDA
		} else if pref == binding.PreferCUDA {
			return nil, 0, 0, fmt.Errorf("%w: no usable GPU: %s", ErrDevice, why)
		}
	}
	if o.threads < 0 {
		return nil, 0, 0, fmt.Errorf("%w: threads %d", ErrInvalidRequest, o.threads)
	}
	return lib, backend, device, nil
}

func slogLevel(l binding.LogLevel) slog.Level {
	switch l {
	case binding.LogDebug:
		return slog.LevelDebug
	case binding.LogInfo:
		return slog.LevelInfo
	case binding.LogWarn:
		return slog.LevelWarn
	}
	return slog.LevelError
}

func (p *Pipeline) setup(m *modelfile.Model, device Device) error {
	for _, w := range m.Warnings {
		p.log.Warn(w, "path", m.Path)
	}
	var err error
	if m.TokenizerDir != "" {
		if p.tok, err = tokenizer.Load(m.TokenizerDir); err != nil {
			return err
		}
		p.padID = p.tok.PadID()
	} else {
		if p.tok, err = tokenizer.Default(); err != nil {
			return err
		}
		p.padID = p.tok.EOS()
		if m.Family == modelfile.FamilySD2 || m.RequiresAestheticsScore {
			p.padID = 0 // OpenCLIP (SD 2.x, SDXL refiner's encoder) pads with "!"
		}
	}
	// Every id the tokenizer can produce must index the text encoder's embedding table.
	if n, embedded := p.tok.VocabSize(), m.TextEncoder.Config.VocabSize; n > embedded {
		return fmt.Errorf("%w: the tokenizer has %d tokens, the text encoder embeds %d", ErrBadModel, n, embedded)
	}
	if err := p.setupSecondTokenizer(m); err != nil {
		return err
	}
	if p.desc, err = describe(m); err != nil {
		return err
	}
	p.desc.info.Device = device
	p.desc.info.Backend = p.eng.lib.CtxBackendDescription(p.eng.ctx)
	return nil
}

// Info describes the opened model.
func (p *Pipeline) Info() ModelInfo { return p.desc.info }

// MemoryStats is the runtime's device memory use, in bytes.
type MemoryStats struct {
	// TensorsBytes is held by the live tensors the pipeline created (inputs, buffers).
	TensorsBytes uint64
	// WeightsBytes is held by the loaded networks: weights copied or packed for the
	// device; weights used in place from the mapped file on the CPU are not counted.
	// Pipelines sharing the networks (Clone) report the same one copy.
	WeightsBytes uint64
	// ArenaReservedBytes is the scratch memory reserved for activations.
	ArenaReservedBytes uint64
	// ArenaPeakBytes is the high-water mark of activation memory in use.
	ArenaPeakBytes uint64
}

// SetProfiling turns the runtime's per-op timing on (clearing earlier counts) or off.
// Profiling on a GPU waits for every op, which slows the run.
func (p *Pipeline) SetProfiling(enabled bool) {
	if p.acquire(context.Background()) != nil {
		return
	}
	defer p.release()
	p.eng.lib.CtxProfileReset(p.eng.ctx)
	p.eng.lib.CtxSetProfiling(p.eng.ctx, enabled)
}

// ProfileReport is the runtime's per-op timing table since SetProfiling(true).
func (p *Pipeline) ProfileReport() string {
	if p.acquire(context.Background()) != nil {
		return ""
	}
	defer p.release()
	return p.eng.lib.CtxProfileReport(p.eng.ctx)
}

// MemoryStats reports the runtime's memory use so far.
func (p *Pipeline) MemoryStats() (MemoryStats, error) {
	if err := p.acquire(context.Background()); err != nil {
		return MemoryStats{}, err
	}
	defer p.release()
	s, err := p.eng.lib.CtxMemoryStats(p.eng.ctx)
	if err != nil {
		return MemoryStats{}, err
	}
	return MemoryStats{TensorsBytes: s.TensorsBytes, WeightsBytes: s.WeightsBytes,
		ArenaReservedBytes: s.ArenaReservedBytes, ArenaPeakBytes: s.ArenaPeakBytes}, nil
}

// Close cancels the call that is running (it returns ErrClosed within one operation of
// the runtime), makes every waiting and later call return ErrClosed, then frees the
// native resources; the last of the Pipelines sharing the networks (see Clone) also frees
// the networks and unmaps the model. It waits for the running call to return, not
// for it to finish its work. Close is idempotent.
func (p *Pipeline) Close() error {
	p.closeOnce.Do(func() {
		p.stopAll()
		p.turn <- struct{}{} // held for good: nothing runs after this
		if p.eng.release() { // the last of the Pipelines sharing the networks
			p.closeErr = p.model.Close()
			if p.taesd != nil {
				p.closeErr = errors.Join(p.closeErr, p.taesd.Close())
			}
		}
	})
	return p.closeErr
}

// acquire waits for the native context, giving up when ctx ends or the pipeline closes.
func (p *Pipeline) acquire(ctx context.Context) error {
	if ctx == nil {
		return invalid("nil context")
	}
	if p.closing.Err() != nil {
		return ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case p.turn <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	case <-p.closing.Done():
		return ErrClosed
	}
	if p.closing.Err() != nil { // Close won the race for the slot's next holder
		p.release()
		return ErrClosed
	}
	return nil
}

func (p *Pipeline) release() { <-p.turn }

// guard runs a native call so that ctx's cancellation interrupts it (the runtime checks
// its cancel flag between operations) and reports ctx's error instead of the runtime's.
func (p *Pipeline) guard(ctx context.Context, call func() error) error {
	return guardNative(ctx, p.eng.lib, p.eng.ctx, call)
}

// guardNative runs a native call on c so that ctx's cancellation interrupts it, as guard.
func guardNative(ctx context.Context, lib *binding.Library, c binding.Ctx, call func() error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	lib.CtxClearCancel(c)
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		lib.CtxCancel(c)
		close(fired)
	})
	err := call()
	if !stop() {
		<-fired // the cancel ran: make sure it cannot reach a later call
	}
	if err != nil && errors.Is(err, binding.ErrCancelled) && ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// Txt2Img generates images from a prompt.
func (p *Pipeline) Txt2Img(ctx context.Context, req Request) (*Result, error) {
	return p.generate(ctx, req, nil)
}

// Img2Img repaints an image guided by a prompt.
func (p *Pipeline) Img2Img(ctx context.Context, req Img2ImgRequest) (*Result, error) {
	r, init, err := p.desc.img2img(req)
	if err != nil {
		return nil, err
	}
	return p.generate(ctx, r, init)
}

// Inpaint repaints the masked part of an image. Models with a 9-channel inpainting UNet
// get the mask and masked image as extra UNet input; others blend in latent space after
// every step.
func (p *Pipeline) Inpaint(ctx context.Context, req InpaintRequest) (*Result, error) {
	r, init, err := p.desc.inpaint(req)
	if err != nil {
		return nil, err
	}
	return p.generate(ctx, r, init)
}

// initImage is the starting point of img2img, inpainting and upscaling.
type initImage struct {
	image, mask image.Image
	strength    float64
	upscale     *upscaleInit // set for Upscale: image is the low-resolution input
}

func (p *Pipeline) generate(ctx context.Context, req Request, init *initImage) (*Result, error) {
	// A request that cannot run fails at once rather than after its wait for the turn.
	prompt := req.Prompt
	req, err := promptLoRAs(req)
	if err != nil {
		return nil, err
	}
	par, sched, err := p.desc.plan(req, init)
	if err != nil {
		return nil, err
	}
	if err := checkLoRAs(req.LoRAs); err != nil {
		return nil, err
	}
	if par.embeds, par.Embeddings, err = p.requestEmbeddings(req); err != nil {
		return nil, err
	}
	if par.Controls, err = p.checkControls(req.Controls, par.Width, par.Height); err != nil {
		return nil, err
	}
	if _, _, err := p.codecs(req); err != nil {
		return nil, err
	}
	var res *Result
	err = p.runLocked(ctx, func(ctx context.Context) error {
		return p.withLoRAs(req.LoRAs, func(applied []AppliedLoRA) (err error) {
			par.LoRAs = applied
			res, err = p.generateLocked(ctx, req, par, sched, init)
			return err
		})
	})
	if err != nil {
		return nil, err
	}
	res.Params.Prompt = prompt
	return res, nil
}

// runLocked runs work on the pipeline's native context: it waits for its turn (giving up
// when ctx ends), and the context work gets ends with ctx or when Close interrupts it,
// which work's error then reports as ErrClosed.
func (p *Pipeline) runLocked(ctx context.Context, work func(context.Context) error) error {
	if err := p.acquire(ctx); err != nil {
		return err
	}
	defer p.release()
	runCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := context.AfterFunc(p.closing, func() { cancel(ErrClosed) })
	defer stop()
	err := work(runCtx)
	if err != nil && errors.Is(context.Cause(runCtx), ErrClosed) {
		return ErrClosed
	}
	return err
}

func (p *Pipeline) generateLocked(ctx context.Context, req Request, par Params, sched schedule.Scheduler, init *initImage) (*Result, error) {
	start := time.Now()
	var tm Timings
	images, err := p.run(ctx, req, par, sched, init, &tm)
	if err != nil {
		return nil, err
	}
	par.ModelHash = p.hash.get()
	tm.Total = time.Since(start)
	par.Elapsed = tm.Total
	return &Result{Images: images, Params: par, Timings: tm}, nil
}

// run is one generation, shared by the modes: the conditioner encodes the prompts, the
// codec the init image, the sampling loop steps the denoiser, and the codec decodes.
func (p *Pipeline) run(ctx context.Context, req Request, par Params, sched schedule.Scheduler, init *initImage, tm *Timings) ([]image.Image, error) {
	dn, err := p.denoise(ctx, req, par, sched, init, nil, tm)
	if err != nil {
		return nil, err
	}
	return p.decodeImages(ctx, dn, req, par, tm)
}

// stage is part of a schedule (a base → refiner hand-over): sampling runs entries
// [first, end) and, when from is set, starts from those latents as they are.
type stage struct {
	from       []float32
	first, end int
}

// denoised are the latents sampling ends with, (batch, channels, h, w), and how the
// decoder tiles them (the x4 upscaler's tiles; zero: whole).
type denoised struct {
	x       []float32
	h, w    int
	vaeTile tiling
}

// denoise conditions on the request's prompts and runs the sampling loop from noise,
// the init image, or a stage's latents (nil: the whole schedule), then the hires fix's
// second pass if asked, returning the latents.
func (p *Pipeline) denoise(ctx context.Context, req Request, par Params, sched schedule.Scheduler, init *initImage, stg *stage, tm *Timings) (denoised, error) {
	vae, err := p.vaeCodec(req.VAETiling)
	if err != nil {
		return denoised{}, err
	}
	f := vae.factor()
	b, lh, lw := par.BatchSize, par.Height/f, par.Width/f
	n := b * vae.channels() * lh * lw

	phase := time.Now()
	var cond *conditioning
	err = p.guard(ctx, func() (err error) {
		cond, err = p.conditioner().condition(par, par.GuidanceScale > 1)
		return err
	})
	if err != nil {
		return denoised{}, err
	}
	defer cond.free()
	tm.TextEncode += time.Since(phase)

	gen := newBatchGenerator(par.RNG, par.Seed, b)
	st := start{}
	switch {
	case stg != nil && stg.from != nil:
		st.x, st.first = stg.from, stg.first
	case init == nil:
		st.x = make([]float32, n)
		gen.Normal(st.x)
		scale(st.x, float32(sched.InitNoiseSigma()))
	case init.upscale != nil:
		st = p.prepareUpscale(par, sched, init, gen, lh, lw)
	default:
		phase = time.Now()
		if st, err = p.prepareInit(ctx, vae, par, sched, init, gen); err != nil {
			return denoised{}, err
		}
		tm.Encode = time.Since(phase)
	}
	if stg != nil {
		st.end = stg.end
	}

	d := &denoiser{unet: p.eng.unetNet(), cond: cond, batch: b, h: lh, w: lw,
		guidance: par.GuidanceScale, rescale: par.GuidanceRescale, extra: st.extra, classLabels: st.classLabels, tile: st.tile}
	if len(par.Controls) > 0 {
		if d.control, err = p.newControls(req.Controls, par.Controls, cond, b, par.Width, par.Height, d.cfg()); err != nil {
			return denoised{}, err
		}
		defer d.control.free()
		d.control.total = len(sched.Timesteps()) - st.first
	}
	x, err := p.sample(ctx, req, sched, d, st, gen, tm)
	if err != nil {
		return denoised{}, err
	}
	if req.Hires != nil {
		second := par
		hp, err := p.desc.planHires(req.Hires, &second)
		if err != nil {
			return denoised{}, err
		}
		if x, lh, lw, err = p.hiresPass(ctx, req, par, hp, cond, x, lh, lw, tm); err != nil {
			return denoised{}, err
		}
	}
	return denoised{x: x, h: lh, w: lw, vaeTile: st.vaeTile}, nil
}

// decodeImages decodes denoised latents into the request's images with the decoder it
// names.
func (p *Pipeline) decodeImages(ctx context.Context, dn denoised, req Request, par Params, tm *Timings) ([]image.Image, error) {
	_, dec, err := p.codecs(req)
	if err != nil {
		return nil, err
	}
	// Sampling is over: the weights the runtime reads from the mapped files (convolution
	// kernels on the CPU) need not stay resident beside the decoder's activations, a
	// generation's largest (SDXL at 1024²: 0.7 GB of pages). The next generation faults
	// them back in from the page cache.
	_ = p.model.ReleaseMemory() // advice: a failure only leaves the pages resident
	f, c := dec.factor(), dec.channels()
	b, lh, lw := par.BatchSize, dn.h, dn.w
	phase := time.Now()
	var pix []float32
	err = p.guard(ctx, func() (err error) {
		pix, err = blendTiles(dn.vaeTile, b, 3, lh, lw, f, func(r rect) ([]float32, error) {
			return dec.decode(crop(dn.x, b*c, lh, lw, r), b, r.h, r.w)
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := checkFinite(strings.ToUpper(req.Decoder.String())+" decoder", pix); err != nil {
		return nil, err
	}
	images := toImages(pix, b, lh*f, lw*f)
	tm.Decode = time.Since(phase)
	return images, nil
}

// codecs are the codecs of req: the model's VAE (tiled as req asks) encodes the init
// image; the decoder req names decodes the final latents.
func (p *Pipeline) codecs(req Request) (enc, dec codec, err error) {
	vae, err := p.vaeCodec(req.VAETiling)
	if err != nil {
		return nil, nil, err
	}
	switch req.Decoder {
	case DecoderVAE:
		return vae, vae, nil
	case DecoderTAESD:
		if t, ok := p.taesdCodec(); ok {
			return vae, t, nil
		}
		return nil, nil, invalid("Decoder taesd needs a TAESD: open the model WithTAESD")
	}
	return nil, nil, invalid("unknown decoder %d", int(req.Decoder))
}

func scale(x []float32, s float32) {
	for k := range x {
		x[k] *= s
	}
}

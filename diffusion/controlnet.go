package diffusion

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"image"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/gosd/gosd/binding"
	"github.com/gosd/gosd/diffusion/modelfile"
)

// ControlNet is a ControlNet (diffusers' ControlNetModel) loaded by Pipeline.LoadControlNet
// into the runtime of that Pipeline: it runs in requests of that Pipeline and of its
// clones (they share the loaded networks), any number of times, until Close.
type ControlNet struct {
	// mu is held shared by the requests running the ControlNet (and by checks), so that
	// Close, holding it exclusively, waits for them before it frees the weights.
	mu     sync.RWMutex
	p      *Pipeline
	pins   runtime.Pinner // the Go memory of the weights (file mappings pin to nothing)
	file   *modelfile.ControlNet
	model  binding.Model
	cfg    binding.ControlNetConfig
	bgr    bool // the model takes the control image's channels as BGR
	name   string
	hash   string // legacyModelHash of its file
	closed bool
}

// Control conditions a request on a control image through a ControlNet, as diffusers'
// StableDiffusionControlNetPipeline. Several Controls sum their residuals.
type Control struct {
	Model *ControlNet
	// Image is the control image (edges, depth, pose, ...) as the model expects it,
	// resized (Lanczos, stretching) to the output size as diffusers' image processor does;
	// its pixels are taken as values in [0, 1].
	Image image.Image
	// Condition, instead of Image, is the control image as values used as they are: (3,
	// Height, Width) planes R, G, B of the output's size, such as the inpainting
	// ControlNet's condition from control.InpaintCondition (-1 where masked).
	Condition []float32
	// Scale is controlnet_conditioning_scale (0: the default 1). To switch a Control off,
	// leave it out of the request.
	Scale float64
	// Start and End are control_guidance_start / _end, fractions of the sampling
	// evaluations in [0, 1] (defaults 0 and 1; End 0 means 1): the ControlNet acts on
	// evaluation i of n while i/n >= Start and (i+1)/n <= End, and is not run otherwise.
	Start, End float64
	// GuessMode runs the ControlNet on the prompt's half of the guidance batch only, its
	// residuals scaled from 0.1 (first skip) to 1 (mid block), as diffusers' guess_mode.
	GuessMode bool
	// Preprocessor names what made Image from a picture ("canny", "invert"; "" for a
	// ready-made map) and PreprocessorParams its thresholds (Canny's low and high); they
	// are only recorded in the parameters, as the ControlNet extension's Module and
	// Threshold A / B.
	Preprocessor       string
	PreprocessorParams []float64
}

// ControlParams are the parameters a Control actually used, for the image's metadata.
type ControlParams struct {
	Model              string // file or folder name of the ControlNet
	ModelHash          string // the extension's 8-digit hash of a single file (legacyModelHash); "" for folders
	Preprocessor       string
	PreprocessorParams []float64
	Scale              float64
	Start, End         float64
	GuessMode          bool
}

// A1111 is the unit's entry in AUTOMATIC1111's parameters as the sd-webui-controlnet
// extension writes it (the value of "ControlNet i"): its field names, Python's float
// formatting, the model as "name [hash]". Guess mode is its "ControlNet is more
// important" control mode; diffusers' resizing is its "Just Resize".
func (c ControlParams) A1111() string {
	module := c.Preprocessor
	if module == "" {
		module = "none"
	}
	model := c.Model
	switch strings.ToLower(filepath.Ext(model)) {
	case ".safetensors", ".pth", ".pt", ".ckpt", ".bin": // the extension lists files without theirs
		model = strings.TrimSuffix(model, filepath.Ext(model))
	}
	// The extension's values never hold its separators: a file name could.
	clean := strings.NewReplacer(",", "_", ":", "_")
	model, module = clean.Replace(model), clean.Replace(module)
	if c.ModelHash != "" {
		model += " [" + c.ModelHash + "]"
	}
	mode := "Balanced"
	if c.GuessMode {
		mode = "ControlNet is more important"
	}
	fields := []string{"Module: " + module, "Model: " + model, "Weight: " + pyFloat(c.Scale), "Resize Mode: Just Resize"}
	for i, v := range c.PreprocessorParams[:min(2, len(c.PreprocessorParams))] {
		fields = append(fields, fmt.Sprintf("Threshold %c: %s", 'A'+i, pyFloat(v)))
	}
	fields = append(fields, "Guidance Start: "+pyFloat(c.Start), "Guidance End: "+pyFloat(c.End),
		"Pixel Perfect: False", "Control Mode: "+mode)
	return strings.Join(fields, ", ")
}

// pyFloat formats v as Python's str(float).
func pyFloat(v float64) string {
	s := strconv.FormatFloat(v, 'f', -1, 64)
	if !strings.ContainsAny(s, ".eEn") {
		s += ".0"
	}
	return s
}

// LoadControlNet loads a ControlNet: a diffusers ControlNetModel folder or a single file
// (lllyasviel's control_v11*: .safetensors, .pth; SDXL ones in the original layout or with
// diffusers' names, such as diffusers_xl_canny_full), its config read off the shapes and,
// for what they do not tell (attention heads), this Pipeline's UNet. It must have been made
// for this Pipeline's model (the same encoder shapes). The
// weights are loaded once and shared by the Pipeline's clones; free them with Close.
func (p *Pipeline) LoadControlNet(path string) (*ControlNet, error) {
	if err := p.acquire(context.Background()); err != nil {
		return nil, err
	}
	defer p.release()
	f, err := modelfile.LoadControlNetFor(path, &p.model.UNet.Config)
	if err != nil {
		return nil, err
	}
	cn, err := p.loadControlNet(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	return cn, nil
}

func (p *Pipeline) loadControlNet(f *modelfile.ControlNet) (*ControlNet, error) {
	uc, err := unetConfig(f.Config.UNetConfig)
	if err != nil {
		return nil, err
	}
	base := p.eng.unetCfg
	fits := uc.Levels == base.Levels && uc.BlockOutChannels == base.BlockOutChannels &&
		uc.LayersPerBlock == base.LayersPerBlock && uc.CrossAttentionDim == base.CrossAttentionDim &&
		uc.InChannels == p.eng.vaeCfg.LatentChannels
	if fits && (uc.AdditionEmbedType != base.AdditionEmbedType ||
		uc.ProjectionClassEmbeddingsInputDim != base.ProjectionClassEmbeddingsInputDim ||
		uc.AdditionTimeEmbedDim != base.AdditionTimeEmbedDim) {
		// An SDXL ControlNet embeds the pooled text and the time ids as the base UNet does.
		return nil, fmt.Errorf("%w: ControlNet %s (added embedding %d, %d inputs) does not fit this model's UNet (added embedding %d, %d inputs)",
			ErrInvalidRequest, filepath.Base(f.Path), uc.AdditionEmbedType, uc.ProjectionClassEmbeddingsInputDim,
			base.AdditionEmbedType, base.ProjectionClassEmbeddingsInputDim)
	}
	if !fits {
		return nil, fmt.Errorf("%w: ControlNet %s (channels %v, %d layers, text width %d, %d input channels) does not fit this model (channels %v, %d layers, text width %d, %d latent channels)",
			ErrInvalidRequest, filepath.Base(f.Path), uc.BlockOutChannels[:uc.Levels], uc.LayersPerBlock, uc.CrossAttentionDim, uc.InChannels,
			base.BlockOutChannels[:base.Levels], base.LayersPerBlock, base.CrossAttentionDim, p.eng.vaeCfg.LatentChannels)
	}
	if f.Config.ConditioningChannels != 3 {
		return nil, fmt.Errorf("%w: ControlNet %s takes %d-channel control images (only RGB ones are supported)",
			ErrUnsupported, filepath.Base(f.Path), f.Config.ConditioningChannels)
	}
	cfg := controlNetConfig(f.Config, uc)
	cn := &ControlNet{p: p, file: f, cfg: cfg, bgr: f.Config.ChannelOrder == "bgr",
		name: filepath.Base(f.Path), hash: legacyModelHash(f.Path)}
	ws, err := weightTable(f.Tensors, &cn.pins)
	if err == nil {
		cn.model, err = p.eng.lib.ControlNetLoad(p.eng.ctx, &cfg, ws)
	}
	if err != nil {
		cn.pins.Unpin()
		return nil, err
	}
	if err := f.ReleaseMemory(); err != nil {
		p.log.Warn("releasing the ControlNet's mapped pages", "err", err)
	}
	return cn, nil
}

// legacyModelHash is AUTOMATIC1111's old short model hash, which the ControlNet extension
// shows beside a ControlNet's name: the first 8 hex digits of the SHA-256 of the 64 KiB
// at offset 1 MiB (less, or none, in smaller files); "" for a folder or a file that
// cannot be read.
func legacyModelHash(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || st.IsDir() {
		return ""
	}
	buf := make([]byte, 0x10000)
	n, err := f.ReadAt(buf, 0x100000)
	if err != nil && !errors.Is(err, io.EOF) {
		return ""
	}
	sum := sha256.Sum256(buf[:n])
	return hex.EncodeToString(sum[:4])
}

// controlNetConfig is the runtime config of c, whose encoder's is uc.
func controlNetConfig(c modelfile.ControlNetConfig, uc binding.UNetConfig) binding.ControlNetConfig {
	cfg := binding.ControlNetConfig{UNet: uc, ConditioningChannels: int32(c.ConditioningChannels),
		CondLevels: int32(len(c.ConditioningEmbeddingOutChannels))}
	for i, ch := range c.ConditioningEmbeddingOutChannels {
		cfg.CondChannels[i] = int32(ch)
	}
	return cfg
}

// Name is the ControlNet's file or folder name.
func (c *ControlNet) Name() string { return c.name }

// Close waits for the requests running the ControlNet, frees its weights (waiting for
// the Pipeline that loaded it to finish its call) and unmaps its files. Requests using it
// afterwards fail. If that Pipeline is already closed, the runtime's copy of the weights
// goes with the last of its clones. Close is idempotent.
func (c *ControlNet) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	// Not under mu: a request on c.p holds its turn while it waits for mu.
	if c.p.acquire(context.Background()) == nil {
		c.p.eng.lib.ModelFree(c.p.eng.ctx, c.model)
		c.p.release()
	}
	err := c.file.Close()
	c.pins.Unpin()
	return err
}

// usable reports why the ControlNet cannot run on p, or nil.
func (c *ControlNet) usable(p *Pipeline) error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	switch {
	case c.closed:
		return invalid("ControlNet %s is closed", c.name)
	case c.p.eng.share != p.eng.share:
		return invalid("ControlNet %s was loaded by another Pipeline (load it with this one or a Pipeline it was cloned from)", c.name)
	}
	return nil
}

// checkControls validates a request's Controls and resolves their defaults.
func (p *Pipeline) checkControls(cs []Control, width, height int) ([]ControlParams, error) {
	var out []ControlParams
	for i, c := range cs {
		if c.Model == nil {
			return nil, invalid("control %d: no ControlNet", i)
		}
		if err := c.Model.usable(p); err != nil {
			return nil, fmt.Errorf("control %d: %w", i, err)
		}
		switch {
		case c.Condition != nil && c.Image != nil:
			return nil, invalid("control %d: an Image and a Condition: give one", i)
		case c.Condition != nil && len(c.Condition) != 3*width*height:
			return nil, invalid("control %d: a condition of %d values for a %dx%d output (want 3 x %d x %d)", i, len(c.Condition), width, height, height, width)
		case c.Condition != nil:
			for k, v := range c.Condition {
				if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
					return nil, invalid("control %d: condition value %d is %g", i, k, v)
				}
			}
		default:
			if err := checkImage(fmt.Sprintf("control %d: image", i), c.Image); err != nil {
				return nil, invalid("%v", err)
			}
		}
		par := ControlParams{Model: c.Model.name, ModelHash: c.Model.hash, Preprocessor: c.Preprocessor,
			PreprocessorParams: c.PreprocessorParams, Scale: c.Scale, Start: c.Start, End: c.End, GuessMode: c.GuessMode}
		if par.Scale == 0 {
			par.Scale = 1
		}
		if par.End == 0 {
			par.End = 1
		}
		switch {
		case math.IsNaN(par.Scale) || math.IsInf(par.Scale, 0) || par.Scale < 0:
			return nil, invalid("control %d: scale %g (want a finite value >= 0)", i, c.Scale)
		case !(par.Start >= 0 && par.Start < par.End && par.End <= 1):
			return nil, invalid("control %d: start %g and end %g (want 0 <= start < end <= 1)", i, c.Start, c.End)
		}
		out = append(out, par)
	}
	return out, nil
}

// controlRun is one Control of a request: its control image uploaded once, its resolved
// parameters.
type controlRun struct {
	cn   *ControlNet
	cond binding.Tensor // (rows, channels, H, W) in [0, 1]
	par  ControlParams
}

// controls runs a request's ControlNets at each evaluation and keeps their summed
// residuals, in backend memory, for the UNet call that follows.
type controls struct {
	lib     *binding.Library
	ctx     binding.Ctx
	s       *scope
	runs    []controlRun
	total   int // evaluations of the request
	batch   int
	cfg     bool
	context binding.Tensor // the request's context (2B rows with guidance)
	// condContext is the prompt's rows of the context: the input of guess-mode ControlNets
	// under guidance; made on first use.
	condContext binding.Tensor
	// SDXL's added conditioning, rows as the context's (nil for other models).
	textEmbeds, timeIDs []float32
	down                []binding.Tensor
	mid                 binding.Tensor
	x, t, te, ids       map[int]binding.Tensor // input tensors by rows
	held                []*ControlNet          // each read-locked once until free
}

// newControls uploads the control images for a request of batch images of w x h pixels;
// the caller calls free when the request ends.
func (p *Pipeline) newControls(cs []Control, pars []ControlParams, cond *conditioning, batch, w, h int, cfg bool) (*controls, error) {
	lib, ctx := p.eng.lib, p.eng.ctx
	c := &controls{lib: lib, ctx: ctx, s: &scope{lib: lib, ctx: ctx}, batch: batch, cfg: cfg,
		context: cond.context, textEmbeds: cond.textEmbeds, timeIDs: cond.timeIDs,
		x: map[int]binding.Tensor{}, t: map[int]binding.Tensor{}, te: map[int]binding.Tensor{}, ids: map[int]binding.Tensor{}}
	for _, ctl := range cs {
		if slices.Contains(c.held, ctl.Model) {
			continue
		}
		// Held until the request ends, so that Close waits for it; closed meanwhile
		// (after the request's checks) is refused here.
		ctl.Model.mu.RLock()
		c.held = append(c.held, ctl.Model)
		if ctl.Model.closed {
			c.free()
			return nil, invalid("ControlNet %s is closed", ctl.Model.name)
		}
	}
	for i, ctl := range cs {
		rows := batch
		if cfg && !pars[i].GuessMode {
			rows *= 2
		}
		img := ctl.Condition
		if img == nil {
			img = controlImage(ctl.Image, w, h)
		}
		if ctl.Model.bgr {
			img = reverseChannels(img, w*h)
		}
		data := make([]float32, 0, rows*len(img))
		for range rows {
			data = append(data, img...)
		}
		t, err := c.s.f32(data, int64(rows), 3, int64(h), int64(w))
		if err != nil {
			c.free()
			return nil, err
		}
		c.runs = append(c.runs, controlRun{cn: ctl.Model, cond: t, par: pars[i]})
	}
	return c, nil
}

func (c *controls) free() {
	c.s.done()
	for _, cn := range c.held {
		cn.mu.RUnlock()
	}
	c.held = nil
}

// reverseChannels turns (3, plane) RGB into BGR, for models that take BGR.
func reverseChannels(v []float32, plane int) []float32 {
	out := make([]float32, 0, len(v))
	return append(append(append(out, v[2*plane:]...), v[plane:2*plane]...), v[:plane]...)
}

// controlImage is the control image as diffusers' control image processor gives it: RGB,
// resized (Lanczos) to w x h, in [0, 1], (3, h, w).
func controlImage(img image.Image, w, h int) []float32 {
	n := resize(toNRGBA(img), w, h)
	out := make([]float32, 3*w*h)
	plane := w * h
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			o := n.PixOffset(x, y)
			for ch := 0; ch < 3; ch++ {
				out[ch*plane+y*w+x] = float32(n.Pix[o+ch]) / 255
			}
		}
	}
	return out
}

// active reports whether the Control acts at evaluation i (0-based) of n, as diffusers'
// controlnet_keep.
func (r *controlRun) active(i, n int) bool {
	return !(float64(i)/float64(n) < r.par.Start || float64(i+1)/float64(n) > r.par.End)
}

// residuals runs the ControlNets active at evaluation i on x (batch, latent, h, w), the
// scaled model input before guidance doubling and extra channels, at timestep t. It
// returns the summed residuals for the guidance batch, or nils when none is active.
func (c *controls) residuals(u unetNet, x []float32, t float64, i, h, w int) ([]binding.Tensor, binding.Tensor, error) {
	rows := c.batch
	if c.cfg {
		rows *= 2
	}
	n := 0
	for k := range c.runs {
		r := &c.runs[k]
		if !r.active(i, c.total) {
			continue
		}
		if c.down == nil {
			shapes, mid := unetSkipShapes(&u.cfg, int64(rows), int64(h), int64(w))
			for _, s := range shapes {
				d, err := c.s.f32(nil, s[:]...)
				if err != nil {
					return nil, 0, err
				}
				c.down = append(c.down, d)
			}
			var err error
			if c.mid, err = c.s.f32(nil, mid[:]...); err != nil {
				return nil, 0, err
			}
		}
		in := c.lib.DefaultControlNetInputs()
		in.Scale, in.GuessMode, in.Accumulate = float32(r.par.Scale), r.par.GuessMode, n > 0
		xin, runRows, context := x, c.batch, c.context
		textEmbeds, timeIDs := c.textEmbeds, c.timeIDs
		switch {
		case c.cfg && !r.par.GuessMode:
			xin = append(append(make([]float32, 0, 2*len(x)), x...), x...)
			runRows = rows
		case c.cfg:
			in.OutRow = int32(c.batch)
			var err error
			if context, err = c.promptContext(); err != nil {
				return nil, 0, err
			}
			textEmbeds, timeIDs = textEmbeds[len(textEmbeds)/2:], timeIDs[len(timeIDs)/2:]
		}
		var err error
		lc := int64(len(x) / (c.batch * h * w))
		if in.X, err = c.input(c.x, runRows, xin, int64(runRows), lc, int64(h), int64(w)); err != nil {
			return nil, 0, err
		}
		ts := make([]float32, runRows)
		for k := range ts {
			ts[k] = float32(t)
		}
		if in.T, err = c.input(c.t, runRows, ts, int64(runRows)); err != nil {
			return nil, 0, err
		}
		if textEmbeds != nil {
			n := int64(runRows)
			if in.TextEmbeds, err = c.input(c.te, runRows, textEmbeds, n, int64(len(textEmbeds))/n); err != nil {
				return nil, 0, err
			}
			if in.TimeIDs, err = c.input(c.ids, runRows, timeIDs, n, int64(len(timeIDs))/n); err != nil {
				return nil, 0, err
			}
		}
		in.Context, in.Cond = context, r.cond
		if err := c.lib.ControlNetForward(c.ctx, r.cn.model, &in, c.down, c.mid); err != nil {
			return nil, 0, fmt.Errorf("ControlNet %s: %w", r.cn.name, err)
		}
		n++
	}
	if n == 0 {
		return nil, 0, nil
	}
	return c.down, c.mid, nil
}

// input uploads data into the tensor of `rows` rows kept in m.
func (c *controls) input(m map[int]binding.Tensor, rows int, data []float32, shape ...int64) (binding.Tensor, error) {
	t, ok := m[rows]
	if !ok {
		var err error
		if t, err = c.s.f32(nil, shape...); err != nil {
			return 0, err
		}
		m[rows] = t
	}
	return t, c.lib.UploadFloat32(c.ctx, t, data)
}

// promptContext is the prompt's half of the guidance context (rows batch..2batch).
func (c *controls) promptContext() (binding.Tensor, error) {
	if c.condContext != 0 {
		return c.condContext, nil
	}
	shape := c.lib.TensorShape(c.context)
	all := make([]float32, shape[0]*shape[1]*shape[2])
	if err := c.lib.DownloadFloat32(c.ctx, c.context, all); err != nil {
		return 0, err
	}
	half := all[len(all)/2:]
	t, err := c.s.f32(half, shape[0]/2, shape[1], shape[2])
	if err != nil {
		return 0, err
	}
	c.condContext = t
	return t, nil
}

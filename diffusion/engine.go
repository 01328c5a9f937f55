package diffusion

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"unsafe"

	"github.com/gosd/gosd/binding"
	"github.com/gosd/gosd/diffusion/modelfile"
)

// engine is one native context with the three networks of a model loaded. It is not safe
// for concurrent use; Pipeline serialises calls.
type engine struct {
	lib             *binding.Library
	ctx             binding.Ctx
	clip, unet, vae binding.Model
	text            binding.CLIPConfig
	unetCfg         binding.UNetConfig
	vaeCfg          binding.VAEConfig
	// The native side keeps pointers into the model's tensor data until the networks are
	// freed: pinned so the garbage collector leaves them be (file mappings are not Go
	// memory and pin to nothing).
	pins runtime.Pinner
	// The native tensors UNet inputs are uploaded into, one per input (see unetSlot), kept
	// while the shape stays so a step allocates nothing. Recorded GPU graphs keep their own
	// staging buffers in the runtime.
	unetTensors []unetTensor
}

type unetTensor struct {
	t     binding.Tensor
	dtype binding.DType
	shape []int64
}

func newEngine(lib *binding.Library, backend binding.Backend, threads int) (*engine, error) {
	p := lib.DefaultCtxParams()
	p.Backend = backend
	p.NThreads = int32(threads)
	ctx, err := lib.CtxInit(&p)
	if err != nil {
		return nil, err
	}
	return &engine{lib: lib, ctx: ctx}, nil
}

func (e *engine) close() {
	if e.ctx == 0 {
		return
	}
	e.lib.ModelFree(e.ctx, e.clip)
	e.lib.ModelFree(e.ctx, e.unet)
	e.lib.ModelFree(e.ctx, e.vae)
	e.lib.CtxFree(e.ctx)
	e.ctx = 0
	e.pins.Unpin()
}

// load hands the model's three networks to the runtime, checking ctx before each (a
// network's own load is not interrupted). The model's files must stay open until close.
func (e *engine) load(ctx context.Context, m *modelfile.Model) error {
	cc, err := clipConfig(m.TextEncoder.Config)
	if err != nil {
		return err
	}
	uc, err := unetConfig(m.UNet.Config)
	if err != nil {
		return err
	}
	vc, err := vaeConfig(m.VAE.Config)
	if err != nil {
		return err
	}
	e.text, e.unetCfg, e.vaeCfg = cc, uc, vc
	steps := []struct {
		tensors map[string]modelfile.Tensor
		load    func([]binding.Weight) error
	}{
		{m.TextEncoder.Tensors, func(ws []binding.Weight) (err error) { e.clip, err = e.lib.CLIPLoad(e.ctx, &cc, ws); return err }},
		{m.UNet.Tensors, func(ws []binding.Weight) (err error) { e.unet, err = e.lib.UNetLoad(e.ctx, &uc, ws); return err }},
		{m.VAE.Tensors, func(ws []binding.Weight) (err error) { e.vae, err = e.lib.VAELoad(e.ctx, &vc, ws); return err }},
	}
	for _, st := range steps {
		if err := ctx.Err(); err != nil {
			return err
		}
		ws, err := e.weights(st.tensors)
		if err != nil {
			return err
		}
		if err := st.load(ws); err != nil {
			return err
		}
	}
	return ctx.Err()
}

func (e *engine) weights(ts map[string]modelfile.Tensor) ([]binding.Weight, error) {
	ws := make([]binding.Weight, 0, len(ts))
	for name, t := range ts {
		var dt binding.DType
		switch t.DType {
		case modelfile.F32:
			dt = binding.F32
		case modelfile.F16:
			dt = binding.F16
		case modelfile.BF16:
			dt = binding.BF16
		default:
			return nil, fmt.Errorf("%w: tensor %s has dtype %s; networks take f32, f16 or bf16", ErrUnsupported, name, t.DType)
		}
		if len(t.Data) == 0 {
			return nil, fmt.Errorf("%w: tensor %s is empty", ErrBadModel, name)
		}
		e.pins.Pin(&t.Data[0])
		ws = append(ws, binding.Weight{Name: name, DType: dt, Shape: t.Shape, Data: unsafe.Pointer(&t.Data[0])})
	}
	return ws, nil
}

func clipConfig(c modelfile.CLIPConfig) (binding.CLIPConfig, error) {
	var act binding.Activation
	switch c.HiddenAct {
	case "quick_gelu":
		act = binding.ActQuickGELU
	case "gelu":
		act = binding.ActGELU
	default:
		return binding.CLIPConfig{}, fmt.Errorf("%w: text encoder activation %q", ErrUnsupported, c.HiddenAct)
	}
	return binding.CLIPConfig{
		VocabSize:    int32(c.VocabSize),
		MaxPositions: int32(c.MaxPositionEmbeddings),
		Hidden:       int32(c.HiddenSize),
		Intermediate: int32(c.IntermediateSize),
		Layers:       int32(c.NumHiddenLayers),
		Heads:        int32(c.NumAttentionHeads),
		Activation:   act,
		LayerNormEps: float32(c.LayerNormEps),
		EOSID:        int32(c.EOSTokenID),
	}, nil
}

func boolInt(b bool) int32 {
	if b {
		return 1
	}
	return 0
}

func unetConfig(c modelfile.UNetConfig) (binding.UNetConfig, error) {
	levels := len(c.BlockOutChannels)
	if levels < 1 || levels > binding.MaxLevels {
		return binding.UNetConfig{}, fmt.Errorf("%w: %d UNet levels (at most %d)", ErrUnsupported, levels, binding.MaxLevels)
	}
	// proj_in / proj_out of linear-projection UNets need no flag: the runtime reads the
	// weights' shapes.
	u := binding.UNetConfig{
		InChannels:        int32(c.InChannels),
		OutChannels:       int32(c.OutChannels),
		Levels:            int32(levels),
		CrossAttentionDim: int32(c.CrossAttentionDim),
		NormGroups:        int32(c.NormNumGroups),
		NormEps:           float32(c.NormEps),
		FlipSinToCos:      boolInt(c.FlipSinToCos),
		FreqShift:         float32(c.FreqShift),
		ConvInKernel:      int32(c.ConvInKernel),
		ConvOutKernel:     int32(c.ConvOutKernel),
		MidAttention:      boolInt(c.MidBlockType == "UNetMidBlock2DCrossAttn"),
	}
	if c.TimeEmbeddingDim != 4*c.BlockOutChannels[0] {
		return u, fmt.Errorf("%w: time embedding width %d (the runtime uses 4 x %d)", ErrUnsupported, c.TimeEmbeddingDim, c.BlockOutChannels[0])
	}
	for i := 0; i < levels; i++ {
		if c.LayersPerBlock[i] != c.LayersPerBlock[0] {
			return u, fmt.Errorf("%w: layers per block differ between levels (%v)", ErrUnsupported, c.LayersPerBlock)
		}
		u.BlockOutChannels[i] = int32(c.BlockOutChannels[i])
		u.DownAttention[i] = boolInt(c.DownBlockTypes[i] == "CrossAttnDownBlock2D")
		u.UpAttention[i] = boolInt(c.UpBlockTypes[i] == "CrossAttnUpBlock2D")
		u.Heads[i] = int32(c.AttentionHeads[i])
		u.TransformerLayers[i] = int32(c.TransformerLayersPerBlock[i])
	}
	u.LayersPerBlock = int32(c.LayersPerBlock[0])
	return u, nil
}

func vaeConfig(c modelfile.VAEConfig) (binding.VAEConfig, error) {
	levels := len(c.BlockOutChannels)
	if levels < 1 || levels > binding.MaxLevels {
		return binding.VAEConfig{}, fmt.Errorf("%w: %d VAE levels (at most %d)", ErrUnsupported, levels, binding.MaxLevels)
	}
	v := binding.VAEConfig{
		InChannels:       int32(c.InChannels),
		OutChannels:      int32(c.OutChannels),
		LatentChannels:   int32(c.LatentChannels),
		Levels:           int32(levels),
		LayersPerBlock:   int32(c.LayersPerBlock),
		NormGroups:       int32(c.NormNumGroups),
		MidAttention:     boolInt(c.MidBlockAddAttention),
		UseQuantConv:     boolInt(c.UseQuantConv),
		UsePostQuantConv: boolInt(c.UsePostQuantConv),
	}
	for i, ch := range c.BlockOutChannels {
		v.BlockOutChannels[i] = int32(ch)
	}
	return v, nil
}

// tensor allocates a native F32 tensor holding data (nil: uninitialised).
func (e *engine) tensor(data []float32, shape ...int64) (binding.Tensor, error) {
	t, err := e.lib.TensorNew(e.ctx, binding.F32, shape...)
	if err != nil {
		return 0, err
	}
	if data != nil {
		if err := e.lib.UploadFloat32(e.ctx, t, data); err != nil {
			e.lib.TensorFree(e.ctx, t)
			return 0, err
		}
	}
	return t, nil
}

// scope frees the native tensors it handed out when done.
type scope struct {
	e  *engine
	ts []binding.Tensor
}

func (s *scope) f32(data []float32, shape ...int64) (binding.Tensor, error) {
	t, err := s.e.tensor(data, shape...)
	if err == nil {
		s.ts = append(s.ts, t)
	}
	return t, err
}

func (s *scope) i32(data []int32, shape ...int64) (binding.Tensor, error) {
	t, err := s.e.lib.TensorNew(s.e.ctx, binding.I32, shape...)
	if err != nil {
		return 0, err
	}
	s.ts = append(s.ts, t)
	return t, s.e.lib.UploadInt32(s.e.ctx, t, data)
}

func (s *scope) read(t binding.Tensor, n int) ([]float32, error) {
	out := make([]float32, n)
	return out, s.e.lib.DownloadFloat32(s.e.ctx, t, out)
}

func (s *scope) done() {
	for _, t := range s.ts {
		s.e.lib.TensorFree(s.e.ctx, t)
	}
}

// encodeText runs the text encoder on (batch, tokens) ids; skip drops that many final
// layers (0: last layer) and finalNorm applies the final layer norm to the layer kept. It
// returns hidden (batch, tokens, width) and, when asked, pooled (batch, width).
func (e *engine) encodeText(ids []int32, batch, tokens, skip int, finalNorm, wantPooled bool) (hidden, pooled []float32, err error) {
	s := &scope{e: e}
	defer s.done()
	width := int64(e.text.Hidden)
	tid, err := s.i32(ids, int64(batch), int64(tokens))
	if err != nil {
		return nil, nil, err
	}
	th, err := s.f32(nil, int64(batch), int64(tokens), width)
	if err != nil {
		return nil, nil, err
	}
	var tp binding.Tensor
	if wantPooled {
		if tp, err = s.f32(nil, int64(batch), width); err != nil {
			return nil, nil, err
		}
	}
	if err = e.lib.CLIPForward(e.ctx, e.clip, tid, int32(skip), finalNorm, th, tp); err != nil {
		return nil, nil, err
	}
	if hidden, err = s.read(th, batch*tokens*int(width)); err != nil {
		return nil, nil, err
	}
	if wantPooled {
		pooled, err = s.read(tp, batch*int(width))
	}
	return hidden, pooled, err
}

// vaeFactor is the ratio of image to latent size.
func (e *engine) vaeFactor() int { return 1 << (e.vaeCfg.Levels - 1) }

// unetInputs are the host-side inputs of one UNet evaluation (sd_unet_inputs_t); nil
// slices are absent inputs.
type unetInputs struct {
	x             []float32 // (batch, in, h, w)
	batch, h, w   int
	t             []float32 // (batch) timesteps
	context       []float32 // (batch, tokens, cross_attention_dim)
	tokens        int
	textEmbeds    []float32 // (batch, P): SDXL's pooled text embeddings
	timeIDs       []float32 // (batch, N): SDXL's micro-conditioning
	classLabels   []float32 // (batch): table rows (integers) or values embedded like timesteps
	downResiduals [][]float32
	midResidual   []float32
	residualScale float32 // multiplies the residuals (ControlNet's conditioning scale)
}

// Positions of the inputs in engine.unetTensors; down residual i is at slotDown + i.
const (
	slotX = iota
	slotT
	slotContext
	slotTextEmbeds
	slotTimeIDs
	slotClassLabels
	slotMid
	slotOut
	slotDown
)

// unetForward evaluates the UNet on x (batch, in, h, w) at per-sample timesteps with
// context (batch, tokens, width), the plain text-conditioned call.
func (e *engine) unetForward(x []float32, batch, h, w int, t []float32, context []float32, tokens int) ([]float32, error) {
	return e.unetEval(&unetInputs{x: x, batch: batch, h: h, w: w, t: t, context: context, tokens: tokens, residualScale: 1})
}

// unetEval evaluates the UNet on in and returns (batch, out, h, w).
func (e *engine) unetEval(in *unetInputs) ([]float32, error) {
	c := &e.unetCfg
	n, hh, ww := int64(in.batch), int64(in.h), int64(in.w)
	args := e.lib.DefaultUNetInputs()
	args.ResidualScale = in.residualScale
	var err error
	upload := func(slot int, data []float32, shape ...int64) binding.Tensor {
		if err != nil || data == nil {
			return 0
		}
		var t binding.Tensor
		if t, err = e.unetTensor(slot, binding.F32, shape...); err == nil {
			err = e.lib.UploadFloat32(e.ctx, t, data)
		}
		return t
	}
	args.X = upload(slotX, in.x, n, int64(c.InChannels), hh, ww)
	args.T = upload(slotT, in.t, n)
	args.Context = upload(slotContext, in.context, n, int64(in.tokens), int64(c.CrossAttentionDim))
	args.TextEmbeds = upload(slotTextEmbeds, in.textEmbeds, n, int64(len(in.textEmbeds)/in.batch))
	args.TimeIDs = upload(slotTimeIDs, in.timeIDs, n, int64(len(in.timeIDs)/in.batch))
	if in.classLabels != nil && c.ClassEmbedType == binding.UNetClassTable {
		ids := make([]int32, len(in.classLabels))
		for i, v := range in.classLabels {
			if v != float32(int32(v)) {
				return nil, fmt.Errorf("%w: class label %g is not a table row", ErrInvalidRequest, v)
			}
			ids[i] = int32(v)
		}
		if args.ClassLabels, err = e.unetTensor(slotClassLabels, binding.I32, n); err == nil {
			err = e.lib.UploadInt32(e.ctx, args.ClassLabels, ids)
		}
	} else {
		args.ClassLabels = upload(slotClassLabels, in.classLabels, n)
	}
	down, mid := unetSkipShapes(c, n, hh, ww)
	if len(in.downResiduals) > len(down) {
		return nil, fmt.Errorf("%w: %d down residuals for a UNet with %d skips", ErrInvalidRequest, len(in.downResiduals), len(down))
	}
	for i, r := range in.downResiduals {
		args.DownResiduals = append(args.DownResiduals, upload(slotDown+i, r, down[i][:]...))
	}
	args.MidResidual = upload(slotMid, in.midResidual, mid[:]...)
	if err != nil {
		return nil, err
	}
	out, err := e.unetTensor(slotOut, binding.F32, n, int64(c.OutChannels), hh, ww)
	if err != nil {
		return nil, err
	}
	if err := e.lib.UNetForward(e.ctx, e.unet, &args, out); err != nil {
		return nil, err
	}
	res := make([]float32, in.batch*int(c.OutChannels)*in.h*in.w)
	return res, e.lib.DownloadFloat32(e.ctx, out, res)
}

// unetSkipShapes returns the shapes of a UNet's skip tensors, in the order its down
// blocks make them (the shapes of ControlNet's down residuals), and that of the mid
// block's output.
func unetSkipShapes(c *binding.UNetConfig, batch, h, w int64) (down [][4]int64, mid [4]int64) {
	down = append(down, [4]int64{batch, int64(c.BlockOutChannels[0]), h, w})
	for i := 0; i < int(c.Levels); i++ {
		ch := int64(c.BlockOutChannels[i])
		for j := 0; j < int(c.LayersPerBlock); j++ {
			down = append(down, [4]int64{batch, ch, h, w})
		}
		if i < int(c.Levels)-1 {
			h, w = (h+1)/2, (w+1)/2
			down = append(down, [4]int64{batch, ch, h, w})
		}
	}
	return down, [4]int64{batch, int64(c.BlockOutChannels[c.Levels-1]), h, w}
}

// unetTensor returns slot's native tensor, reallocated when the shape or dtype changes.
func (e *engine) unetTensor(slot int, dt binding.DType, shape ...int64) (binding.Tensor, error) {
	for len(e.unetTensors) <= slot {
		e.unetTensors = append(e.unetTensors, unetTensor{})
	}
	s := &e.unetTensors[slot]
	if s.t != 0 && s.dtype == dt && slices.Equal(s.shape, shape) {
		return s.t, nil
	}
	e.lib.TensorFree(e.ctx, s.t)
	*s = unetTensor{}
	t, err := e.lib.TensorNew(e.ctx, dt, shape...)
	if err != nil {
		return 0, err
	}
	*s = unetTensor{t, dt, slices.Clone(shape)}
	return t, nil
}

// vaeDecode decodes raw latents z (batch, latent, h, w) into images (batch, out, f*h, f*w).
func (e *engine) vaeDecode(z []float32, batch, h, w int) ([]float32, error) {
	s := &scope{e: e}
	defer s.done()
	f := e.vaeFactor()
	tz, err := s.f32(z, int64(batch), int64(e.vaeCfg.LatentChannels), int64(h), int64(w))
	if err != nil {
		return nil, err
	}
	out, err := s.f32(nil, int64(batch), int64(e.vaeCfg.OutChannels), int64(h*f), int64(w*f))
	if err != nil {
		return nil, err
	}
	if err := e.lib.VAEDecode(e.ctx, e.vae, tz, out); err != nil {
		return nil, err
	}
	return s.read(out, batch*int(e.vaeCfg.OutChannels)*h*f*w*f)
}

// vaeEncode encodes images x (batch, in, H, W) in [-1, 1] into the latent distribution's
// mean and logvar (batch, latent, H/f, W/f).
func (e *engine) vaeEncode(x []float32, batch, h, w int) (mean, logvar []float32, err error) {
	s := &scope{e: e}
	defer s.done()
	f := e.vaeFactor()
	lh, lw := h/f, w/f
	tx, err := s.f32(x, int64(batch), int64(e.vaeCfg.InChannels), int64(h), int64(w))
	if err != nil {
		return nil, nil, err
	}
	lat := int64(e.vaeCfg.LatentChannels)
	tm, err := s.f32(nil, int64(batch), lat, int64(lh), int64(lw))
	if err != nil {
		return nil, nil, err
	}
	tl, err := s.f32(nil, int64(batch), lat, int64(lh), int64(lw))
	if err != nil {
		return nil, nil, err
	}
	if err := e.lib.VAEEncode(e.ctx, e.vae, tx, tm, tl); err != nil {
		return nil, nil, err
	}
	n := batch * int(lat) * lh * lw
	if mean, err = s.read(tm, n); err != nil {
		return nil, nil, err
	}
	logvar, err = s.read(tl, n)
	return mean, logvar, err
}

package diffusion

import (
	"fmt"
	"slices"

	"github.com/gosd/gosd/binding"
)

// The loaded networks, one Go type each: a native model handle with its runtime config,
// and the calls that network takes. They are views of the engine's fields (the engine
// owns the context and frees the models), so the conditioner, denoiser and codec each
// hold only the network they use, and a later network (a second text encoder, a
// ControlNet, TAESD) is one more such type.

// clipNet is a loaded CLIP text encoder.
type clipNet struct {
	lib   *binding.Library
	ctx   binding.Ctx
	model binding.Model
	cfg   binding.CLIPConfig
}

// unetNet is a loaded UNet. slots are the native tensors its inputs are uploaded into,
// one per input (see the slot constants), kept while the shape stays so that a step
// allocates nothing; they belong to the engine, which outlives every request.
type unetNet struct {
	lib   *binding.Library
	ctx   binding.Ctx
	model binding.Model
	cfg   binding.UNetConfig
	slots *[]unetTensor
}

// vaeNet is a loaded AutoencoderKL.
type vaeNet struct {
	lib   *binding.Library
	ctx   binding.Ctx
	model binding.Model
	cfg   binding.VAEConfig
}

func (e *engine) clipNet() clipNet { return clipNet{e.lib, e.ctx, e.clip, e.text} }

// clipNet2 is the second text encoder; its model is 0 when there is none.
func (e *engine) clipNet2() clipNet { return clipNet{e.lib, e.ctx, e.clip2, e.text2} }

func (e *engine) unetNet() unetNet {
	return unetNet{e.lib, e.ctx, e.unet, e.unetCfg, &e.unetTensors}
}

func (e *engine) vaeNet() vaeNet { return vaeNet{e.lib, e.ctx, e.vae, e.vaeCfg} }

// newTensor allocates a native F32 tensor holding data (nil: uninitialised).
func newTensor(lib *binding.Library, ctx binding.Ctx, data []float32, shape ...int64) (binding.Tensor, error) {
	t, err := lib.TensorNew(ctx, binding.F32, shape...)
	if err != nil {
		return 0, err
	}
	if data != nil {
		if err := lib.UploadFloat32(ctx, t, data); err != nil {
			lib.TensorFree(ctx, t)
			return 0, err
		}
	}
	return t, nil
}

// newActivationTensor is newTensor in the dtype the backend computes in (F16 on CUDA),
// converted once: for an input that serves many calls, such as a request's text context,
// which the UNet then reads without converting it on every call.
func newActivationTensor(lib *binding.Library, ctx binding.Ctx, data []float32, shape ...int64) (binding.Tensor, error) {
	t, err := newTensor(lib, ctx, data, shape...)
	act := lib.CtxActivationDType(ctx)
	if err != nil || act == binding.F32 {
		return t, err
	}
	defer lib.TensorFree(ctx, t)
	converted, err := lib.TensorNew(ctx, act, shape...)
	if err != nil {
		return 0, err
	}
	if err := lib.OpConvert(ctx, converted, t); err != nil {
		lib.TensorFree(ctx, converted)
		return 0, err
	}
	return converted, nil
}

// scope frees the native tensors it handed out when done.
type scope struct {
	lib *binding.Library
	ctx binding.Ctx
	ts  []binding.Tensor
}

func (s *scope) f32(data []float32, shape ...int64) (binding.Tensor, error) {
	t, err := newTensor(s.lib, s.ctx, data, shape...)
	if err == nil {
		s.ts = append(s.ts, t)
	}
	return t, err
}

func (s *scope) i32(data []int32, shape ...int64) (binding.Tensor, error) {
	t, err := s.lib.TensorNew(s.ctx, binding.I32, shape...)
	if err != nil {
		return 0, err
	}
	s.ts = append(s.ts, t)
	return t, s.lib.UploadInt32(s.ctx, t, data)
}

func (s *scope) read(t binding.Tensor, n int) ([]float32, error) {
	out := make([]float32, n)
	return out, s.lib.DownloadFloat32(s.ctx, t, out)
}

func (s *scope) done() {
	for _, t := range s.ts {
		s.lib.TensorFree(s.ctx, t)
	}
}

// width is the text encoder's hidden size.
func (c clipNet) width() int { return int(c.cfg.Hidden) }

// encode runs the text encoder on (batch, tokens) ids; skip drops that many final layers
// (0: last layer) and finalNorm applies the final layer norm to the layer kept. It returns
// hidden (batch, tokens, width) and, when asked, pooled (batch, width), in host memory:
// emphasis and chunk joining happen in Go before the conditioner uploads the result.
func (c clipNet) encode(ids []int32, batch, tokens, skip int, finalNorm, wantPooled bool) (hidden, pooled []float32, err error) {
	return c.encodeWith(ids, nil, batch, tokens, skip, finalNorm, wantPooled)
}

// encodeWith is encode with extra token rows (rows, width) for this call: ids from the
// encoder's vocab_size on select them (textual inversion; nil: none).
func (c clipNet) encodeWith(ids []int32, extra []float32, batch, tokens, skip int, finalNorm, wantPooled bool) (hidden, pooled []float32, err error) {
	s := &scope{lib: c.lib, ctx: c.ctx}
	defer s.done()
	width := int64(c.width())
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
	var te binding.Tensor
	if len(extra) > 0 {
		if te, err = s.f32(extra, int64(len(extra))/width, width); err != nil {
			return nil, nil, err
		}
	}
	if err = c.lib.CLIPForwardExtra(c.ctx, c.model, tid, te, int32(skip), finalNorm, th, tp); err != nil {
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

// project applies text_projection to pooled (batch, width): CLIPTextModelWithProjection's
// text_embeds (batch, projection_dim), in host memory.
func (c clipNet) project(pooled []float32, batch int) ([]float32, error) {
	s := &scope{lib: c.lib, ctx: c.ctx}
	defer s.done()
	tp, err := s.f32(pooled, int64(batch), int64(c.width()))
	if err != nil {
		return nil, err
	}
	proj := int64(c.cfg.ProjectionDim)
	out, err := s.f32(nil, int64(batch), proj)
	if err != nil {
		return nil, err
	}
	if err := c.lib.CLIPProject(c.ctx, c.model, tp, out); err != nil {
		return nil, err
	}
	return s.read(out, batch*int(proj))
}

// unetInputs are the inputs of one UNet evaluation (sd_unet_inputs_t); nil slices and
// zero tensors are absent inputs. Host slices are uploaded into the UNet's slots on every
// call; what stays the same for a whole request (the text context) can instead be passed
// as a native tensor the caller owns, which goes to the runtime as it is.
type unetInputs struct {
	x             []float32 // (batch, in, h, w)
	batch, h, w   int
	t             []float32 // (batch) timesteps
	context       []float32 // (batch, tokens, cross_attention_dim)
	tokens        int
	contextTensor binding.Tensor // instead of context: a native (batch, tokens, width)
	textEmbeds    []float32      // (batch, P): SDXL's pooled text embeddings
	timeIDs       []float32      // (batch, N): SDXL's micro-conditioning
	classLabels   []float32      // (batch): table rows (integers) or values embedded like timesteps
	downResiduals [][]float32
	midResidual   []float32
	// Instead of downResiduals and midResidual: native residuals (ControlNet's outputs).
	downTensors   []binding.Tensor
	midTensor     binding.Tensor
	residualScale float32 // multiplies the residuals (ControlNet's conditioning scale)
}

// Positions of the inputs in unetNet.slots; down residual i is at slotDown + i.
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

// eval evaluates the UNet on in and returns (batch, out, h, w).
func (u unetNet) eval(in *unetInputs) ([]float32, error) {
	c := &u.cfg
	n, hh, ww := int64(in.batch), int64(in.h), int64(in.w)
	args := u.lib.DefaultUNetInputs()
	args.ResidualScale = in.residualScale
	var err error
	upload := func(slot int, data []float32, shape ...int64) binding.Tensor {
		if err != nil || data == nil {
			return 0
		}
		var t binding.Tensor
		if t, err = u.slot(slot, binding.F32, shape...); err == nil {
			err = u.lib.UploadFloat32(u.ctx, t, data)
		}
		return t
	}
	args.X = upload(slotX, in.x, n, int64(c.InChannels), hh, ww)
	args.T = upload(slotT, in.t, n)
	if in.contextTensor != 0 {
		args.Context = in.contextTensor
	} else {
		args.Context = upload(slotContext, in.context, n, int64(in.tokens), int64(c.CrossAttentionDim))
	}
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
		if args.ClassLabels, err = u.slot(slotClassLabels, binding.I32, n); err == nil {
			err = u.lib.UploadInt32(u.ctx, args.ClassLabels, ids)
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
	if in.downTensors != nil {
		args.DownResiduals, args.MidResidual = in.downTensors, in.midTensor
	}
	if err != nil {
		return nil, err
	}
	out, err := u.slot(slotOut, binding.F32, n, int64(c.OutChannels), hh, ww)
	if err != nil {
		return nil, err
	}
	if err := u.lib.UNetForward(u.ctx, u.model, &args, out); err != nil {
		return nil, err
	}
	res := make([]float32, in.batch*int(c.OutChannels)*in.h*in.w)
	return res, u.lib.DownloadFloat32(u.ctx, out, res)
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

// slot returns the native tensor of input slot, reallocated when the shape or dtype
// changes.
func (u unetNet) slot(slot int, dt binding.DType, shape ...int64) (binding.Tensor, error) {
	for len(*u.slots) <= slot {
		*u.slots = append(*u.slots, unetTensor{})
	}
	s := &(*u.slots)[slot]
	if s.t != 0 && s.dtype == dt && slices.Equal(s.shape, shape) {
		return s.t, nil
	}
	u.lib.TensorFree(u.ctx, s.t)
	*s = unetTensor{}
	t, err := u.lib.TensorNew(u.ctx, dt, shape...)
	if err != nil {
		return 0, err
	}
	*s = unetTensor{t, dt, slices.Clone(shape)}
	return t, nil
}

// factor is the ratio of image to latent size: each level but the last halves the image.
func (v vaeNet) factor() int { return 1 << (v.cfg.Levels - 1) }

// latentChannels is the number of latent channels.
func (v vaeNet) latentChannels() int { return int(v.cfg.LatentChannels) }

// decode decodes raw latents z (batch, latent, h, w) into images (batch, out, f*h, f*w).
func (v vaeNet) decode(z []float32, batch, h, w int) ([]float32, error) {
	s := &scope{lib: v.lib, ctx: v.ctx}
	defer s.done()
	f := v.factor()
	tz, err := s.f32(z, int64(batch), int64(v.cfg.LatentChannels), int64(h), int64(w))
	if err != nil {
		return nil, err
	}
	out, err := s.f32(nil, int64(batch), int64(v.cfg.OutChannels), int64(h*f), int64(w*f))
	if err != nil {
		return nil, err
	}
	if err := v.lib.VAEDecode(v.ctx, v.model, tz, out); err != nil {
		return nil, err
	}
	return s.read(out, batch*int(v.cfg.OutChannels)*h*f*w*f)
}

// encode encodes images x (batch, in, H, W) in [-1, 1] into the latent distribution's
// mean and logvar (batch, latent, H/f, W/f).
func (v vaeNet) encode(x []float32, batch, h, w int) (mean, logvar []float32, err error) {
	s := &scope{lib: v.lib, ctx: v.ctx}
	defer s.done()
	f := v.factor()
	lh, lw := h/f, w/f
	tx, err := s.f32(x, int64(batch), int64(v.cfg.InChannels), int64(h), int64(w))
	if err != nil {
		return nil, nil, err
	}
	lat := int64(v.cfg.LatentChannels)
	tm, err := s.f32(nil, int64(batch), lat, int64(lh), int64(lw))
	if err != nil {
		return nil, nil, err
	}
	tl, err := s.f32(nil, int64(batch), lat, int64(lh), int64(lw))
	if err != nil {
		return nil, nil, err
	}
	if err := v.lib.VAEEncode(v.ctx, v.model, tx, tm, tl); err != nil {
		return nil, nil, err
	}
	n := batch * int(lat) * lh * lw
	if mean, err = s.read(tm, n); err != nil {
		return nil, nil, err
	}
	logvar, err = s.read(tl, n)
	return mean, logvar, err
}

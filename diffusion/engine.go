package diffusion

import (
	"context"
	"fmt"
	"runtime"
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
	// The native tensors UNet inputs are uploaded into, one per input (unetNet.slot), kept
	// while the shape stays so a step allocates nothing. Recorded GPU graphs keep their own
	// staging buffers in the runtime.
	unetTensors []unetTensor
	// The engines running these networks, each on a context of its own (see Clone).
	share *netShare
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
	e := &engine{lib: lib, ctx: ctx}
	e.share = &netShare{users: 1, params: p, pins: &e.pins}
	return e, nil
}

func (e *engine) close() { e.release() }

// release frees the engine's context. The last engine of its share also frees the networks
// and unpins what they read; it reports whether it was the last.
func (e *engine) release() (last bool) {
	s := e.share
	s.mu.Lock()
	defer s.mu.Unlock()
	if e.ctx == 0 {
		return false
	}
	s.users--
	if last = s.users == 0; last {
		e.lib.ModelFree(e.ctx, e.clip)
		e.lib.ModelFree(e.ctx, e.unet)
		e.lib.ModelFree(e.ctx, e.vae)
	}
	e.lib.CtxFree(e.ctx)
	e.ctx = 0
	if last {
		s.pins.Unpin()
		s.lora.unpin()
	}
	return last
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
		if c.OnlyCrossAttention != nil {
			u.OnlyCrossAttention[i] = boolInt(c.OnlyCrossAttention[i])
		}
	}
	u.LayersPerBlock = int32(c.LayersPerBlock[0])
	if c.AdditionEmbedType == modelfile.AdditionTextTime {
		u.AdditionEmbedType = binding.UNetAdditionTextTime
		u.AdditionTimeEmbedDim = int32(c.AdditionTimeEmbedDim)
		u.ProjectionClassEmbeddingsInputDim = int32(c.ProjectionClassEmbeddingsInputDim)
	}
	switch c.ClassEmbedType {
	case modelfile.ClassTable:
		u.ClassEmbedType, u.NumClassEmbeds = binding.UNetClassTable, int32(c.NumClassEmbeds)
	case modelfile.ClassTimestep:
		u.ClassEmbedType = binding.UNetClassTimestep
	}
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

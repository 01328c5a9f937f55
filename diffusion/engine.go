package diffusion

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"time"
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
	// clip2 is SDXL's second text encoder (0 for models with one).
	clip2    binding.Model
	text2    binding.CLIPConfig
	unetCfg  binding.UNetConfig
	vaeCfg   binding.VAEConfig
	taesd    binding.Model // 0 unless opened WithTAESD
	taesdCfg binding.TAESDConfig
	// The native side keeps pointers into the model's tensor data until the networks are
	// freed: pinned so the garbage collector leaves them be (file mappings are not Go
	// memory and pin to nothing).
	pins runtime.Pinner
	// The native tensors UNet inputs are uploaded into, one per input (unetNet.slot), kept
	// while the shape stays so a step allocates nothing. Recorded GPU graphs keep their own
	// staging buffers in the runtime.
	unetTensors []unetTensor
	// mergeTensors are the runtime tensors LoRA merges work in (row blocks of about 1 MB, a
	// few MB in all), kept for the next switch; freed with the context.
	mergeTensors map[scratchKey]binding.Tensor
	// The engines running these networks, each on a context of its own (see Clone).
	share *netShare
}

type unetTensor struct {
	t     binding.Tensor
	dtype binding.DType
	shape []int64
}

func newEngine(lib *binding.Library, backend binding.Backend, threads int) (*engine, error) {
	return newEngineWithPrecision(lib, backend, threads, binding.PrecisionF32)
}

func newEngineWithPrecision(lib *binding.Library, backend binding.Backend, threads int, precision binding.Precision) (*engine, error) {
	p := lib.DefaultCtxParams()
	p.Backend = backend
	p.NThreads = int32(threads)
	p.Precision = precision
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
		e.lib.ModelFree(e.ctx, e.clip2)
		e.lib.ModelFree(e.ctx, e.unet)
		e.lib.ModelFree(e.ctx, e.vae)
		e.lib.ModelFree(e.ctx, e.taesd)
	}
	e.lib.CtxFree(e.ctx)
	e.ctx = 0
	if last {
		s.pins.Unpin()
		s.lora.unpin()
	}
	return last
}

// load hands the model's networks (text encoders, UNet, VAE) to the runtime, checking ctx
// before each (a network's own load is not interrupted). The model's files must stay open
// until close.
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
	// diffusers' SDXL pipelines decode in float32 when the VAE's config says so (the stock
	// SDXL VAE overflows in float16; the fp16-fix VAE says false); SD 1.x/2.x pipelines
	// ignore the flag, which their configs set too.
	vc.ForceUpcast = boolInt(m.VAE.Config.ForceUpcast && m.Family == modelfile.FamilySDXL)
	e.text, e.unetCfg, e.vaeCfg = cc, uc, vc
	type step struct {
		tensors map[string]modelfile.Tensor
		load    func([]binding.Weight) error
	}
	// The UNet first: the largest, it packs while no other network's packs are resident.
	steps := []step{
		{m.UNet.Tensors, func(ws []binding.Weight) (err error) { e.unet, err = e.lib.UNetLoad(e.ctx, &uc, ws); return err }},
		{m.TextEncoder.Tensors, func(ws []binding.Weight) (err error) { e.clip, err = e.lib.CLIPLoad(e.ctx, &cc, ws); return err }},
		{m.VAE.Tensors, func(ws []binding.Weight) (err error) { e.vae, err = e.lib.VAELoad(e.ctx, &vc, ws); return err }},
	}
	switch len(m.ExtraTextEncoders) {
	case 0:
	case 1:
		te2 := m.ExtraTextEncoders[0]
		cc2, err := clipConfig(te2.Config)
		if err != nil {
			return fmt.Errorf("%s: %w", te2.Name, err)
		}
		e.text2 = cc2
		steps = append(steps, step{te2.Tensors, func(ws []binding.Weight) (err error) { e.clip2, err = e.lib.CLIPLoad(e.ctx, &cc2, ws); return err }})
	default:
		return fmt.Errorf("%w: %d text encoders (at most 2)", ErrUnsupported, 1+len(m.ExtraTextEncoders))
	}
	for _, st := range steps {
		if err := ctx.Err(); err != nil {
			return err
		}
		ws, err := e.weights(st.tensors)
		if err != nil {
			return err
		}
		if err := releasingWhile(m, st.load, ws); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// releasingWhile runs load, dropping the model's mapped pages every quarter second while
// it runs and once after: the runtime reads each weight once to pack or upload it, so the
// pages it has passed need not stay resident beside the packs. SDXL's load peaked at
// 12.8 GB with every file page kept to the end, 9.4 GB with them dropped after each
// network, 7.3 GB so (and takes 4-6 s instead of 11-12 on this VM, where fresh memory
// is dear). What is still read from the file (conv weights on the CPU, embedding rows)
// faults back in from the page cache.
func releasingWhile(m *modelfile.Model, load func([]binding.Weight) error, ws []binding.Weight) error {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				_ = m.ReleaseMemory() // advice: a failure only leaves the pages resident
			}
		}
	}()
	err := load(ws)
	close(done)
	wg.Wait()
	_ = m.ReleaseMemory()
	return err
}

func (e *engine) weights(ts map[string]modelfile.Tensor) ([]binding.Weight, error) {
	return weightTable(ts, &e.pins)
}

// weightTable is the runtime's weight table of ts, pinning the Go memory it points to in
// pins (until the network reading it is freed).
func weightTable(ts map[string]modelfile.Tensor, pins *runtime.Pinner) ([]binding.Weight, error) {
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
		pins.Pin(&t.Data[0])
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
	// transformers pools at the first eos_token_id, except under the legacy id 2 (SDXL's
	// configs) where it pools at argmax(ids): the first <|endoftext|>, CLIP's last id,
	// which every tokenized row holds.
	eos := c.EOSTokenID
	if eos == 2 {
		eos = c.VocabSize - 1
	}
	proj := 0
	if c.WithProjection {
		proj = c.ProjectionDim
	}
	return binding.CLIPConfig{
		VocabSize:     int32(c.VocabSize),
		MaxPositions:  int32(c.MaxPositionEmbeddings),
		Hidden:        int32(c.HiddenSize),
		Intermediate:  int32(c.IntermediateSize),
		Layers:        int32(c.NumHiddenLayers),
		Heads:         int32(c.NumAttentionHeads),
		Activation:    act,
		LayerNormEps:  float32(c.LayerNormEps),
		EOSID:         int32(eos),
		ProjectionDim: int32(proj),
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

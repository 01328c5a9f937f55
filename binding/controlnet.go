package binding

import "runtime"

// ControlNetConfig mirrors sd_controlnet_config_t.
type ControlNetConfig struct {
	UNet                 UNetConfig // the encoder's config; UpAttention, OutChannels, ConvOutKernel unused
	ConditioningChannels int32
	CondLevels           int32
	CondChannels         [MaxLevels]int32 // conditioning_embedding_out_channels
}

// ControlNetInputs are the inputs of one ControlNet evaluation (sd_controlnet_inputs_t);
// a zero Tensor is an absent input. See sd.h for the shapes.
type ControlNetInputs struct {
	X, T, Context                    Tensor
	TextEmbeds, TimeIDs, ClassLabels Tensor
	Cond                             Tensor // the control image (B, C, H, W) in [0, 1]
	Scale                            float32
	GuessMode                        bool
	// The residuals go to rows [OutRow, OutRow + B) of the outputs; Accumulate adds them to
	// what is there instead of overwriting (and zeroing the other rows).
	OutRow     int32
	Accumulate bool
}

// controlNetInputsC is the C layout of sd_controlnet_inputs_t.
type controlNetInputsC struct {
	x, t, context, textEmbeds, timeIDs, classLabels, cond Tensor
	scale                                                 float32
	guessMode                                             int32
	outRow                                                int32
	accumulate                                            int32
}

// DefaultControlNetConfig returns sd_controlnet_config_default's values (SD 1.5's).
func (l *Library) DefaultControlNetConfig() ControlNetConfig {
	var c ControlNetConfig
	l.sdControlnetConfigDefault(&c)
	return c
}

// DefaultControlNetInputs returns sd_controlnet_inputs_default's values: scale 1.
func (l *Library) DefaultControlNetInputs() ControlNetInputs {
	var c controlNetInputsC
	l.sdControlnetInputsDefault(&c)
	return ControlNetInputs{Scale: c.scale}
}

// ControlNetLoad loads a ControlNet; the weights' data must stay valid until ModelFree.
func (l *Library) ControlNetLoad(ctx Ctx, c *ControlNetConfig, ws []Weight) (Model, error) {
	return l.loadModel(ctx, "sd_controlnet_load", ws, func(t uintptr, n int32, out *Model) Status {
		return l.sdControlnetLoad(ctx, c, t, n, out)
	})
}

// ControlNetForward runs one ControlNet evaluation, writing its residuals into down and
// mid.
func (l *Library) ControlNetForward(ctx Ctx, m Model, in *ControlNetInputs, down []Tensor, mid Tensor) error {
	c := controlNetInputsC{
		x: in.X, t: in.T, context: in.Context, textEmbeds: in.TextEmbeds, timeIDs: in.TimeIDs,
		classLabels: in.ClassLabels, cond: in.Cond, scale: in.Scale, guessMode: boolC(in.GuessMode),
		outRow: in.OutRow, accumulate: boolC(in.Accumulate),
	}
	var pin runtime.Pinner
	defer pin.Unpin()
	var downPtr *Tensor
	if len(down) > 0 {
		pin.Pin(&down[0])
		downPtr = &down[0]
	}
	return l.check(ctx, "sd_controlnet_forward", l.sdControlnetForward(ctx, m, &c, downPtr, int32(len(down)), mid))
}

func boolC(b bool) int32 {
	if b {
		return 1
	}
	return 0
}

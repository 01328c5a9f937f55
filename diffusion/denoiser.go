package diffusion

import (
	"fmt"
	"math"
)

// denoiser is the guided model of one request: given the sampler's model input and a
// timestep it returns the noise (or v, or x0) prediction the sampler steps with. It owns
// everything between the latents and the UNet: the extra input channels, the
// classifier-free guidance batch, the assembly of the UNet's inputs, and guidance.
type denoiser struct {
	unet        unetNet
	cond        *conditioning
	batch, h, w int // latent batch and size
	// guidance above 1 runs classifier-free guidance (uncond and cond as one batch);
	// rescale is diffusers' guidance_rescale φ.
	guidance, rescale float64
	// extra are input channels concatenated after the latents, (batch, k, h, w): the
	// 9-channel inpainting UNet's mask and masked image latents, the x4 upscaler's noised
	// low-res image; nil for none.
	extra []float32
	// control runs the request's ControlNets before each UNet evaluation; nil for none.
	control *controls
	// classLabels are the UNet's class labels, one per latent row (the x4 upscaler's
	// noise level), repeated for the guidance batch; nil for none.
	classLabels []float32
	// tile, when set, evaluates grids larger than a tile in overlapping tiles (the x4
	// upscaler's large inputs).
	tile tiling
}

func (d *denoiser) cfg() bool { return d.guidance > 1 }

// predict evaluates the model on x (batch, latent, h, w), already scaled by the
// scheduler's ScaleModelInput, at timestep t; eval (1-based) names the evaluation in
// errors.
func (d *denoiser) predict(x []float32, t float64, eval int) ([]float32, error) {
	if d.tile.covers(d.h, d.w) {
		return d.predictWhole(x, t, eval)
	}
	hw := d.h * d.w
	lc := len(x) / (d.batch * hw)
	ec := len(d.extra) / (d.batch * hw)
	return blendTiles(d.tile, d.batch, lc, d.h, d.w, 1, func(r rect) ([]float32, error) {
		sub := *d
		sub.h, sub.w, sub.tile = r.h, r.w, tiling{}
		if d.extra != nil {
			sub.extra = crop(d.extra, d.batch*ec, d.h, d.w, r)
		}
		return sub.predictWhole(crop(x, d.batch*lc, d.h, d.w, r), t, eval)
	})
}

// predictWhole is predict on the whole grid at once.
func (d *denoiser) predictWhole(x []float32, t float64, eval int) ([]float32, error) {
	in := d.inputs(x, t)
	if d.control != nil {
		var err error
		if in.downTensors, in.midTensor, err = d.control.residuals(d.unet, x, t, eval-1, d.h, d.w); err != nil {
			return nil, err
		}
	}
	out, err := d.unet.eval(in)
	if err != nil {
		return nil, err
	}
	if err := checkFinite(fmt.Sprintf("UNet at step %d", eval), out); err != nil {
		return nil, err
	}
	if !d.cfg() {
		return out, nil
	}
	n := len(x)
	return guide(out[:n], out[n:], d.guidance, d.rescale, d.batch), nil
}

// inputs assembles one UNet evaluation, the single place where its inputs are put
// together: latents with the extra channels, doubled for guidance (uncond first, as the
// context), per-sample timesteps and the request's conditioning. ControlNet's residuals,
// SDXL's added conditioning and class labels are further fields set here.
func (d *denoiser) inputs(x []float32, t float64) *unetInputs {
	in := x
	if d.extra != nil {
		hw := d.h * d.w
		lc := len(x) / (d.batch * hw)
		in = concatChannels(x, d.extra, d.batch, lc, int(d.unet.cfg.InChannels)-lc, hw)
	}
	rows := d.batch
	if d.cfg() {
		in = append(append(make([]float32, 0, 2*len(in)), in...), in...)
		rows *= 2
	}
	ts := make([]float32, rows)
	for k := range ts {
		ts[k] = float32(t)
	}
	var labels []float32
	if d.classLabels != nil {
		labels = d.classLabels
		if d.cfg() {
			labels = append(append([]float32(nil), labels...), labels...)
		}
	}
	return &unetInputs{x: in, batch: rows, h: d.h, w: d.w, t: ts,
		contextTensor: d.cond.context, textEmbeds: d.cond.textEmbeds, timeIDs: d.cond.timeIDs,
		classLabels: labels, residualScale: 1}
}

// guide applies classifier-free guidance u + g (c - u) and, when phi > 0, diffusers'
// rescale_noise_cfg (std of the guided prediction matched to the conditional one).
func guide(uncond, cond []float32, g, phi float64, batch int) []float32 {
	out := make([]float32, len(cond))
	gf := float32(g)
	for k := range cond {
		out[k] = uncond[k] + gf*(cond[k]-uncond[k])
	}
	if phi == 0 {
		return out
	}
	per := len(cond) / batch
	for bi := 0; bi < batch; bi++ {
		o, c := out[bi*per:(bi+1)*per], cond[bi*per:(bi+1)*per]
		ratio := stddev(c) / stddev(o)
		for k := range o {
			rescaled := float64(o[k]) * ratio
			o[k] = float32(phi*rescaled + (1-phi)*float64(o[k]))
		}
	}
	return out
}

// stddev is torch.std's unbiased standard deviation.
func stddev(v []float32) float64 {
	var mean float64
	for _, x := range v {
		mean += float64(x)
	}
	mean /= float64(len(v))
	var ss float64
	for _, x := range v {
		d := float64(x) - mean
		ss += d * d
	}
	return math.Sqrt(ss / float64(len(v)-1))
}

// concatChannels joins per-sample channel blocks: a (b, ca, hw) and extra (b, cb, hw).
func concatChannels(a, extra []float32, b, ca, cb, hw int) []float32 {
	out := make([]float32, 0, len(a)+len(extra))
	for bi := 0; bi < b; bi++ {
		out = append(out, a[bi*ca*hw:(bi+1)*ca*hw]...)
		out = append(out, extra[bi*cb*hw:(bi+1)*cb*hw]...)
	}
	return out
}

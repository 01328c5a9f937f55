package schedule

import (
	"fmt"
	"math"
)

// lcm is LCMScheduler (Luo et al. 2023): each step maps the sample to the
// consistency model's x0 estimate and, except on the last step, noises it
// back to the next timestep with fresh noise.
type lcm struct {
	alphaSampler
	scaling   float32
	clip      bool
	clipRange float64
}

func newLCM(b *base, s settings) (*lcm, error) {
	orig := s.originalSteps
	switch {
	case orig > s.numTrain:
		return nil, fmt.Errorf("schedule: lcm original_inference_steps %d exceeds num_train_timesteps %d", orig, s.numTrain)
	case b.steps > orig:
		return nil, fmt.Errorf("schedule: lcm runs at most original_inference_steps = %d steps, not %d", orig, b.steps)
	}
	// The distillation schedule k−1, 2k−1, ..., orig·k−1 (k = T div orig),
	// descending, sampled at floor(i·orig/steps).
	k := s.numTrain / orig
	ts := make([]float64, b.steps)
	for i, p := range npLinspaceOpen(float64(orig), b.steps) {
		ts[i] = float64((orig-int(math.Floor(p)))*k - 1)
	}
	a, err := newAlphaSampler(b, s, ts)
	if err != nil {
		return nil, err
	}
	return &lcm{alphaSampler: a, scaling: float32(s.timestepScaling), clip: s.clipSample, clipRange: s.clipRange}, nil
}

// npLinspaceOpen mirrors numpy.linspace(0, stop, n, endpoint=False).
func npLinspaceOpen(stop float64, n int) []float64 {
	out := make([]float64, n)
	step := stop / float64(n)
	for i := range out {
		out[i] = float64(i) * step
	}
	return out
}

func (l *lcm) step(modelOutput []float32, i int, x []float32, noise Noise) ([]float32, error) {
	t := int(l.timesteps[i])
	last := i == len(l.timesteps)-1
	prev := t
	if !last {
		prev = int(l.timesteps[i+1])
	}
	acT, acPrev := l.alphasCumprod[t], l.alphasCumprod[prev]

	// Boundary-condition scalings with σ_data = 0.5 (c_skip → 1 as t → 0).
	st := float32(t) * l.scaling
	st2 := float32(st*st) + 0.25
	cSkip := float64(0.25 / st2)
	cOut := float64(st / sqrtf(st2))

	x0 := predictOriginal(l.prediction, modelOutput, x, sqrt32(acT), sqrt32(1-acT))
	if l.clip {
		clampAll(x0, l.clipRange)
	}
	denoised := make([]float32, len(x))
	for j := range denoised {
		denoised[j] = float32(cOut*float64(x0[j]) + cSkip*float64(x[j]))
	}
	if last {
		return denoised, nil
	}
	if noise == nil {
		return nil, errNoNoise(LCM)
	}
	return combine(sqrt32(acPrev), denoised, sqrt32(1-acPrev), draw(noise, len(x))), nil
}

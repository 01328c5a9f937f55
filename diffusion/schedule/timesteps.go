package schedule

import "math"

// npLinspace mirrors numpy.linspace(start, stop, n) in float64:
// i·step + start, with the last point set to stop.
func npLinspace(start, stop float64, n int) []float64 {
	out := make([]float64, n)
	if n == 1 {
		out[0] = start
		return out
	}
	step := (stop - start) / float64(n-1)
	for i := range out {
		out[i] = float64(i)*step + start
	}
	out[n-1] = stop
	return out
}

// npArange mirrors numpy.arange(start, stop, step) for float64 arguments:
// ceil((stop−start)/step) points, filled as start + i·δ with
// δ = (start+step) − start.
func npArange(start, stop, step float64) []float64 {
	n := int(math.Ceil((stop - start) / step))
	if n <= 0 {
		return nil
	}
	out := make([]float64, n)
	delta := (start + step) - start
	for i := range out {
		out[i] = start + float64(i)*delta
	}
	return out
}

// spacedTimesteps returns the descending inference timesteps of the DDPM,
// DDIM, PNDM and k-diffusion style schedulers (their set_timesteps):
//   - linspace: numpy.linspace(0, T−1, steps), rounded when round is set
//     (DDPM/DDIM/PNDM) and kept fractional otherwise (Euler family);
//   - leading: i·(T div steps) + offset;
//   - trailing: round(arange(T, 0, −T/steps)) − 1.
//
// For some step counts (61, 103, 121, ... with T = 1000) the float division
// in numpy's arange yields one extra point ≈ 0, so diffusers runs an extra
// step at timestep −1; that point is dropped here.
func spacedTimesteps(spacing TimestepSpacing, numTrain, steps, offset int, round bool) []float64 {
	out := make([]float64, 0, steps)
	switch spacing {
	case SpacingLinspace:
		pts := npLinspace(0, float64(numTrain-1), steps)
		for i := steps - 1; i >= 0; i-- {
			if round {
				out = append(out, math.RoundToEven(pts[i]))
			} else {
				out = append(out, float64(float32(pts[i])))
			}
		}
	case SpacingLeading:
		ratio := numTrain / steps
		for i := steps - 1; i >= 0; i-- {
			out = append(out, float64(i*ratio+offset))
		}
	default: // trailing
		pts := npArange(float64(numTrain), 0, -float64(numTrain)/float64(steps))
		for _, p := range pts[:steps] {
			out = append(out, math.RoundToEven(p)-1)
		}
	}
	return out
}

// multistepTimesteps returns the descending integer timesteps of diffusers'
// DPMSolverMultistepScheduler and UniPCMultistepScheduler, which space
// steps+1 points and drop the last one for linspace and leading spacing.
func multistepTimesteps(spacing TimestepSpacing, numTrain, steps, offset int) []float64 {
	switch spacing {
	case SpacingLinspace:
		pts := npLinspace(0, float64(numTrain-1), steps+1)
		out := make([]float64, steps)
		for i := range out {
			out[i] = math.RoundToEven(pts[steps-i])
		}
		return out
	case SpacingLeading:
		ratio := numTrain / (steps + 1)
		out := make([]float64, steps)
		for i := range out {
			out[i] = float64((steps-i)*ratio + offset)
		}
		return out
	default:
		return spacedTimesteps(spacing, numTrain, steps, offset, true)
	}
}

// trainingSigmas returns σ_t = √((1−ᾱ_t)/ᾱ_t) with torch's float32 roundings.
func trainingSigmas(alphasCumprod []float32) []float32 {
	out := make([]float32, len(alphasCumprod))
	for i, a := range alphasCumprod {
		out[i] = float32(math.Sqrt(float64((1 - a) / a)))
	}
	return out
}

// interpSigma mirrors numpy.interp(t, arange(len(sigmas)), sigmas) in float64.
func interpSigma(t float64, sigmas []float32) float64 {
	last := len(sigmas) - 1
	switch {
	case t <= 0:
		return float64(sigmas[0])
	case t >= float64(last):
		return float64(sigmas[last])
	}
	j := int(math.Floor(t))
	slope := float64(sigmas[j+1]) - float64(sigmas[j])
	return slope*(t-float64(j)) + float64(sigmas[j])
}

// logSigmas returns numpy.log of the float32 training sigmas (a float32 array).
func logSigmas(sigmas []float32) []float64 {
	out := make([]float64, len(sigmas))
	for i, s := range sigmas {
		out[i] = float64(float32(math.Log(float64(s))))
	}
	return out
}

// sigmaToT maps a noise level to a fractional training timestep by linear
// interpolation in log σ between the two neighbouring training sigmas
// (diffusers' _sigma_to_t, k-diffusion's DiscreteSchedule.sigma_to_t).
func sigmaToT(sigma float64, logSig []float64) float64 {
	logSigma := math.Log(math.Max(sigma, 1e-10))
	low := 0
	for i, ls := range logSig {
		if logSigma-ls >= 0 {
			low = i
		}
	}
	low = min(low, len(logSig)-2)
	lo, hi := logSig[low], logSig[low+1]
	w := (lo - logSigma) / (lo - hi)
	w = math.Max(0, math.Min(1, w))
	return (1-w)*float64(low) + w*float64(low+1)
}

// karrasSigmas returns n noise levels with Karras et al.'s ρ = 7 spacing from
// sigmaMax down to sigmaMin.
func karrasSigmas(sigmaMin, sigmaMax float64, n int) []float64 {
	const rho = 7.0
	minInv, maxInv := math.Pow(sigmaMin, 1/rho), math.Pow(sigmaMax, 1/rho)
	out := npLinspace(0, 1, n)
	for i, r := range out {
		out[i] = math.Pow(maxInv+r*(minInv-maxInv), rho)
	}
	return out
}

// exponentialSigmas returns n log-uniformly spaced noise levels from
// sigmaMax down to sigmaMin.
func exponentialSigmas(sigmaMin, sigmaMax float64, n int) []float64 {
	out := npLinspace(math.Log(sigmaMax), math.Log(sigmaMin), n)
	for i, l := range out {
		out[i] = math.Exp(l)
	}
	return out
}

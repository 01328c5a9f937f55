package schedule

import (
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The conformance kit cannot check the arithmetic of the stochastic samplers
// (its rollouts used torch's generator) nor DPM++ 2S ancestral (no diffusers
// class). These tests run each of them with constant "noise" against a
// direct float64 transcription of the published update, looping over steps
// the way k-diffusion and the papers do rather than over model calls.

const testNoise = 0.3

// epsModel is a deterministic stand-in for the UNet: it mixes its input with
// a timestep-dependent pattern, like the kit's fake model.
func epsModel(in []float64, t float64) []float64 {
	out := make([]float64, len(in))
	for j, v := range in {
		out[j] = 0.3*v + 0.7*math.Cos(float64(j)+t/1000)
	}
	return out
}

// runScheduler runs a whole sampling loop with epsModel and constant noise.
func runScheduler(t *testing.T, s Scheduler, x []float32) []float64 {
	t.Helper()
	var err error
	for i, ts := range s.Timesteps() {
		eps := toFloat32(epsModel(toFloat64(s.ScaleModelInput(x, i)), ts))
		x, err = s.Step(eps, i, x, &countingNoise{value: testNoise})
		require.NoError(t, err)
	}
	return toFloat64(x)
}

func initialSample(s Scheduler) []float32 { return scaled(gaussian(11, 24), s.InitNoiseSigma()) }

func assertClose(t *testing.T, want, got []float64) {
	t.Helper()
	assert.LessOrEqual(t, relErr(t, got, want), 1e-5, "got %v\nwant %v", got[:4], want[:4])
}

func TestEulerAncestralReference(t *testing.T) {
	for _, pred := range []PredictionType{PredictEpsilon, PredictV} {
		t.Run(pred.String(), func(t *testing.T) {
			cfg := sd1
			cfg.PredictionType = pred
			s, err := New(cfg, Options{Sampler: EulerAncestral}, 9)
			require.NoError(t, err)
			x0 := initialSample(s)
			got := runScheduler(t, s, x0)

			sig, ts := s.Sigmas(), s.Timesteps()
			x := toFloat64(x0)
			for k, t := range ts {
				from, to := sig[k], sig[k+1]
				c := math.Sqrt(from*from + 1)
				out := epsModel(scaled64(x, 1/c), t)
				up := math.Sqrt(to * to * (from*from - to*to) / (from * from))
				down := math.Sqrt(to*to - up*up)
				for j := range x {
					var d float64 // denoised
					if pred == PredictV {
						d = x[j]/(from*from+1) - out[j]*from/c
					} else {
						d = x[j] - from*out[j]
					}
					x[j] += (x[j]-d)/from*(down-from) + testNoise*up
				}
			}
			assertClose(t, x, got)
		})
	}
}

// tToSigma inverts sigmaToT: log σ interpolated linearly in t over the
// training sigmas (k-diffusion's DiscreteSchedule.t_to_sigma).
func tToSigma(t float64, ac []float32) float64 {
	logSigma := func(i int) float64 { a := float64(ac[i]); return 0.5 * math.Log((1-a)/a) }
	lo := int(math.Floor(t))
	if lo >= len(ac)-1 {
		return math.Exp(logSigma(len(ac) - 1))
	}
	w := t - float64(lo)
	return math.Exp((1-w)*logSigma(lo) + w*logSigma(lo+1))
}

func TestDPMPP2SAncestralReference(t *testing.T) {
	for _, sigmas := range []SigmaSchedule{SigmasDefault, SigmasKarras, SigmasExponential} {
		t.Run(sigmas.String(), func(t *testing.T) {
			const steps = 8
			s, err := New(sd1, Options{Sampler: DPMPP2SAncestral, Sigmas: sigmas}, steps)
			require.NoError(t, err)
			x0 := initialSample(s)
			got := runScheduler(t, s, x0)

			train, err := NewTrainingSchedule(sd1)
			require.NoError(t, err)
			ac := train.AlphasCumprod()
			// The model sees the timestep of each noise level, as
			// k-diffusion's CompVisDenoiser computes it.
			denoise := func(x []float64, sigma float64) []float64 {
				c := math.Sqrt(sigma*sigma + 1)
				eps := epsModel(scaled64(x, 1/c), sigmaToT(sigma, logSigmas(trainingSigmas(ac))))
				d := make([]float64, len(x))
				for j := range x {
					d[j] = x[j] - sigma*eps[j]
				}
				return d
			}
			// sample_dpmpp_2s_ancestral with η = 1 and noise testNoise.
			sig := s.Sigmas()
			x := toFloat64(x0)
			for k := range steps {
				d := denoise(x, sig[k])
				to := sig[k+1]
				up := math.Min(to, math.Sqrt(to*to*(sig[k]*sig[k]-to*to)/(sig[k]*sig[k])))
				down := math.Sqrt(to*to - up*up)
				if down == 0 {
					for j := range x {
						x[j] += (x[j] - d[j]) / sig[k] * (down - sig[k])
					}
				} else {
					tk, tn := -math.Log(sig[k]), -math.Log(down)
					h := tn - tk
					mid := math.Exp(-(tk + h/2))
					x2 := make([]float64, len(x))
					for j := range x {
						x2[j] = mid/sig[k]*x[j] - math.Expm1(-h/2)*d[j]
					}
					d2 := denoise(x2, mid)
					for j := range x {
						x[j] = down/sig[k]*x[j] - math.Expm1(-h)*d2[j]
					}
				}
				if to > 0 {
					for j := range x {
						x[j] += testNoise * up
					}
				}
			}
			assertClose(t, x, got)
			// The midpoint timesteps map back to the midpoint sigmas.
			ts := s.Timesteps()
			for k := 0; k+1 < steps; k++ {
				want := sig[k+1] // = √(σ_k·σ_down) with η = 1
				assert.InDelta(t, want, tToSigma(ts[2*k+1], ac), 1e-5*want)
			}
		})
	}
}

func TestDDPMReference(t *testing.T) {
	s, err := New(sd1, Options{Sampler: DDPM}, 10)
	require.NoError(t, err)
	x0 := initialSample(s)
	got := runScheduler(t, s, x0)

	train, err := NewTrainingSchedule(sd1)
	require.NoError(t, err)
	ac := train.AlphasCumprod()
	ts := s.Timesteps()
	x := toFloat64(x0)
	for i, t := range ts {
		aT, aPrev := float64(ac[int(t)]), 1.0
		if i+1 < len(ts) {
			aPrev = float64(ac[int(ts[i+1])])
		}
		eps := epsModel(x, t)
		alpha := aT / aPrev
		beta := 1 - alpha
		for j := range x {
			// Posterior q(x_prev | x_t, x0) of Ho et al. (7), with x0
			// clipped (DDPMScheduler's clip_sample default).
			x0 := math.Max(-1, math.Min(1, (x[j]-math.Sqrt(1-aT)*eps[j])/math.Sqrt(aT)))
			mean := math.Sqrt(aPrev)*beta/(1-aT)*x0 + math.Sqrt(alpha)*(1-aPrev)/(1-aT)*x[j]
			x[j] = mean + math.Sqrt((1-aPrev)/(1-aT)*beta)*testNoise
		}
	}
	assertClose(t, x, got)
}

func TestDDIMEtaReference(t *testing.T) {
	const eta, steps = 0.7, 10
	s, err := New(sd1, Options{Sampler: DDIM, Eta: eta}, steps)
	require.NoError(t, err)
	x0 := initialSample(s)
	got := runScheduler(t, s, x0)

	train, err := NewTrainingSchedule(sd1)
	require.NoError(t, err)
	ac := train.AlphasCumprod()
	x := toFloat64(x0)
	for _, t := range s.Timesteps() {
		prev := int(t) - 1000/steps
		aT, aPrev := float64(ac[int(t)]), 1.0 // set_alpha_to_one: DDIMScheduler default
		if prev >= 0 {
			aPrev = float64(ac[prev])
		}
		eps := epsModel(x, t)
		std := eta * math.Sqrt((1-aPrev)/(1-aT)*(1-aT/aPrev))
		for j := range x {
			x0 := math.Max(-1, math.Min(1, (x[j]-math.Sqrt(1-aT)*eps[j])/math.Sqrt(aT)))
			x[j] = math.Sqrt(aPrev)*x0 + math.Sqrt(1-aPrev-std*std)*eps[j] + std*testNoise
		}
	}
	assertClose(t, x, got)
}

func TestLCMReference(t *testing.T) {
	s, err := New(sd1, Options{Sampler: LCM}, 4)
	require.NoError(t, err)
	x0 := initialSample(s)
	got := runScheduler(t, s, x0)

	train, err := NewTrainingSchedule(sd1)
	require.NoError(t, err)
	ac := train.AlphasCumprod()
	ts := s.Timesteps()
	x := toFloat64(x0)
	for i, t := range ts {
		aT := float64(ac[int(t)])
		eps := epsModel(x, t)
		st := 10 * t
		cSkip, cOut := 0.25/(st*st+0.25), st/math.Sqrt(st*st+0.25)
		for j := range x {
			denoised := cOut*(x[j]-math.Sqrt(1-aT)*eps[j])/math.Sqrt(aT) + cSkip*x[j]
			x[j] = denoised
			if i+1 < len(ts) {
				aNext := float64(ac[int(ts[i+1])])
				x[j] = math.Sqrt(aNext)*denoised + math.Sqrt(1-aNext)*testNoise
			}
		}
	}
	assertClose(t, x, got)
}

func scaled64(x []float64, c float64) []float64 {
	out := make([]float64, len(x))
	for j, v := range x {
		out[j] = c * v
	}
	return out
}

package schedule

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/gosd/gosd/internal/testutil"
)

// conformanceEntry is one CONFIG/SCHEDULER entry of schedulers.json.
type conformanceEntry struct {
	Config                 json.RawMessage `json:"config"`
	Steps                  int             `json:"steps"`
	Timesteps              []float64       `json:"timesteps"`
	Sigmas                 []float64       `json:"sigmas"`
	InitNoiseSigma         float64         `json:"init_noise_sigma"`
	AlphasCumprodFirstLast []float64       `json:"alphas_cumprod_first_last"`
	Error                  string          `json:"error"`
	Rollout                *struct {
		X0         []float64 `json:"x0"`
		Base       []float64 `json:"base"`
		FirstStep  []float64 `json:"first_step"`
		Final      []float64 `json:"final"`
		Stochastic bool      `json:"stochastic"`
	} `json:"rollout"`
}

// conformanceSamplers maps the kit's scheduler names to samplers; the
// _karras and _clip variants differ only in their config.
var conformanceSamplers = map[string]Sampler{
	"ddpm": DDPM, "ddim": DDIM, "ddim_eta0_clip": DDIM, "pndm": PNDM, "lcm": LCM,
	"euler": Euler, "euler_karras": Euler, "euler_ancestral": EulerAncestral,
	"heun": Heun, "dpm2": DPM2, "lms": LMS, "unipc": UniPC,
	"dpmpp_2m": DPMPP2M, "dpmpp_2m_karras": DPMPP2M,
}

// conformanceTolerance is the relative tolerance: max|got−want| ≤ tol·max|want|.
const conformanceTolerance = 1e-5

func loadConformance(t *testing.T) map[string]conformanceEntry {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(testutil.ConformanceDir(t), "schedulers.json"))
	require.NoError(t, err)
	var entries map[string]conformanceEntry
	require.NoError(t, json.Unmarshal(data, &entries))
	require.NotEmpty(t, entries)
	return entries
}

// relErr is max|got−want| / max|want| (the absolute error when want is 0).
func relErr(t *testing.T, got, want []float64) float64 {
	t.Helper()
	require.Len(t, got, len(want))
	var diff, scale float64
	for i := range want {
		diff = math.Max(diff, math.Abs(got[i]-want[i]))
		scale = math.Max(scale, math.Abs(want[i]))
	}
	if scale == 0 {
		return diff
	}
	return diff / scale
}

func toFloat32(v []float64) []float32 {
	out := make([]float32, len(v))
	for i, x := range v {
		out[i] = float32(x)
	}
	return out
}

// rollout runs the kit's fake model through the scheduler and returns the
// samples after the first and the last step.
func rollout(t *testing.T, s Scheduler, x0, base []float64) (first, final []float64) {
	t.Helper()
	x := make([]float32, len(x0))
	init := float32(s.InitNoiseSigma())
	for j, v := range x0 {
		x[j] = float32(v) * init
	}
	for i, ts := range s.Timesteps() {
		in := s.ScaleModelInput(x, i)
		c := math.Cos(ts / 1000)
		eps := make([]float32, len(x))
		for j := range eps {
			eps[j] = float32(0.3*float64(in[j]) + 0.7*base[j]*c)
		}
		var err error
		x, err = s.Step(eps, i, x, nil)
		require.NoError(t, err, "step %d", i)
		if i == 0 {
			first = toFloat64(x)
		}
	}
	return first, toFloat64(x)
}

func TestConformance(t *testing.T) {
	entries := loadConformance(t)
	names := make([]string, 0, len(entries))
	for name := range entries {
		names = append(names, name)
	}
	sort.Strings(names)

	type result struct {
		name string
		err  float64
	}
	var worst []result
	for _, name := range names {
		e := entries[name]
		t.Run(name, func(t *testing.T) {
			sampler, ok := conformanceSamplers[name[strings.Index(name, "/")+1:]]
			require.True(t, ok, "unknown scheduler in %s", name)
			cfg, err := ParseConfig(e.Config)
			require.NoError(t, err)
			if e.Error != "" {
				// The kit records no step count for failing entries;
				// every entry of the kit but LCM's uses 10.
				_, err := New(cfg, Options{Sampler: sampler}, 10)
				assert.Error(t, err, "diffusers fails with %q", e.Error)
				return
			}
			s, err := New(cfg, Options{Sampler: sampler}, e.Steps)
			require.NoError(t, err)

			entryErr := relErr(t, s.Timesteps(), e.Timesteps)
			assert.LessOrEqual(t, entryErr, conformanceTolerance, "timesteps %v, want %v", s.Timesteps(), e.Timesteps)
			if e.Sigmas != nil {
				r := relErr(t, s.Sigmas(), e.Sigmas)
				assert.LessOrEqual(t, r, conformanceTolerance, "sigmas %v, want %v", s.Sigmas(), e.Sigmas)
				entryErr = math.Max(entryErr, r)
			} else {
				assert.Nil(t, s.Sigmas())
			}
			r := relErr(t, []float64{s.InitNoiseSigma()}, []float64{e.InitNoiseSigma})
			assert.LessOrEqual(t, r, conformanceTolerance, "init_noise_sigma %v, want %v", s.InitNoiseSigma(), e.InitNoiseSigma)
			entryErr = math.Max(entryErr, r)

			if !e.Rollout.Stochastic {
				first, final := rollout(t, s, e.Rollout.X0, e.Rollout.Base)
				r := relErr(t, first, e.Rollout.FirstStep)
				assert.LessOrEqual(t, r, conformanceTolerance, "first step")
				entryErr = math.Max(entryErr, r)
				r = relErr(t, final, e.Rollout.Final)
				assert.LessOrEqual(t, r, conformanceTolerance, "final sample")
				entryErr = math.Max(entryErr, r)
			}
			worst = append(worst, result{name, entryErr})
		})
	}
	sort.Slice(worst, func(i, j int) bool { return worst[i].err > worst[j].err })
	for _, w := range worst[:min(len(worst), 5)] {
		t.Logf("max relative error %.3g  %s", w.err, w.name)
	}
}

// TestConformanceTrainingSchedule checks ᾱ_0 and ᾱ_(T−1) of each kit config.
// The kit records the values of the entry's scheduler class, in which the
// sigma-based classes replace a zero terminal ᾱ by 2⁻²⁴; the training
// schedule keeps it 0, so the last value is compared where no rescale is set.
func TestConformanceTrainingSchedule(t *testing.T) {
	for name, e := range loadConformance(t) {
		if e.AlphasCumprodFirstLast == nil {
			continue
		}
		t.Run(name, func(t *testing.T) {
			cfg, err := ParseConfig(e.Config)
			require.NoError(t, err)
			ts, err := NewTrainingSchedule(cfg)
			require.NoError(t, err)
			ac := ts.AlphasCumprod()
			want := e.AlphasCumprodFirstLast
			assert.InDelta(t, want[0], float64(ac[0]), 1e-9*want[0])
			if !cfg.RescaleBetasZeroSNR {
				assert.InDelta(t, want[1], float64(ac[len(ac)-1]), 1e-6*want[1])
			} else {
				assert.Zero(t, ac[len(ac)-1])
			}
		})
	}
}

package main

import (
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/gosd/gosd/diffusion/modelfile"
	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestEnsureRandomWeights(t *testing.T) {
	cache := t.TempDir()
	dir := filepath.Join(cache, "tiny-f16")
	var log strings.Builder
	got, err := ensureRandomWeights(context.Background(), dir, tinyArch(), &log)
	require.NoError(t, err)
	assert.Equal(t, dir, got)
	assert.Contains(t, log.String(), "writing random F16 weights to "+dir)
	assert.FileExists(t, filepath.Join(dir, randomMarker))
	m, err := modelfile.Load(dir)
	require.NoError(t, err)
	assert.Equal(t, tinyArch().UNet, m.UNet.Config)
	require.NoError(t, m.Close())
	entries, err := os.ReadDir(cache)
	require.NoError(t, err)
	assert.Len(t, entries, 1, "no temporary folder left")

	// Complete weights are never written again.
	unet := filepath.Join(dir, "unet", "diffusion_pytorch_model.safetensors")
	require.NoError(t, os.WriteFile(unet, []byte("kept"), 0o644))
	log.Reset()
	got, err = ensureRandomWeights(context.Background(), dir, tinyArch(), &log)
	require.NoError(t, err)
	assert.Equal(t, dir, got)
	assert.Empty(t, log.String())
	data, err := os.ReadFile(unet)
	require.NoError(t, err)
	assert.Equal(t, "kept", string(data))
}

func TestEnsureRandomWeightsFailures(t *testing.T) {
	t.Run("bad architecture", func(t *testing.T) {
		cache := t.TempDir()
		arch := tinyArch()
		arch.UNet.BlockOutChannels = nil
		_, err := ensureRandomWeights(context.Background(), filepath.Join(cache, "bad-f16"), arch, &strings.Builder{})
		assert.ErrorContains(t, err, "writing random weights")
		entries, err := os.ReadDir(cache)
		require.NoError(t, err)
		assert.Empty(t, entries, "nothing left behind")
	})
	t.Run("incomplete folder in the way", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "tiny-f16")
		require.NoError(t, os.MkdirAll(filepath.Join(dir, "unet"), 0o755))
		_, err := ensureRandomWeights(context.Background(), dir, tinyArch(), &strings.Builder{})
		assert.ErrorContains(t, err, dir+" exists but is not a complete set of random weights (no "+randomMarker+"): remove it")
		assert.NoFileExists(t, filepath.Join(dir, randomMarker))
	})
}

func TestMedian(t *testing.T) {
	tests := []struct {
		in   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{3}, 3},
		{[]float64{5, 1, 4}, 4},
		{[]float64{4, 1, 3, 2}, 2.5},
	}
	for _, tt := range tests {
		in := slices.Clone(tt.in)
		assert.Equal(t, tt.want, median(tt.in), "%v", tt.in)
		assert.Equal(t, in, tt.in, "the input is not reordered")
	}
}

func TestFormatBytes(t *testing.T) {
	tests := []struct {
		n    uint64
		want string
	}{
		{0, "0 B"}, {1023, "1023 B"}, {1024, "1.0 KiB"}, {1536, "1.5 KiB"},
		{3 << 20, "3.0 MiB"}, {5 << 30, "5.0 GiB"}, {2 << 40, "2.0 TiB"}, {3 << 50, "3072.0 TiB"},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, formatBytes(tt.n))
	}
}

func TestBenchFlagValidation(t *testing.T) {
	tests := []struct {
		name string
		args []string
		msg  string
	}{
		{"unknown architecture", []string{"--arch", "sd3"}, `invalid value "sd3" for flag -arch: want sd15 or sd21 or sdxl`},
		{"size not a multiple of 8", []string{"--size", "100"}, `invalid value "100" for flag -size: must be a multiple of 8`},
		{"zero steps", []string{"--steps", "0"}, "flag -steps: must be between 1 and 1000"},
		{"bad device", []string{"--device", "gpu"}, "flag -device: unknown device"},
		{"argument", []string{"sd15"}, `unexpected argument "sd15"`},
		{"no cache folder", []string{"--cache", ""}, "no cache folder: pass --cache"},
		{"model and arch", []string{"-m", t.TempDir(), "--arch", "sd21"}, "-m and --arch exclude each other"},
		{"random ControlNet with a model", []string{"-m", t.TempDir(), "--controlnet", "random"}, "--controlnet random needs random weights (no -m)"},
		{"bad precision", []string{"--precision", "fp16"}, `flag -precision: unknown precision "fp16"`},
		{"compare and precision", []string{"--compare-precision", "--precision", "bf16"}, "--compare-precision runs both precisions"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runArgs(t, append([]string{"bench"}, tt.args...)...)
			assert.Equal(t, exitUsage, r.code)
			assert.Contains(t, r.stderr, "sdcli bench: ")
			assert.Contains(t, r.stderr, tt.msg)
			assert.Empty(t, r.stdout)
		})
	}
}

// bench end to end on a tiny architecture standing in for sd15: the weights are written
// on the first run only, and the report holds every measurement.
func TestBenchTinyArchitecture(t *testing.T) {
	_, rt := tinyModel(t)
	cache := t.TempDir()
	bench := func(extra ...string) runResult {
		a, stdout, stderr := testApp(t)
		a.archs = map[string]modelfile.Architecture{"sd15": tinyArch()}
		code := a.run(t.Context(), slices.Concat([]string{"bench", "--cache", cache, "--size", "64"}, extra, rt))
		return runResult{code, stdout.String(), stderr.String()}
	}

	r := bench("--steps", "3", "--json")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	assert.Contains(t, r.stderr, "writing random F16 weights to "+filepath.Join(cache, "sd15-f16"))
	assert.Contains(t, r.stderr, "bench |")
	var rep benchReport
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &rep))
	assert.Equal(t, "sd15", rep.Arch)
	assert.Equal(t, "F16", rep.DType)
	assert.Equal(t, 64, rep.Size)
	assert.Equal(t, "ddim", rep.Sampler)
	assert.Equal(t, "cpu", rep.Device)
	assert.Equal(t, 2, rep.Threads)
	require.Len(t, rep.StepTimes, 3)
	assert.GreaterOrEqual(t, rep.StepMedian, slices.Min(rep.StepTimes))
	assert.LessOrEqual(t, rep.StepMedian, slices.Max(rep.StepTimes))
	for name, v := range map[string]float64{"load": rep.Load, "text encode": rep.TextEncode, "decode": rep.Decode} {
		assert.Positive(t, v, name)
	}
	phases := rep.TextEncode + rep.Decode
	for _, s := range rep.StepTimes {
		phases += s
	}
	assert.GreaterOrEqual(t, rep.Total, phases, "the phases are parts of the call")
	assert.Positive(t, rep.ArenaPeak)
	if _, ok := peakRSS(); ok {
		assert.Positive(t, rep.PeakRSS)
	}

	// A random ControlNet for the architecture, written once too.
	r = bench("--steps", "1", "--json", "--controlnet", "random")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	cnPath := filepath.Join(cache, "sd15-f16-controlnet.safetensors")
	assert.Contains(t, r.stderr, "writing a random F16 ControlNet to "+cnPath)
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &rep))
	assert.Equal(t, cnPath, rep.ControlNet)
	r = bench("--steps", "1", "--controlnet", "random")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	assert.NotContains(t, r.stderr, "writing")
	assert.Contains(t, r.stdout, "controlnet      run at every step")
	assert.Contains(t, r.stdout, "UNet and ControlNet, batch 2 with CFG")

	// A random TAESD of the real architecture decoding, without guidance (SD-Turbo's way).
	r = bench("--steps", "1", "--json", "--taesd", "random", "--cfg", "1")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	taesd := filepath.Join(cache, "taesd-f16")
	assert.Contains(t, r.stderr, "writing random F16 weights to "+taesd)
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &rep))
	assert.Equal(t, taesd, rep.TAESD)
	assert.Equal(t, 1.0, rep.CFG)
	assert.Positive(t, rep.Decode)
	r = bench("--steps", "1", "--taesd", "random", "--cfg", "1")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	assert.NotContains(t, r.stderr, "writing")
	for _, s := range []string{"1 step ddim, no CFG", "UNet batch 1 without CFG", "taesd decode", taesd} {
		assert.Contains(t, r.stdout, s)
	}

	r = bench("--steps", "2")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	assert.NotContains(t, r.stderr, "writing", "the weights are reused")
	for _, s := range []string{"model", "sd15 F16 random weights", "64×64", "2 steps ddim, CFG 7.5", "load", "text encode",
		"step", "median of 2", "vae decode", "total", "peak RSS", "arena peak", "device weights"} {
		assert.Contains(t, r.stdout, s)
	}
}

// bench --compare-precision times fp32 and then bf16 and compares their images; on a CPU
// without AVX512_BF16 it fails saying so.
func TestBenchComparePrecision(t *testing.T) {
	model, rt := tinyModel(t)
	r := runArgs(t, slices.Concat([]string{"bench", "-m", model, "--steps", "2", "--compare-precision", "--json"}, rt)...)
	if r.code == exitError && strings.Contains(r.stderr, "bf16 precision is not available") {
		t.Skipf("no bf16 here: %s", r.stderr)
	}
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	var c precisionComparison
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &c))
	assert.Equal(t, "fp32", c.FP32.Precision)
	assert.Equal(t, "bf16", c.BF16.Precision)
	assert.Contains(t, c.BF16.Backend, "bf16 compute")
	require.Len(t, c.BF16.StepTimes, 2)
	assert.Greater(t, c.PSNR, 30.0, "sd1-tiny's bf16 image is close to its fp32 one")
	assert.False(t, math.IsInf(c.PSNR, 0), "bf16 is not fp32")
	assert.InDelta(t, c.FP32.StepMedian/c.BF16.StepMedian, c.Speedup, 1e-9)

	r = runArgs(t, slices.Concat([]string{"bench", "-m", model, "--steps", "1", "--compare-precision"}, rt)...)
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	assert.Contains(t, r.stdout, "bf16 vs fp32  PSNR ")
	assert.Equal(t, 2, strings.Count(r.stdout, "of the matrix products"), "a table per precision")
}

// bench -m times a given model at its native size and writes no random weights.
func TestBenchModel(t *testing.T) {
	model, rt := tinyModel(t)
	cache := t.TempDir()
	r := runArgs(t, slices.Concat([]string{"bench", "-m", model, "--cache", cache, "--steps", "1", "--json"}, rt)...)
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	var rep benchReport
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &rep))
	assert.Equal(t, model, rep.Model)
	assert.Empty(t, rep.Arch)
	assert.Equal(t, 64, rep.Size, "sd1-tiny's native size")
	require.Len(t, rep.StepTimes, 1)
	entries, err := os.ReadDir(cache)
	require.NoError(t, err)
	assert.Empty(t, entries)

	r = runArgs(t, slices.Concat([]string{"bench", "-m", model, "--steps", "1"}, rt)...)
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	assert.Contains(t, r.stdout, "given with -m")

	r = runArgs(t, "bench", "-m", filepath.Join(cache, "missing"))
	assert.Equal(t, exitError, r.code)
	assert.Contains(t, r.stderr, "no such file or folder")
}

func TestBenchTable(t *testing.T) {
	r := benchReport{
		Arch: "sd15", DType: "F16", Model: "/cache/sd15-f16", Size: 256, Steps: 1, Sampler: "ddim",
		Device: "cpu", Backend: "cpu, 2 threads", CPUs: 2, Precision: "fp32", CFG: 7.5,
		Load: 0.146, TextEncode: 0.457, StepTimes: []float64{4.481}, StepMedian: 4.481, Decode: 5.12, Total: 10.059,
		PeakRSS: 2254857830, ArenaPeak: 160 << 20,
	}
	var out strings.Builder
	require.NoError(t, r.table(&out))
	want := `model           sd15 F16 random weights  /cache/sd15-f16
device          cpu                      cpu, 2 threads
threads         one per core (2)
precision       fp32                     of the matrix products
image           256×256                  1 step ddim, CFG 7.5
load            0.146 s                  Open
text encode     0.457 s                  prompt and negative prompt
step            4.481 s                  median of 1 (min 4.481 s, max 4.481 s), UNet batch 2 with CFG
vae decode      5.120 s
total           10.059 s                 txt2img, without load
peak RSS        2.1 GiB                  process, getrusage (mapped weights count once touched)
arena peak      160.0 MiB                runtime activations
device weights  0 B                      copied to the device (weights used in place from the file are not counted)
`
	assert.Equal(t, want, out.String())
}

// bench --arch sdxl end to end on a tiny architecture standing in for SDXL base (two text
// encoders, the added text_time embedding): the full-size one is not run in tests.
func TestBenchTinySDXLArchitecture(t *testing.T) {
	_, rt := tinyModel(t)
	cache := t.TempDir()
	a, stdout, stderr := testApp(t)
	a.archs = map[string]modelfile.Architecture{"sdxl": tinySDXLArch()}
	code := a.run(t.Context(), slices.Concat([]string{"bench", "--arch", "sdxl", "--cache", cache, "--size", "64", "--steps", "2", "--json"}, rt))
	require.Equal(t, exitOK, code, "stderr: %s", stderr.String())
	assert.Contains(t, stderr.String(), "writing random F16 weights to "+filepath.Join(cache, "sdxl-f16"))
	var rep benchReport
	require.NoError(t, json.Unmarshal(stdout.Bytes(), &rep))
	assert.Equal(t, "sdxl", rep.Arch)
	assert.Equal(t, 64, rep.Size)
	require.Len(t, rep.StepTimes, 2)
	m, err := modelfile.Load(filepath.Join(cache, "sdxl-f16"))
	require.NoError(t, err)
	defer m.Close()
	assert.Equal(t, modelfile.FamilySDXL, m.Family)
	assert.Len(t, m.ExtraTextEncoders, 1)
}

// tinySDXLArch is SDXL base's layout at a few channels.
func tinySDXLArch() modelfile.Architecture {
	a := modelfile.SDXL()
	a.UNet.SampleSize = 8
	a.UNet.BlockOutChannels = []int{32, 64}
	a.UNet.LayersPerBlock = []int{1, 1}
	a.UNet.DownBlockTypes = []string{"DownBlock2D", "CrossAttnDownBlock2D"}
	a.UNet.UpBlockTypes = []string{"CrossAttnUpBlock2D", "UpBlock2D"}
	a.UNet.AttentionHeads = []int{2, 2}
	a.UNet.TransformerLayersPerBlock = []int{1, 2}
	a.UNet.TimeEmbeddingDim = 128
	a.VAE.BlockOutChannels = []int{32, 32, 32, 32}
	a.VAE.LayersPerBlock = 1
	a.TextEncoder.HiddenSize, a.TextEncoder.IntermediateSize, a.TextEncoder.NumHiddenLayers, a.TextEncoder.NumAttentionHeads = 16, 32, 2, 2
	te2 := *a.TextEncoder2
	te2.HiddenSize, te2.IntermediateSize, te2.NumHiddenLayers, te2.NumAttentionHeads, te2.ProjectionDim = 32, 64, 3, 2, 24
	a.TextEncoder2 = &te2
	a.UNet.CrossAttentionDim = 16 + 32
	a.UNet.AdditionTimeEmbedDim = 8
	a.UNet.ProjectionClassEmbeddingsInputDim = 24 + 6*8
	return a
}

// bench --arch x4-upscaler writes random upscaler weights and times an upscale (a tiny
// stand-in architecture here).
func TestBenchX4UpscalerArchitecture(t *testing.T) {
	_, rt := tinyModel(t)
	arch := modelfile.X4Upscaler()
	arch.UNet.BlockOutChannels, arch.UNet.TimeEmbeddingDim, arch.UNet.CrossAttentionDim = []int{32, 32, 64, 64}, 128, 32
	arch.VAE.BlockOutChannels = []int{32, 32, 64}
	arch.TextEncoder.HiddenSize, arch.TextEncoder.IntermediateSize, arch.TextEncoder.NumHiddenLayers = 32, 64, 2
	arch.TextEncoder.NumAttentionHeads, arch.TextEncoder.ProjectionDim = 4, 32
	a, stdout, stderr := testApp(t)
	a.archs = map[string]modelfile.Architecture{"x4-upscaler": arch}
	code := a.run(t.Context(), slices.Concat([]string{"bench", "--arch", "x4-upscaler", "--cache", t.TempDir(), "--size", "64", "--steps", "2", "--json"}, rt))
	require.Equal(t, exitOK, code, "stderr: %s", stderr.String())
	var rep benchReport
	require.NoError(t, json.Unmarshal(stdout.Bytes(), &rep))
	assert.Equal(t, "x4-upscaler", rep.Arch)
	assert.True(t, rep.Upscale)
	assert.Equal(t, 64, rep.Size)
	assert.Len(t, rep.StepTimes, 2)
}

// bench -m with an x4 upscaler times an upscale to --size from a quarter-size image.
func TestBenchUpscaler(t *testing.T) {
	_, rt := tinyModel(t)
	model := filepath.Join(testutil.ConformanceDir(t), "upscaler-tiny", "diffusers")
	r := runArgs(t, slices.Concat([]string{"bench", "-m", model, "--size", "128", "--steps", "2", "--json"}, rt)...)
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	var rep benchReport
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &rep))
	assert.Equal(t, 128, rep.Size)
	assert.True(t, rep.Upscale)
	require.Len(t, rep.StepTimes, 2)
	assert.Positive(t, rep.Decode)
	assert.GreaterOrEqual(t, rep.Total, rep.Decode+rep.StepTimes[0]+rep.StepTimes[1])
}

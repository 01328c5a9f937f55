package modelfile

import (
	"bytes"
	"context"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// tinyArchitecture is SD 1.5's layout at a few channels, for tests.
func tinyArchitecture() Architecture {
	a := SD15()
	a.UNet.SampleSize = 8
	a.UNet.BlockOutChannels = []int{32, 64}
	a.UNet.LayersPerBlock = []int{1, 1}
	a.UNet.DownBlockTypes = []string{crossAttnDown, plainDown}
	a.UNet.UpBlockTypes = []string{plainUp, crossAttnUp}
	a.UNet.AttentionHeads = []int{2, 2}
	a.UNet.TransformerLayersPerBlock = []int{1, 1}
	a.UNet.CrossAttentionDim = 32
	a.UNet.TimeEmbeddingDim = 128
	a.VAE.BlockOutChannels = []int{32, 32}
	a.VAE.DownBlockTypes = []string{vaeDown, vaeDown}
	a.VAE.UpBlockTypes = []string{vaeUp, vaeUp}
	a.VAE.LayersPerBlock = 1
	a.TextEncoder.VocabSize = 1000
	a.TextEncoder.HiddenSize = 32
	a.TextEncoder.IntermediateSize = 64
	a.TextEncoder.NumHiddenLayers = 2
	a.TextEncoder.NumAttentionHeads = 2
	return a
}

// tinySDXLArchitecture is SDXL's layout at a few channels, for tests.
func tinySDXLArchitecture() Architecture {
	a := SDXL()
	a.UNet.SampleSize = 8
	a.UNet.BlockOutChannels = []int{32, 64}
	a.UNet.LayersPerBlock = []int{1, 1}
	a.UNet.DownBlockTypes = []string{plainDown, crossAttnDown}
	a.UNet.UpBlockTypes = []string{crossAttnUp, plainUp}
	a.UNet.AttentionHeads = []int{2, 2}
	a.UNet.TransformerLayersPerBlock = []int{1, 2}
	a.UNet.TimeEmbeddingDim = 128
	a.VAE.BlockOutChannels = []int{32, 32}
	a.VAE.DownBlockTypes = []string{vaeDown, vaeDown}
	a.VAE.UpBlockTypes = []string{vaeUp, vaeUp}
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

// An SDXL architecture writes an SDXL folder: both text encoders, model_index.json's class.
func TestWriteRandomSDXLLoadsBack(t *testing.T) {
	arch := tinySDXLArchitecture()
	dir := t.TempDir()
	require.NoError(t, WriteRandom(context.Background(), dir, arch, F16, 7))
	m := loadModel(t, dir)
	assert.Equal(t, FamilySDXL, m.Family)
	assert.True(t, m.ForceZerosForEmptyPrompt)
	assert.Equal(t, arch.UNet, m.UNet.Config)
	assert.Equal(t, arch.TextEncoder, m.TextEncoder.Config)
	require.Len(t, m.ExtraTextEncoders, 1)
	assert.Equal(t, *arch.TextEncoder2, m.ExtraTextEncoders[0].Config)
	assert.Empty(t, m.ExtraTextEncoders[0].TokenizerDir)
	assert.Equal(t, "EulerDiscreteScheduler", m.Scheduler.ClassName)
	assert.Empty(t, m.Unused)
}

// A refiner architecture writes SDXL's refiner folder: its one encoder as text_encoder_2.
func TestWriteRandomSDXLRefinerLoadsBack(t *testing.T) {
	arch := tinySDXLArchitecture()
	arch.TextEncoder, arch.TextEncoder2, arch.Refiner = *arch.TextEncoder2, nil, true
	arch.UNet.CrossAttentionDim = arch.TextEncoder.HiddenSize
	arch.UNet.ProjectionClassEmbeddingsInputDim = arch.TextEncoder.ProjectionDim + 5*arch.UNet.AdditionTimeEmbedDim
	dir := t.TempDir()
	require.NoError(t, WriteRandom(context.Background(), dir, arch, F16, 7))
	assert.DirExists(t, filepath.Join(dir, "text_encoder_2"))
	m := loadModel(t, dir)
	assert.Equal(t, FamilySDXL, m.Family)
	assert.True(t, m.RequiresAestheticsScore)
	assert.False(t, m.ForceZerosForEmptyPrompt)
	assert.Empty(t, m.ExtraTextEncoders)
	assert.Equal(t, arch.TextEncoder, m.TextEncoder.Config)
	assert.Contains(t, m.TextEncoder.Tensors, "text_projection.weight")
	assert.Empty(t, m.Unused)
}

func TestWriteRandomLoadsBack(t *testing.T) {
	arch := tinyArchitecture()
	dir := t.TempDir()
	require.NoError(t, WriteRandom(context.Background(), dir, arch, F16, 7))
	m := loadModel(t, dir)

	assert.Equal(t, FamilySD1, m.Family)
	assert.Equal(t, arch.UNet, m.UNet.Config)
	assert.Equal(t, arch.VAE, m.VAE.Config)
	assert.Equal(t, arch.TextEncoder, m.TextEncoder.Config)
	assert.Equal(t, arch.Scheduler.PredictionType, m.Scheduler.PredictionType)
	assert.Equal(t, arch.Scheduler.ClassName, m.Scheduler.ClassName)
	assert.Empty(t, m.TokenizerDir)
	assert.Empty(t, m.Unused)

	for name, x := range m.UNet.Tensors {
		assert.Equal(t, F16, x.DType, name)
		v, err := x.Float32s()
		require.NoError(t, err)
		switch {
		case strings.HasSuffix(name, ".bias"):
			assert.Equal(t, make([]float32, len(v)), v, "%s: biases are 0", name)
		case len(x.Shape) == 1:
			for _, f := range v {
				require.Equal(t, float32(1), f, "%s: norm weights are 1", name)
			}
		case len(v) >= 4096:
			fanIn := float64(x.NumElements() / x.Shape[0])
			mean, std := meanStd(v)
			assert.InDelta(t, 0, mean, 4/math.Sqrt(fanIn*float64(len(v))), name)
			assert.InDelta(t, 1/math.Sqrt(fanIn), std, 0.05/math.Sqrt(fanIn), name)
		}
	}
}

func meanStd(v []float32) (mean, std float64) {
	for _, f := range v {
		mean += float64(f)
	}
	mean /= float64(len(v))
	for _, f := range v {
		std += (float64(f) - mean) * (float64(f) - mean)
	}
	return mean, math.Sqrt(std / float64(len(v)))
}

func TestWriteRandomIsDeterministic(t *testing.T) {
	arch := tinyArchitecture()
	read := func(seed uint64, dtype DType) []byte {
		dir := t.TempDir()
		require.NoError(t, WriteRandom(context.Background(), dir, arch, dtype, seed))
		b, err := os.ReadFile(filepath.Join(dir, "text_encoder", "model.safetensors"))
		require.NoError(t, err)
		return b
	}
	a := read(1, F32)
	assert.Equal(t, a, read(1, F32), "same seed, same bytes")
	assert.NotEqual(t, a, read(2, F32))

	err := WriteRandom(context.Background(), t.TempDir(), arch, I64, 1)
	assert.ErrorContains(t, err, "random weights of type I64")
	bad := tinyArchitecture()
	bad.UNet.MidBlockType = "UNetMidBlock2DSimpleCrossAttn"
	assert.ErrorContains(t, WriteRandom(context.Background(), t.TempDir(), bad, F16, 1), "unsupported mid block type")
}

func TestRandomWeightsIndependentOfWorkers(t *testing.T) {
	// Three chunks and a bit: the values must not depend on how many
	// workers generate them, and the dtypes must round the same values.
	x := Tensor{Name: "big.weight", Shape: []int64{3*chunkElements/1000 + 1, 1000}}
	gen := func(workers int, dtype DType) []float32 {
		var buf bytes.Buffer
		x.DType = dtype
		g := &randomWeights{seed: 3, stream: 9, bufs: make([][]byte, workers)}
		require.NoError(t, g.write(&buf, x, 5))
		x.Data = buf.Bytes()
		v, err := x.Float32s()
		require.NoError(t, err)
		return v
	}
	f32 := gen(1, F32)
	assert.Equal(t, f32, gen(3, F32))
	for _, c := range []struct {
		dtype DType
		ulp   float64
	}{{F16, 0x1p-10}, {BF16, 0x1p-7}} {
		bad := 0
		for i, v := range gen(2, c.dtype) {
			// Half an ulp relative, or half the spacing of F16's subnormals.
			if math.Abs(float64(v-f32[i])) > c.ulp/2*math.Abs(float64(f32[i]))+0x1p-25 {
				bad++
			}
		}
		assert.Zero(t, bad, "%s values not rounded to nearest", c.dtype)
	}
}

func TestFullSizeArchitectureParameterCounts(t *testing.T) {
	for _, c := range []struct {
		arch   Architecture
		params int64 // diffusers' num_parameters() for unet, vae, text_encoder
	}{
		{SD15(), 859520964 + 83653863 + 123060480},
		{SD21(), 865910724 + 83653863 + 340387840},
		// and text_encoder_2, CLIPTextModelWithProjection.
		{SDXL(), 2567463684 + 83653863 + 123060480 + 694659840},
	} {
		t.Run(c.arch.Family.String(), func(t *testing.T) {
			var total int64
			cfgs := []specLister{c.arch.UNet, c.arch.VAE, c.arch.TextEncoder}
			if c.arch.TextEncoder2 != nil {
				cfgs = append(cfgs, *c.arch.TextEncoder2)
			}
			for _, cfg := range cfgs {
				specs, err := cfg.TensorSpecs()
				require.NoError(t, err)
				for _, s := range specs {
					n, _ := numElements(s.Shape)
					total += n
				}
			}
			assert.Equal(t, c.params, total)
		})
	}
}

// BenchmarkLoadSD15 measures Load of a full-size SD 1.5 folder (2 GB of
// float16, written once with random weights): mapping, header parsing and
// binding, with no weight read.
func BenchmarkLoadSD15(b *testing.B) {
	dir := b.TempDir()
	require.NoError(b, WriteRandom(context.Background(), dir, SD15(), F16, 0))
	for b.Loop() {
		m, err := Load(dir)
		require.NoError(b, err)
		require.NoError(b, m.Close())
	}
}

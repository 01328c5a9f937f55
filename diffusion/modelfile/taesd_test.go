package modelfile

import (
	"archive/zip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseTAESDConfig(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(testutil.ConformanceDir(t), "taesd-tiny", "diffusers", "config.json"))
	require.NoError(t, err)
	c, err := ParseTAESDConfig(b)
	require.NoError(t, err)
	assert.Equal(t, []int{32, 32, 32, 32}, c.EncoderBlockOutChannels)
	assert.Equal(t, []int{1, 3, 3, 3}, c.NumEncoderBlocks)
	assert.Equal(t, []int{3, 3, 3, 1}, c.NumDecoderBlocks)
	assert.Equal(t, 4, c.LatentChannels)
	assert.Equal(t, 1.0, c.ScalingFactor)
	assert.Equal(t, 8, c.Factor())

	def, err := ParseTAESDConfig([]byte(`{}`))
	require.NoError(t, err)
	assert.Equal(t, DefaultTAESDConfig(), def)

	for _, tc := range []struct {
		json        string
		unsupported bool
	}{
		{`{"_class_name": "AutoencoderKL"}`, true},
		{`{"act_fn": "silu"}`, true},
		{`{"upsample_fn": "bilinear"}`, true},
		{`{"upsampling_scaling_factor": 4}`, true},
		{`{"decoder_block_out_channels": [64, 32, 64, 64]}`, true},
		{`{"num_decoder_blocks": [3, 3]}`, false},
		{`{"latent_channels": 0}`, false},
		{`{"scaling_factor": 0}`, false},
		{`{"encoder_block_out_channels": [], "num_encoder_blocks": [], "decoder_block_out_channels": [], "num_decoder_blocks": []}`, false},
		{`{"in_channels": "3"}`, false},
	} {
		_, err := ParseTAESDConfig([]byte(tc.json))
		require.Error(t, err, tc.json)
		if tc.unsupported {
			assert.ErrorIs(t, err, ErrUnsupported, tc.json)
		} else {
			assert.ErrorIs(t, err, ErrBadModel, tc.json)
		}
	}
}

// Every layout binds the same tensors under diffusers' names; the structure read from
// the original files is the config's.
func TestLoadTAESDLayouts(t *testing.T) {
	dir := filepath.Join(testutil.ConformanceDir(t), "taesd-tiny")
	ref, err := LoadTAESD(filepath.Join(dir, "diffusers"))
	require.NoError(t, err)
	defer ref.Close()
	require.Len(t, ref.Tensors, 134)
	for _, rel := range []string{".", "taesd_encoder.safetensors", "taesd_decoder.safetensors"} {
		got, err := LoadTAESD(filepath.Join(dir, rel))
		require.NoError(t, err, rel)
		if got.Config.HasEncoder() {
			assert.Equal(t, ref.Config.NumEncoderBlocks, got.Config.NumEncoderBlocks, rel)
			assert.Equal(t, ref.Config.EncoderBlockOutChannels, got.Config.EncoderBlockOutChannels, rel)
		}
		if got.Config.HasDecoder() {
			assert.Equal(t, ref.Config.NumDecoderBlocks, got.Config.NumDecoderBlocks, rel)
			assert.Equal(t, ref.Config.DecoderBlockOutChannels, got.Config.DecoderBlockOutChannels, rel)
		}
		assert.Equal(t, ref.Config.LatentChannels, got.Config.LatentChannels, rel)
		for name, x := range got.Tensors {
			r, ok := ref.Tensors[name]
			require.True(t, ok, "%s: %s", rel, name)
			assert.Equal(t, r.Shape, x.Shape, name)
			assert.Equal(t, r.Data, x.Data, name)
		}
		want := 134
		if rel != "." {
			want = 67
		}
		assert.Len(t, got.Tensors, want, rel)
		got.Close()
	}
}

func TestLoadTAESDRefusesOthers(t *testing.T) {
	kit := testutil.ConformanceDir(t)
	src, err := OpenSafetensors(filepath.Join(kit, "taesd-tiny", "taesd_decoder.safetensors"))
	require.NoError(t, err)
	defer src.Close()
	write := func(edit func([]Tensor) []Tensor) string {
		p := filepath.Join(t.TempDir(), "taesd_decoder.safetensors")
		require.NoError(t, WriteSafetensors(p, edit(slices.Clone(src.Tensors)), nil))
		return p
	}
	cases := map[string]string{
		"an extra tensor": write(func(ts []Tensor) []Tensor {
			x := ts[0]
			x.Name = "40.weight"
			return append(ts, x)
		}),
		"a missing block conv": write(func(ts []Tensor) []Tensor {
			return slices.DeleteFunc(ts, func(x Tensor) bool { return x.Name == "4.conv.2.weight" })
		}),
		"not a TAESD":     filepath.Join(kit, "sd1-tiny", "diffusers", "vae", "diffusion_pytorch_model.safetensors"),
		"an empty folder": t.TempDir(),
	}
	for name, path := range cases {
		_, err := LoadTAESD(path)
		assert.ErrorIs(t, err, ErrBadModel, name)
	}
	_, err = LoadTAESD(filepath.Join(kit, "taesd-tiny", "missing"))
	assert.ErrorIs(t, err, os.ErrNotExist)
}

// The original repository also ships .pth files (torch.save of the state dict): a folder
// with the decoder as .pth and the encoder as .safetensors loads the same tensors.
func TestLoadTAESDPth(t *testing.T) {
	kit := filepath.Join(testutil.ConformanceDir(t), "taesd-tiny")
	src, err := OpenSafetensors(filepath.Join(kit, "taesd_decoder.safetensors"))
	require.NoError(t, err)
	defer src.Close()
	var tensors []ckptTensor
	storages := map[string][]byte{}
	for i, x := range src.Tensors {
		require.Equal(t, F16, x.DType)
		key := strconv.Itoa(i)
		stride := make([]int64, len(x.Shape))
		n := int64(1)
		for d := len(x.Shape) - 1; d >= 0; d-- {
			stride[d] = n
			n *= x.Shape[d]
		}
		tensors = append(tensors, ckptTensor{name: x.Name, storage: "HalfStorage", key: key, numel: n, shape: x.Shape, stride: stride, parameter: true})
		storages[key] = x.Data
	}
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "taesd_decoder.pth"), torchZip(t, stateDictPickle(tensors, false, false), storages, zip.Store), 0o644))
	require.NoError(t, os.Symlink(filepath.Join(kit, "taesd_encoder.safetensors"), filepath.Join(dir, "taesd_encoder.safetensors")))

	got, err := LoadTAESD(dir)
	require.NoError(t, err)
	defer got.Close()
	ref, err := LoadTAESD(filepath.Join(kit, "diffusers"))
	require.NoError(t, err)
	defer ref.Close()
	require.Len(t, got.Tensors, len(ref.Tensors))
	for name, x := range got.Tensors {
		assert.Equal(t, ref.Tensors[name].Data, x.Data, name)
	}
}

// Random TAESD weights load back as TAESD's architecture, every tensor present, the same
// bytes for the same seed.
func TestWriteRandomTAESD(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, WriteRandomTAESD(t.Context(), dir, F16, 3))
	m, err := LoadTAESD(dir)
	require.NoError(t, err)
	defer m.Close()
	assert.Equal(t, DefaultTAESDConfig(), m.Config)
	specs, err := m.Config.TensorSpecs()
	require.NoError(t, err)
	assert.Len(t, m.Tensors, len(specs))
	again := t.TempDir()
	require.NoError(t, WriteRandomTAESD(t.Context(), again, F16, 3))
	a, err := os.ReadFile(filepath.Join(dir, "diffusion_pytorch_model.safetensors"))
	require.NoError(t, err)
	b, err := os.ReadFile(filepath.Join(again, "diffusion_pytorch_model.safetensors"))
	require.NoError(t, err)
	assert.Equal(t, a, b)
	require.Error(t, WriteRandomTAESD(t.Context(), t.TempDir(), I64, 3))
}

package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/gosd/gosd/diffusion/modelfile"
	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// tinyArch is SD 1.5's layout at a few channels (with the VAE's four levels, so 8
// pixels per latent), for tests: its weights take 4 MB.
func tinyArch() modelfile.Architecture {
	a := modelfile.SD15()
	a.UNet.SampleSize = 8
	a.UNet.BlockOutChannels = []int{32, 64}
	a.UNet.LayersPerBlock = []int{1, 1}
	a.UNet.DownBlockTypes = []string{"CrossAttnDownBlock2D", "DownBlock2D"}
	a.UNet.UpBlockTypes = []string{"UpBlock2D", "CrossAttnUpBlock2D"}
	a.UNet.AttentionHeads = []int{2, 2}
	a.UNet.TransformerLayersPerBlock = []int{1, 1}
	a.UNet.CrossAttentionDim = 32
	a.UNet.TimeEmbeddingDim = 128
	a.VAE.BlockOutChannels = []int{32, 32, 32, 32}
	a.VAE.LayersPerBlock = 1
	a.TextEncoder.HiddenSize = 32
	a.TextEncoder.IntermediateSize = 64
	a.TextEncoder.NumHiddenLayers = 2
	a.TextEncoder.NumAttentionHeads = 2
	return a
}

// info reads files only: it works where no runtime library loads.
func TestInfo(t *testing.T) {
	kit := testutil.ConformanceDir(t)
	t.Setenv("SD_LIB", filepath.Join(t.TempDir(), "no-such-library.so"))
	folder := filepath.Join(kit, "sd1-tiny", "diffusers")
	random := t.TempDir()
	require.NoError(t, modelfile.WriteRandom(context.Background(), random, tinyArch(), modelfile.F16, 1))
	tests := []struct {
		name  string
		model string
		want  []string
	}{
		{"diffusers folder", folder, []string{
			folder + ": sd1 model (diffusers), epsilon prediction\n",
			"  unet          684 tensors,    3.2M parameters,     6.1 MiB [F16×684]\n",
			"channels [32 64 64 64], layers [2 2 2 2], heads [8 8 8 8], context 32",
			"  vae ", "  text_encoder ", "hidden 32, layers 4, heads 4",
			"  tokenizer    " + filepath.Join(folder, "tokenizer") + "\n",
			"  native size  64×64\n",
			"  scheduler    DDIMScheduler (--sampler auto: ddim)\n",
		}},
		{"folder without tokenizer", random, []string{
			random + ": sd1 model (diffusers), epsilon prediction\n",
			"  tokenizer    built-in CLIP BPE vocabulary (the model has no tokenizer folder)\n",
			"  native size  64×64\n",
			"  scheduler    PNDMScheduler (--sampler auto: pndm)\n",
		}},
		{"SD 2.x v-prediction", filepath.Join(kit, "sd2-tiny-v", "diffusers"), []string{
			": sd2 model (diffusers), v-prediction\n",
			"linear projection true",
		}},
		{"x4 upscaler", filepath.Join(kit, "upscaler-tiny", "diffusers"), []string{
			"in 7 out 4",
			"  native size  64×64\n",
			"  upscaler     x4: noise levels 0-350 by DDPMScheduler (use upscale)\n",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runArgs(t, "info", tt.model)
			require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
			for _, s := range tt.want {
				assert.Contains(t, r.stdout, s)
			}
			assert.Empty(t, r.stderr)
		})
	}
}

func TestInfoErrors(t *testing.T) {
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk.safetensors")
	require.NoError(t, os.WriteFile(junk, []byte("not a model"), 0o644))
	tests := []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"no demo model", []string{"info"}, exitUsage, "pass -m with a model file"},
		{"two models", []string{"info", "a", "b"}, exitUsage, `unexpected argument "b": info takes one model`},
		{"missing file", []string{"info", filepath.Join(dir, "nothing.safetensors")}, exitError, "nothing.safetensors: no such file or folder"},
		{"not a model", []string{"info", junk}, exitError, "junk.safetensors"},
		{"unknown flag", []string{"info", "--json"}, exitUsage, "flag provided but not defined: -json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runArgs(t, tt.args...)
			assert.Equal(t, tt.code, r.code, "stderr: %s", r.stderr)
			assert.Contains(t, r.stderr, "sdcli info: ")
			assert.Contains(t, r.stderr, tt.msg)
			assert.Empty(t, r.stdout)
		})
	}
}

// With no MODEL, info describes the demo model, found in the folders searched.
func TestInfoDemoModel(t *testing.T) {
	kit := testutil.ConformanceDir(t)
	root := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(root, "models"), 0o755))
	require.NoError(t, os.Symlink(filepath.Join(kit, "sd1-tiny", "diffusers"), filepath.Join(root, demoModel)))
	a, stdout, stderr := testApp(t)
	a.demoDirs = []string{t.TempDir(), root}
	require.Equal(t, exitOK, a.run(t.Context(), []string{"info"}), "stderr: %s", stderr)
	assert.Contains(t, stdout.String(), filepath.Join(root, demoModel)+": sd1 model (diffusers)")
}

// A broken model fails info, which reads files only, without allocating for
// what its configs claim.
func TestInfoBrokenModels(t *testing.T) {
	kit := testutil.ConformanceDir(t)
	t.Setenv("SD_LIB", filepath.Join(t.TempDir(), "no-such-library.so"))
	// folder links the kit's sd1-tiny files, but for rel, written with content.
	folder := func(rel, content string) string {
		src := filepath.Join(kit, "sd1-tiny", "diffusers")
		dst := t.TempDir()
		entries, err := os.ReadDir(src)
		require.NoError(t, err)
		for _, e := range entries {
			name := e.Name()
			if name != filepath.Dir(rel) {
				require.NoError(t, os.Symlink(filepath.Join(src, name), filepath.Join(dst, name)))
				continue
			}
			require.NoError(t, os.Mkdir(filepath.Join(dst, name), 0o755))
			files, err := os.ReadDir(filepath.Join(src, name))
			require.NoError(t, err)
			for _, f := range files {
				if f.Name() != filepath.Base(rel) {
					require.NoError(t, os.Symlink(filepath.Join(src, name, f.Name()), filepath.Join(dst, name, f.Name())))
				}
			}
			require.NoError(t, os.WriteFile(filepath.Join(dst, rel), []byte(content), 0o644))
		}
		return dst
	}
	text := `{"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1000000000}`
	unet := `{"block_out_channels": [32, 64, 64, 64], "cross_attention_dim": 32, "layers_per_block": 1000000}`
	for _, tt := range []struct {
		name, model, msg string
	}{
		{"text layers beyond the weights", folder("text_encoder/config.json", text), "num_hidden_layers 1000000000 exceeds the tensors the weights hold (68)"},
		{"unet layers beyond the weights", folder("unet/config.json", unet), "layers_per_block [1000000 1000000 1000000 1000000]"},
		{"vocab not json", folder("tokenizer/vocab.json", "{"), "vocab.json"},
		{"empty merges", folder("tokenizer/merges.txt", ""), "merges.txt: no merges"},
		{"empty vocab.json", folder("tokenizer/vocab.json", ""), "vocab.json: unexpected end of JSON input"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := runArgs(t, "info", tt.model)
			assert.Equal(t, exitError, r.code, "stderr: %s", r.stderr)
			assert.Contains(t, r.stderr, tt.msg)
			assert.Empty(t, r.stdout)
		})
	}
}

// info names the SDXL family and lists the second text encoder with its tokenizer.
func TestInfoSDXL(t *testing.T) {
	r := runArgs(t, "info", filepath.Join(testutil.ConformanceDir(t), "sdxl-tiny", "diffusers"))
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	assert.Contains(t, r.stdout, "sdxl model")
	assert.Contains(t, r.stdout, "\n  text_encoder_2 ")
	assert.Contains(t, r.stdout, "scheduler    EulerDiscreteScheduler")
}

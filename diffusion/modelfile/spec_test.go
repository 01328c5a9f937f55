package modelfile

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// specShapes indexes specs by name, failing on duplicates.
func specShapes(t *testing.T, specs []TensorSpec, err error) map[string][]int64 {
	t.Helper()
	require.NoError(t, err)
	m := make(map[string][]int64, len(specs))
	for _, s := range specs {
		_, dup := m[s.Name]
		require.False(t, dup, "spec %s listed twice", s.Name)
		m[s.Name] = s.Shape
	}
	return m
}

func tableShapes(table kitTable) map[string][]int64 {
	m := make(map[string][]int64, len(table))
	for name, e := range table {
		m[name] = e.Shape
	}
	return m
}

func TestSpecsMatchFullSizeTables(t *testing.T) {
	tables := fullSizeTables(t)
	for _, c := range fullSizeModels {
		t.Run(c.table, func(t *testing.T) {
			d := tables[c.table].Diffusers
			unet, err := c.arch.UNet.TensorSpecs()
			assert.Equal(t, tableShapes(d["unet"]), specShapes(t, unet, err))
			vae, err := c.arch.VAE.TensorSpecs()
			assert.Equal(t, tableShapes(d["vae"]), specShapes(t, vae, err))
			text, err := c.arch.TextEncoder.TensorSpecs()
			assert.Equal(t, tableShapes(d["text_encoder"]), specShapes(t, text, err))
		})
	}
}

func TestSpecsMatchTinyKitFiles(t *testing.T) {
	dir := testutil.ConformanceDir(t)
	for _, model := range []string{"sd1-tiny", "sd2-tiny-v"} {
		for _, comp := range []struct{ name, file string }{
			{"unet", "diffusion_pytorch_model.safetensors"},
			{"vae", "diffusion_pytorch_model.safetensors"},
			{"text_encoder", "model.safetensors"},
		} {
			t.Run(model+"/"+comp.name, func(t *testing.T) {
				cdir := filepath.Join(dir, model, "diffusers", comp.name)
				cfg, err := os.ReadFile(filepath.Join(cdir, "config.json"))
				require.NoError(t, err)
				var specs []TensorSpec
				switch comp.name {
				case "unet":
					c, err := ParseUNetConfig(cfg)
					require.NoError(t, err)
					specs, err = c.TensorSpecs()
				case "vae":
					c, err := ParseVAEConfig(cfg)
					require.NoError(t, err)
					specs, err = c.TensorSpecs()
				default:
					c, err := ParseCLIPConfig(cfg)
					require.NoError(t, err)
					specs, err = c.TensorSpecs()
				}
				want := specShapes(t, specs, err)
				f, err := OpenSafetensors(filepath.Join(cdir, comp.file))
				require.NoError(t, err)
				defer f.Close()
				got := map[string][]int64{}
				for _, x := range f.Tensors {
					got[x.Name] = x.Shape
				}
				assert.Equal(t, want, got)
			})
		}
	}
}

func TestSpecsRefuseInvalidConfigs(t *testing.T) {
	unet := SD15UNetConfig()
	unet.DownBlockTypes = []string{"AttnDownBlock2D", plainDown, plainDown, plainDown}
	_, err := unet.TensorSpecs()
	assert.ErrorContains(t, err, `unsupported down block type "AttnDownBlock2D"`)
	vae := SD15VAEConfig()
	vae.BlockOutChannels = nil
	_, err = vae.TensorSpecs()
	assert.ErrorContains(t, err, "no block_out_channels")
	text := SD15TextEncoderConfig()
	text.NumAttentionHeads = 7
	_, err = text.TensorSpecs()
	assert.ErrorContains(t, err, "does not split into 7 heads")
}

func TestBind(t *testing.T) {
	conv1x1 := Tensor{Name: "file.conv", DType: F16, Shape: []int64{2, 2, 1, 1}, Data: make([]byte, 8)}
	fused := Tensor{Name: "file.qkv", DType: F32, Shape: []int64{6, 2}, Data: floatBytes(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)}
	ids := Tensor{Name: "file.ids", DType: I64, Shape: []int64{2}, Data: make([]byte, 16)}
	files := map[string]Tensor{conv1x1.Name: conv1x1, fused.Name: fused, ids.Name: ids}
	find := func(n string) (Tensor, bool) { x, ok := files[n]; return x, ok }
	resolve := map[string]source{
		"linear.weight": {name: "file.conv"},
		"k.weight":      {name: "file.qkv", part: 1, parts: 3},
		"ids":           {name: "file.ids"},
		"bad.weight":    {name: "file.qkv", parts: 4},
	}
	byName := func(n string) source {
		if s, ok := resolve[n]; ok {
			return s
		}
		return source{name: n}
	}

	got, used, err := bind("test", []TensorSpec{{"linear.weight", []int64{2, 2}}, {"k.weight", []int64{2, 2}}}, byName, find)
	require.NoError(t, err)
	assert.Equal(t, []int64{2, 2}, got["linear.weight"].Shape, "1×1 conv reshaped to the linear layout")
	assert.Equal(t, "linear.weight", got["linear.weight"].Name)
	k, err := got["k.weight"].Float32s()
	require.NoError(t, err)
	assert.Equal(t, []float32{4, 5, 6, 7}, k, "the middle third of the fused rows")
	assert.True(t, within(fused.Data, got["k.weight"].Data), "a view, not a copy")
	assert.Equal(t, map[string]bool{"file.conv": true, "file.qkv": true}, used)

	cases := []struct {
		name    string
		specs   []TensorSpec
		wantErr string
	}{
		{"wrong shape", []TensorSpec{{"linear.weight", []int64{2, 3}}}, "test: tensor linear.weight (file.conv in the file) has shape [2 2 1 1], want [2 3]"},
		{"integer weights", []TensorSpec{{"ids", []int64{2}}}, "has dtype I64, want F32, F16 or BF16"},
		{"missing", []TensorSpec{{"a", nil}, {"b", nil}, {"c", nil}, {"d", nil}, {"e", nil}, {"f", nil}, {"linear.weight", []int64{2, 2}}}, "test: 6 of 7 tensors missing: a, b, c, d, e and 1 more"},
		{"bad split", []TensorSpec{{"bad.weight", []int64{2, 2}}}, "test: tensor bad.weight (file.qkv in the file): shape [6 2] does not split into 4"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := bind("test", c.specs, byName, find)
			assert.ErrorContains(t, err, c.wantErr)
		})
	}
}

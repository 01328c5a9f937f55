package modelfile

import (
	"archive/zip"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Every failure of Load is classified: ErrBadModel for inconsistent files,
// ErrUnsupported for a kind of model this package does not read.
func TestLoadErrorKinds(t *testing.T) {
	dropTensor := func(t *testing.T, rel, name string) []byte {
		return safetensorsBytes(t, kitTensors(t, rel, func(x Tensor) Tensor {
			if x.Name == name {
				x.Name = ""
			}
			return x
		}))
	}
	transposed := func(t *testing.T) []byte {
		return safetensorsBytes(t, kitTensors(t, unetFile, func(x Tensor) Tensor {
			if x.Name == "conv_in.weight" {
				x.Shape = []int64{4, 32, 3, 3}
			}
			return x
		}))
	}
	truncated := func(t *testing.T) []byte {
		b := safetensorsBytes(t, kitTensors(t, textFile, func(x Tensor) Tensor { return x }))
		return b[:len(b)-100]
	}
	f8 := stBytes(`{"w":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}}`, []byte{1, 2})
	cases := []struct {
		name    string
		files   func(t *testing.T) map[string][]byte
		kind    error
		wantErr string
	}{
		{"missing tensor", func(t *testing.T) map[string][]byte {
			return map[string][]byte{unetFile: dropTensor(t, unetFile, "conv_out.bias")}
		}, ErrBadModel, "unet: 1 of 684 tensors missing: conv_out.bias"},
		{"wrong shape", func(t *testing.T) map[string][]byte { return map[string][]byte{unetFile: transposed(t)} },
			ErrBadModel, "unet: tensor conv_in.weight has shape [4 32 3 3], want [32 4 3 3]"},
		{"truncated file", func(t *testing.T) map[string][]byte { return map[string][]byte{textFile: truncated(t)} },
			ErrBadModel, "text_encoder/model.safetensors: safetensors: tensor"},
		{"garbage file", func(*testing.T) map[string][]byte { return map[string][]byte{vaeFile: []byte("garbage!")} },
			ErrBadModel, "vae/diffusion_pytorch_model.safetensors: safetensors:"},
		{"corrupt pickle", func(t *testing.T) map[string][]byte {
			return map[string][]byte{textFile: nil, "text_encoder/pytorch_model.bin": zipBytes(t, []zipEntry{{"x/data.pkl", []byte{opNone}, zip.Store}})}
		}, ErrBadModel, "pickle: truncated"},
		{"no config", func(*testing.T) map[string][]byte { return map[string][]byte{"vae/config.json": nil} }, ErrBadModel, "vae/config.json"},
		{"config not json", func(*testing.T) map[string][]byte { return map[string][]byte{"unet/config.json": []byte("{")} }, ErrBadModel, "unet/config.json"},
		{"no weights", func(*testing.T) map[string][]byte { return map[string][]byte{vaeFile: nil} }, ErrBadModel, "vae: no weights"},
		{"no model index", func(*testing.T) map[string][]byte { return map[string][]byte{"model_index.json": nil} }, ErrBadModel, "not a diffusers folder"},
		{"null scheduler config", func(*testing.T) map[string][]byte {
			return map[string][]byte{"scheduler/scheduler_config.json": []byte("null")}
		}, ErrBadModel, "scheduler config: null, not a JSON object"},
		{"tokenizer without vocab", func(*testing.T) map[string][]byte { return map[string][]byte{"tokenizer/vocab.json": nil} },
			ErrBadModel, "tokenizer: no vocab.json in the tokenizer folder"},
		{"tokenizer without merges", func(*testing.T) map[string][]byte { return map[string][]byte{"tokenizer/merges.txt": nil} },
			ErrBadModel, "tokenizer: no merges.txt in the tokenizer folder"},
		{"F8 dtype", func(*testing.T) map[string][]byte { return map[string][]byte{textFile: f8} },
			ErrUnsupported, `text_encoder/model.safetensors: safetensors: tensor "w": unsupported dtype "F8_E4M3"`},
		{"text activation", func(*testing.T) map[string][]byte {
			return map[string][]byte{"text_encoder/config.json": []byte(`{"hidden_act": "gelu_new", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4}`)}
		}, ErrUnsupported, `hidden_act "gelu_new" is not supported`},
		{"xl without text_encoder_2", func(*testing.T) map[string][]byte {
			return map[string][]byte{"model_index.json": []byte(`{"_class_name": "StableDiffusionXLPipeline"}`)}
		}, ErrUnsupported, "is not supported"},
		{"unet block type", func(*testing.T) map[string][]byte {
			return map[string][]byte{"unet/config.json": []byte(`{"mid_block_type": "UNetMidBlock2DSimpleCrossAttn"}`)}
		}, ErrUnsupported, "unsupported mid block type"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := testutil.KitFolder(t, "sd1-tiny/diffusers", c.files(t))
			_, err := Load(dir)
			require.Error(t, err)
			assert.ErrorContains(t, err, c.wantErr)
			assert.ErrorIs(t, err, c.kind)
			other := map[error]error{ErrBadModel: ErrUnsupported, ErrUnsupported: ErrBadModel}[c.kind]
			assert.NotErrorIs(t, err, other)
		})
	}

	_, err := Load(filepath.Join(t.TempDir(), "absent"))
	assert.ErrorIs(t, err, os.ErrNotExist)
	assert.NotErrorIs(t, err, ErrBadModel, "a path that does not exist is no bad model")
}

func TestLoadSingleFileErrorKinds(t *testing.T) {
	base := tinyLDM(t)
	cases := []struct {
		name    string
		edit    func(map[string]Tensor)
		kind    error
		wantErr string
	}{
		{"missing tensor", func(m map[string]Tensor) { delete(m, "model.diffusion_model.out.2.bias") },
			ErrBadModel, "unet: 1 of 684 tensors missing: conv_out.bias (model.diffusion_model.out.2.bias in the file)"},
		{"wrong shape", func(m map[string]Tensor) {
			x := m["first_stage_model.decoder.mid.attn_1.q.weight"]
			x.Shape = []int64{32, 128}
			m[x.Name] = x
		}, ErrBadModel, "has shape [32 128], want [64 64]"},
		{"sdxl", func(m map[string]Tensor) {
			m["conditioner.embedders.1.model.ln_final.weight"] = Tensor{DType: F16, Shape: []int64{4}, Data: make([]byte, 8)}
		}, ErrUnsupported, "other than SDXL base's"},
		{"F64 weights", func(m map[string]Tensor) {
			x := m["model.diffusion_model.out.2.bias"]
			m[x.Name] = Tensor{Name: x.Name, DType: F64, Shape: x.Shape, Data: make([]byte, 8*x.NumElements())}
		}, ErrUnsupported, "has dtype F64, want F32, F16 or BF16"},
		{"integer weights", func(m map[string]Tensor) {
			x := m["model.diffusion_model.out.2.bias"]
			m[x.Name] = Tensor{Name: x.Name, DType: I32, Shape: x.Shape, Data: make([]byte, 4*x.NumElements())}
		}, ErrBadModel, "has dtype I32, want F32, F16 or BF16"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := map[string]Tensor{}
			for _, x := range base {
				m[x.Name] = x
			}
			c.edit(m)
			path := filepath.Join(t.TempDir(), "model.safetensors")
			require.NoError(t, WriteSafetensors(path, sortedTensors(m), nil))
			_, err := Load(path, WithTextHeads(4))
			assert.ErrorContains(t, err, c.wantErr)
			assert.ErrorIs(t, err, c.kind)
		})
	}
}

// sortedTensors lists a state dict by name, each tensor named by its key.
func sortedTensors(m map[string]Tensor) []Tensor {
	var out []Tensor
	for _, name := range slices.Sorted(maps.Keys(m)) {
		x := m[name]
		x.Name = name
		out = append(out, x)
	}
	return out
}

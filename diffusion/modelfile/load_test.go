package modelfile

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/gosd/gosd/diffusion/schedule"
	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestLoadDiffusersKitModels(t *testing.T) {
	dir := testutil.ConformanceDir(t)
	for _, c := range []struct {
		model  string
		family Family
		pred   schedule.PredictionType
	}{
		{"sd1-tiny", FamilySD1, schedule.PredictEpsilon},
		{"sd2-tiny-v", FamilySD2, schedule.PredictV},
	} {
		t.Run(c.model, func(t *testing.T) {
			path := filepath.Join(dir, c.model, "diffusers")
			m := loadModel(t, path)
			assert.Equal(t, c.family, m.Family)
			assert.Equal(t, FormatDiffusers, m.Format)
			assert.Equal(t, c.pred, m.Scheduler.PredictionType)
			assert.Equal(t, filepath.Join(path, "tokenizer"), m.TokenizerDir)
			assert.Empty(t, m.Unused)
			for name, comp := range map[string]struct {
				n     int
				specs func() ([]TensorSpec, error)
			}{
				"unet": {len(m.UNet.Tensors), m.UNet.Config.TensorSpecs},
				"vae":  {len(m.VAE.Tensors), m.VAE.Config.TensorSpecs},
				"text": {len(m.TextEncoder.Tensors), m.TextEncoder.Config.TensorSpecs},
			} {
				specs, err := comp.specs()
				require.NoError(t, err)
				assert.Equal(t, len(specs), comp.n, name)
			}
			x := m.UNet.Tensors["conv_in.weight"]
			assert.Equal(t, F16, x.DType)
			assert.Equal(t, []int64{32, 4, 3, 3}, x.Shape)

			s := m.Summary()
			assert.Equal(t, c.family, s.Family)
			require.Len(t, s.Components, 3)
			assert.Equal(t, len(m.UNet.Tensors), s.Components[0].DTypes[F16])
			var params int64
			for _, x := range m.VAE.Tensors {
				params += x.NumElements()
			}
			assert.Equal(t, params, s.Components[1].Parameters)
			assert.Equal(t, 2*params, s.Components[1].Bytes, "float16")
			assert.Equal(t, []string{"unet", "vae", "text_encoder"}, []string{s.Components[0].Name, s.Components[1].Name, s.Components[2].Name})
			encoders := m.TextEncoders()
			require.Len(t, encoders, 1)
			assert.Equal(t, "text_encoder", encoders[0].Name)
			assert.Equal(t, m.TextEncoder.Config, encoders[0].Config)
			assert.Equal(t, m.TokenizerDir, encoders[0].TokenizerDir)
			text := s.String()
			pred := c.pred.String() + " prediction"
			if c.pred == schedule.PredictV {
				pred = "v-prediction"
			}
			assert.Contains(t, text, c.family.String()+" model (diffusers), "+pred)
			assert.Contains(t, text, "F16×684")
			assert.Contains(t, text, "0 file tensors unused")

			require.NoError(t, m.Close())
			require.NoError(t, m.Close(), "Close twice")
		})
	}
}

// kitTensors reads one sd1-tiny component file, renaming tensors with
// rename (which may drop one by returning "").
func kitTensors(t *testing.T, rel string, rename func(Tensor) Tensor) []Tensor {
	f, err := OpenSafetensors(filepath.Join(testutil.ConformanceDir(t), "sd1-tiny", "diffusers", rel))
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	var out []Tensor
	for _, x := range f.Tensors {
		if x = rename(x); x.Name != "" {
			out = append(out, x)
		}
	}
	return out
}

func safetensorsBytes(t *testing.T, tensors []Tensor) []byte {
	path := filepath.Join(t.TempDir(), "x.safetensors")
	require.NoError(t, WriteSafetensors(path, tensors, nil))
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return b
}

const (
	unetFile = "unet/diffusion_pytorch_model.safetensors"
	vaeFile  = "vae/diffusion_pytorch_model.safetensors"
	textFile = "text_encoder/model.safetensors"
)

func TestLoadDiffusersLayouts(t *testing.T) {
	ref := loadModel(t, filepath.Join(testutil.ConformanceDir(t), "sd1-tiny", "diffusers"))
	same := func(x Tensor) Tensor { return x }

	t.Run("text encoder without text_model prefix", func(t *testing.T) {
		tensors := kitTensors(t, textFile, func(x Tensor) Tensor { x.Name = strings.TrimPrefix(x.Name, "text_model."); return x })
		m := loadModel(t, testutil.KitFolder(t, "sd1-tiny/diffusers", map[string][]byte{textFile: safetensorsBytes(t, tensors)}))
		assertSameWeights(t, ref.TextEncoder.Tensors, m.TextEncoder.Tensors)
	})

	t.Run("only an fp16 variant", func(t *testing.T) {
		m := loadModel(t, testutil.KitFolder(t, "sd1-tiny/diffusers", map[string][]byte{unetFile: nil, "unet/diffusion_pytorch_model.fp16.safetensors": safetensorsBytes(t, kitTensors(t, unetFile, same))}))
		assertSameWeights(t, ref.UNet.Tensors, m.UNet.Tensors)
	})

	t.Run("variant chosen over the plain file", func(t *testing.T) {
		// The variant differs from the plain file in dtype, so the choice shows.
		f32 := kitTensors(t, vaeFile, func(x Tensor) Tensor {
			v, err := x.Float32s()
			require.NoError(t, err)
			return Tensor{Name: x.Name, DType: F32, Shape: x.Shape, Data: floatBytes(v...)}
		})
		dir := testutil.KitFolder(t, "sd1-tiny/diffusers", map[string][]byte{"vae/diffusion_pytorch_model.fp32.safetensors": safetensorsBytes(t, f32)})
		assert.Equal(t, F32, loadModel(t, dir, WithVariant("fp32")).VAE.Tensors["decoder.conv_in.weight"].DType)
		assert.Equal(t, F16, loadModel(t, dir).VAE.Tensors["decoder.conv_in.weight"].DType, "the plain file wins without WithVariant")
	})

	t.Run("several variants", func(t *testing.T) {
		b := safetensorsBytes(t, kitTensors(t, vaeFile, same))
		dir := testutil.KitFolder(t, "sd1-tiny/diffusers", map[string][]byte{vaeFile: nil, "vae/diffusion_pytorch_model.fp16.safetensors": b, "vae/diffusion_pytorch_model.ema.safetensors": b})
		_, err := Load(dir)
		assert.ErrorContains(t, err, "several weight variants (diffusion_pytorch_model.ema.safetensors, diffusion_pytorch_model.fp16.safetensors): choose one with WithVariant")
	})

	t.Run("sharded", func(t *testing.T) {
		tensors := kitTensors(t, unetFile, same)
		half := len(tensors) / 2
		index := map[string]string{}
		for i, x := range tensors {
			index[x.Name] = fmt.Sprintf("diffusion_pytorch_model-0000%d-of-00002.safetensors", 1+i/half)
		}
		indexJSON, err := json.Marshal(map[string]any{"metadata": map[string]int{"total_size": 1}, "weight_map": index})
		require.NoError(t, err)
		files := map[string][]byte{
			unetFile: nil,
			"unet/diffusion_pytorch_model.safetensors.index.json":     indexJSON,
			"unet/diffusion_pytorch_model-00001-of-00002.safetensors": safetensorsBytes(t, tensors[:half]),
			"unet/diffusion_pytorch_model-00002-of-00002.safetensors": safetensorsBytes(t, tensors[half:]),
		}
		m := loadModel(t, testutil.KitFolder(t, "sd1-tiny/diffusers", files))
		assertSameWeights(t, ref.UNet.Tensors, m.UNet.Tensors)

		index[tensors[0].Name] = "diffusion_pytorch_model-00002-of-00002.safetensors"
		files["unet/diffusion_pytorch_model.safetensors.index.json"], _ = json.Marshal(map[string]any{"weight_map": index})
		_, err = Load(testutil.KitFolder(t, "sd1-tiny/diffusers", files))
		assert.ErrorContains(t, err, "tensor "+tensors[0].Name+" is not in diffusion_pytorch_model-00002-of-00002.safetensors as the index says")

		index[tensors[0].Name] = "../vae/diffusion_pytorch_model.safetensors"
		files["unet/diffusion_pytorch_model.safetensors.index.json"], _ = json.Marshal(map[string]any{"weight_map": index})
		_, err = Load(testutil.KitFolder(t, "sd1-tiny/diffusers", files))
		assert.ErrorContains(t, err, `shard "../vae/diffusion_pytorch_model.safetensors" is not a file beside the index`)
	})

	t.Run("pickled text encoder", func(t *testing.T) {
		ckpt := ckptFromTensors(t, kitTensors(t, textFile, same))
		m := loadModel(t, testutil.KitFolder(t, "sd1-tiny/diffusers", map[string][]byte{textFile: nil, "text_encoder/pytorch_model.bin": ckpt}))
		assertSameWeights(t, ref.TextEncoder.Tensors, m.TextEncoder.Tensors)
	})

	t.Run("deprecated vae attention names", func(t *testing.T) {
		old := map[string]string{"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
		tensors := kitTensors(t, vaeFile, func(x Tensor) Tensor {
			for from, to := range old {
				if strings.Contains(x.Name, "mid_block.attentions.0."+from+".") {
					x.Name = strings.Replace(x.Name, from, to, 1)
					if strings.HasSuffix(x.Name, "weight") {
						x.Shape = append(x.Shape, 1, 1) // stored as 1×1 convs
					}
				}
			}
			return x
		})
		m := loadModel(t, testutil.KitFolder(t, "sd1-tiny/diffusers", map[string][]byte{vaeFile: safetensorsBytes(t, tensors)}))
		assertSameWeights(t, ref.VAE.Tensors, m.VAE.Tensors)
	})

	t.Run("extras are counted", func(t *testing.T) {
		tensors := append(kitTensors(t, textFile, same), Tensor{Name: "text_model.embeddings.position_ids", DType: I64, Shape: []int64{1, 77}, Data: make([]byte, 8*77)})
		m := loadModel(t, testutil.KitFolder(t, "sd1-tiny/diffusers", map[string][]byte{textFile: safetensorsBytes(t, tensors)}))
		assert.Equal(t, []string{"text_encoder/text_model.embeddings.position_ids"}, m.Unused)
	})

	t.Run("options override the files", func(t *testing.T) {
		m := loadModel(t, testutil.KitFolder(t, "sd1-tiny/diffusers", nil), WithPredictionType(schedule.PredictV), WithFamily(FamilySD2), WithUNetHeads(4, 4, 4, 4), WithTextHeads(2))
		assert.Equal(t, FamilySD2, m.Family)
		assert.Equal(t, schedule.PredictV, m.Scheduler.PredictionType)
		assert.Contains(t, string(m.Scheduler.Raw), `"prediction_type": "v_prediction"`)
		assert.Contains(t, string(m.Scheduler.Raw), `"steps_offset": 1`, "the rest of the file is kept")
		assert.Equal(t, []int{4, 4, 4, 4}, m.UNet.Config.AttentionHeads)
		assert.Equal(t, 2, m.TextEncoder.Config.NumAttentionHeads)
	})

	t.Run("no scheduler or tokenizer", func(t *testing.T) {
		m := loadModel(t, testutil.KitFolder(t, "sd1-tiny/diffusers", map[string][]byte{
			"scheduler/scheduler_config.json": nil, "tokenizer/vocab.json": nil, "tokenizer/merges.txt": nil, "tokenizer/tokenizer_config.json": nil,
		}))
		assert.Equal(t, SD15SchedulerConfig(), m.Scheduler)
		assert.Empty(t, m.TokenizerDir)
	})
}

func TestLoadDiffusersErrors(t *testing.T) {
	tensors := func(t *testing.T, drop string) []byte {
		return safetensorsBytes(t, kitTensors(t, unetFile, func(x Tensor) Tensor {
			if x.Name == drop {
				x.Name = ""
			}
			return x
		}))
	}
	cases := []struct {
		name    string
		files   func(t *testing.T) map[string][]byte
		wantErr string
	}{
		{"other pipeline with a second encoder", func(*testing.T) map[string][]byte {
			return map[string][]byte{"model_index.json": []byte(`{"_class_name": "StableDiffusion3Pipeline", "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}`)}
		}, "StableDiffusion3Pipeline is not supported (SDXL pipelines need text_encoder_2"},
		{"xl class", func(*testing.T) map[string][]byte {
			return map[string][]byte{"model_index.json": []byte(`{"_class_name": "StableDiffusionXLImg2ImgPipeline", "text_encoder_2": [null, null]}`)}
		}, "StableDiffusionXLImg2ImgPipeline is not supported"},
		{"second encoder of another class", func(*testing.T) map[string][]byte {
			return map[string][]byte{"model_index.json": []byte(`{"_class_name": "StableDiffusionPipeline", "text_encoder_2": ["transformers", "CLIPTextModel"]}`)}
		}, "StableDiffusionPipeline is not supported"},
		{"no model index", func(*testing.T) map[string][]byte { return map[string][]byte{"model_index.json": nil} }, "not a diffusers folder"},
		{"bad unet config", func(*testing.T) map[string][]byte {
			return map[string][]byte{"unet/config.json": []byte(`{"addition_embed_type": "image"}`)}
		}, "unet/config.json: unet config: addition_embed_type"},
		{"no weights", func(*testing.T) map[string][]byte { return map[string][]byte{vaeFile: nil} }, "vae: no weights (diffusion_pytorch_model.safetensors or .bin)"},
		{"missing tensor", func(t *testing.T) map[string][]byte {
			return map[string][]byte{unetFile: tensors(t, "mid_block.attentions.0.proj_in.weight")}
		}, "unet: 1 of 684 tensors missing: mid_block.attentions.0.proj_in.weight"},
		{"corrupt weights", func(*testing.T) map[string][]byte { return map[string][]byte{textFile: []byte("garbage!")} }, "text_encoder/model.safetensors: safetensors: header length"},
		{"corrupt bin", func(*testing.T) map[string][]byte {
			return map[string][]byte{textFile: nil, "text_encoder/pytorch_model.bin": zipBytes(t, []zipEntry{{"x/data.pkl", []byte{opNone}, zip.Store}})}
		}, "pytorch_model.bin: pickle: truncated"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := testutil.KitFolder(t, "sd1-tiny/diffusers", c.files(t))
			_, err := Load(dir)
			assert.ErrorContains(t, err, dir)
			assert.ErrorContains(t, err, c.wantErr)
		})
	}
	_, err := Load(filepath.Join(t.TempDir(), "absent"))
	assert.ErrorIs(t, err, os.ErrNotExist)
}

func TestLoadRejectsInvalidOptions(t *testing.T) {
	for _, c := range []struct {
		opt     Option
		wantErr string
	}{
		{WithFamily(Family(9)), "WithFamily: invalid Family(9)"},
		{WithPredictionType(schedule.PredictionType(9)), "WithPredictionType: invalid PredictionType(9)"},
		{WithTextHeads(-1), "WithTextHeads: -1 heads"},
		{WithUNetHeads(8, 0), "WithUNetHeads: [8 0] heads"},
	} {
		_, err := Load(t.TempDir(), c.opt)
		assert.EqualError(t, err, c.wantErr)
	}
}

func TestReleaseMemoryKeepsTensorsValid(t *testing.T) {
	kit := testutil.ConformanceDir(t)
	m, err := Load(filepath.Join(kit, "sd1-tiny", "diffusers"))
	require.NoError(t, err)
	defer m.Close()
	w := m.UNet.Tensors["conv_in.weight"]
	before := append([]byte(nil), w.Data...)
	require.NoError(t, m.ReleaseMemory())
	assert.Equal(t, before, w.Data, "the mapping reads back from the file")
}

// A config counting more layers than its weights can hold is refused before
// any per-layer list is built: these configs would otherwise allocate specs
// until the process is killed.
func TestLoadBoundsCountsByWeights(t *testing.T) {
	text := `{"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": %d}`
	unet := `{"block_out_channels": [32, 64, 64, 64], "cross_attention_dim": 32, "layers_per_block": %s, "transformer_layers_per_block": %s}`
	vae := `{"block_out_channels": [32, 64, 64, 64], "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
		"up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"], "layers_per_block": %d}`
	cases := []struct {
		name, file, config, wantErr string
	}{
		{"text layers", "text_encoder/config.json", fmt.Sprintf(text, 1000000000),
			"text encoder config: num_hidden_layers 1000000000 exceeds the tensors the weights hold (68)"},
		{"text layers at the limit of int", "text_encoder/config.json", fmt.Sprintf(text, int64(1)<<62), "exceeds the tensors"},
		{"unet layers", "unet/config.json", fmt.Sprintf(unet, "1000000", "1"),
			"unet config: layers_per_block [1000000 1000000 1000000 1000000] and transformer_layers_per_block [1 1 1 1] count more ResNets and transformer blocks than the weights hold tensors (684)"},
		{"unet transformer layers", "unet/config.json", fmt.Sprintf(unet, "2", "[1, 1000000, 1, 1]"), "count more ResNets and transformer blocks"},
		{"unet layers times transformer layers", "unet/config.json", fmt.Sprintf(unet, "600", "600"), "count more ResNets and transformer blocks"},
		{"vae layers", "vae/config.json", fmt.Sprintf(vae, 1000000), "vae config: 4 levels of layers_per_block 1000000 count more ResNets than the weights hold tensors"},
		// Within the budget, the counts are checked tensor by tensor as before.
		{"one text layer too many", "text_encoder/config.json", fmt.Sprintf(text, 5), "text_encoder: 16 of 84 tensors missing: text_model.encoder.layers.4."},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Load(testutil.KitFolder(t, "sd1-tiny/diffusers", map[string][]byte{c.file: []byte(c.config)}))
			assert.ErrorContains(t, err, c.wantErr)
			assert.ErrorIs(t, err, ErrBadModel)
		})
	}
}

// A model with more text encoders (SDXL's text_encoder_2 and tokenizer_2) lists them
// after the first, with their own tokenizers, and its summary shows each.
func TestExtraTextEncoders(t *testing.T) {
	m := loadModel(t, filepath.Join(testutil.ConformanceDir(t), "sd1-tiny", "diffusers"))
	second := NamedTextEncoder{Name: "text_encoder_2", Component: m.TextEncoder, TokenizerDir: "tokenizer_2"}
	m.ExtraTextEncoders = []NamedTextEncoder{second}
	encoders := m.TextEncoders()
	require.Len(t, encoders, 2)
	assert.Equal(t, []string{"text_encoder", "text_encoder_2"}, []string{encoders[0].Name, encoders[1].Name})
	assert.Equal(t, []string{m.TokenizerDir, "tokenizer_2"}, []string{encoders[0].TokenizerDir, encoders[1].TokenizerDir})
	s := m.Summary()
	require.Len(t, s.Components, 4)
	assert.Equal(t, "text_encoder_2", s.Components[3].Name)
	assert.Equal(t, len(m.TextEncoder.Tensors), s.Components[3].Tensors)
	assert.Contains(t, s.String(), "\n  text_encoder_2 ")
}

// The kit's SDXL folder: both text encoders with their tokenizers, the second with its
// projection, and force_zeros_for_empty_prompt as model_index.json says.
func TestLoadSDXLFolder(t *testing.T) {
	cases := []struct {
		name       string
		index      []byte // nil: the kit's
		forceZeros bool
	}{
		{"kit", nil, true},
		{"force zeros off", []byte(`{"_class_name": "StableDiffusionXLPipeline", "force_zeros_for_empty_prompt": false,
			"text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}`), false},
		{"force zeros absent", []byte(`{"_class_name": "StableDiffusionXLPipeline",
			"text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}`), true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			replace := map[string][]byte{}
			if c.index != nil {
				replace["model_index.json"] = c.index
			}
			m := loadModel(t, testutil.KitFolder(t, "sdxl-tiny/diffusers", replace))
			assert.Equal(t, FamilySDXL, m.Family)
			assert.Equal(t, c.forceZeros, m.ForceZerosForEmptyPrompt)
			assert.Empty(t, m.Unused)
			require.Len(t, m.ExtraTextEncoders, 1)
			te2 := m.ExtraTextEncoders[0]
			assert.Equal(t, "text_encoder_2", te2.Name)
			assert.Equal(t, "tokenizer_2", filepath.Base(te2.TokenizerDir))
			assert.Equal(t, "tokenizer", filepath.Base(m.TokenizerDir))
			assert.True(t, te2.Config.WithProjection)
			assert.False(t, m.TextEncoder.Config.WithProjection)
			assert.Equal(t, "gelu", te2.Config.HiddenAct)
			require.Contains(t, te2.Tensors, "text_projection.weight")
			assert.Equal(t, []int64{int64(te2.Config.ProjectionDim), int64(te2.Config.HiddenSize)}, te2.Tensors["text_projection.weight"].Shape)
		})
	}
	t.Run("second encoder without projection", func(t *testing.T) {
		cfg, err := os.ReadFile(filepath.Join(testutil.ConformanceDir(t), "sdxl-tiny", "diffusers", "text_encoder", "config.json"))
		require.NoError(t, err)
		_, err = Load(testutil.KitFolder(t, "sdxl-tiny/diffusers", map[string][]byte{"text_encoder_2/config.json": cfg}))
		assert.ErrorContains(t, err, "must be a CLIPTextModelWithProjection")
	})
}

// The kit's SDXL single file (SGM layout) holds exactly the diffusers folder's weights:
// every tensor binds to the same bytes, OpenCLIP's fused in_proj split and its
// text_projection transposed, and the inferred configs are the folder's.
func TestLoadSDXLSingleFileMatchesFolder(t *testing.T) {
	kit := testutil.ConformanceDir(t)
	folder := loadModel(t, filepath.Join(kit, "sdxl-tiny", "diffusers"))
	// The tiny model's heads are 16 wide, not SDXL's 64: its configs say how many.
	single := loadModel(t, filepath.Join(kit, "sdxl-tiny", "sdxl-tiny-single-file.safetensors"),
		WithUNetHeads(folder.UNet.Config.AttentionHeads...), WithTextHeads(folder.TextEncoder.Config.NumAttentionHeads),
		WithTextHeads2(folder.ExtraTextEncoders[0].Config.NumAttentionHeads))
	assert.Equal(t, FamilySDXL, single.Family)
	assert.True(t, single.ForceZerosForEmptyPrompt)
	assert.Empty(t, single.Unused)
	require.Len(t, single.ExtraTextEncoders, 1)
	te2f, te2s := folder.ExtraTextEncoders[0], single.ExtraTextEncoders[0]
	for _, c := range []struct {
		name      string
		got, want map[string]Tensor
	}{
		{"unet", single.UNet.Tensors, folder.UNet.Tensors},
		{"vae", single.VAE.Tensors, folder.VAE.Tensors},
		{"text_encoder", single.TextEncoder.Tensors, folder.TextEncoder.Tensors},
		{"text_encoder_2", te2s.Tensors, te2f.Tensors},
	} {
		require.Len(t, c.got, len(c.want), c.name)
		for name, w := range c.want {
			g, ok := c.got[name]
			if assert.True(t, ok, "%s: %s", c.name, name) {
				assert.Equal(t, w.Shape, g.Shape, "%s: %s", c.name, name)
				assert.True(t, bytes.Equal(w.Data, g.Data), "%s: %s differs", c.name, name)
			}
		}
	}
	u, fu := single.UNet.Config, folder.UNet.Config
	assert.Equal(t, fu.AdditionEmbedType, u.AdditionEmbedType)
	assert.Equal(t, fu.AdditionTimeEmbedDim, u.AdditionTimeEmbedDim)
	assert.Equal(t, fu.ProjectionClassEmbeddingsInputDim, u.ProjectionClassEmbeddingsInputDim)
	assert.Equal(t, fu.TransformerLayersPerBlock, u.TransformerLayersPerBlock)
	assert.Equal(t, fu.DownBlockTypes, u.DownBlockTypes)
	assert.Equal(t, fu.UpBlockTypes, u.UpBlockTypes)
	assert.Equal(t, fu.CrossAttentionDim, u.CrossAttentionDim)
	assert.Equal(t, folder.VAE.Config.ScalingFactor, single.VAE.Config.ScalingFactor)
	assert.Equal(t, te2f.Config.ProjectionDim, te2s.Config.ProjectionDim)
	assert.Equal(t, te2f.Config.NumHiddenLayers, te2s.Config.NumHiddenLayers, "all of OpenCLIP's blocks: SDXL pools after the last")
	assert.Equal(t, te2f.Config.HiddenAct, te2s.Config.HiddenAct)
	assert.Equal(t, folder.TextEncoder.Config.HiddenAct, single.TextEncoder.Config.HiddenAct)
	assert.Equal(t, "EulerDiscreteScheduler", single.Scheduler.ClassName)
	assert.Equal(t, "leading", single.Scheduler.TimestepSpacing)
	assert.Len(t, single.Warnings, 2, "both tiny text encoders are not SDXL's")
}

// SDXL is recognised by its parts; a file with some of them is refused with what it has.
func TestSGMFamilyDetection(t *testing.T) {
	path := filepath.Join(testutil.ConformanceDir(t), "sdxl-tiny", "sdxl-tiny-single-file.safetensors")
	f, err := OpenFile(path)
	require.NoError(t, err)
	defer f.Close()
	cases := []struct {
		name    string
		drop    string // every tensor with this prefix removed
		rename  [2]string
		wantErr string
	}{
		{"no label_emb", "model.diffusion_model.label_emb.", [2]string{}, "without the UNet's added embedding"},
		{"no OpenCLIP", "conditioner.embedders.1.", [2]string{}, "other than SDXL base's"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ts := ldmTensors{}
			for _, x := range f.Tensors {
				if strings.HasPrefix(x.Name, c.drop) {
					continue
				}
				if c.rename[0] != "" {
					if rest, ok := strings.CutPrefix(x.Name, c.rename[0]); ok {
						x.Name = c.rename[1] + rest
					}
				}
				ts[x.Name] = x
			}
			_, err := ts.detectFamily()
			require.ErrorIs(t, err, ErrUnsupported)
			assert.ErrorContains(t, err, c.wantErr)
		})
	}
}

// An SDXL refiner single file (SGM layout: its one OpenCLIP encoder first), written here
// from a random refiner folder by the inverse of the name mapping (q/k/v fused into
// in_proj, text_projection transposed), loads back as that folder.
func TestLoadSDXLRefinerSingleFile(t *testing.T) {
	arch := tinySDXLArchitecture()
	arch.TextEncoder, arch.TextEncoder2, arch.Refiner = *arch.TextEncoder2, nil, true
	arch.UNet.CrossAttentionDim = arch.TextEncoder.HiddenSize
	arch.UNet.ProjectionClassEmbeddingsInputDim = arch.TextEncoder.ProjectionDim + 5*arch.UNet.AdditionTimeEmbedDim
	dir := t.TempDir()
	require.NoError(t, WriteRandom(context.Background(), dir, arch, F16, 5))
	folder := loadModel(t, dir)

	var out []Tensor
	put := func(tensors map[string]Tensor, resolve func(string) source) {
		fused := map[string][]Tensor{}
		for name, x := range tensors {
			src := resolve(name)
			switch {
			case src.parts > 1:
				parts := fused[src.name]
				if parts == nil {
					parts = make([]Tensor, src.parts)
				}
				parts[src.part] = x
				fused[src.name] = parts
			case src.transpose:
				tr, err := transposed(x)
				require.NoError(t, err)
				out = append(out, Tensor{Name: src.name, DType: tr.DType, Shape: tr.Shape, Data: tr.Data})
			default:
				out = append(out, Tensor{Name: src.name, DType: x.DType, Shape: x.Shape, Data: x.Data})
			}
		}
		for name, parts := range fused {
			var data []byte
			for _, p := range parts {
				data = append(data, p.Data...)
			}
			shape := slices.Clone(parts[0].Shape)
			shape[0] *= int64(len(parts))
			out = append(out, Tensor{Name: name, DType: parts[0].DType, Shape: shape, Data: data})
		}
	}
	put(folder.UNet.Tensors, unetModules(folder.UNet.Config).resolver(ldmUNet))
	put(folder.VAE.Tensors, vaeModules(folder.VAE.Config).resolver(ldmVAE))
	put(folder.TextEncoder.Tensors, openCLIPSource(sgmRefinerOpenCLIP))
	path := filepath.Join(t.TempDir(), "refiner.safetensors")
	require.NoError(t, WriteSafetensors(path, out, nil))

	single := loadModel(t, path, WithUNetHeads(arch.UNet.AttentionHeads...), WithTextHeads(arch.TextEncoder.NumAttentionHeads))
	assert.Equal(t, FamilySDXL, single.Family)
	assert.True(t, single.RequiresAestheticsScore)
	assert.False(t, single.ForceZerosForEmptyPrompt)
	assert.Empty(t, single.ExtraTextEncoders)
	assert.Empty(t, single.Unused)
	assert.Equal(t, arch.UNet.AdditionTimeEmbedDim, single.UNet.Config.AdditionTimeEmbedDim, "five time ids")
	assert.True(t, single.TextEncoder.Config.WithProjection)
	for _, c := range []struct {
		name      string
		got, want map[string]Tensor
	}{
		{"unet", single.UNet.Tensors, folder.UNet.Tensors},
		{"vae", single.VAE.Tensors, folder.VAE.Tensors},
		{"text encoder", single.TextEncoder.Tensors, folder.TextEncoder.Tensors},
	} {
		require.Len(t, c.got, len(c.want), c.name)
		for name, w := range c.want {
			assert.True(t, bytes.Equal(w.Data, c.got[name].Data), "%s: %s differs", c.name, name)
		}
	}
}

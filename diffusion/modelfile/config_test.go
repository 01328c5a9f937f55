package modelfile

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/gosd/gosd/diffusion/schedule"
	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// kitTable is one entry of full-size-tensor-tables.json.
type kitTable map[string]struct {
	DType string  `json:"dtype"`
	Shape []int64 `json:"shape"`
}

type kitModel struct {
	SingleFile kitTable                   `json:"single_file"`
	Diffusers  map[string]kitTable        `json:"diffusers"`
	Configs    map[string]json.RawMessage `json:"configs"`
}

var (
	kitOnce   sync.Once
	kitTables map[string]kitModel
	kitErr    error
)

// fullSizeModels pairs the kit's full-size table names with the
// architectures that should match them.
var fullSizeModels = []struct {
	table string
	arch  Architecture
}{{"sd15", SD15()}, {"sd21", SD21()}}

// fullSizeTables reads the kit's full-size tables once per test binary
// ("sd15", "sd21").
func fullSizeTables(t *testing.T) map[string]kitModel {
	t.Helper()
	dir := testutil.ConformanceDir(t)
	kitOnce.Do(func() {
		var raw []byte
		if raw, kitErr = os.ReadFile(filepath.Join(dir, "full-size-tensor-tables.json")); kitErr == nil {
			kitErr = json.Unmarshal(raw, &kitTables)
		}
	})
	require.NoError(t, kitErr)
	return kitTables
}

func TestNamedConfigsMatchKit(t *testing.T) {
	tables := fullSizeTables(t)
	for _, c := range fullSizeModels {
		t.Run(c.table, func(t *testing.T) {
			cfg := tables[c.table].Configs
			unet, err := ParseUNetConfig(cfg["unet"])
			require.NoError(t, err)
			assert.Equal(t, c.arch.UNet, unet)
			vae, err := ParseVAEConfig(cfg["vae"])
			require.NoError(t, err)
			assert.Equal(t, c.arch.VAE, vae)
			text, err := ParseCLIPConfig(cfg["text_encoder"])
			require.NoError(t, err)
			assert.Equal(t, c.arch.TextEncoder, text)
		})
	}
}

func TestTinyKitConfigs(t *testing.T) {
	dir := testutil.ConformanceDir(t)
	read := func(model, comp string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, model, "diffusers", comp, "config.json"))
		require.NoError(t, err)
		return b
	}
	sd1, err := ParseUNetConfig(read("sd1-tiny", "unet"))
	require.NoError(t, err)
	assert.Equal(t, []int{8, 8, 8, 8}, sd1.AttentionHeads, "attention_head_dim 8 is a head count")
	assert.Equal(t, 32, sd1.CrossAttentionDim)
	assert.Equal(t, 128, sd1.TimeEmbeddingDim, "null time_embedding_dim is 4 × block_out_channels[0]")
	sd2, err := ParseUNetConfig(read("sd2-tiny-v", "unet"))
	require.NoError(t, err)
	assert.Equal(t, []int{2, 4, 4, 4}, sd2.AttentionHeads)
	assert.True(t, sd2.UseLinearProjection)

	text, err := ParseCLIPConfig(read("sd2-tiny-v", "text_encoder"))
	require.NoError(t, err)
	assert.Equal(t, CLIPConfig{VocabSize: 49408, HiddenSize: 48, IntermediateSize: 96, NumHiddenLayers: 3, NumAttentionHeads: 4,
		MaxPositionEmbeddings: 77, HiddenAct: "gelu", LayerNormEps: 1e-5, BOSTokenID: 49406, EOSTokenID: 49407, PadTokenID: 49407, ProjectionDim: 512}, text)

	b, err := os.ReadFile(filepath.Join(dir, "sd2-tiny-v", "diffusers", "scheduler", "scheduler_config.json"))
	require.NoError(t, err)
	sched, err := ParseSchedulerConfig(b)
	require.NoError(t, err)
	assert.Equal(t, schedule.PredictV, sched.PredictionType)
	assert.Equal(t, "DDIMScheduler", sched.ClassName)
	assert.Equal(t, 1, sched.StepsOffset)
	assert.JSONEq(t, string(b), string(sched.Raw))
}

func TestConfigJSONRoundTrip(t *testing.T) {
	for _, unet := range []UNetConfig{SD15UNetConfig(), SD21UNetConfig()} {
		b, err := json.Marshal(unet)
		require.NoError(t, err)
		back, err := ParseUNetConfig(b)
		require.NoError(t, err)
		assert.Equal(t, unet, back)
	}
	vae := SD15VAEConfig()
	vae.ShiftFactor = 0.1159
	b, err := json.Marshal(vae)
	require.NoError(t, err)
	backVAE, err := ParseVAEConfig(b)
	require.NoError(t, err)
	assert.Equal(t, vae, backVAE)
	for _, text := range []CLIPConfig{SD15TextEncoderConfig(), SD21TextEncoderConfig()} {
		b, err := json.Marshal(text)
		require.NoError(t, err)
		back, err := ParseCLIPConfig(b)
		require.NoError(t, err)
		assert.Equal(t, text, back)
	}
	for _, s := range []SchedulerConfig{SD15SchedulerConfig(), SD21SchedulerConfig()} {
		back, err := ParseSchedulerConfig(s.Raw)
		require.NoError(t, err)
		assert.Equal(t, s, back)
	}
}

func TestUNetConfigDefaults(t *testing.T) {
	// A config.json of the first diffusers releases: most keys absent.
	c, err := ParseUNetConfig([]byte(`{"_class_name": "UNet2DConditionModel", "cross_attention_dim": 768, "sample_size": 64}`))
	require.NoError(t, err)
	assert.Equal(t, SD15UNetConfig(), c)
}

func TestConfigsRejectUnsupported(t *testing.T) {
	cases := []struct {
		name, json, wantErr string
		parse               func([]byte) error
	}{
		{"addition embedding", `{"addition_embed_type": "text_image"}`, `addition_embed_type "text_image" is not supported`, unetErr},
		{"text_time without widths", `{"addition_embed_type": "text_time"}`, "addition_time_embed_dim 0 and projection_class_embeddings_input_dim 0 must be", unetErr},
		{"class embedding concat", `{"num_class_embeds": 10, "class_embeddings_concat": true}`, "class_embeddings_concat", unetErr},
		{"only_cross_attention length", `{"only_cross_attention": [true, false]}`, "only_cross_attention has 2 entries for 4 blocks", unetErr},
		{"only_cross_attention type", `{"only_cross_attention": "yes"}`, "only_cross_attention is yes", unetErr},
		{"other class", `{"_class_name": "UNet2DModel"}`, "class UNet2DModel is not supported", unetErr},
		{"block type", `{"down_block_types": ["SimpleCrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D"]}`, `unsupported down block type "SimpleCrossAttnDownBlock2D"`, unetErr},
		{"up block type", `{"up_block_types": ["UpBlock2D", "UpBlock2D", "UpBlock2D", "AttnUpBlock2D"]}`, `unsupported up block type "AttnUpBlock2D"`, unetErr},
		{"mid block", `{"mid_block_type": "UNetMidBlock2DSimpleCrossAttn"}`, "unsupported mid block type", unetErr},
		{"heads list length", `{"attention_head_dim": [5, 10]}`, "attention_head_dim has 2 values for 4 blocks", unetErr},
		{"heads do not divide", `{"attention_head_dim": 7}`, "do not split into 7 attention heads", unetErr},
		{"groups do not divide", `{"norm_num_groups": 48}`, "do not split into 48 norm groups", unetErr},
		{"block count mismatch", `{"up_block_types": ["UpBlock2D"]}`, "up_block_types has 1 entries for 4 levels", unetErr},
		{"even kernel", `{"conv_in_kernel": 2}`, "must be odd", unetErr},
		{"class embeddings", `{"class_embed_type": "projection"}`, `class_embed_type "projection" is not supported`, unetErr},
		{"class table size", `{"num_class_embeds": 0}`, "num_class_embeds 0 must be in", unetErr},
		{"lcm", `{"time_cond_proj_dim": 256}`, "time_cond_proj_dim", unetErr},
		{"gelu resnets", `{"act_fn": "gelu"}`, `act_fn "gelu"`, unetErr},
		{"per-block context", `{"cross_attention_dim": [768, 768, 768, 768]}`, "per-block cross_attention_dim", unetErr},
		{"bad json", `{"in_channels": "four"}`, "unet config:", unetErr},
		{"vae block", `{"down_block_types": ["DownBlock2D"]}`, `unsupported down block type "DownBlock2D"`, vaeErr},
		{"vae class", `{"_class_name": "AutoencoderTiny"}`, "AutoencoderTiny is not supported", vaeErr},
		{"vae levels", `{"block_out_channels": [64, 64]}`, "1 down and 1 up block types for 2 levels", vaeErr},
		{"vae act", `{"act_fn": "relu"}`, `act_fn "relu"`, vaeErr},
		{"clip act", `{"hidden_act": "relu"}`, `hidden_act "relu" is not supported`, clipErr},
		{"clip heads", `{"hidden_size": 100, "num_attention_heads": 8}`, "does not split into 8 heads", clipErr},
		{"clip vision", `{"model_type": "clip_vision_model"}`, "clip_vision_model", clipErr},
		{"clip architecture", `{"architectures": ["CLIPVisionModelWithProjection"]}`, "CLIPVisionModelWithProjection is not supported", clipErr},
		{"clip projection width", `{"architectures": ["CLIPTextModelWithProjection"], "projection_dim": 0}`, "projection_dim 0 not in", clipErr},
		{"scheduler prediction", `{"prediction_type": "flow"}`, `unknown prediction type "flow"`, schedErr},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			assert.ErrorContains(t, c.parse([]byte(c.json)), c.wantErr)
		})
	}
}

// Sizes no Stable Diffusion model comes near are refused whatever the
// weights say, so nothing derived from them overflows or loses bits on its
// way to the runtime's int32 fields.
func TestConfigsRejectAbsurdSizes(t *testing.T) {
	cases := []struct {
		name, json, wantErr string
		parse               func([]byte) error
	}{
		{"unet channels", `{"block_out_channels": [4294967328, 640, 1280, 1280]}`, "level 0: 4294967328 channels (at most 65536)", unetErr},
		{"unet in channels", `{"in_channels": 100000}`, "in/out channels 100000, 4", unetErr},
		{"unet context", `{"cross_attention_dim": 1000000}`, "cross_attention_dim 1000000", unetErr},
		{"unet kernel", `{"conv_in_kernel": 1000001}`, "conv kernels 1000001, 3 must be odd, in 1..15", unetErr},
		{"unet sample size", `{"sample_size": 1000000}`, "sample_size 1000000 (at most 1024)", unetErr},
		{"unet eps", `{"norm_eps": 2}`, "norm_eps 2 must be in (0, 1)", unetErr},
		{"vae channels", `{"block_out_channels": [1048576]}`, "level 0: 1048576 channels (at most 65536)", vaeErr},
		{"vae latent channels", `{"latent_channels": 1000000}`, "in/out/latent channels 3, 3, 1000000", vaeErr},
		{"clip hidden", `{"hidden_size": 1048576, "num_attention_heads": 1}`, "hidden 1048576, intermediate 2048 (at most 65536)", clipErr},
		{"clip vocab", `{"vocab_size": 100000000}`, "vocab 100000000 (at most 1048576)", clipErr},
		{"clip positions", `{"max_position_embeddings": 1000000}`, "positions 1000000 (at most 16384)", clipErr},
		{"clip eps", `{"layer_norm_eps": 0}`, "layer_norm_eps 0 must be in (0, 1)", clipErr},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			assert.ErrorContains(t, c.parse([]byte(c.json)), c.wantErr)
		})
	}
	// JSON has no NaN: only configs built in Go can carry one.
	vae := SD15VAEConfig()
	vae.ShiftFactor = math.NaN()
	assert.ErrorContains(t, vae.Validate(), "shift_factor NaN finite")
}

func unetErr(b []byte) error  { _, err := ParseUNetConfig(b); return err }
func vaeErr(b []byte) error   { _, err := ParseVAEConfig(b); return err }
func clipErr(b []byte) error  { _, err := ParseCLIPConfig(b); return err }
func schedErr(b []byte) error { _, err := ParseSchedulerConfig(b); return err }

func TestEnumsRoundTrip(t *testing.T) {
	for _, f := range []Family{FamilySD1, FamilySD2, FamilySDXL} {
		got, err := ParseFamily(f.String())
		require.NoError(t, err)
		assert.Equal(t, f, got)
	}
	_, err := ParseFamily("sd3")
	assert.ErrorContains(t, err, `unknown model family "sd3"`)
	assert.Equal(t, "Family(0)", Family(0).String())
}

// The UNets of the kit with extra conditioning: their configs resolve to the fields the
// runtime needs, and the specs list exactly the tensors diffusers saved, shapes included.
func TestUNetConfigExtraConditioning(t *testing.T) {
	kit := testutil.ConformanceDir(t)
	cases := []struct {
		folder string
		check  func(t *testing.T, c UNetConfig)
	}{
		{"upscaler-tiny", func(t *testing.T, c UNetConfig) {
			assert.Equal(t, []bool{true, true, true, false}, c.OnlyCrossAttention)
			assert.Equal(t, ClassTable, c.ClassEmbedType)
			assert.Equal(t, 1000, c.NumClassEmbeds)
			assert.Equal(t, "", c.AdditionEmbedType)
			assert.Equal(t, 7, c.InChannels)
		}},
		{"sdxl-tiny", func(t *testing.T, c UNetConfig) {
			assert.Nil(t, c.OnlyCrossAttention)
			assert.Equal(t, "", c.ClassEmbedType)
			assert.Equal(t, AdditionTextTime, c.AdditionEmbedType)
			assert.Equal(t, 16, c.AdditionTimeEmbedDim)
			assert.Equal(t, 120, c.ProjectionClassEmbeddingsInputDim)
			assert.Equal(t, []int{1, 1, 2}, c.TransformerLayersPerBlock)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.folder, func(t *testing.T) {
			dir := filepath.Join(kit, tc.folder, "diffusers", "unet")
			b, err := os.ReadFile(filepath.Join(dir, "config.json"))
			require.NoError(t, err)
			c, err := ParseUNetConfig(b)
			require.NoError(t, err)
			tc.check(t, c)

			out, err := json.Marshal(c)
			require.NoError(t, err)
			back, err := ParseUNetConfig(out)
			require.NoError(t, err)
			assert.Equal(t, c, back, "the config survives MarshalJSON")

			f, err := OpenSafetensors(filepath.Join(dir, "diffusion_pytorch_model.safetensors"))
			require.NoError(t, err)
			defer f.Close()
			file := map[string][]int64{}
			for _, x := range f.Tensors {
				file[x.Name] = x.Shape
			}
			specs, err := c.TensorSpecs()
			require.NoError(t, err)
			want := map[string][]int64{}
			for _, s := range specs {
				want[s.Name] = s.Shape
			}
			assert.Equal(t, file, want)
		})
	}

	// A bool applies to every level; a plain mid block has one ResNet and no attention.
	c, err := ParseUNetConfig([]byte(`{"only_cross_attention": true, "mid_block_type": "UNetMidBlock2D", "class_embed_type": "timestep"}`))
	require.NoError(t, err)
	assert.Equal(t, []bool{true, true, true, true}, c.OnlyCrossAttention)
	specs, err := c.TensorSpecs()
	require.NoError(t, err)
	names := map[string][]int64{}
	for _, s := range specs {
		names[s.Name] = s.Shape
	}
	assert.Contains(t, names, "mid_block.resnets.0.conv1.weight")
	assert.NotContains(t, names, "mid_block.resnets.1.conv1.weight")
	assert.NotContains(t, names, "mid_block.attentions.0.norm.weight")
	assert.Equal(t, []int64{1280, 320}, names["class_embedding.linear_1.weight"])
	assert.Equal(t, []int64{320, 1280}, names["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.weight"], "attn1 reads the 1280-wide context")
}

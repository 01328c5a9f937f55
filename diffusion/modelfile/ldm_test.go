package modelfile

import (
	"archive/zip"
	"bytes"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"unsafe"

	"github.com/gosd/gosd/diffusion/schedule"
	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func loadModel(t *testing.T, path string, opts ...Option) *Model {
	t.Helper()
	m, err := Load(path, opts...)
	require.NoError(t, err)
	t.Cleanup(func() { m.Close() })
	return m
}

// assertSameWeights checks that two components hold the same tensors:
// names, shapes and values.
func assertSameWeights(t *testing.T, want, got map[string]Tensor) {
	t.Helper()
	require.Equal(t, slices.Sorted(maps.Keys(want)), slices.Sorted(maps.Keys(got)))
	for name, w := range want {
		g := got[name]
		require.Equal(t, w.Shape, g.Shape, name)
		if w.DType == g.DType {
			require.True(t, bytes.Equal(w.Data, g.Data), name)
			continue
		}
		wv, err := w.Float32s()
		require.NoError(t, err)
		gv, err := g.Float32s()
		require.NoError(t, err)
		require.Equal(t, wv, gv, name)
	}
}

// weightsOnlyConfigs copies into got the config fields that no tensor
// records, so the rest can be compared.
func weightsOnlyConfigs(got, want *Model) {
	got.UNet.Config.SampleSize = want.UNet.Config.SampleSize
	got.VAE.Config.SampleSize = want.VAE.Config.SampleSize
	got.TextEncoder.Config.PadTokenID = want.TextEncoder.Config.PadTokenID
	got.TextEncoder.Config.ProjectionDim = want.TextEncoder.Config.ProjectionDim
}

func TestLoadTinyLDMMatchesDiffusers(t *testing.T) {
	dir := testutil.ConformanceDir(t)
	want := loadModel(t, filepath.Join(dir, "sd1-tiny", "diffusers"))
	got := loadModel(t, filepath.Join(dir, "sd1-tiny", "sd1-tiny-ldm.safetensors"), WithTextHeads(4))

	assert.Equal(t, FamilySD1, got.Family)
	assert.Equal(t, FormatSafetensors, got.Format)
	assert.Empty(t, got.Unused)
	assert.Empty(t, got.TokenizerDir)
	assert.Equal(t, schedule.PredictEpsilon, got.Scheduler.PredictionType)
	assertSameWeights(t, want.UNet.Tensors, got.UNet.Tensors)
	assertSameWeights(t, want.VAE.Tensors, got.VAE.Tensors)
	assertSameWeights(t, want.TextEncoder.Tensors, got.TextEncoder.Tensors)

	assert.Equal(t, 64, got.UNet.Config.SampleSize, "SD 1.x default: 512 px")
	weightsOnlyConfigs(got, want)
	assert.Equal(t, want.UNet.Config, got.UNet.Config)
	assert.Equal(t, want.VAE.Config, got.VAE.Config)
	assert.Equal(t, want.TextEncoder.Config, got.TextEncoder.Config)
}

// ldmFromTable builds a header-only state dict (names, shapes, no data)
// from a kit table.
func ldmFromTable(table kitTable) []Tensor {
	var out []Tensor
	for name, e := range table {
		dtype, _ := ParseDType(e.DType)
		out = append(out, Tensor{Name: name, DType: dtype, Shape: e.Shape})
	}
	return out
}

func TestFullSizeSingleFileTables(t *testing.T) {
	tables := fullSizeTables(t)
	for _, c := range fullSizeModels {
		t.Run(c.table, func(t *testing.T) {
			kit := tables[c.table]
			m := &Model{}
			require.NoError(t, m.fromLDM(ldmFromTable(kit.SingleFile), &options{}))
			assert.Equal(t, c.arch.Family, m.Family)
			assert.Equal(t, c.arch.Scheduler, m.Scheduler, "v_prediction for SD 2.x")
			assert.Empty(t, m.Unused)
			assert.Empty(t, m.Warnings, "the standard text encoder")
			assert.Equal(t, c.arch.UNet, m.UNet.Config)
			assert.Equal(t, c.arch.VAE, m.VAE.Config)
			assert.Equal(t, c.arch.TextEncoder, m.TextEncoder.Config)
			for comp, tensors := range map[string]map[string]Tensor{"unet": m.UNet.Tensors, "vae": m.VAE.Tensors, "text_encoder": m.TextEncoder.Tensors} {
				got := map[string][]int64{}
				for name, x := range tensors {
					got[name] = x.Shape
				}
				assert.Equal(t, tableShapes(kit.Diffusers[comp]), got, comp)
			}
		})
	}
}

// openCLIPCheckpoint writes the sd2-tiny-v model as an original SD 2.x
// single file: UNet and VAE under LDM names, the text encoder as an
// OpenCLIP tower with fused q/k/v, one extra residual block (which SD 2.x
// skips), text_projection and logit_scale.
func openCLIPCheckpoint(t *testing.T, ref *Model) string {
	var out []Tensor
	add := func(name string, x Tensor) {
		x.Name = name
		out = append(out, x)
	}
	for name, x := range ref.UNet.Tensors {
		add(unetModules(ref.UNet.Config).resolver(ldmUNet)(name).name, x)
	}
	for name, x := range ref.VAE.Tensors {
		add(vaeModules(ref.VAE.Config).resolver(ldmVAE)(name).name, x)
	}
	text := ref.TextEncoder.Tensors
	c := ref.TextEncoder.Config
	p := "cond_stage_model.model."
	add(p+"token_embedding.weight", text["text_model.embeddings.token_embedding.weight"])
	add(p+"positional_embedding", text["text_model.embeddings.position_embedding.weight"])
	add(p+"ln_final.weight", text["text_model.final_layer_norm.weight"])
	add(p+"ln_final.bias", text["text_model.final_layer_norm.bias"])
	for i := range c.NumHiddenLayers + 1 {
		src := min(i, c.NumHiddenLayers-1) // the extra last block repeats one: it must go unused
		hf := fmt.Sprintf("text_model.encoder.layers.%d.", src)
		block := fmt.Sprintf("%stransformer.resblocks.%d.", p, i)
		for _, param := range []string{"weight", "bias"} {
			q, k, v := text[hf+"self_attn.q_proj."+param], text[hf+"self_attn.k_proj."+param], text[hf+"self_attn.v_proj."+param]
			fused := Tensor{DType: q.DType, Shape: slices.Clone(q.Shape), Data: slices.Concat(q.Data, k.Data, v.Data)}
			fused.Shape[0] *= 3
			add(block+"attn.in_proj_"+param, fused)
			add(block+"attn.out_proj."+param, text[hf+"self_attn.out_proj."+param])
			add(block+"ln_1."+param, text[hf+"layer_norm1."+param])
			add(block+"ln_2."+param, text[hf+"layer_norm2."+param])
			add(block+"mlp.c_fc."+param, text[hf+"mlp.fc1."+param])
			add(block+"mlp.c_proj."+param, text[hf+"mlp.fc2."+param])
		}
	}
	add(p+"text_projection", Tensor{DType: F32, Shape: []int64{int64(c.HiddenSize), 24}, Data: make([]byte, 4*24*c.HiddenSize)})
	add(p+"logit_scale", Tensor{DType: F32, Shape: []int64{}, Data: floatBytes(4.6)})
	path := filepath.Join(t.TempDir(), "sd2-openclip.safetensors")
	require.NoError(t, WriteSafetensors(path, out, nil))
	return path
}

func TestLoadOpenCLIPSingleFile(t *testing.T) {
	dir := testutil.ConformanceDir(t)
	want := loadModel(t, filepath.Join(dir, "sd2-tiny-v", "diffusers"))
	path := openCLIPCheckpoint(t, want)
	got := loadModel(t, path, WithUNetHeads(2, 4, 4, 4), WithTextHeads(4))

	assert.Equal(t, FamilySD2, got.Family)
	assert.Equal(t, schedule.PredictV, got.Scheduler.PredictionType, "SD 2.x single files default to v-prediction")
	assert.Equal(t, 96, got.UNet.Config.SampleSize)
	assert.Equal(t, 24, got.TextEncoder.Config.ProjectionDim, "from text_projection")
	assertSameWeights(t, want.UNet.Tensors, got.UNet.Tensors)
	assertSameWeights(t, want.VAE.Tensors, got.VAE.Tensors)
	assertSameWeights(t, want.TextEncoder.Tensors, got.TextEncoder.Tensors)
	weightsOnlyConfigs(got, want)
	assert.Equal(t, want.UNet.Config, got.UNet.Config)
	assert.Equal(t, want.VAE.Config, got.VAE.Config)
	assert.Equal(t, want.TextEncoder.Config, got.TextEncoder.Config)

	last := fmt.Sprintf("cond_stage_model.model.transformer.resblocks.%d.", want.TextEncoder.Config.NumHiddenLayers)
	var unusedBlocks int
	for _, n := range got.Unused {
		if strings.HasPrefix(n, last) {
			unusedBlocks++
		}
	}
	assert.Equal(t, 12, unusedBlocks, "the last residual block is skipped")
	assert.Contains(t, got.Unused, "cond_stage_model.model.text_projection")
	assert.Contains(t, got.Unused, "cond_stage_model.model.logit_scale")
	assert.Len(t, got.Unused, 14)

	// q, k and v are consecutive thirds of the fused weight in the mapping.
	fused, ok := got.files[0].Tensor("cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight")
	require.True(t, ok)
	third := uintptr(len(fused.Data) / 3)
	base := uintptr(unsafe.Pointer(&fused.Data[0]))
	for i, proj := range []string{"q_proj", "k_proj", "v_proj"} {
		x := got.TextEncoder.Tensors["text_model.encoder.layers.1.self_attn."+proj+".weight"]
		assert.Equal(t, base+uintptr(i)*third, uintptr(unsafe.Pointer(&x.Data[0])), proj)
		assert.Equal(t, []int64{48, 48}, x.Shape)
	}
}

// tinyLDM returns the sd1-tiny single file's tensors (views of the open
// file, closed at the end of the test).
func tinyLDM(t *testing.T) []Tensor {
	f, err := OpenSafetensors(filepath.Join(testutil.ConformanceDir(t), "sd1-tiny", "sd1-tiny-ldm.safetensors"))
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	return f.Tensors
}

func TestLDMErrors(t *testing.T) {
	base := tinyLDM(t)
	edit := func(fn func(map[string]Tensor)) []Tensor {
		m := map[string]Tensor{}
		for _, x := range base {
			m[x.Name] = x
		}
		fn(m)
		var out []Tensor
		for name, x := range m {
			x.Name = name
			out = append(out, x)
		}
		return out
	}
	deleteIf := func(pred func(string) bool) func(map[string]Tensor) {
		return func(m map[string]Tensor) { maps.DeleteFunc(m, func(n string, _ Tensor) bool { return pred(n) }) }
	}
	cases := []struct {
		name    string
		tensors []Tensor
		opts    options
		wantErr string
	}{
		{"sdxl", edit(func(m map[string]Tensor) {
			m["conditioner.embedders.1.model.ln_final.weight"] = Tensor{DType: F16, Shape: []int64{4}}
		}), options{textHeads: 4}, "other than SDXL base's"},
		{"class conditioned", edit(func(m map[string]Tensor) {
			m["model.diffusion_model.label_emb.0.0.weight"] = Tensor{DType: F16, Shape: []int64{4, 4}}
		}), options{textHeads: 4}, "class-conditioned UNet"},
		{"no unet", edit(deleteIf(func(n string) bool { return strings.HasPrefix(n, "model.diffusion_model.") })), options{textHeads: 4}, "not a Stable Diffusion 1.x/2.x single-file checkpoint"},
		{"missing resnet", edit(deleteIf(func(n string) bool {
			return strings.HasPrefix(n, "model.diffusion_model.output_blocks.4.0.in_layers.2")
		})), options{textHeads: 4},
			"unet: 2 of 684 tensors missing: up_blocks.1.resnets.1.conv1.weight (model.diffusion_model.output_blocks.4.0.in_layers.2.weight in the file)"},
		{"missing downsampler", edit(deleteIf(func(n string) bool { return strings.HasPrefix(n, "model.diffusion_model.input_blocks.3.") })), options{textHeads: 4}, "do not form levels of equal depth"},
		{"wrong shape", edit(func(m map[string]Tensor) {
			x := m["first_stage_model.decoder.mid.attn_1.q.weight"]
			x.Shape = []int64{64, 32, 2, 1}
			m[x.Name] = x
		}), options{textHeads: 4}, "vae: tensor decoder.mid_block.attentions.0.to_q.weight (first_stage_model.decoder.mid.attn_1.q.weight in the file) has shape [64 32 2 1], want [64 64]"},
		{"text heads unknown", base, options{}, "text width 32 is not a multiple of CLIP's 64-wide heads: give the head count with WithTextHeads"},
		{"sd2 heads unknown", base, options{family: FamilySD2, textHeads: 4}, "32 channels are not a multiple of SD 2.x's 64-wide heads"},
		{"no text encoder", edit(deleteIf(func(n string) bool { return strings.HasPrefix(n, "cond_stage_model.") })), options{textHeads: 4}, "text_encoder: tensor cond_stage_model.transformer.embeddings.token_embedding.weight is missing"},
		{"no vae", edit(deleteIf(func(n string) bool { return strings.HasPrefix(n, "first_stage_model.") })), options{textHeads: 4}, "vae: tensor first_stage_model.encoder.conv_in.weight is missing"},
		// The expected shape is the UNet's, not one read off the mis-shaped tensor.
		{"transposed conv_in", edit(func(m map[string]Tensor) {
			x := m["model.diffusion_model.input_blocks.0.0.weight"]
			x.Shape = []int64{4, 32, 3, 3}
			m[x.Name] = x
		}), options{textHeads: 4}, "unet: tensor conv_in.weight (model.diffusion_model.input_blocks.0.0.weight in the file) has shape [4 32 3 3], want [32 4 3 3]"},
		{"text layer gap", edit(deleteIf(func(n string) bool { return strings.Contains(n, ".encoder.layers.1.") })), options{textHeads: 4},
			"text_encoder: layer cond_stage_model.transformer.text_model.encoder.layers.1.* is missing (the file has layers up to 3)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := (&Model{}).fromLDM(c.tensors, &c.opts)
			assert.ErrorContains(t, err, c.wantErr)
		})
	}
}

func TestLDMOptions(t *testing.T) {
	base := tinyLDM(t)
	m := &Model{}
	o := &options{family: FamilySD2, unetHeads: []int{2, 4, 4, 4}, textHeads: 4}
	WithPredictionType(schedule.PredictEpsilon)(o)
	require.NoError(t, m.fromLDM(base, o))
	assert.Equal(t, FamilySD2, m.Family)
	assert.Equal(t, []int{2, 4, 4, 4}, m.UNet.Config.AttentionHeads)
	assert.Equal(t, "gelu", m.TextEncoder.Config.HiddenAct, "the family sets what weights do not record")
	assert.Equal(t, schedule.PredictEpsilon, m.Scheduler.PredictionType)
	assert.Equal(t, 64, m.UNet.Config.SampleSize, "an epsilon SD 2.x model is a 512 px base model")
	assert.Contains(t, string(m.Scheduler.Raw), `"prediction_type":"epsilon"`)

	// Inpainting UNets take latents, mask and masked-image latents.
	var inpaint []Tensor
	for _, x := range base {
		if x.Name == "model.diffusion_model.input_blocks.0.0.weight" {
			x.Shape = []int64{32, 9, 3, 3}
			x.Data = make([]byte, 2*32*9*3*3)
		}
		inpaint = append(inpaint, x)
	}
	m = &Model{}
	require.NoError(t, m.fromLDM(inpaint, &options{textHeads: 4}))
	assert.Equal(t, 9, m.UNet.Config.InChannels)
	assert.Equal(t, []int64{32, 9, 3, 3}, m.UNet.Tensors["conv_in.weight"].Shape)

	// Old transformers saved the text encoder without the text_model level.
	var renamed []Tensor
	for _, x := range base {
		x.Name = strings.Replace(x.Name, "cond_stage_model.transformer.text_model.", "cond_stage_model.transformer.", 1)
		renamed = append(renamed, x)
	}
	m = &Model{}
	require.NoError(t, m.fromLDM(renamed, &options{textHeads: 4}))
	assert.Contains(t, m.TextEncoder.Tensors, "text_model.final_layer_norm.weight")
}

// ckptFromTensors pickles tensors as a Lightning checkpoint, one storage
// each, the way torch.save lays them out.
func ckptFromTensors(t *testing.T, tensors []Tensor) []byte {
	var specs []ckptTensor
	storages := map[string][]byte{}
	classes := map[DType]string{F16: "HalfStorage", F32: "FloatStorage"}
	for i, x := range tensors {
		key := fmt.Sprint(i)
		stride := make([]int64, len(x.Shape))
		n := int64(1)
		for d := len(x.Shape) - 1; d >= 0; d-- {
			stride[d] = n
			n *= x.Shape[d]
		}
		specs = append(specs, ckptTensor{name: x.Name, storage: classes[x.DType], key: key, numel: n, shape: x.Shape, stride: stride, parameter: i%2 == 0})
		storages[key] = x.Data
	}
	return torchZip(t, stateDictPickle(specs, true, false), storages, zip.Store)
}

func TestLoadCheckpointSingleFile(t *testing.T) {
	base := tinyLDM(t)
	path := filepath.Join(t.TempDir(), "sd1-tiny.ckpt")
	writeFile(t, path, ckptFromTensors(t, base))
	fromCkpt := loadModel(t, path, WithTextHeads(4))
	fromST := loadModel(t, filepath.Join(testutil.ConformanceDir(t), "sd1-tiny", "sd1-tiny-ldm.safetensors"), WithTextHeads(4))
	assert.Equal(t, FormatPyTorch, fromCkpt.Format)
	assertSameWeights(t, fromST.UNet.Tensors, fromCkpt.UNet.Tensors)
	assertSameWeights(t, fromST.VAE.Tensors, fromCkpt.VAE.Tensors)
	assertSameWeights(t, fromST.TextEncoder.Tensors, fromCkpt.TextEncoder.Tensors)
	assert.Equal(t, fromST.UNet.Config, fromCkpt.UNet.Config)
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	require.NoError(t, os.WriteFile(path, data, 0o644))
}

// A single file's text encoder must have the depth of the architecture it
// is: one that lost its last layer would load as a shallower encoder. Only
// non-standard (test) encoders load at any depth, with a warning.
func TestLDMTextEncoderDepth(t *testing.T) {
	tables := fullSizeTables(t)
	dropLayer := func(tensors []Tensor, layer string) []Tensor {
		return slices.DeleteFunc(slices.Clone(tensors), func(x Tensor) bool { return strings.Contains(x.Name, ".encoder.layers."+layer+".") })
	}
	cases := []struct {
		name        string
		tensors     []Tensor
		opts        options
		wantErr     string
		wantWarning string
	}{
		{"SD 1.5", ldmFromTable(tables["sd15"].SingleFile), options{}, "", ""},
		{"SD 1.5 without its last layer", dropLayer(ldmFromTable(tables["sd15"].SingleFile), "11"), options{},
			"text_encoder: 11 layers of width 768, but the SD text encoder of that width has 12", ""},
		{"SD 1.5 without a middle layer", dropLayer(ldmFromTable(tables["sd15"].SingleFile), "5"), options{},
			"text_encoder: layer cond_stage_model.transformer.text_model.encoder.layers.5.* is missing (the file has layers up to 11)", ""},
		{"SD 2.1 without its last layer", dropLayer(ldmFromTable(tables["sd21"].SingleFile), "22"), options{},
			"text_encoder: 22 layers of width 1024, but the SD text encoder of that width has 23", ""},
		{"tiny test model", tinyLDM(t), options{textHeads: 4}, "",
			"text_encoder: 4 layers of width 32 are not a text encoder of SD 1.x, 2.x or SDXL (a test model?); loaded as found"},
		{"tiny test model without its last layer", dropLayer(tinyLDM(t), "3"), options{textHeads: 4}, "", "text_encoder: 3 layers of width 32"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := &Model{}
			err := m.fromLDM(c.tensors, &c.opts)
			if c.wantErr != "" {
				assert.ErrorContains(t, err, c.wantErr)
				return
			}
			require.NoError(t, err)
			if c.wantWarning == "" {
				assert.Empty(t, m.Warnings)
				return
			}
			require.Len(t, m.Warnings, 1)
			assert.Contains(t, m.Warnings[0], c.wantWarning)
			assert.Contains(t, m.Summary().String(), "\n  warning      "+m.Warnings[0]+"\n", "the summary shows it")
		})
	}

	// OpenCLIP towers count the residual block SD 2.x skips.
	openCLIP := ldmTensors{ldmOpenCLIP + "token_embedding.weight": {}}
	for _, c := range []struct {
		width, layers int
		wantErr       string
	}{
		{1024, 23, ""},
		{1024, 22, "23 residual blocks of width 1024, but the SD text encoder of that width has 24"},
		{768, 11, ""}, // not SD's: a warning
	} {
		_, err := openCLIP.checkTextDepth(CLIPConfig{HiddenSize: c.width, NumHiddenLayers: c.layers})
		if c.wantErr == "" {
			assert.NoError(t, err)
		} else {
			assert.ErrorContains(t, err, c.wantErr)
		}
	}
}

// LDMNames against names of the real SD 1.5 and SDXL checkpoints.
func TestUNetLDMNames(t *testing.T) {
	sd15, sdxl := SD15UNetConfig(), SDXLUNetConfig()
	for _, tc := range []struct {
		c          UNetConfig
		name, want string
	}{
		{sd15, "down_blocks.1.attentions.0.proj_in", "input_blocks.4.1.proj_in"},
		{sd15, "down_blocks.0.resnets.1.conv1", "input_blocks.2.0.in_layers.2"},
		{sd15, "mid_block.resnets.1.time_emb_proj", "middle_block.2.emb_layers.1"},
		{sd15, "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_k", "output_blocks.11.1.transformer_blocks.0.attn2.to_k"},
		{sd15, "up_blocks.1.upsamplers.0.conv", "output_blocks.5.2.conv"},
		{sdxl, "down_blocks.1.attentions.0.transformer_blocks.1.ff.net.0.proj", "input_blocks.4.1.transformer_blocks.1.ff.net.0.proj"},
		{sdxl, "up_blocks.0.attentions.2.proj_out", "output_blocks.2.1.proj_out"},
		{sdxl, "add_embedding.linear_1", "label_emb.0.0"},
		{sdxl, "conv_in", "input_blocks.0.0"},
	} {
		assert.Equal(t, tc.want, tc.c.LDMNames()(tc.name), tc.name)
	}
}

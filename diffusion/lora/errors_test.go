package lora

import (
	"path/filepath"
	"testing"

	"github.com/gosd/gosd/diffusion/modelfile"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func writeFile(t *testing.T, name string, ts ...modelfile.Tensor) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	require.NoError(t, modelfile.WriteSafetensors(path, ts, nil))
	return path
}

func zeros(name string, shape ...int64) modelfile.Tensor {
	n := int64(1)
	for _, d := range shape {
		n *= d
	}
	return f32Tensor(name, shape, make([]float32, n))
}

// A model of two layers written both ways: kohya needs "_"-joined matching.
var model = map[string]modelfile.Tensor{
	"down_blocks.0.attentions.0.proj_in.weight":                             zeros("down_blocks.0.attentions.0.proj_in.weight", 8, 8, 1, 1),
	"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.weight": zeros("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.weight", 8, 8),
	"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.bias":   zeros("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.bias", 8),
}

func TestLoadRefusesUnknownKeys(t *testing.T) {
	path := writeFile(t, "x.safetensors",
		zeros("lora_unet_a.lora_down.weight", 2, 8), zeros("lora_unet_a.lora_up.weight", 8, 2),
		zeros("lora_unet_a.processor.to_q_lora.down.weight", 2, 8), zeros("something_else", 3))
	_, err := Load(path)
	assert.ErrorIs(t, err, modelfile.ErrUnsupported)
	assert.ErrorContains(t, err, "lora_unet_a.processor.to_q_lora.down.weight")
	assert.ErrorContains(t, err, "something_else")

	_, err = Load(writeFile(t, "y.safetensors", zeros("lora_prior_unet_a.lora_down.weight", 2, 8)))
	assert.ErrorIs(t, err, modelfile.ErrUnsupported, "a kohya prefix of another architecture")
}

func TestLoadRefusesIncompleteModules(t *testing.T) {
	for name, ts := range map[string][]modelfile.Tensor{
		"no up":           {zeros("lora_unet_a.lora_down.weight", 2, 8), zeros("lora_unet_a.alpha")},
		"only alpha":      {zeros("lora_unet_a.alpha")},
		"mixed kinds":     {zeros("lora_unet_a.lora_down.weight", 2, 8), zeros("lora_unet_a.lora_up.weight", 8, 2), zeros("lora_unet_a.hada_w1_a", 8, 2)},
		"half a LoHa":     {zeros("lora_unet_a.hada_w1_a", 8, 2), zeros("lora_unet_a.hada_w1_b", 2, 8)},
		"alpha of two":    {zeros("lora_unet_a.lora_down.weight", 2, 8), zeros("lora_unet_a.lora_up.weight", 8, 2), zeros("lora_unet_a.alpha", 2)},
		"lokr w1_a alone": {zeros("lora_unet_a.lokr_w1_a", 2, 2), zeros("lora_unet_a.lokr_w2", 4, 4)},
	} {
		_, err := Load(writeFile(t, "x.safetensors", ts...))
		assert.ErrorIs(t, err, modelfile.ErrBadModel, name)
		assert.ErrorContains(t, err, "lora_unet_a", name)
	}
}

func TestApplyMatchesBothNamings(t *testing.T) {
	kohya := fromTensors(t,
		zeros("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0.lora_down.weight", 2, 8),
		zeros("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0.lora_up.weight", 8, 2),
		zeros("lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", 2, 8),
		zeros("lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight", 8, 2))
	peft := fromTensors(t,
		zeros("unet.down_blocks.0.attentions.0.proj_in.lora_A.weight", 2, 8, 1, 1),
		zeros("unet.down_blocks.0.attentions.0.proj_in.lora_B.weight", 8, 2, 1, 1))
	bare := fromTensors(t,
		zeros("down_blocks.0.attentions.0.proj_in.lora_A.weight", 2, 8),
		zeros("down_blocks.0.attentions.0.proj_in.lora_B.weight", 8, 2))
	for name, c := range map[string]struct {
		f    *File
		want []string
	}{
		"kohya": {kohya, []string{"down_blocks.0.attentions.0.proj_in.weight", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.weight"}},
		"peft":  {peft, []string{"down_blocks.0.attentions.0.proj_in.weight"}},
		"bare":  {bare, []string{"down_blocks.0.attentions.0.proj_in.weight"}},
	} {
		got, err := c.f.Targets(model, UNet)
		require.NoError(t, err, name)
		assert.Equal(t, c.want, got, name)
		none, err := c.f.Targets(model, TextEncoder)
		require.NoError(t, err, name)
		assert.Empty(t, none, "%s has no text-encoder modules", name)
	}
}

func TestApplyReportsMismatches(t *testing.T) {
	t.Run("unknown module", func(t *testing.T) {
		f := fromTensors(t,
			zeros("lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", 2, 8),
			zeros("lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight", 8, 2),
			zeros("lora_unet_mid_block_attentions_0_proj_out.lora_down.weight", 2, 8),
			zeros("lora_unet_mid_block_attentions_0_proj_out.lora_up.weight", 8, 2))
		_, err := f.Apply(model, UNet, 1)
		assert.ErrorIs(t, err, ErrMismatch)
		assert.ErrorContains(t, err, "1 modules match no unet weight: lora_unet_mid_block_attentions_0_proj_out")
	})
	t.Run("shape", func(t *testing.T) {
		f := fromTensors(t,
			zeros("unet.down_blocks.0.attentions.0.proj_in.lora_A.weight", 2, 16),
			zeros("unet.down_blocks.0.attentions.0.proj_in.lora_B.weight", 8, 2))
		_, err := f.Apply(model, UNet, 1)
		assert.ErrorIs(t, err, ErrMismatch)
		assert.ErrorContains(t, err, "unet.down_blocks.0.attentions.0.proj_in: the update is [8, 16], the weight [8 8 1 1] is [8, 8]")
	})
	t.Run("inconsistent factors", func(t *testing.T) {
		f := fromTensors(t,
			zeros("unet.down_blocks.0.attentions.0.proj_in.lora_A.weight", 2, 8),
			zeros("unet.down_blocks.0.attentions.0.proj_in.lora_B.weight", 8, 3))
		_, err := f.Apply(model, UNet, 1)
		assert.ErrorIs(t, err, ErrMismatch)
		assert.ErrorContains(t, err, "inconsistent lora shapes")
	})
	t.Run("DoRA magnitude", func(t *testing.T) {
		f := fromTensors(t,
			zeros("unet.down_blocks.0.attentions.0.proj_in.lora_A.weight", 2, 8),
			zeros("unet.down_blocks.0.attentions.0.proj_in.lora_B.weight", 8, 2),
			zeros("unet.down_blocks.0.attentions.0.proj_in.lora_magnitude_vector", 7))
		_, err := f.Apply(model, UNet, 1)
		assert.ErrorIs(t, err, ErrMismatch)
		assert.ErrorContains(t, err, "DoRA magnitude [7]")
	})
	t.Run("two modules on one weight", func(t *testing.T) {
		f := fromTensors(t,
			zeros("unet.down_blocks.0.attentions.0.proj_in.lora_A.weight", 2, 8),
			zeros("unet.down_blocks.0.attentions.0.proj_in.lora_B.weight", 8, 2),
			zeros("lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", 2, 8),
			zeros("lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight", 8, 2))
		_, err := f.Apply(model, UNet, 1)
		assert.ErrorIs(t, err, ErrMismatch)
		assert.ErrorContains(t, err, "both adapt down_blocks.0.attentions.0.proj_in.weight")
	})
	t.Run("ambiguous kohya name", func(t *testing.T) {
		m := map[string]modelfile.Tensor{"a_b.c.weight": zeros("a_b.c.weight", 8, 8), "a.b_c.weight": zeros("a.b_c.weight", 8, 8)}
		f := fromTensors(t, zeros("lora_unet_a_b_c.lora_down.weight", 2, 8), zeros("lora_unet_a_b_c.lora_up.weight", 8, 2))
		_, err := f.Apply(m, UNet, 1)
		assert.ErrorIs(t, err, ErrMismatch)
		assert.ErrorContains(t, err, "ambiguous")
	})
	t.Run("closed", func(t *testing.T) {
		f := fromTensors(t, zeros("unet.x.lora_A.weight", 2, 8), zeros("unet.x.lora_B.weight", 8, 2))
		require.NoError(t, f.Close())
		_, err := f.Apply(model, UNet, 1)
		assert.ErrorContains(t, err, "closed")
	})
}

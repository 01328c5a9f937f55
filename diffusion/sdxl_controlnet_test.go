package diffusion

import (
	"context"
	"encoding/json"
	"fmt"
	"image"
	_ "image/png"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/gosd/gosd/diffusion/modelfile"
)

// An SDXL ControlNet (ControlNetModel.from_unet of the kit's sdxl-tiny, every weight
// perturbed, stored in float16) steering the kit's SDXL pipeline: each step's latents and
// the image must match diffusers' StableDiffusionXLControlNetPipeline, with the pooled text
// embeddings and time ids reaching the ControlNet as they reach the UNet, in guess mode only
// the prompt's rows. The same from its weights file on its own (diffusers' names, no
// config: the heads, which no rule gives, from the UNet). References:
// tools/sdxl-controlnet/reference.py.
func TestSDXLControlNetMatchesDiffusers(t *testing.T) {
	p := openSDXLTiny(t, "diffusers")
	dir := filepath.Join("testdata", "sdxl-controlnet")
	f, err := os.Open(filepath.Join(dir, "control.png"))
	require.NoError(t, err)
	control, _, err := image.Decode(f)
	f.Close()
	require.NoError(t, err)

	request := func() Request {
		return Request{Prompt: "a red apple on a table", NegativePrompt: "blurry", Width: 64, Height: 64, Steps: 6,
			GuidanceScale: 5, Sampler: Euler, PromptSyntax: PromptPlain, Seed: 50}
	}
	run := func(req Request) ([][]float32, *Result) {
		var steps [][]float32
		req.onStep = func(step int, x []float32) { steps = append(steps, slices.Clone(x)) }
		res, err := p.Txt2Img(context.Background(), req)
		require.NoError(t, err)
		require.Len(t, steps, req.Steps)
		return steps, res
	}
	plain, _ := run(request())
	for _, path := range []string{"controlnet", filepath.Join("controlnet", "diffusion_pytorch_model.safetensors")} {
		cn, err := p.LoadControlNet(filepath.Join(dir, path))
		require.NoError(t, err)
		t.Cleanup(func() { cn.Close() })
		for _, guess := range []bool{false, true} {
			name := map[bool]string{false: "plain", true: "guess"}[guess]
			t.Run(filepath.Base(path)+"/"+name, func(t *testing.T) {
				g := openGolden(t, filepath.Join(dir, "txt2img-"+name+".safetensors"))
				req := request()
				req.Controls = []Control{{Model: cn, Image: control, Scale: 0.8, GuessMode: guess}}
				steps, res := run(req)
				for i, x := range steps {
					ref, _ := g.floats(fmt.Sprintf("step%02d.latents", i))
					assertClose(t, fmt.Sprintf("step%02d.latents", i), x, ref)
				}
				assertImageClose(t, res.Images[0], g)
				// The ControlNet matters: without it the last latents are far off.
				ref, _ := g.floats("step05.latents")
				assert.Greater(t, relErr(plain[5], ref), 1e-2, "the ControlNet changes the run")
			})
		}
	}
}

// A ControlNet made for another model is refused with the reason: an SDXL one by SD 1.x,
// an SD 1.x one by SDXL, and one of SDXL's widths without SDXL's added embedding of the
// pooled text and time ids (the test's ControlNet rewritten without it) by SDXL.
func TestSDXLControlNetMustFit(t *testing.T) {
	dir := filepath.Join("testdata", "sdxl-controlnet", "controlnet")
	sd1 := openTiny(t, "sd1-tiny")
	_, err := sd1.LoadControlNet(dir)
	require.ErrorIs(t, err, ErrInvalidRequest)
	xl := openSDXLTiny(t, "diffusers")
	_, err = xl.LoadControlNet(filepath.Join(kitDir(t, "controlnet-tiny"), "diffusers"))
	require.ErrorIs(t, err, ErrInvalidRequest)

	cfg, err := os.ReadFile(filepath.Join(dir, "config.json"))
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(cfg, &m))
	m["addition_embed_type"], m["projection_class_embeddings_input_dim"] = nil, nil
	plainDir := t.TempDir()
	cfg, err = json.Marshal(m)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(plainDir, "config.json"), cfg, 0o644))
	f, err := modelfile.OpenSafetensors(filepath.Join(dir, "diffusion_pytorch_model.safetensors"))
	require.NoError(t, err)
	defer f.Close()
	var kept []modelfile.Tensor
	for _, ten := range f.Tensors {
		if !strings.HasPrefix(ten.Name, "add_embedding.") {
			kept = append(kept, ten)
		}
	}
	require.Less(t, len(kept), len(f.Tensors))
	require.NoError(t, modelfile.WriteSafetensors(filepath.Join(plainDir, "diffusion_pytorch_model.safetensors"), kept, nil))
	_, err = xl.LoadControlNet(plainDir)
	require.ErrorIs(t, err, ErrInvalidRequest)
	assert.Contains(t, err.Error(), "added embedding")
}

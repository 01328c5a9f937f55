package diffusion

import (
	"context"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/gosd/gosd/binding"
	"github.com/gosd/gosd/diffusion/modelfile"
	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The networks' tensor lists are written down twice in this repository: Go's TensorSpecs
// (diffusion/modelfile/spec.go), which decide what is read from a file, and the C loaders
// (csrc/models), which decide what the graphs use. (The trainer, tools/train/sdmodels.py,
// is a third; it is checked against diffusers by its own tests, not here.) The C loader is
// strict both ways: a weight it needs and is not given fails the load, and so does one it
// is given and never uses. So loading a table built from exactly the specs proves the two
// lists equal, for each config below.

// specKit is every model folder of the conformance kit: the ones the runtime loads, each
// with the way to load it, and the others with why it cannot yet. A new kit folder fails
// TestKitFoldersAllListed until it is added here.
var specKit = []struct {
	folder, path string // path: the model to load, relative to the kit
	opts         []modelfile.Option
	skip         string
}{
	{folder: "sd1-tiny", path: "sd1-tiny/diffusers"},
	// Head counts of the tiny model are not the 64-wide ones a single file implies.
	{folder: "sd1-tiny", path: "sd1-tiny/sd1-tiny-ldm.safetensors",
		opts: []modelfile.Option{modelfile.WithUNetHeads(8, 8, 8, 8), modelfile.WithTextHeads(4)}},
	{folder: "sd2-tiny-v", path: "sd2-tiny-v/diffusers"},
	{folder: "sdxl-tiny", path: "sdxl-tiny/diffusers"},
	{folder: "sdxl-tiny", path: "sdxl-tiny/sdxl-tiny-single-file.safetensors",
		opts: []modelfile.Option{modelfile.WithUNetHeads(2, 2, 4), modelfile.WithTextHeads(2), modelfile.WithTextHeads2(2)}},
	{folder: "controlnet-tiny", skip: "a ControlNet beside sd1-tiny, not a pipeline: loaded by the strict loader from both layouts in controlnet_test.go"},
	{folder: "upscaler-tiny", path: "upscaler-tiny/diffusers"},
	{folder: "taesd-tiny", skip: "TAESD, an autoencoder beside a model rather than a model: loaded and checked in taesd_test.go"},
	{folder: "lora", skip: "LoRA adapters for sd1-tiny, not a model: merged and checked in loras_test.go"},
}

func TestKitFoldersAllListed(t *testing.T) {
	kit := testutil.ConformanceDir(t)
	entries, err := os.ReadDir(kit)
	require.NoError(t, err)
	var listed []string
	for _, k := range specKit {
		listed = append(listed, k.folder)
	}
	for _, e := range entries {
		if e.IsDir() {
			assert.Contains(t, listed, e.Name(), "kit folder %s: add it to specKit, loaded or skipped with the reason", e.Name())
		}
	}
}

// specNetwork is one of a model's three networks: its specs, the tensors modelfile bound
// and how the library loads them.
type specNetwork struct {
	name    string
	specs   []modelfile.TensorSpec
	tensors map[string]modelfile.Tensor
	load    func(e *engine, ws []binding.Weight) (binding.Model, error)
}

func specNetworks(t *testing.T, m *modelfile.Model) []specNetwork {
	t.Helper()
	cc, err := clipConfig(m.TextEncoder.Config)
	require.NoError(t, err)
	uc, err := unetConfig(m.UNet.Config)
	require.NoError(t, err)
	vc, err := vaeConfig(m.VAE.Config)
	require.NoError(t, err)
	text, err := m.TextEncoder.Config.TensorSpecs()
	require.NoError(t, err)
	unet, err := m.UNet.Config.TensorSpecs()
	require.NoError(t, err)
	vae, err := m.VAE.Config.TensorSpecs()
	require.NoError(t, err)
	nets := []specNetwork{
		{"text_encoder", text, m.TextEncoder.Tensors, func(e *engine, ws []binding.Weight) (binding.Model, error) {
			return e.lib.CLIPLoad(e.ctx, &cc, ws)
		}},
		{"unet", unet, m.UNet.Tensors, func(e *engine, ws []binding.Weight) (binding.Model, error) {
			return e.lib.UNetLoad(e.ctx, &uc, ws)
		}},
		{"vae", vae, m.VAE.Tensors, func(e *engine, ws []binding.Weight) (binding.Model, error) {
			return e.lib.VAELoad(e.ctx, &vc, ws)
		}},
	}
	for _, te := range m.ExtraTextEncoders {
		c, err := clipConfig(te.Config)
		require.NoError(t, err)
		specs, err := te.Config.TensorSpecs()
		require.NoError(t, err)
		nets = append(nets, specNetwork{te.Name, specs, te.Tensors, func(e *engine, ws []binding.Weight) (binding.Model, error) {
			return e.lib.CLIPLoad(e.ctx, &c, ws)
		}})
	}
	return nets
}

// fromSpecs is the table of exactly the specs' names, each with the tensor modelfile bound.
func (n specNetwork) fromSpecs(t *testing.T) map[string]modelfile.Tensor {
	t.Helper()
	table := make(map[string]modelfile.Tensor, len(n.specs))
	for _, s := range n.specs {
		x, ok := n.tensors[s.Name]
		require.True(t, ok, "%s: spec %s was not bound", n.name, s.Name)
		table[s.Name] = x
	}
	return table
}

func TestCLoadersUseExactlyTheSpecs(t *testing.T) {
	kit := testutil.ConformanceDir(t)
	lib := testLibrary(t)
	for _, k := range specKit {
		name := k.path
		if name == "" {
			name = k.folder
		}
		t.Run(name, func(t *testing.T) {
			if k.skip != "" {
				t.Skip(k.skip)
			}
			m, err := modelfile.Load(filepath.Join(kit, k.path), k.opts...)
			require.NoError(t, err)
			defer m.Close()
			// Extra file tensors (position_ids buffers and the like) are left out of what
			// the engine hands over; listed here for the record.
			t.Logf("file tensors no spec binds: %v", m.Unused)
			e, err := newEngine(lib, binding.BackendCPU, 1)
			require.NoError(t, err)
			defer e.close()
			for _, n := range specNetworks(t, m) {
				// What the engine hands the loader is exactly the specs, nothing more.
				got := slices.Sorted(maps.Keys(n.tensors))
				var want []string
				for _, s := range n.specs {
					want = append(want, s.Name)
				}
				slices.Sort(want)
				require.Equal(t, want, got, "%s: the bound tensors are not the specs", n.name)

				ws, err := e.weights(n.fromSpecs(t))
				require.NoError(t, err)
				model, err := n.load(e, ws)
				require.NoError(t, err, "%s: the C loader and Go's TensorSpecs disagree", n.name)
				e.lib.ModelFree(e.ctx, model)
			}
		})
	}
}

// The two directions of the strict loader, through the library: an extra name and a
// missing one each fail the load, naming the weight.
func TestCLoadersRefuseExtraAndMissingWeights(t *testing.T) {
	kit := testutil.ConformanceDir(t)
	lib := testLibrary(t)
	m, err := modelfile.Load(filepath.Join(kit, "sd1-tiny/diffusers"))
	require.NoError(t, err)
	defer m.Close()
	e, err := newEngine(lib, binding.BackendCPU, 1)
	require.NoError(t, err)
	defer e.close()
	nets := map[string]specNetwork{}
	for _, n := range specNetworks(t, m) {
		nets[n.name] = n
	}
	cases := []struct {
		network, extra, missing, wantErr string
	}{
		// The buffer transformers saves beside the text encoder's weights.
		{network: "text_encoder", extra: "text_model.embeddings.position_ids",
			wantErr: "text encoder: weight text_model.embeddings.position_ids was given but the text encoder does not use it"},
		{network: "unet", extra: "down_blocks.0.resnets.0.conv1.extra",
			wantErr: "unet: weight down_blocks.0.resnets.0.conv1.extra was given but the unet does not use it"},
		{network: "vae", extra: "encoder.mid_block.attentions.1.to_q.weight",
			wantErr: "vae: weight encoder.mid_block.attentions.1.to_q.weight was given but the vae does not use it"},
		// The loader strips "text_model." before it looks names up, so it names them without.
		{network: "text_encoder", missing: "text_model.final_layer_norm.bias",
			wantErr: "text encoder: missing weight final_layer_norm.bias"},
		// conv1's bias is folded into the time embedding's at load, but is still required.
		{network: "unet", missing: "up_blocks.3.resnets.2.conv1.bias",
			wantErr: "unet: missing weight up_blocks.3.resnets.2.conv1.bias"},
		{network: "vae", missing: "decoder.conv_out.weight",
			wantErr: "vae: missing weight decoder.conv_out.weight"},
	}
	for _, c := range cases {
		t.Run(c.network+"/"+c.extra+c.missing, func(t *testing.T) {
			n := nets[c.network]
			table := n.fromSpecs(t)
			if c.extra != "" {
				x := table[n.specs[len(n.specs)-1].Name]
				x.Name = c.extra
				table[c.extra] = x
			}
			if c.missing != "" {
				_, ok := table[c.missing]
				require.True(t, ok, "%s is not a spec", c.missing)
				delete(table, c.missing)
			}
			ws, err := e.weights(table)
			require.NoError(t, err)
			model, err := n.load(e, ws)
			require.ErrorIs(t, err, binding.ErrBadModel)
			assert.ErrorContains(t, err, c.wantErr)
			assert.Zero(t, model)
		})
	}
	// The engine itself still loads the model: the failed loads left nothing behind.
	require.NoError(t, e.load(context.Background(), m))
}

// Real files carry tensors no network uses (the text encoder's position_ids buffer, EMA
// copies of the UNet, a trainer's step counters). modelfile binds only what the specs list
// and the engine hands only that over, so the strict loader still loads such files: a
// single file and a diffusers folder, each with such extras added to the kit's.
func TestEngineLoadsFilesWithUnusedTensors(t *testing.T) {
	kit := testutil.ConformanceDir(t)
	lib := testLibrary(t)
	withExtras := func(t *testing.T, src string, extras ...modelfile.Tensor) []byte {
		f, err := modelfile.OpenSafetensors(src)
		require.NoError(t, err)
		defer f.Close()
		path := filepath.Join(t.TempDir(), "with-extras.safetensors")
		require.NoError(t, modelfile.WriteSafetensors(path, append(slices.Clone(f.Tensors), extras...), nil))
		b, err := os.ReadFile(path)
		require.NoError(t, err)
		return b
	}
	positionIDs := func(name string) modelfile.Tensor {
		return modelfile.Tensor{Name: name, DType: modelfile.I64, Shape: []int64{1, 77}, Data: make([]byte, 8*77)}
	}
	f32 := func(name string, shape ...int64) modelfile.Tensor {
		n := int64(4)
		for _, d := range shape {
			n *= d
		}
		return modelfile.Tensor{Name: name, DType: modelfile.F32, Shape: shape, Data: make([]byte, n)}
	}

	single := filepath.Join(t.TempDir(), "sd1-tiny-extras.safetensors")
	require.NoError(t, os.WriteFile(single, withExtras(t, filepath.Join(kit, "sd1-tiny/sd1-tiny-ldm.safetensors"),
		positionIDs("cond_stage_model.transformer.text_model.embeddings.position_ids"),
		f32("model_ema.decay"),
		f32("model_ema.diffusion_modelout2weight", 4, 32, 3, 3),
		f32("first_stage_model.encoder.extra.weight", 4)), 0o644))
	folder := testutil.KitFolder(t, "sd1-tiny/diffusers", map[string][]byte{
		"text_encoder/model.safetensors": withExtras(t, filepath.Join(kit, "sd1-tiny/diffusers/text_encoder/model.safetensors"),
			positionIDs("text_model.embeddings.position_ids")),
		"unet/diffusion_pytorch_model.safetensors": withExtras(t, filepath.Join(kit, "sd1-tiny/diffusers/unet/diffusion_pytorch_model.safetensors"),
			f32("down_blocks.0.resnets.0.conv1.unused", 32)),
	})
	for _, c := range []struct {
		name, path string
		opts       []modelfile.Option
		unused     int
	}{
		{"single file", single, []modelfile.Option{modelfile.WithUNetHeads(8, 8, 8, 8), modelfile.WithTextHeads(4)}, 4},
		{"diffusers folder", folder, nil, 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			m, err := modelfile.Load(c.path, c.opts...)
			require.NoError(t, err)
			defer m.Close()
			assert.Len(t, m.Unused, c.unused, "%v", m.Unused)
			e, err := newEngine(lib, binding.BackendCPU, 1)
			require.NoError(t, err)
			defer e.close()
			require.NoError(t, e.load(context.Background(), m))
		})
	}
}

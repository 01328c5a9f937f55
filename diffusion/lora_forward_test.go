package diffusion

import (
	"context"
	"fmt"
	"maps"
	"path/filepath"
	"testing"

	"github.com/gosd/gosd/binding"
	"github.com/gosd/gosd/diffusion/lora"
	"github.com/gosd/gosd/diffusion/modelfile"
	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// patched returns a copy of ts with the adapter merged at scale, the
// patched weights in dtype (0: their own); the model's own tensors
// (read-only mappings) are not touched.
func patched(t *testing.T, f *lora.File, ts map[string]modelfile.Tensor, component string, scale float64, dtype modelfile.DType) map[string]modelfile.Tensor {
	t.Helper()
	p, err := lora.MergeAs(dtype, ts, component, lora.Scaled{File: f, Scale: scale})
	require.NoError(t, err)
	out := maps.Clone(ts)
	maps.Copy(out, p)
	return out
}

// The kit's LoRA merged into sd1-tiny's float16 weights, run through the
// native UNet and text encoder, against diffusers' unfused LoRA forwards.
func TestLoRAForwardsMatchDiffusers(t *testing.T) {
	kit := testutil.ConformanceDir(t)
	dir := filepath.Join(kit, "lora")
	g := openGolden(t, filepath.Join(dir, "golden.safetensors"))
	lib := testLibrary(t)
	x, xs := g.floats("unet.x")
	ts, _ := g.floats("unet.t")
	c, cs := g.floats("unet.context")
	ids := g.ints("te.ids")
	_, ls := g.floats("base.te.last_hidden_state")

	for _, tc := range []struct {
		file, prefix string
		scale        float64
		dtype        modelfile.DType // of the patched weights
		tol          float64
	}{
		{"", "base", 0, modelfile.F16, conformanceTol},
		{"lora-kohya.safetensors", "kohya", 1.0, modelfile.F32, conformanceTol},
		{"lora-kohya.safetensors", "kohya", 0.6, modelfile.F32, conformanceTol},
		{"lora-peft.safetensors", "peft", 1.0, modelfile.F32, conformanceTol},
		// Stored back as float16, the model's dtype: the rounding of the
		// merged weights, not the merge, sets the error (about 1e-3).
		{"lora-kohya.safetensors", "kohya", 1.0, modelfile.F16, 4e-3},
	} {
		name := fmt.Sprintf("%s.scale%.1f", tc.prefix, tc.scale)
		if tc.file == "" {
			name = tc.prefix
		}
		t.Run(fmt.Sprintf("%s %s", name, tc.dtype), func(t *testing.T) {
			check := func(what string, got []float32) {
				t.Helper()
				ref, _ := g.floats(name + what)
				require.Len(t, got, len(ref), what)
				e := relErr(got, ref)
				t.Logf("%-44s max|diff|/max|ref| = %.2e", name+what, e)
				assert.LessOrEqual(t, e, tc.tol, name+what)
			}
			m, err := modelfile.Load(filepath.Join(kit, "sd1-tiny", "diffusers"))
			require.NoError(t, err)
			defer m.Close()
			if tc.file != "" {
				f, err := lora.Load(filepath.Join(dir, tc.file))
				require.NoError(t, err)
				defer f.Close()
				require.NoError(t, f.CheckComponents(lora.UNet, lora.TextEncoder))
				m.UNet.Tensors = patched(t, f, m.UNet.Tensors, lora.UNet, tc.scale, tc.dtype)
				m.TextEncoder.Tensors = patched(t, f, m.TextEncoder.Tensors, lora.TextEncoder, tc.scale, tc.dtype)
			}
			e, err := newEngine(lib, binding.BackendCPU, 2)
			require.NoError(t, err)
			defer e.close()
			require.NoError(t, e.load(context.Background(), m))

			got, err := e.unetNet().eval(&unetInputs{x: x, batch: int(xs[0]), h: int(xs[2]), w: int(xs[3]), t: ts, context: c, tokens: int(cs[1]), residualScale: 1})
			require.NoError(t, err)
			check(".unet.out", got)
			hidden, pooled, err := e.clipNet().encode(ids, int(ls[0]), int(ls[1]), 0, true, true)
			require.NoError(t, err)
			check(".te.last_hidden_state", hidden)
			check(".te.pooled", pooled)
			pen, _, err := e.clipNet().encode(ids, int(ls[0]), int(ls[1]), 1, false, false)
			require.NoError(t, err)
			check(".te.penultimate_hidden_state", pen)
		})
	}
}

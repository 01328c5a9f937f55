package diffusion

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/gosd/gosd/binding"
	"github.com/gosd/gosd/diffusion/modelfile"
	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/require"
)

// loadSDXLTiny loads the kit's sdxl-tiny (folder or single file) into an engine.
func loadSDXLTiny(t *testing.T, lib *binding.Library, rel string, opts ...modelfile.Option) (*engine, *modelfile.Model) {
	t.Helper()
	m, err := modelfile.Load(filepath.Join(testutil.ConformanceDir(t), "sdxl-tiny", rel), opts...)
	require.NoError(t, err)
	t.Cleanup(func() { m.Close() })
	e, err := newEngine(lib, binding.BackendCPU, 2)
	require.NoError(t, err)
	t.Cleanup(e.close)
	require.NoError(t, e.load(context.Background(), m))
	return e, m
}

// Both SDXL text encoders against transformers: hidden states, the pooled output at the
// EOS (argmax id for the second, whose config keeps the legacy eos_token_id 2) and the
// second's text_projection.
func TestSDXLTextEncodersMatchTransformers(t *testing.T) {
	lib := testLibrary(t)
	e, _ := loadSDXLTiny(t, lib, "diffusers")
	g := openGolden(t, filepath.Join(testutil.ConformanceDir(t), "sdxl-tiny", "golden.safetensors"))
	for _, tc := range []struct {
		prefix string
		net    clipNet
	}{{"te1", e.clipNet()}, {"te2", e.clipNet2()}} {
		t.Run(tc.prefix, func(t *testing.T) {
			ids := g.ints(tc.prefix + ".ids")
			refLast, ls := g.floats(tc.prefix + ".last_hidden_state")
			b, n := int(ls[0]), int(ls[1])
			last, pooled, err := tc.net.encode(ids, b, n, 0, true, true)
			require.NoError(t, err)
			assertClose(t, tc.prefix+".last_hidden_state", last, refLast)
			refPooled, _ := g.floats(tc.prefix + ".pooled")
			assertClose(t, tc.prefix+".pooled", pooled, refPooled)
			refPen, _ := g.floats(tc.prefix + ".penultimate_hidden_state")
			pen, _, err := tc.net.encode(ids, b, n, 1, false, false)
			require.NoError(t, err)
			assertClose(t, tc.prefix+".penultimate_hidden_state", pen, refPen)
			if tc.prefix == "te2" {
				refEmbeds, _ := g.floats("te2.text_embeds")
				embeds, err := tc.net.project(pooled, b)
				require.NoError(t, err)
				assertClose(t, "te2.text_embeds", embeds, refEmbeds)
			}
		})
	}
	// The first encoder has no projection: the runtime says so instead of inventing one.
	_, err := e.clipNet().project(make([]float32, 16), 1)
	require.ErrorIs(t, err, binding.ErrInvalidArgument)
}

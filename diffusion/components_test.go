package diffusion

import (
	"context"
	"image"
	"math"
	"path/filepath"
	"testing"

	"github.com/gosd/gosd/binding"
	"github.com/gosd/gosd/diffusion/modelfile"
	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// testLibrary loads the CPU runtime from the build tree, skipping when it is not built.
func testLibrary(t testing.TB) *binding.Library {
	t.Helper()
	path := filepath.Join(testutil.RepoRoot(t), "build")
	lib, err := binding.Load(binding.LoadOptions{Path: path, Backend: binding.PreferCPU})
	if err != nil {
		t.Skipf("native library not available (run `make`): %v", err)
	}
	return lib
}

// goldenFile opens a golden safetensors file of the conformance kit.
type goldenFile struct {
	t *testing.T
	f *modelfile.File
}

// assertVAEDecodeGoldens checks the VAE decoder against a kit's vae.decode and vae.decode2
// (raw latents in, images out).
func assertVAEDecodeGoldens(t *testing.T, e *engine, g *goldenFile) {
	t.Helper()
	for _, d := range []string{"vae.decode", "vae.decode2"} {
		z, zs := g.floats(d + ".z")
		ref, _ := g.floats(d + ".out")
		got, err := e.vaeNet().decode(z, int(zs[0]), int(zs[2]), int(zs[3]))
		require.NoError(t, err)
		assertClose(t, d, got, ref)
	}
}

// assertVAEEncodeGolden checks the VAE encoder's mean and logvar against a kit's vae.encode.
func assertVAEEncodeGolden(t *testing.T, e *engine, g *goldenFile) {
	t.Helper()
	x, xs := g.floats("vae.encode.x")
	mean, logvar, err := e.vaeNet().encode(x, int(xs[0]), int(xs[2]), int(xs[3]))
	require.NoError(t, err)
	refMean, _ := g.floats("vae.encode.mean")
	refLogvar, _ := g.floats("vae.encode.logvar")
	assertClose(t, "vae.encode.mean", mean, refMean)
	assertClose(t, "vae.encode.logvar", logvar, refLogvar)
}

// assertCLIPGoldens checks a text encoder against a kit's <prefix>.ids golden: the last
// hidden state (final layer norm applied), the pooled output and transformers' raw
// penultimate hidden_states[-2]. It returns the pooled output.
func assertCLIPGoldens(t *testing.T, c clipNet, g *goldenFile, prefix string) (pooled []float32, batch int) {
	t.Helper()
	ids := g.ints(prefix + ".ids")
	refLast, ls := g.floats(prefix + ".last_hidden_state")
	b, n := int(ls[0]), int(ls[1])
	last, pooled, err := c.encode(ids, b, n, 0, true, true)
	require.NoError(t, err)
	assertClose(t, prefix+".last_hidden_state", last, refLast)
	refPooled, _ := g.floats(prefix + ".pooled")
	assertClose(t, prefix+".pooled", pooled, refPooled)
	refPen, _ := g.floats(prefix + ".penultimate_hidden_state")
	pen, _, err := c.encode(ids, b, n, 1, false, false)
	require.NoError(t, err)
	assertClose(t, prefix+".penultimate_hidden_state", pen, refPen)
	return pooled, b
}

// assertImageClose compares an 8-bit image with the kit's float image at 2/255 per pixel.
func assertImageClose(t *testing.T, img image.Image, g *goldenFile) {
	t.Helper()
	ref, rs := g.floats("image")
	require.Equal(t, image.Rect(0, 0, int(rs[3]), int(rs[2])), img.Bounds())
	got := imageCHW(img)
	var worst float64
	for i := range ref {
		worst = math.Max(worst, math.Abs(float64(got[i])-float64(ref[i])*255))
	}
	t.Logf("image: max |pixel - 255 ref| = %.3f levels, PSNR %.1f dB", worst, psnr(got, ref))
	assert.LessOrEqual(t, worst, 2.0, "2/255 per pixel")
}

func openGolden(t *testing.T, path string) *goldenFile {
	f, err := modelfile.OpenSafetensors(path)
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	return &goldenFile{t, f}
}

func (g *goldenFile) floats(name string) ([]float32, []int64) {
	ten, ok := g.f.Tensor(name)
	require.True(g.t, ok, "golden tensor %s", name)
	v, err := ten.Float32s()
	require.NoError(g.t, err)
	return v, ten.Shape
}

func (g *goldenFile) ints(name string) []int32 {
	ten, ok := g.f.Tensor(name)
	require.True(g.t, ok, "golden tensor %s", name)
	require.Equal(g.t, modelfile.I64, ten.DType)
	out := make([]int32, ten.NumElements())
	for i := range out {
		var v int64
		for b := 7; b >= 0; b-- {
			v = v<<8 | int64(ten.Data[8*i+b])
		}
		out[i] = int32(v)
	}
	return out
}

// relErr is max |got - ref| / max |ref|, the kit's tolerance measure.
func relErr(got, ref []float32) float64 {
	var maxDiff, maxRef float64
	for i := range ref {
		maxRef = math.Max(maxRef, math.Abs(float64(ref[i])))
		d := math.Abs(float64(got[i]) - float64(ref[i]))
		if math.IsNaN(d) {
			return math.Inf(1)
		}
		maxDiff = math.Max(maxDiff, d)
	}
	return maxDiff / maxRef
}

// The kit's tolerance for the float32 CPU path.
const conformanceTol = 1e-4

func assertClose(t *testing.T, name string, got, ref []float32) {
	t.Helper()
	require.Len(t, got, len(ref), name)
	e := relErr(got, ref)
	t.Logf("%-34s max|diff|/max|ref| = %.2e", name, e)
	assert.LessOrEqual(t, e, conformanceTol, name)
}

func TestComponentsMatchDiffusers(t *testing.T) {
	kit := testutil.ConformanceDir(t)
	lib := testLibrary(t)
	cases := []struct {
		name   string
		path   string
		golden string
		opts   []modelfile.Option
	}{
		{"sd1 diffusers folder", "sd1-tiny/diffusers", "sd1-tiny/golden.safetensors", nil},
		// Head counts of the tiny model are not the 64-wide ones a single file implies.
		{"sd1 single file", "sd1-tiny/sd1-tiny-ldm.safetensors", "sd1-tiny/golden.safetensors",
			[]modelfile.Option{modelfile.WithUNetHeads(8, 8, 8, 8), modelfile.WithTextHeads(4)}},
		{"sd2 diffusers folder", "sd2-tiny-v/diffusers", "sd2-tiny-v/golden.safetensors", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, err := modelfile.Load(filepath.Join(kit, tc.path), tc.opts...)
			require.NoError(t, err)
			defer m.Close()
			e, err := newEngine(lib, binding.BackendCPU, 2)
			require.NoError(t, err)
			defer e.close()
			require.NoError(t, e.load(context.Background(), m))
			g := openGolden(t, filepath.Join(kit, tc.golden))

			for _, u := range []string{"unet0", "unet1"} {
				x, xs := g.floats(u + ".x")
				ts, _ := g.floats(u + ".t")
				c, cs := g.floats(u + ".context")
				ref, _ := g.floats(u + ".out")
				got, err := e.unetNet().eval(&unetInputs{x: x, batch: int(xs[0]), h: int(xs[2]), w: int(xs[3]), t: ts, context: c, tokens: int(cs[1]), residualScale: 1})
				require.NoError(t, err)
				assertClose(t, u, got, ref)
			}
			assertVAEDecodeGoldens(t, e, g)
			assertVAEEncodeGolden(t, e, g)

			assertCLIPGoldens(t, e.clipNet(), g, "clip")
		})
	}
}

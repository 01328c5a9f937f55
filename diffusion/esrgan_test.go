package diffusion

import (
	"context"
	"image"
	"image/color"
	"math"
	"path/filepath"
	"testing"

	"github.com/gosd/gosd/diffusion/modelfile"
	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// esrganData is the folder of tools/esrgan/reference.py's output.
func esrganData(t *testing.T) string {
	return filepath.Join(testutil.RepoRoot(t), "diffusion", "testdata", "esrgan")
}

func openESRGAN(t *testing.T, path string) *ESRGAN {
	t.Helper()
	testLibrary(t)
	e, err := OpenESRGAN(path, WithDevice(DeviceCPU), WithThreads(2),
		WithLibrary(filepath.Join(testutil.RepoRoot(t), "build")))
	require.NoError(t, err)
	t.Cleanup(func() { e.Close() })
	return e
}

// imageFromHWC builds an image from (h, w, 3) 8-bit values stored as floats.
func imageFromHWC(v []float32, h, w int) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			k := 3 * (y*w + x)
			img.Set(x, y, color.RGBA{uint8(v[k]), uint8(v[k+1]), uint8(v[k+2]), 255})
		}
	}
	return img
}

// Real-ESRGAN-style generators (x4, and x2 through pixel-unshuffle) against the PyTorch
// generator written from the ESRGAN paper (tools/esrgan/reference.py, random weights,
// loaded here from its .pth files under params_ema): the network's output within 1e-4 of
// max |ref|, the 8-bit image within one level of the rounded reference.
func TestESRGANMatchesPyTorch(t *testing.T) {
	dir := esrganData(t)
	g := openGolden(t, filepath.Join(dir, "esrgan-ref.safetensors"))
	for _, tc := range []struct {
		name          string
		scale, blocks int
	}{{"x4", 4, 2}, {"x2", 2, 1}} {
		t.Run(tc.name, func(t *testing.T) {
			e := openESRGAN(t, filepath.Join(dir, "esrgan-"+tc.name+".pth"))
			require.Equal(t, tc.scale, e.Scale())
			require.Equal(t, tc.blocks, e.Blocks())
			in, is := g.floats(tc.name + ".input")
			h, w := int(is[0]), int(is[1])
			img := imageFromHWC(in, h, w)
			ref, rs := g.floats(tc.name + ".output")
			require.Equal(t, []int64{1, 3, int64(tc.scale * h), int64(tc.scale * w)}, rs)

			r := 4 / tc.scale
			got, err := e.forward(pixelUnshuffle(rgbTensor(img), h, w, r), h/r, w/r)
			require.NoError(t, err)
			assertClose(t, tc.name+".output", got, ref)

			for _, tile := range []int{0, 64} { // the default, and one tile covering the image
				out, err := e.Upscale(context.Background(), ESRGANRequest{Image: img, Tile: tile})
				require.NoError(t, err)
				require.Equal(t, image.Rect(0, 0, tc.scale*w, tc.scale*h), out.Bounds())
				px := imageCHW(out)
				var worst float64
				for k, v := range ref {
					want := math.RoundToEven(math.Min(math.Max(float64(v), 0), 1) * 255)
					worst = math.Max(worst, math.Abs(float64(px[k])-want))
				}
				assert.LessOrEqual(t, worst, 1.0, "tile %d: 8-bit image", tile)
			}
			// Tiles smaller than the image: blended, the full size.
			out, err := e.Upscale(context.Background(), ESRGANRequest{Image: img, Tile: 8})
			require.NoError(t, err)
			assert.Equal(t, image.Rect(0, 0, tc.scale*w, tc.scale*h), out.Bounds())
		})
	}
}

// An odd-sized image for the x2 model is reflect-padded to even sides, and the output
// cropped back: 2x its own size.
func TestESRGANPadsForUnshuffle(t *testing.T) {
	e := openESRGAN(t, filepath.Join(esrganData(t), "esrgan-x2.pth"))
	out, err := e.Upscale(context.Background(), ESRGANRequest{Image: solidImage(9, 7, color.RGBA{90, 160, 30, 255})})
	require.NoError(t, err)
	assert.Equal(t, image.Rect(0, 0, 18, 14), out.Bounds())

	// Reflect padding mirrors without the edge, as torch's "reflect".
	v := []float32{1, 2, 3, 4, 5, 6} // (1, 2, 3)
	assert.Equal(t, []float32{1, 2, 3, 2, 4, 5, 6, 5, 1, 2, 3, 2}, reflectPad(v, 3, 2, 4, 3))
	// Unshuffle by 2 of one 2x2 plane: one pixel in each of 4 channels.
	assert.Equal(t, []float32{1, 2, 3, 4}, pixelUnshuffle([]float32{1, 2, 3, 4}, 2, 2, 2))
}

func TestESRGANRefusesBadInput(t *testing.T) {
	dir := esrganData(t)
	assert.True(t, IsESRGAN(filepath.Join(dir, "esrgan-x4.pth")))
	assert.False(t, IsESRGAN(dir))
	assert.False(t, IsESRGAN(filepath.Join(dir, "no-such.pth")))
	sd := filepath.Join(testutil.ConformanceDir(t), "sd1-tiny", "sd1-tiny-ldm.safetensors")
	assert.False(t, IsESRGAN(sd))
	testLibrary(t)
	_, err := OpenESRGAN(sd, WithDevice(DeviceCPU), WithLibrary(filepath.Join(testutil.RepoRoot(t), "build")))
	require.ErrorIs(t, err, ErrBadModel)
	assert.Contains(t, err.Error(), "conv_first.weight")

	e := openESRGAN(t, filepath.Join(dir, "esrgan-x4.pth"))
	for _, tc := range []struct {
		name string
		req  ESRGANRequest
		want string
	}{
		{"no image", ESRGANRequest{}, "upscale image"},
		{"tile too small", ESRGANRequest{Image: solidImage(8, 8, color.White), Tile: 4}, "tile 4"},
		{"output too large", ESRGANRequest{Image: solidImage(4100, 8, color.White)}, "over 16384"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.Upscale(context.Background(), tc.req)
			require.ErrorIs(t, err, ErrInvalidRequest)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
	require.NoError(t, e.Close())
	require.NoError(t, e.Close())
	_, err = e.Upscale(context.Background(), ESRGANRequest{Image: solidImage(8, 8, color.White)})
	assert.ErrorIs(t, err, ErrClosed)
}

// The same generator from safetensors gives the same image as from its .pth.
func TestESRGANSafetensors(t *testing.T) {
	dir := esrganData(t)
	f, err := modelfile.OpenFile(filepath.Join(dir, "esrgan-x4.pth"))
	require.NoError(t, err)
	defer f.Close()
	path := filepath.Join(t.TempDir(), "esrgan-x4.safetensors")
	require.NoError(t, modelfile.WriteSafetensors(path, f.Tensors, nil))
	require.True(t, IsESRGAN(path))
	img := solidImage(10, 6, color.RGBA{200, 30, 90, 255})
	fromPth, err := openESRGAN(t, filepath.Join(dir, "esrgan-x4.pth")).Upscale(context.Background(), ESRGANRequest{Image: img})
	require.NoError(t, err)
	fromST, err := openESRGAN(t, path).Upscale(context.Background(), ESRGANRequest{Image: img})
	require.NoError(t, err)
	assert.Equal(t, imageCHW(fromPth), imageCHW(fromST))
}

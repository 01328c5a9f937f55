package diffusion

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"image"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gosd/gosd/diffusion/rng"
	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Images a caller can build that cannot be converted (huge or missing bounds, typed nils)
// are refused with ErrInvalidRequest, never a panic or an allocation of their size.
func TestImageInputsRejected(t *testing.T) {
	p := openTiny(t, "sd1-tiny")
	ctx := context.Background()
	img := solidImage(64, 64, color.White)
	huge := &image.NRGBA{Rect: image.Rect(0, 0, 1<<20, 1<<20)} // no pixels behind it
	cases := []struct {
		name      string
		img, mask image.Image
		msg       string
	}{
		{"uniform mask", img, image.NewUniform(color.White), "inpainting mask is"},
		{"huge image bounds", huge, img, "at most 16384 a side"},
		{"typed nil image", (*image.RGBA)(nil), img, "nil *image.RGBA"},
		{"typed nil mask", img, (*image.Gray)(nil), "nil *image.Gray"},
		{"nil mask", img, nil, "inpainting mask is missing"},
		{"empty image", image.NewRGBA(image.Rectangle{}), img, "empty"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := p.Inpaint(ctx, InpaintRequest{Request: tinyRequest(), Image: tc.img, Mask: tc.mask})
			require.ErrorIs(t, err, ErrInvalidRequest)
			assert.Contains(t, err.Error(), tc.msg)
		})
	}
	_, err := p.Img2Img(ctx, Img2ImgRequest{Request: tinyRequest(), Image: image.NewUniform(color.Black)})
	assert.ErrorIs(t, err, ErrInvalidRequest)
	_, err = p.Img2Img(ctx, Img2ImgRequest{Request: tinyRequest(), Image: (*image.NRGBA)(nil)})
	assert.ErrorIs(t, err, ErrInvalidRequest)
	var noContext context.Context // a nil context is what is tested
	_, err = p.Txt2Img(noContext, tinyRequest())
	assert.ErrorIs(t, err, ErrInvalidRequest)
	_, err = OpenContext(noContext, "x")
	assert.ErrorIs(t, err, ErrInvalidRequest)
}

func TestExtendCanvasLimits(t *testing.T) {
	img := solidImage(16, 16, color.White)
	for _, m := range [][4]int{{-8, 0, 0, 0}, {0, 0, 0, -1}, {1 << 30, 0, 0, 0}, {0, 0, MaxSide, 0}, {math.MaxInt, 0, math.MaxInt, 0}} {
		_, _, err := ExtendCanvas(img, m[0], m[1], m[2], m[3])
		assert.ErrorIs(t, err, ErrInvalidRequest, "margins %v", m)
	}
	_, _, err := ExtendCanvas((*image.RGBA)(nil), 8, 8, 8, 8)
	assert.ErrorIs(t, err, ErrInvalidRequest)
	c, m, err := ExtendCanvas(img, 0, 0, MaxSide-16, 0)
	require.NoError(t, err)
	assert.Equal(t, MaxSide, c.Bounds().Dx())
	assert.Equal(t, c.Bounds(), m.Bounds())
}

func TestDecodeImageChecksDeclaredSize(t *testing.T) {
	_, err := DecodeImage(bytes.NewReader(testutil.DeclaringPNG(t, 20000, 20000)), "big.png")
	require.ErrorIs(t, err, ErrInvalidRequest)
	assert.Contains(t, err.Error(), "big.png declares 20000×20000 pixels")
	_, err = DecodeImage(bytes.NewReader(testutil.DeclaringPNG(t, 16000, 16000)), "many.png")
	assert.ErrorIs(t, err, ErrInvalidRequest, "under the side limit but over the pixel limit")
	_, err = DecodeImage(strings.NewReader("GIF89a not really"), "x.gif")
	require.ErrorIs(t, err, ErrInvalidRequest)
	assert.NotContains(t, err.Error(), "png: png:")
	img, err := DecodeImage(bytes.NewReader(testutil.DeclaringPNG(t, 1, 1)), "ok.png")
	require.NoError(t, err)
	assert.Equal(t, 1, img.Bounds().Dx())
}

// blockFirstCall starts a slow call that holds the pipeline until release is closed.
func blockFirstCall(t *testing.T, p *Pipeline) (started chan struct{}, release chan struct{}, result chan error) {
	started, release, result = make(chan struct{}), make(chan struct{}), make(chan error, 1)
	go func() {
		r := tinyRequest()
		r.Steps = 4
		once := false
		r.Progress = func(Progress) {
			if !once {
				once = true
				close(started)
				<-release
			}
		}
		_, err := p.Txt2Img(context.Background(), r)
		result <- err
	}()
	<-started
	return started, release, result
}

// A call waiting for the pipeline returns when its context ends, not when the running
// call finishes.
func TestQueuedCallHonoursContext(t *testing.T) {
	p := openTiny(t, "sd1-tiny")
	_, release, result := blockFirstCall(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := p.Txt2Img(ctx, tinyRequest()) // the first call is blocked until release
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	close(release)
	assert.NoError(t, <-result)
}

// Close interrupts the running call (which returns ErrClosed) and fails the waiting one.
func TestCloseCancelsRunningCall(t *testing.T) {
	p := openTiny(t, "sd1-tiny")
	_, release, result := blockFirstCall(t, p)
	waiter := make(chan error, 1)
	go func() {
		_, err := p.Txt2Img(context.Background(), tinyRequest())
		waiter <- err
	}()
	closed := make(chan error, 1)
	go func() { closed <- p.Close() }()
	assert.ErrorIs(t, <-waiter, ErrClosed)
	close(release) // the first call sees the cancellation at its next step
	assert.ErrorIs(t, <-result, ErrClosed)
	assert.NoError(t, <-closed)
	_, err := p.Txt2Img(context.Background(), tinyRequest())
	assert.ErrorIs(t, err, ErrClosed)
	assert.NoError(t, p.Close(), "idempotent")
}

func TestOpenContextCancelled(t *testing.T) {
	kit := testutil.ConformanceDir(t)
	testLibrary(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := OpenContext(ctx, filepath.Join(kit, "sd1-tiny", "diffusers"), WithDevice(DeviceCPU),
		WithLibrary(filepath.Join(testutil.RepoRoot(t), "build")))
	assert.ErrorIs(t, err, context.Canceled)
}

// poisonTensor is a safetensors file with value written into every element of one tensor.
func poisonTensor(t *testing.T, file, name string, value float32) []byte {
	data, err := os.ReadFile(file)
	require.NoError(t, err)
	n := binary.LittleEndian.Uint64(data)
	var header map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(data[8:8+n], &header))
	var info struct {
		DType   string   `json:"dtype"`
		Offsets [2]int64 `json:"data_offsets"`
	}
	require.Contains(t, header, name)
	require.NoError(t, json.Unmarshal(header[name], &info))
	body := data[8+n:]
	switch info.DType {
	case "F32":
		for o := info.Offsets[0]; o < info.Offsets[1]; o += 4 {
			binary.LittleEndian.PutUint32(body[o:], math.Float32bits(value))
		}
	case "F16":
		require.True(t, math.IsNaN(float64(value)), "only NaN is written as f16")
		for o := info.Offsets[0]; o < info.Offsets[1]; o += 2 {
			binary.LittleEndian.PutUint16(body[o:], 0x7e00)
		}
	default:
		t.Fatalf("dtype %s", info.DType)
	}
	return data
}

// A NaN or an infinity in a network's output fails the call naming the network, instead of
// coming out as a black image.
func TestNonFiniteOutputDetected(t *testing.T) {
	kit := testutil.ConformanceDir(t)
	testLibrary(t)
	cases := []struct {
		file, tensor string
		value        float32
		stage        string
	}{
		{"text_encoder/model.safetensors", "text_model.final_layer_norm.bias", float32(math.NaN()), "text encoder"},
		{"unet/diffusion_pytorch_model.safetensors", "conv_out.bias", float32(math.NaN()), "UNet at step 1"},
		{"vae/diffusion_pytorch_model.safetensors", "decoder.conv_out.bias", float32(math.NaN()), "VAE decoder"},
	}
	for _, tc := range cases {
		t.Run(tc.stage, func(t *testing.T) {
			poisoned := poisonTensor(t, filepath.Join(kit, "sd1-tiny", "diffusers", tc.file), tc.tensor, tc.value)
			dir := testutil.KitFolder(t, "sd1-tiny/diffusers", map[string][]byte{tc.file: poisoned})
			p, err := Open(dir, WithDevice(DeviceCPU), WithThreads(2), WithLibrary(filepath.Join(testutil.RepoRoot(t), "build")))
			require.NoError(t, err)
			defer p.Close()
			_, err = p.Txt2Img(context.Background(), tinyRequest())
			require.ErrorIs(t, err, ErrNonFinite)
			assert.Contains(t, err.Error(), "the "+tc.stage+" produced")
		})
	}
}

// One size rule everywhere: multiples of 8, also for a VAE that downsamples by 4 (the demo
// model), and guidance at or below 1 turns CFG off rather than being refused.
func TestSizeAndGuidanceRules(t *testing.T) {
	testLibrary(t)
	p, err := Open(filepath.Join(testutil.RepoRoot(t), "models", "gosd-emoji"), WithDevice(DeviceCPU), WithThreads(2),
		WithLibrary(filepath.Join(testutil.RepoRoot(t), "build")))
	require.NoError(t, err)
	defer p.Close()
	ctx := context.Background()
	_, err = p.Txt2Img(ctx, Request{Prompt: "x", Width: 68, Height: 64, Steps: 1})
	require.ErrorIs(t, err, ErrInvalidRequest)
	assert.Contains(t, err.Error(), "multiples of 8")
	_, err = p.Img2Img(ctx, Img2ImgRequest{Request: Request{Prompt: "x", Steps: 2}, Image: solidImage(68, 68, color.White)})
	require.NoError(t, err, "the image's own size rounds down to 64")

	half, err := p.Txt2Img(ctx, Request{Prompt: "x", Steps: 2, GuidanceScale: 0.5})
	require.NoError(t, err)
	one, err := p.Txt2Img(ctx, Request{Prompt: "x", Steps: 2, GuidanceScale: 1})
	require.NoError(t, err)
	assert.Zero(t, maxPixelDiff(half.Images[0], one.Images[0]), "0.5 and 1 both mean no guidance")
}

// Image k of a batch is the image a batch of one makes with seed Seed+k, as in the web UI,
// so each image's metadata (its own seed) regenerates it.
func TestBatchImagesRegenerateFromTheirSeed(t *testing.T) {
	p := openTiny(t, "sd1-tiny")
	ctx := context.Background()
	r := tinyRequest()
	r.Sampler, r.BatchSize = EulerAncestral, 2 // stochastic: sampler noise is per image too
	batch, err := p.Txt2Img(ctx, r)
	require.NoError(t, err)
	r.BatchSize, r.Seed = 1, r.Seed+1
	single, err := p.Txt2Img(ctx, r)
	require.NoError(t, err)
	assert.LessOrEqual(t, maxPixelDiff(batch.Images[1], single.Images[0]), 1.0)
	assert.Contains(t, batch.Params.A1111(1), "Seed: 8,")
	assert.Contains(t, batch.Params.A1111(1), "Batch size: 2, Batch pos: 1")
	assert.Contains(t, batch.Params.A1111(0), "Seed: 7,")

	src := solidImage(64, 64, color.RGBA{200, 40, 40, 255})
	ir := Img2ImgRequest{Request: tinyRequest(), Image: src, Strength: 0.7}
	ir.BatchSize = 2
	b2, err := p.Img2Img(ctx, ir)
	require.NoError(t, err)
	ir.BatchSize, ir.Seed = 1, ir.Seed+1
	s1, err := p.Img2Img(ctx, ir)
	require.NoError(t, err)
	assert.LessOrEqual(t, maxPixelDiff(b2.Images[1], s1.Images[0]), 1.0)
}

func TestA1111Metadata(t *testing.T) {
	par := Params{
		Prompt: "a cat\xff", Steps: 20, Sampler: DDIM, GuidanceScale: 7, Seed: 5, Width: 512, Height: 512,
		Model: "mix, v2: final", ModelHash: "0123456789", Eta: 0.5, RNG: rng.CPU,
	}
	got := par.A1111(0)
	assert.Equal(t, "a cat\uFFFD\nSteps: 20, Sampler: DDIM, CFG scale: 7, Seed: 5, Size: 512x512, Model hash: 0123456789, "+
		`Model: "mix, v2: final", RNG: CPU, Eta DDIM: 0.5, Version: gosd`, got)

	dir := t.TempDir()
	file := filepath.Join(dir, "m.safetensors")
	require.NoError(t, os.WriteFile(file, []byte("weights"), 0o644))
	sum := sha256.Sum256([]byte("weights"))
	assert.Equal(t, hex.EncodeToString(sum[:])[:10], hashModelFile(file).get())
	assert.Empty(t, hashModelFile(dir).get(), "a folder has no A1111 hash")
}

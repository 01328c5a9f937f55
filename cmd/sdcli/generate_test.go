package main

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// tinyModel returns the conformance kit's tiny SD 1.x diffusers folder and the flags
// that run it on the CPU with the library built in this checkout; it skips the test
// when either is absent.
func tinyModel(t *testing.T) (model string, runtimeFlags []string) {
	t.Helper()
	kit := testutil.ConformanceDir(t)
	lib := filepath.Join(testutil.RepoRoot(t), "build")
	libFile := "libsd.so"
	if runtime.GOOS == "darwin" {
		libFile = "libsd.dylib"
	}
	if _, err := os.Stat(filepath.Join(lib, libFile)); err != nil {
		t.Skipf("runtime library not built (run make): %v", err)
	}
	return filepath.Join(kit, "sd1-tiny", "diffusers"), []string{"--device", "cpu", "--threads", "2", "--lib", lib}
}

// Invalid command lines fail before any model is opened, with a message naming the flag.
func TestGenerateFlagValidation(t *testing.T) {
	dir := t.TempDir()
	model := t.TempDir() // exists; never opened by these cases
	notImage := filepath.Join(dir, "notes.png")
	require.NoError(t, os.WriteFile(notImage, []byte("not an image"), 0o644))
	out := filepath.Join(dir, "out.png")

	tests := []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"bad sampler", []string{"txt2img", "--sampler", "dpm_fast"}, exitUsage, `invalid value "dpm_fast" for flag -sampler: unknown sampler`},
		{"bad schedule", []string{"txt2img", "--schedule", "linear"}, exitUsage, `invalid value "linear" for flag -schedule`},
		{"width not a multiple of 8", []string{"txt2img", "-W", "500"}, exitUsage, `invalid value "500" for flag -W: must be a multiple of 8`},
		{"height not a multiple of 8", []string{"txt2img", "-H", "7"}, exitUsage, `invalid value "7" for flag -H: must be a multiple of 8`},
		{"width too large", []string{"txt2img", "-W", "8192"}, exitUsage, "flag -W: must be a multiple of 8 between 8 and 4096"},
		{"width not a number", []string{"txt2img", "-W", "wide"}, exitUsage, `invalid value "wide" for flag -W: not an integer`},
		{"negative steps", []string{"txt2img", "--steps", "-5"}, exitUsage, `invalid value "-5" for flag -steps: must be between 1 and 1000`},
		{"zero steps", []string{"txt2img", "--steps", "0"}, exitUsage, "flag -steps: must be between 1 and 1000"},
		{"guidance below 0", []string{"txt2img", "--cfg", "-0.5"}, exitUsage, `invalid value "-0.5" for flag -cfg: must be between 0 and 100`},
		{"guidance NaN", []string{"txt2img", "--cfg", "NaN"}, exitUsage, "flag -cfg: must be between 0 and 100"},
		{"guidance not a number", []string{"txt2img", "--cfg", "high"}, exitUsage, "flag -cfg: not a number"},
		{"bad rng", []string{"txt2img", "--rng", "gpu"}, exitUsage, `invalid value "gpu" for flag -rng`},
		{"seed below -1", []string{"txt2img", "--seed", "-2"}, exitUsage, `invalid value "-2" for flag -seed: want -1 or an integer`},
		{"seed not a number", []string{"txt2img", "--seed", "lucky"}, exitUsage, "flag -seed: want -1 or an integer"},
		{"zero batch", []string{"txt2img", "--batch", "0"}, exitUsage, "flag -batch: must be between 1 and 64"},
		{"batch too large", []string{"txt2img", "--batch", "65"}, exitUsage, "flag -batch: must be between 1 and 64"},
		{"negative clip skip", []string{"txt2img", "--clip-skip", "-1"}, exitUsage, "flag -clip-skip: must be between 0 and 1000"},
		{"guidance rescale above 1", []string{"txt2img", "--guidance-rescale", "1.5"}, exitUsage, "flag -guidance-rescale: must be between 0 and 1"},
		{"negative eta", []string{"txt2img", "--eta", "-0.1"}, exitUsage, "flag -eta: must be between 0 and 1"},
		{"negative threads", []string{"txt2img", "--threads", "-1"}, exitUsage, "flag -threads: must be between 0 and 1024"},
		{"bad device", []string{"txt2img", "--device", "tpu"}, exitUsage, `invalid value "tpu" for flag -device: unknown device`},
		{"unknown flag", []string{"txt2img", "--strength", "0.5"}, exitUsage, "flag provided but not defined: -strength"},
		{"flag without value", []string{"txt2img", "--steps"}, exitUsage, "flag needs an argument: -steps"},
		{"unquoted prompt", []string{"txt2img", "-p", "a", "cat"}, exitUsage, `unexpected argument "cat"`},
		{"output not PNG", []string{"txt2img", "-o", "out.jpg"}, exitUsage, "-o out.jpg: the output must be a .png file"},
		{"output folder missing", []string{"txt2img", "-m", model, "-o", filepath.Join(dir, "no", "out.png")}, exitError, "does not exist"},
		{"missing model", []string{"txt2img", "-o", out}, exitUsage, "pass -m with a model file"},
		{"model not found", []string{"txt2img", "-m", filepath.Join(dir, "nowhere"), "-o", out}, exitError, "nowhere: no such file or folder"},
		{"img2img without -i", []string{"img2img", "-m", model, "-o", out}, exitUsage, "img2img needs an init image: pass -i"},
		{"img2img zero strength", []string{"img2img", "--strength", "0"}, exitUsage, `invalid value "0" for flag -strength: must be in (0, 1]`},
		{"img2img strength above 1", []string{"img2img", "--strength", "1.2"}, exitUsage, "flag -strength: must be in (0, 1]"},
		{"img2img init image missing", []string{"img2img", "-m", model, "-i", filepath.Join(dir, "none.png"), "-o", out}, exitError, "none.png: no such file or directory"},
		{"img2img init not an image", []string{"img2img", "-m", model, "-i", notImage, "-o", out}, exitError, "notes.png: not a PNG or JPEG image"},
		{"inpaint without -i", []string{"inpaint", "-m", model, "--mask", notImage, "-o", out}, exitUsage, "inpaint needs an init image: pass -i"},
		{"inpaint without mask", []string{"inpaint", "-m", model, "-i", notImage, "-o", out}, exitUsage, "inpaint needs a mask (--mask) or margins to outpaint (--outpaint)"},
		{"inpaint mask and outpaint", []string{"inpaint", "-i", notImage, "--mask", notImage, "--outpaint", "8,0,0,0"}, exitUsage, "--mask and --outpaint cannot be combined"},
		{"inpaint mask not an image", []string{"inpaint", "-m", model, "-i", notImage, "--mask", notImage, "-o", out}, exitError, "not a PNG or JPEG image"},
		{"outpaint three margins", []string{"inpaint", "--outpaint", "8,8,8"}, exitUsage, `invalid value "8,8,8" for flag -outpaint: want four comma-separated pixel counts L,T,R,B`},
		{"outpaint negative margin", []string{"inpaint", "--outpaint", "-8,0,0,0"}, exitUsage, `flag -outpaint: "-8": want an integer between 0 and 4096`},
		{"outpaint not a number", []string{"inpaint", "--outpaint", "a,0,0,0"}, exitUsage, `flag -outpaint: "a": want an integer`},
		{"outpaint nothing", []string{"inpaint", "--outpaint", "0,0,0,0"}, exitUsage, "flag -outpaint: all margins are 0: nothing to outpaint"},
		{"txt2img has no -i", []string{"txt2img", "-i", notImage}, exitUsage, "flag provided but not defined: -i"},
		{"img2img has no --mask", []string{"img2img", "--mask", notImage}, exitUsage, "flag provided but not defined: -mask"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runArgs(t, tt.args...)
			assert.Equal(t, tt.code, r.code, "stderr: %s", r.stderr)
			assert.Contains(t, r.stderr, "sdcli "+tt.args[0]+": ")
			assert.Contains(t, r.stderr, tt.msg)
			if tt.code == exitUsage {
				assert.Contains(t, r.stderr, "Run 'sdcli "+tt.args[0]+" -h' for usage.")
			}
			assert.Empty(t, r.stdout)
			assert.NoFileExists(t, out)
		})
	}
}

func TestOutputPaths(t *testing.T) {
	assert.Equal(t, []string{"out/a.png"}, outputPaths("out/a.png", 1))
	assert.Equal(t, []string{"out/a-1.png", "out/a-2.png", "out/a-3.png"}, outputPaths("out/a.png", 3))
	assert.Equal(t, []string{"x.y-1.PNG", "x.y-2.PNG"}, outputPaths("x.y.PNG", 2))
}

// pngParameters reads a PNG's size and its "parameters" text chunk.
func pngParameters(t *testing.T, path string) (image.Image, string) {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	img, err := png.Decode(bytes.NewReader(data))
	require.NoError(t, err)
	var params []string
	for _, c := range readChunks(t, data) {
		if c.typ == "tEXt" || c.typ == "iTXt" {
			key, text, _ := strings.Cut(string(c.data), "\x00")
			require.Equal(t, "parameters", key)
			if c.typ == "iTXt" {
				text = text[4:] // compression flag and method, empty language and translated keyword
			}
			params = append(params, text)
		}
	}
	require.Len(t, params, 1, "one parameters chunk")
	return img, params[0]
}

// The end-to-end run: the kit's whole-pipeline txt2img (DDIM, 6 steps, seed 50)
// through the command line, checked against diffusers' image.
func TestTxt2ImgMatchesDiffusers(t *testing.T) {
	model, rt := tinyModel(t)
	out := filepath.Join(t.TempDir(), "apple.png")
	r := runArgs(t, slices.Concat([]string{"txt2img", "-m", model, "-p", "a red apple on a table", "-n", "blurry",
		"-W", "64", "-H", "64", "--steps", "6", "--cfg", "7.5", "--sampler", "ddim", "--seed", "50", "-o", out}, rt)...)
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	assert.Equal(t, out+"\n", r.stdout)
	assert.Contains(t, r.stderr, "seed 50\n")
	assert.Contains(t, r.stderr, "txt2img |")
	assert.Contains(t, r.stderr, "| 6/6 ")

	img, params := pngParameters(t, out)
	require.Equal(t, image.Rect(0, 0, 64, 64), img.Bounds())
	assert.Equal(t, "a red apple on a table\nNegative prompt: blurry\n"+
		"Steps: 6, Sampler: DDIM, CFG scale: 7.5, Seed: 50, Size: 64x64, Model: diffusers, RNG: CPU, Version: gosd", params)

	ref := kitImage(t, filepath.Join(testutil.ConformanceDir(t), "sd1-tiny", "txt2img-ddim.safetensors"))
	worst := maxPixelError(t, img, ref)
	t.Logf("max |pixel - 255 ref| = %.3f", worst)
	assert.LessOrEqual(t, worst, 0.51)
}

// A random seed is printed and recorded; a batch writes name-1.png ... name-N.png.
func TestTxt2ImgBatchRandomSeed(t *testing.T) {
	model, rt := tinyModel(t)
	dir := t.TempDir()
	r := runArgs(t, slices.Concat([]string{"txt2img", "-m", model, "-p", "a cat", "--steps", "2", "--batch", "2",
		"--sampler", "euler_a", "--schedule", "karras", "--rng", "cuda", "-o", filepath.Join(dir, "cat.png")}, rt)...)
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	paths := []string{filepath.Join(dir, "cat-1.png"), filepath.Join(dir, "cat-2.png")}
	assert.Equal(t, strings.Join(paths, "\n")+"\n", r.stdout)
	seed := regexp.MustCompile(`(?m)^seed (\d+)$`).FindStringSubmatch(r.stderr)
	require.NotNil(t, seed, "stderr: %s", r.stderr)
	first, err := strconv.ParseUint(seed[1], 10, 64)
	require.NoError(t, err)
	for i, p := range paths {
		img, params := pngParameters(t, p)
		assert.Equal(t, image.Rect(0, 0, 64, 64), img.Bounds(), "native size")
		// Each image records its own seed, which regenerates it alone.
		assert.Contains(t, params, fmt.Sprintf("Sampler: Euler a, Schedule type: Karras, CFG scale: 7.5, Seed: %d, Size: 64x64", first+uint64(i)))
		assert.Contains(t, params, fmt.Sprintf("Batch size: 2, Batch pos: %d, RNG: NV", i))
	}
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Len(t, entries, 2, "no temporary files left")
}

// Values only the model can check (its text encoder has 4 layers) are usage errors too.
func TestTxt2ImgRequestCheckedByModel(t *testing.T) {
	model, rt := tinyModel(t)
	out := filepath.Join(t.TempDir(), "x.png")
	r := runArgs(t, slices.Concat([]string{"txt2img", "-m", model, "--clip-skip", "9", "-o", out}, rt)...)
	assert.Equal(t, exitUsage, r.code)
	assert.Contains(t, r.stderr, "sdcli txt2img: invalid request: clip skip 9 not in [0, 4]")
	assert.NoFileExists(t, out)
}

// cancelWriter cancels a context once the text written to it contains marker.
type cancelWriter struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	marker string
	cancel context.CancelFunc
}

func (w *cancelWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if strings.Contains(w.buf.String(), w.marker) {
		w.cancel()
	}
	return len(p), nil
}

// Cancelling (Ctrl-C) stops the run: exit code 130 and no file, not even a temporary one.
func TestTxt2ImgCancelled(t *testing.T) {
	model, rt := tinyModel(t)
	tests := []struct {
		name   string
		marker string // cancel when stderr shows this; "" cancels before the start
	}{
		{"before the start", ""},
		{"after the first step", "| 1/6 "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			stderr := &cancelWriter{marker: tt.marker, cancel: cancel}
			if tt.marker == "" {
				cancel()
			}
			var stdout bytes.Buffer
			dir := t.TempDir()
			a := newApp(&stdout, stderr)
			code := a.run(ctx, slices.Concat([]string{"txt2img", "-m", model, "--steps", "6", "-o", filepath.Join(dir, "out.png")}, rt))
			assert.Equal(t, exitCancelled, code, "stderr: %s", stderr.buf.String())
			assert.Contains(t, stderr.buf.String(), "sdcli txt2img: cancelled\n")
			assert.NotContains(t, stderr.buf.String(), "| 6/6 ")
			assert.Empty(t, stdout.String())
			entries, err := os.ReadDir(dir)
			require.NoError(t, err)
			assert.Empty(t, entries)
		})
	}
}

// testImage writes a gradient of the given size as PNG or JPEG (by extension).
func testImage(t *testing.T, path string, w, h int, fill func(x, y int) color.Color) {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			img.Set(x, y, fill(x, y))
		}
	}
	f, err := os.Create(path)
	require.NoError(t, err)
	defer f.Close()
	if filepath.Ext(path) == ".jpg" {
		require.NoError(t, jpeg.Encode(f, img, nil))
	} else {
		require.NoError(t, png.Encode(f, img))
	}
}

func gradient(x, y int) color.Color {
	return color.RGBA{uint8(4 * x), uint8(4 * y), 128, 255}
}

func leftHalfWhite(x, y int) color.Color {
	if x < 32 {
		return color.White
	}
	return color.Black
}

func TestImg2ImgAndInpaint(t *testing.T) {
	model, rt := tinyModel(t)
	dir := t.TempDir()
	jpg, odd, mask := filepath.Join(dir, "in.jpg"), filepath.Join(dir, "odd.png"), filepath.Join(dir, "mask.png")
	testImage(t, jpg, 64, 64, gradient)
	testImage(t, odd, 67, 70, gradient)
	testImage(t, mask, 64, 64, leftHalfWhite)

	tests := []struct {
		name   string
		args   []string
		size   image.Rectangle
		params string
	}{
		{"img2img from JPEG", []string{"img2img", "-i", jpg, "-p", "a painting"}, image.Rect(0, 0, 64, 64), "Size: 64x64, Model: diffusers, Denoising strength: 0.8"},
		{"img2img size rounded down", []string{"img2img", "-i", odd, "--strength", "0.5"}, image.Rect(0, 0, 64, 64), "Size: 64x64, Model: diffusers, Denoising strength: 0.5"},
		{"img2img resized", []string{"img2img", "-i", jpg, "-W", "72", "-H", "56"}, image.Rect(0, 0, 72, 56), "Size: 72x56"},
		{"inpaint", []string{"inpaint", "-i", jpg, "--mask", mask, "-p", "a hat"}, image.Rect(0, 0, 64, 64), "Size: 64x64, Model: diffusers, Denoising strength: 1"},
		{"outpaint", []string{"inpaint", "-i", jpg, "--outpaint", "0,0,64,0"}, image.Rect(0, 0, 128, 64), "Size: 128x64, Model: diffusers, Denoising strength: 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out.png")
			r := runArgs(t, slices.Concat(tt.args, []string{"-m", model, "--steps", "4", "--seed", "1", "-o", out}, rt)...)
			require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
			assert.Equal(t, out+"\n", r.stdout)
			img, params := pngParameters(t, out)
			assert.Equal(t, tt.size, img.Bounds())
			assert.Contains(t, params, tt.params)
		})
	}
}

// The kit's SDXL run (Euler, 6 steps, CFG 5, seed 50 on the CPU generator, prompt 2)
// through the command line from the diffusers folder, checked against diffusers' image at
// 2/255; also cut in two by --refiner with the same model, which must not change it.
func TestTxt2ImgSDXLMatchesDiffusers(t *testing.T) {
	_, rt := tinyModel(t)
	model := filepath.Join(testutil.ConformanceDir(t), "sdxl-tiny", "diffusers")
	ref := kitImage(t, filepath.Join(testutil.ConformanceDir(t), "sdxl-tiny", "txt2img-euler-prompt2.safetensors"))
	for _, c := range []struct {
		name  string
		extra []string
	}{{"plain", nil}, {"refiner", []string{"--refiner", model, "--refiner-start", "0.5"}}} {
		t.Run(c.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "apple.png")
			r := runArgs(t, slices.Concat([]string{"txt2img", "-m", model, "-p", "a red apple on a table", "-n", "blurry",
				"--prompt-2", "an oil painting, warm evening light",
				"-W", "64", "-H", "64", "--steps", "6", "--cfg", "5", "--sampler", "euler", "--seed", "50", "--rng", "cpu", "-o", out}, c.extra, rt)...)
			require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
			img, _ := pngParameters(t, out)
			require.Equal(t, image.Rect(0, 0, 64, 64), img.Bounds())
			worst := maxPixelError(t, img, ref)
			t.Logf("max |pixel - 255 ref| = %.3f", worst)
			assert.LessOrEqual(t, worst, 2.0)
		})
	}

	// The SDXL flags are refused by a model with one text encoder.
	sd1, _ := tinyModel(t)
	out := filepath.Join(t.TempDir(), "x.png")
	r := runArgs(t, slices.Concat([]string{"txt2img", "-m", sd1, "--prompt-2", "x", "-W", "64", "-H", "64", "--steps", "1", "-o", out}, rt)...)
	assert.Equal(t, exitUsage, r.code)
	assert.Contains(t, r.stderr, "need an SDXL model")
}

// The kit's SDXL single file through the command line: its head counts (16-wide, not
// SDXL's 64) given by flag, the same run as from the folder.
func TestTxt2ImgSDXLSingleFile(t *testing.T) {
	_, rt := tinyModel(t)
	single := filepath.Join(testutil.ConformanceDir(t), "sdxl-tiny", "sdxl-tiny-single-file.safetensors")
	ref := kitImage(t, filepath.Join(testutil.ConformanceDir(t), "sdxl-tiny", "txt2img-euler.safetensors"))
	out := filepath.Join(t.TempDir(), "apple.png")
	r := runArgs(t, slices.Concat([]string{"txt2img", "-m", single, "--text-heads", "2,2", "--unet-heads", "2,2,4",
		"-p", "a red apple on a table", "-n", "blurry", "-W", "64", "-H", "64", "--steps", "6", "--cfg", "5",
		"--sampler", "euler", "--seed", "50", "--rng", "cpu", "-o", out}, rt)...)
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	img, _ := pngParameters(t, out)
	worst := maxPixelError(t, img, ref)
	t.Logf("max |pixel - 255 ref| = %.3f", worst)
	assert.LessOrEqual(t, worst, 2.0)

	r = runArgs(t, slices.Concat([]string{"txt2img", "-m", single, "--text-heads", "2,2", "-o", out}, rt)...)
	assert.Equal(t, exitError, r.code, "without the UNet's heads")
	assert.Contains(t, r.stderr, "give the head counts")
	r = runArgs(t, "txt2img", "--unet-heads", "2,0", "-o", out)
	assert.Equal(t, exitUsage, r.code)
	assert.Contains(t, r.stderr, `invalid value "2,0" for flag -unet-heads: "0": want a head count between 1 and 1024`)
}

package diffusion

import (
	"context"
	"fmt"
	"image"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/gosd/gosd/binding"
	"github.com/gosd/gosd/diffusion/modelfile"
)

// ESRGAN is an opened ESRGAN generator: Real-ESRGAN's RRDBNet (RealESRGAN_x4plus,
// RealESRGAN_x4plus_anime_6B, RealESRGAN_x2plus and other models trained with BasicSR),
// a pixel upscaler without prompt or sampling, read from a .pth file (BasicSR's
// params_ema or params) or safetensors. Calls are serialised; Close frees it.
type ESRGAN struct {
	mu     sync.Mutex
	eng    *engine // the native context (its networks unused) and the pinned weights
	model  binding.Model
	file   *modelfile.File
	cfg    binding.ESRGANConfig
	scale  int    // output / input size
	name   string // the file's name without extension
	closed bool
}

// IsESRGAN reports whether path is a file holding an ESRGAN generator under
// Real-ESRGAN's names (conv_first, body.N.rdbK.convJ, ...); it reads the names only.
func IsESRGAN(path string) bool {
	st, err := os.Stat(path)
	if err != nil || st.IsDir() {
		return false
	}
	f, err := modelfile.OpenFile(path)
	if err != nil {
		return false
	}
	defer f.Close()
	_, first := f.Tensor("conv_first.weight")
	_, body := f.Tensor("body.0.rdb1.conv1.weight")
	return first && body
}

// esrganConfig reads the generator's config off its weights' shapes: conv_first's input
// channels give the scale (3 for x4; 12 and 48 for x2 and x1, whose input is the image
// pixel-unshuffled by 2 and 4).
func esrganConfig(f *modelfile.File) (binding.ESRGANConfig, int, error) {
	shape := func(name string) ([]int64, error) {
		t, ok := f.Tensor(name)
		if !ok {
			return nil, fmt.Errorf("%w: no %s: not an ESRGAN generator under Real-ESRGAN's names", ErrBadModel, name)
		}
		if len(t.Shape) != 4 {
			return nil, fmt.Errorf("%w: %s has shape %v, want a 4-d conv weight", ErrBadModel, name, t.Shape)
		}
		return t.Shape, nil
	}
	first, err := shape("conv_first.weight")
	if err != nil {
		return binding.ESRGANConfig{}, 0, err
	}
	last, err := shape("conv_last.weight")
	if err != nil {
		return binding.ESRGANConfig{}, 0, err
	}
	grow, err := shape("body.0.rdb1.conv1.weight")
	if err != nil {
		return binding.ESRGANConfig{}, 0, err
	}
	scale := map[int64]int{3: 4, 12: 2, 48: 1}[first[1]]
	if scale == 0 || last[0] != 3 {
		return binding.ESRGANConfig{}, 0, fmt.Errorf("%w: an ESRGAN generator with %d input and %d output channels (RGB models have 3, 12 or 48 in and 3 out)", ErrUnsupported, first[1], last[0])
	}
	blocks := 0
	for _, t := range f.Tensors {
		rest, ok := strings.CutPrefix(t.Name, "body.")
		if !ok {
			continue
		}
		num, _, _ := strings.Cut(rest, ".")
		if n, err := strconv.Atoi(num); err == nil && n+1 > blocks {
			blocks = n + 1
		}
	}
	return binding.ESRGANConfig{InChannels: int32(first[1]), OutChannels: int32(last[0]), NumFeat: int32(first[0]),
		NumBlock: int32(blocks), NumGrowCh: int32(grow[0])}, scale, nil
}

// OpenESRGAN loads an ESRGAN generator (see ESRGAN); of the options, the device, threads,
// library and logger apply.
func OpenESRGAN(path string, opts ...Option) (*ESRGAN, error) {
	o, log := applyOptions(opts)
	f, err := modelfile.OpenFile(path)
	if err != nil {
		return nil, err
	}
	base := filepath.Base(path)
	e := &ESRGAN{file: f, name: strings.TrimSuffix(base, filepath.Ext(base))}
	if err := e.load(o, log); err != nil {
		e.Close()
		return nil, err
	}
	return e, nil
}

func (e *ESRGAN) load(o openOptions, log *slog.Logger) error {
	var err error
	if e.cfg, e.scale, err = esrganConfig(e.file); err != nil {
		return err
	}
	lib, backend, _, err := loadRuntime(o, log)
	if err != nil {
		return err
	}
	precision, err := runtimePrecision(o.precision)
	if err != nil {
		return err
	}
	if e.eng, err = newEngineWithPrecision(lib, backend, o.threads, precision); err != nil {
		return err
	}
	lib.CtxSetLog(e.eng.ctx, runtimeLog(log))
	tensors := make(map[string]modelfile.Tensor, len(e.file.Tensors))
	for _, t := range e.file.Tensors {
		tensors[t.Name] = t
	}
	ws, err := e.eng.weights(tensors)
	if err != nil {
		return err
	}
	e.model, err = lib.ESRGANLoad(e.eng.ctx, &e.cfg, ws)
	return err
}

// Scale is the output's size over the input's: 4, 2 or 1.
func (e *ESRGAN) Scale() int { return e.scale }

// Blocks is the number of RRDB blocks (23 for RealESRGAN_x4plus, 6 for the anime model).
func (e *ESRGAN) Blocks() int { return int(e.cfg.NumBlock) }

// Close frees the generator and unmaps its file. It is idempotent.
func (e *ESRGAN) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil
	}
	e.closed = true
	if e.eng != nil {
		e.eng.lib.ModelFree(e.eng.ctx, e.model)
		e.eng.close()
	}
	return e.file.Close()
}

// ESRGANRequest is one upscale by an ESRGAN generator.
type ESRGANRequest struct {
	Image image.Image
	// Tile bounds memory: images larger run in overlapping tiles of at most Tile x Tile
	// input pixels, blended across the overlaps (a quarter of a side). 0: 256.
	Tile int
}

// DefaultESRGANTile is ESRGANRequest.Tile's default.
const DefaultESRGANTile = 256

// Upscale returns req.Image Scale() times larger, as Real-ESRGAN's inference: RGB / 255
// (an x2 or x1 model's input reflect-padded to a multiple of 2 or 4, then pixel-unshuffled),
// the generator, clamped to [0, 1], times 255 rounded.
func (e *ESRGAN) Upscale(ctx context.Context, req ESRGANRequest) (image.Image, error) {
	if ctx == nil {
		return nil, invalid("nil context")
	}
	if err := checkImage("upscale image", req.Image); err != nil {
		return nil, err
	}
	tile := req.Tile
	switch {
	case tile == 0:
		tile = DefaultESRGANTile
	case tile < MinTile:
		return nil, invalid("tile %d: at least %d pixels", tile, MinTile)
	}
	b := req.Image.Bounds()
	w, h := b.Dx(), b.Dy()
	if limit := 4 * MaxSide; w*e.scale > limit || h*e.scale > limit {
		return nil, invalid("image %dx%d upscales to %dx%d, over %d pixels a side", w, h, w*e.scale, h*e.scale, limit)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, ErrClosed
	}
	r := 4 / e.scale // the unshuffle factor
	pw, ph := (w+r-1)/r*r, (h+r-1)/r*r
	x := pixelUnshuffle(reflectPad(rgbTensor(req.Image), w, h, pw, ph), ph, pw, r) // (3 r², ph/r, pw/r)
	gh, gw := ph/r, pw/r
	var out []float32
	err := guardNative(ctx, e.eng.lib, e.eng.ctx, func() (err error) {
		out, err = e.forwardTiled(x, gh, gw, tiling{max(tile/r, 1), max(tile/r/4, 1)})
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := checkFinite("ESRGAN", out); err != nil {
		return nil, err
	}
	// The network's output is 4 (gh, gw) = scale (ph, pw); the padding is cropped.
	ow, oh := w*e.scale, h*e.scale
	img := image.NewRGBA(image.Rect(0, 0, ow, oh))
	plane := 4 * gh * 4 * gw
	for y := 0; y < oh; y++ {
		for xx := 0; xx < ow; xx++ {
			o := img.PixOffset(xx, y)
			for c := 0; c < 3; c++ {
				v := math.Min(math.Max(float64(out[c*plane+y*4*gw+xx]), 0), 1)
				img.Pix[o+c] = uint8(math.RoundToEven(v * 255))
			}
			img.Pix[o+3] = 255
		}
	}
	return img, nil
}

// forwardTiled runs the generator on x (in, h, w), in tiles when larger than t.
func (e *ESRGAN) forwardTiled(x []float32, h, w int, t tiling) ([]float32, error) {
	in := int(e.cfg.InChannels)
	return blendTiles(t, 1, 3, h, w, 4, func(r rect) ([]float32, error) {
		return e.forward(crop(x, in, h, w, r), r.h, r.w)
	})
}

// forward runs the generator on x (1, in, h, w): (1, 3, 4h, 4w).
func (e *ESRGAN) forward(x []float32, h, w int) ([]float32, error) {
	s := &scope{lib: e.eng.lib, ctx: e.eng.ctx}
	defer s.done()
	tx, err := s.f32(x, 1, int64(e.cfg.InChannels), int64(h), int64(w))
	if err != nil {
		return nil, err
	}
	to, err := s.f32(nil, 1, int64(e.cfg.OutChannels), int64(4*h), int64(4*w))
	if err != nil {
		return nil, err
	}
	if err := e.eng.lib.ESRGANForward(e.eng.ctx, e.model, tx, to); err != nil {
		return nil, err
	}
	return s.read(to, int(e.cfg.OutChannels)*16*h*w)
}

// rgbTensor is img's RGB in [0, 1], (3, h, w).
func rgbTensor(img image.Image) []float32 {
	n := toNRGBA(img)
	w, h := n.Bounds().Dx(), n.Bounds().Dy()
	out := make([]float32, 3*w*h)
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			o := n.PixOffset(x, y)
			for c := 0; c < 3; c++ {
				out[c*w*h+y*w+x] = float32(n.Pix[o+c]) / 255
			}
		}
	}
	return out
}

// reflectPad pads (c, h, w) planes to (c, ph, pw) at the bottom and right, mirroring
// without repeating the edge (torch's "reflect"); pads are smaller than the sides.
func reflectPad(v []float32, w, h, pw, ph int) []float32 {
	if pw == w && ph == h {
		return v
	}
	c := len(v) / (w * h)
	mirror := func(i, n int) int {
		if i < n {
			return i
		}
		return max(2*(n-1)-i, 0)
	}
	out := make([]float32, c*ph*pw)
	for p := 0; p < c; p++ {
		for y := 0; y < ph; y++ {
			for x := 0; x < pw; x++ {
				out[p*ph*pw+y*pw+x] = v[p*h*w+mirror(y, h)*w+mirror(x, w)]
			}
		}
	}
	return out
}

// pixelUnshuffle is torch's pixel_unshuffle by r of (c, h, w): (c r², h/r, w/r), channel
// c*r² + i*r + j holding pixels (r y + i, r x + j).
func pixelUnshuffle(v []float32, h, w, r int) []float32 {
	if r == 1 {
		return v
	}
	c := len(v) / (h * w)
	oh, ow := h/r, w/r
	out := make([]float32, len(v))
	for p := 0; p < c; p++ {
		for i := 0; i < r; i++ {
			for j := 0; j < r; j++ {
				dst := out[((p*r+i)*r+j)*oh*ow:]
				for y := 0; y < oh; y++ {
					for x := 0; x < ow; x++ {
						dst[y*ow+x] = v[p*h*w+(r*y+i)*w+r*x+j]
					}
				}
			}
		}
	}
	return out
}

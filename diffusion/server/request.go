package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/color"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"

	"github.com/gosd/gosd/diffusion"
	"github.com/gosd/gosd/diffusion/schedule"
)

// params are the generation settings the APIs share, in their own terms; build checks
// them against the server's limits and makes the diffusion.Request.
type params struct {
	prompt, negative string
	width, height    int // 0: the model's native size (txt2img) or the image's
	steps            int
	cfg              float64
	sampler          string // ours (euler_a) or AUTOMATIC1111's ("Euler a", "DPM++ 2M Karras")
	scheduler        string // AUTOMATIC1111's: Automatic, Karras, Exponential
	seed             int64  // -1: random
	batch            int
}

// build makes the request; errors name the field as param (width, height, steps, ...).
func (s *Server) build(p params) (diffusion.Request, error) {
	req := diffusion.Request{Prompt: p.prompt, NegativePrompt: p.negative, BatchSize: max(1, p.batch),
		LoRADir: s.cfg.LoRADir, EmbeddingDir: s.cfg.EmbeddingDir}
	for _, f := range []struct {
		name string
		v    int
	}{{"width", p.width}, {"height", p.height}} {
		if f.v != 0 && (f.v < 8 || f.v > s.cfg.MaxSize || f.v%8 != 0) {
			return req, badRequest(f.name, "%s %d: want a multiple of 8 between 8 and %d", f.name, f.v, s.cfg.MaxSize)
		}
	}
	if err := s.checkNative(p.width, p.height); err != nil {
		return req, err
	}
	req.Width, req.Height = p.width, p.height
	if p.steps < 1 || p.steps > s.cfg.MaxSteps {
		return req, badRequest("steps", "steps %d: want between 1 and %d", p.steps, s.cfg.MaxSteps)
	}
	req.Steps = p.steps
	if !(p.cfg >= 0 && p.cfg <= 100) {
		return req, badRequest("cfg_scale", "cfg_scale %v: want between 0 and 100", p.cfg)
	}
	req.GuidanceScale = p.cfg
	if p.cfg == 0 {
		req.GuidanceScale = 1 // 0 is the API's default (7.5); the web UIs mean no guidance
	}
	var err error
	if req.Sampler, req.Schedule, err = parseSampler(p.sampler); err != nil {
		return req, badRequest("sampler_name", "%v", err)
	}
	if p.scheduler != "" {
		sch, err := parseScheduler(p.scheduler)
		if err != nil {
			return req, badRequest("scheduler", "%v", err)
		}
		if sch != schedule.SigmasDefault {
			req.Schedule = sch
		}
	}
	switch {
	case p.seed == -1:
		req.Seed = uint64(rand.Uint32()) // 32 bits, as the web UIs pick them
	case p.seed < 0:
		return req, badRequest("seed", "seed %d: want -1 (random) or a non-negative integer", p.seed)
	default:
		req.Seed = uint64(p.seed)
	}
	if req.BatchSize > s.cfg.MaxImages {
		return req, badRequest("batch_size", "%d images asked for; at most %d a request", req.BatchSize, s.cfg.MaxImages)
	}
	return req, nil
}

// checkNative refuses a default size (0) that would exceed MaxSize: the model's native
// size can be larger than what the server allows.
func (s *Server) checkNative(w, h int) error {
	_, info, _ := s.pool.current()
	if (w == 0 && info.Width > s.cfg.MaxSize) || (h == 0 && info.Height > s.cfg.MaxSize) {
		return badRequest("size", "the model's native size %dx%d is over this server's limit of %d; ask for a size", info.Width, info.Height, s.cfg.MaxSize)
	}
	return nil
}

// checkImageSize refuses an input image whose default output size (its own, rounded
// down to 8) is over MaxSize when no size is asked for.
func (s *Server) checkImageSize(img image.Image, w, h int, field string) error {
	b := img.Bounds()
	if (w == 0 && b.Dx()/8*8 > s.cfg.MaxSize) || (h == 0 && b.Dy()/8*8 > s.cfg.MaxSize) {
		return badRequest(field, "%s is %dx%d, over this server's limit of %d a side; ask for a smaller size", field, b.Dx(), b.Dy(), s.cfg.MaxSize)
	}
	return nil
}

// parseSampler reads our sampler names and AUTOMATIC1111's, whose older names carry the
// schedule ("DPM++ 2M Karras").
func parseSampler(name string) (diffusion.Sampler, schedule.SigmaSchedule, error) {
	name = strings.TrimSpace(name)
	if smp, err := diffusion.ParseSampler(name); err == nil {
		return smp, schedule.SigmasDefault, nil
	}
	sch := schedule.SigmasDefault
	base := name
	for _, suffix := range []struct {
		text string
		s    schedule.SigmaSchedule
	}{{" Karras", schedule.SigmasKarras}, {" Exponential", schedule.SigmasExponential}} {
		if t, ok := strings.CutSuffix(name, suffix.text); ok {
			base, sch = t, suffix.s
		}
	}
	for _, smp := range diffusion.Samplers() {
		if strings.EqualFold(smp.A1111Name(), base) {
			return smp, sch, nil
		}
	}
	return 0, 0, fmt.Errorf("unknown sampler %q (GET /sdapi/v1/samplers lists them)", name)
}

// schedulers are AUTOMATIC1111's schedule names the runtime has.
var schedulers = []struct {
	name, label string
	s           schedule.SigmaSchedule
}{
	{"automatic", "Automatic", schedule.SigmasDefault},
	{"karras", "Karras", schedule.SigmasKarras},
	{"exponential", "Exponential", schedule.SigmasExponential},
}

func parseScheduler(name string) (schedule.SigmaSchedule, error) {
	for _, s := range schedulers {
		if strings.EqualFold(name, s.name) || strings.EqualFold(name, s.label) || strings.EqualFold(name, s.s.String()) {
			return s.s, nil
		}
	}
	return 0, fmt.Errorf("unknown scheduler %q (want Automatic, Karras or Exponential)", name)
}

// decodeJSON reads a JSON body into v; a body over the limit, malformed JSON or a field
// of the wrong type is an error naming what went wrong.
func decodeJSON(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	if err := dec.Decode(v); err != nil {
		var mb *http.MaxBytesError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &mb):
			return err
		case errors.As(err, &te):
			return badRequest(te.Field, "%s: want a JSON %s, got %s", te.Field, te.Type, te.Value)
		case errors.Is(err, io.EOF):
			return badRequest("", "empty request body: want a JSON object")
		}
		return badRequest("", "malformed JSON: %v", err)
	}
	if dec.More() {
		return badRequest("", "malformed JSON: more than one value in the body")
	}
	return nil
}

// alphaMask turns OpenAI's mask convention (transparent = edit) into the pipeline's
// (white = repaint).
func alphaMask(m image.Image) *image.Gray {
	b := m.Bounds()
	out := image.NewGray(image.Rect(0, 0, b.Dx(), b.Dy()))
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			_, _, _, a := m.At(x, y).RGBA()
			if a < 0x8000 {
				out.SetGray(x-b.Min.X, y-b.Min.Y, color.Gray{Y: 255})
			}
		}
	}
	return out
}

// hasTransparency reports whether some pixel of img is less than half opaque.
func hasTransparency(img image.Image) bool {
	if o, ok := img.(interface{ Opaque() bool }); ok && o.Opaque() {
		return false
	}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			if _, _, _, a := img.At(x, y).RGBA(); a < 0x8000 {
				return true
			}
		}
	}
	return false
}

// invertMask swaps repainted and kept (AUTOMATIC1111's inpainting_mask_invert).
func invertMask(m image.Image) *image.Gray {
	b := m.Bounds()
	out := image.NewGray(image.Rect(0, 0, b.Dx(), b.Dy()))
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			g := color.GrayModel.Convert(m.At(x, y)).(color.Gray)
			out.SetGray(x-b.Min.X, y-b.Min.Y, color.Gray{Y: 255 - g.Y})
		}
	}
	return out
}

// scaleNearest enlarges a preview (at latent resolution) to the image's size.
func scaleNearest(src image.Image, w, h int) image.Image {
	b := src.Bounds()
	if b.Dx() == w && b.Dy() == h || b.Empty() {
		return src
	}
	out := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		sy := b.Min.Y + y*b.Dy()/h
		for x := range w {
			out.Set(x, y, src.At(b.Min.X+x*b.Dx()/w, sy))
		}
	}
	return out
}

func itoa(n int) string { return strconv.Itoa(n) }

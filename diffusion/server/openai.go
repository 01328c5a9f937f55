package server

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image"
	"mime/multipart"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gosd/gosd/diffusion"
)

// openAIRequest is the body of /v1/images/generations (JSON) and /v1/images/edits
// (multipart fields): OpenAI's fields, then the ones of this server (negative_prompt,
// steps, seed, cfg_scale, sampler, strength). Fields of OpenAI's that do not apply to a
// diffusion model (moderation, style, user) are accepted and ignored.
type openAIRequest struct {
	Prompt            *string  `json:"prompt"`
	Model             string   `json:"model"`
	N                 *int     `json:"n"`
	Size              string   `json:"size"`
	ResponseFormat    string   `json:"response_format"`
	OutputFormat      string   `json:"output_format"`
	OutputCompression *int     `json:"output_compression"`
	Quality           string   `json:"quality"`
	Background        string   `json:"background"`
	User              string   `json:"user"`
	Stream            bool     `json:"stream"`
	PartialImages     *int     `json:"partial_images"`
	NegativePrompt    string   `json:"negative_prompt"`
	Steps             *int     `json:"steps"`
	Seed              *int64   `json:"seed"`
	CFGScale          *float64 `json:"cfg_scale"`
	Sampler           string   `json:"sampler"`
	Strength          *float64 `json:"strength"`
}

// openAIOptions are the checked output settings of a request.
type openAIOptions struct {
	url      bool
	format   string // png or jpeg
	jpegQ    int
	quality  string
	size     string
	stream   bool
	partials int
	edit     bool
}

// qualitySteps is the step count OpenAI's quality asks for when steps is not given.
var qualitySteps = map[string]int{"": 20, "auto": 20, "standard": 20, "medium": 20, "low": 10, "high": 30, "hd": 30}

// spec checks an OpenAI request and makes its generation (txt2img; edits fill in the
// images after).
func (s *Server) openAISpec(o openAIRequest) (params, openAIOptions, error) {
	var opt openAIOptions
	if o.Prompt == nil || strings.TrimSpace(*o.Prompt) == "" {
		return params{}, opt, badRequest("prompt", "prompt is required")
	}
	p := params{prompt: *o.Prompt, negative: o.NegativePrompt, seed: -1, batch: 1, cfg: 7.5, sampler: o.Sampler}
	if o.N != nil {
		if *o.N < 1 || *o.N > s.cfg.MaxImages {
			return p, opt, badRequest("n", "n %d: want between 1 and %d", *o.N, s.cfg.MaxImages)
		}
		p.batch = *o.N
	}
	switch size := strings.ToLower(o.Size); size {
	case "", "auto":
		opt.size = "auto"
	default:
		ws, hs, ok := strings.Cut(size, "x")
		w, err1 := strconv.Atoi(ws)
		h, err2 := strconv.Atoi(hs)
		if !ok || err1 != nil || err2 != nil {
			return p, opt, badRequest("size", "size %q: want WIDTHxHEIGHT (e.g. 512x512) or auto", o.Size)
		}
		p.width, p.height = w, h
		opt.size = size
	}
	switch o.ResponseFormat {
	case "", "b64_json":
	case "url":
		opt.url = true
	default:
		return p, opt, badRequest("response_format", "response_format %q: want b64_json or url", o.ResponseFormat)
	}
	opt.format, opt.jpegQ = "png", 90
	switch o.OutputFormat {
	case "", "png":
	case "jpeg", "jpg":
		opt.format = "jpeg"
	default:
		return p, opt, badRequest("output_format", "output_format %q: want png or jpeg", o.OutputFormat)
	}
	if o.OutputCompression != nil {
		if *o.OutputCompression < 0 || *o.OutputCompression > 100 {
			return p, opt, badRequest("output_compression", "output_compression %d: want 0 to 100", *o.OutputCompression)
		}
		opt.jpegQ = max(1, 100-*o.OutputCompression)
	}
	steps, ok := qualitySteps[strings.ToLower(o.Quality)]
	if !ok {
		return p, opt, badRequest("quality", "quality %q: want auto, low, medium, high, standard or hd", o.Quality)
	}
	opt.quality = strings.ToLower(o.Quality)
	if opt.quality == "" {
		opt.quality = "auto"
	}
	p.steps = min(steps, s.cfg.MaxSteps)
	if o.Steps != nil {
		p.steps = *o.Steps
	}
	switch o.Background {
	case "", "auto", "opaque":
	default:
		return p, opt, badRequest("background", "background %q: this model draws opaque images only", o.Background)
	}
	if o.Seed != nil {
		p.seed = *o.Seed
	}
	if o.CFGScale != nil {
		p.cfg = *o.CFGScale
	}
	opt.stream = o.Stream
	if o.PartialImages != nil {
		if *o.PartialImages < 0 || *o.PartialImages > 3 {
			return p, opt, badRequest("partial_images", "partial_images %d: want 0 to 3", *o.PartialImages)
		}
		opt.partials = *o.PartialImages
	}
	if err := s.checkModelName(o.Model); err != nil {
		return p, opt, err
	}
	return p, opt, nil
}

// checkModelName accepts the loaded model, no model, or a name that is none of the
// server's (OpenAI clients send their own model names, like gpt-image-1): a model of the
// server's that is not loaded is an error, as switching is /sdapi/v1/options' job.
func (s *Server) checkModelName(name string) error {
	cur, _, _ := s.pool.current()
	if name == "" || name == cur.Name {
		return nil
	}
	for _, m := range s.models {
		if m.Name == name {
			return badRequest("model", "model %s is not the loaded one (%s); switch with POST /sdapi/v1/options {\"sd_model_checkpoint\": %q}", name, cur.Name, name)
		}
	}
	return nil
}

func (s *Server) handleOpenAIGenerate(w http.ResponseWriter, r *http.Request) {
	var o openAIRequest
	if err := decodeJSON(r, &o); err != nil {
		writeError(w, r, err)
		return
	}
	p, opt, err := s.openAISpec(o)
	if err == nil {
		var sp spec
		if sp.req, err = s.build(p); err == nil {
			sp.mode = modeTxt2Img
			s.openAIRun(w, r, sp, opt)
			return
		}
	}
	writeError(w, r, openAIParam(err))
}

// openAIParam names OpenAI's size field for errors about the width or height.
func openAIParam(err error) error {
	if ae, ok := err.(*apiError); ok && (ae.param == "width" || ae.param == "height") {
		c := *ae
		c.param = "size"
		return &c
	}
	return err
}

func (s *Server) handleOpenAIEdit(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseMultipartForm(8 << 20); err != nil {
		writeError(w, r, multipartError(err))
		return
	}
	defer r.MultipartForm.RemoveAll()
	form := r.MultipartForm
	field := func(name string) string {
		if v := form.Value[name]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	var o openAIRequest
	if v, ok := form.Value["prompt"]; ok && len(v) > 0 {
		o.Prompt = &v[0]
	}
	o.Model, o.Size, o.ResponseFormat, o.OutputFormat = field("model"), field("size"), field("response_format"), field("output_format")
	o.Quality, o.Background, o.NegativePrompt, o.Sampler = field("quality"), field("background"), field("negative_prompt"), field("sampler")
	o.Stream = field("stream") == "true"
	for _, f := range []struct {
		name string
		set  func(string) error
	}{
		{"n", func(v string) error { n, err := strconv.Atoi(v); o.N = &n; return err }},
		{"steps", func(v string) error { n, err := strconv.Atoi(v); o.Steps = &n; return err }},
		{"partial_images", func(v string) error { n, err := strconv.Atoi(v); o.PartialImages = &n; return err }},
		{"output_compression", func(v string) error { n, err := strconv.Atoi(v); o.OutputCompression = &n; return err }},
		{"seed", func(v string) error { n, err := strconv.ParseInt(v, 10, 64); o.Seed = &n; return err }},
		{"cfg_scale", func(v string) error { x, err := strconv.ParseFloat(v, 64); o.CFGScale = &x; return err }},
		{"strength", func(v string) error { x, err := strconv.ParseFloat(v, 64); o.Strength = &x; return err }},
	} {
		if v := field(f.name); v != "" {
			if err := f.set(v); err != nil {
				writeError(w, r, badRequest(f.name, "%s %q: not a number", f.name, v))
				return
			}
		}
	}
	p, opt, err := s.openAISpec(o)
	if err != nil {
		writeError(w, r, openAIParam(err))
		return
	}
	opt.edit = true
	img, err := formImage(form.File, "image", "image[]")
	if err != nil {
		writeError(w, r, err)
		return
	}
	if err := s.checkImageSize(img, p.width, p.height, "image"); err != nil {
		writeError(w, r, err)
		return
	}
	var mask image.Image
	if len(form.File["mask"]) > 0 {
		m, err := formImage(form.File, "mask")
		if err != nil {
			writeError(w, r, err)
			return
		}
		if m.Bounds().Size() != img.Bounds().Size() {
			writeError(w, r, badRequest("mask", "the mask is %v, the image %v: they must be the same size", m.Bounds().Size(), img.Bounds().Size()))
			return
		}
		mask = alphaMask(m)
	} else if hasTransparency(img) {
		mask = alphaMask(img) // no mask: the image's own transparency says what to edit
	}
	sp := spec{image: img}
	if sp.req, err = s.build(p); err != nil {
		writeError(w, r, openAIParam(err))
		return
	}
	if o.Strength != nil {
		sp.strength = *o.Strength
	}
	sp.mode = modeImg2Img
	if mask != nil {
		sp.mode, sp.mask = modeInpaint, mask
	}
	s.openAIRun(w, r, sp, opt)
}

func multipartError(err error) error {
	if ae := classify(err); ae.kind == "too_large" {
		return ae
	}
	return badRequest("", "want a multipart/form-data body: %v", err)
}

// formImage decodes the first upload of the first of names present.
func formImage(files map[string][]*multipart.FileHeader, names ...string) (image.Image, error) {
	for _, n := range names {
		if fh := files[n]; len(fh) > 0 {
			f, err := fh[0].Open()
			if err != nil {
				return nil, badRequest(n, "%s: %v", n, err)
			}
			defer f.Close()
			img, err := diffusion.DecodeImage(f, n)
			if err != nil {
				return nil, badRequest(n, "%v", err)
			}
			return img, nil
		}
	}
	return nil, badRequest(names[0], "%s is required (a PNG or JPEG upload)", names[0])
}

// openAIImage is an element of a response's data.
type openAIImage struct {
	B64JSON string `json:"b64_json,omitempty"`
	URL     string `json:"url,omitempty"`
	// Seed is this server's addition: what reproduces the image.
	Seed uint64 `json:"seed"`
}

// openAIRun queues the generation, waits for it (streaming events when asked) and
// answers in OpenAI's shape.
func (s *Server) openAIRun(w http.ResponseWriter, r *http.Request, sp spec, opt openAIOptions) {
	j, err := s.submit(sp, submitOptions{parent: r.Context()})
	if err != nil {
		writeError(w, r, err)
		return
	}
	if opt.stream {
		s.openAIStream(w, r, j, opt)
		return
	}
	if !wait(r.Context(), j) {
		return // the client left; its job is cancelled
	}
	v, _ := j.view()
	if v.Err != nil {
		writeError(w, r, v.Err)
		return
	}
	resp := map[string]any{"created": time.Now().Unix(), "background": "opaque", "output_format": opt.format,
		"quality": opt.quality, "size": opt.size}
	var data []openAIImage
	for _, g := range v.images() {
		b, err := encodeImage(g.img, opt.format, g.params.A1111(g.index), opt.jpegQ)
		if err != nil {
			writeError(w, r, err)
			return
		}
		resp["size"] = fmt.Sprintf("%dx%d", g.params.Width, g.params.Height)
		item := openAIImage{Seed: g.seed()}
		if opt.url {
			item.URL = baseURL(r) + "/v1/files/" + s.files.put(b, "image/"+opt.format, opt.format)
		} else {
			item.B64JSON = base64.StdEncoding.EncodeToString(b)
		}
		data = append(data, item)
	}
	resp["data"] = data
	writeJSON(w, http.StatusOK, resp)
}

// baseURL is the server's address as the client reached it.
func baseURL(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

// sse writes Server-Sent Events.
type sse struct {
	w http.ResponseWriter
	f http.Flusher
}

func startSSE(w http.ResponseWriter) *sse {
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no") // proxies must not hold the events back
	w.WriteHeader(http.StatusOK)
	f, _ := w.(http.Flusher)
	e := &sse{w: w, f: f}
	e.flush()
	return e
}

func (e *sse) flush() {
	if e.f != nil {
		e.f.Flush()
	}
}

func (e *sse) event(name string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(e.w, "event: %s\ndata: %s\n\n", name, b); err != nil {
		return err
	}
	e.flush()
	return nil
}

// openAIStream sends image_generation.partial_image events (image_edit.* for edits) as
// the sampling passes evenly spaced steps, partial_images of them, then one completed
// event per image.
func (s *Server) openAIStream(w http.ResponseWriter, r *http.Request, j *job, opt openAIOptions) {
	prefix := "image_generation."
	if opt.edit {
		prefix = "image_edit."
	}
	ev := startSSE(w)
	sent := 0
	for {
		v, changed := j.view()
		if v.State == stateRunning && sent < opt.partials && v.Progress.Steps > 0 && v.Progress.Preview != nil {
			// Partial k (0-based) is due once k+1 of partials+1 equal parts are done.
			if v.Progress.Step*(opt.partials+1) >= (sent+1)*v.Progress.Steps && v.Iteration == 0 {
				pw, ph := j.outputSize(v)
				b, err := encodeImage(scaleNearest(v.Progress.Preview, pw, ph), opt.format, "", opt.jpegQ)
				if err == nil {
					err = ev.event(prefix+"partial_image", map[string]any{"type": prefix + "partial_image",
						"b64_json": base64.StdEncoding.EncodeToString(b), "partial_image_index": sent,
						"created_at": time.Now().Unix(), "size": fmt.Sprintf("%dx%d", pw, ph), "quality": opt.quality,
						"background": "opaque", "output_format": opt.format})
				}
				if err != nil {
					return
				}
				sent++
				continue
			}
		}
		if v.Finished.IsZero() {
			select {
			case <-changed:
				continue
			case <-r.Context().Done():
				return
			}
		}
		if v.Err != nil {
			e := classify(v.Err)
			_ = ev.event("error", map[string]any{"type": "error", "error": openAIErrorBody(e)})
			return
		}
		for _, g := range v.images() {
			b, err := encodeImage(g.img, opt.format, g.params.A1111(g.index), opt.jpegQ)
			if err != nil {
				return
			}
			if ev.event(prefix+"completed", map[string]any{"type": prefix + "completed",
				"b64_json": base64.StdEncoding.EncodeToString(b), "created_at": time.Now().Unix(),
				"size": fmt.Sprintf("%dx%d", g.params.Width, g.params.Height), "quality": opt.quality,
				"background": "opaque", "output_format": opt.format, "seed": g.seed(),
				"usage": map[string]any{"input_tokens": 0, "output_tokens": 0, "total_tokens": 0,
					"input_tokens_details": map[string]any{"image_tokens": 0, "text_tokens": 0}}}) != nil {
				return
			}
		}
		return
	}
}

// openAIErrorBody is the error object of OpenAI's error JSON.
func openAIErrorBody(e *apiError) map[string]any {
	typ := "invalid_request_error"
	switch {
	case e.status == http.StatusUnauthorized:
		typ = "authentication_error"
	case e.status == http.StatusTooManyRequests:
		typ = "rate_limit_error"
	case e.status >= 500:
		typ = "server_error"
	}
	code := any(nil)
	if e.kind != "invalid_request" {
		code = e.kind
	}
	return map[string]any{"message": e.msg, "type": typ, "param": nullable(e.param), "code": code}
}

func writeOpenAIError(w http.ResponseWriter, e *apiError) {
	writeJSON(w, e.status, map[string]any{"error": openAIErrorBody(e)})
}

func (s *Server) handleOpenAIModels(w http.ResponseWriter, r *http.Request) {
	var data []map[string]any
	for _, m := range s.models {
		data = append(data, map[string]any{"id": m.Name, "object": "model", "created": s.started.Unix(), "owned_by": "gosd"})
	}
	writeJSON(w, http.StatusOK, map[string]any{"object": "list", "data": data})
}

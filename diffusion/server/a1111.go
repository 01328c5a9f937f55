package server

import (
	"cmp"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/gosd/gosd/diffusion"
)

// a1111Request holds the fields of AUTOMATIC1111's txt2img and img2img requests this
// server reads, with the web UI's defaults (newA1111Request); the response echoes it as
// "parameters". Width and height default to the model's native size rather than a fixed
// 512, which is SD 1.x's native size. Fields asking for what the runtime lacks (face
// restoration, tiling, scripts, variation seeds) are refused when set.
type a1111Request struct {
	Prompt            string         `json:"prompt"`
	NegativePrompt    string         `json:"negative_prompt"`
	Styles            []string       `json:"styles"`
	Seed              int64          `json:"seed"`
	Subseed           int64          `json:"subseed"`
	SubseedStrength   float64        `json:"subseed_strength"`
	SamplerName       string         `json:"sampler_name"`
	SamplerIndex      string         `json:"sampler_index"`
	Scheduler         string         `json:"scheduler"`
	BatchSize         int            `json:"batch_size"`
	NIter             int            `json:"n_iter"`
	Steps             int            `json:"steps"`
	CFGScale          float64        `json:"cfg_scale"`
	Width             int            `json:"width"`
	Height            int            `json:"height"`
	RestoreFaces      bool           `json:"restore_faces"`
	Tiling            bool           `json:"tiling"`
	Eta               float64        `json:"eta"`
	DenoisingStrength *float64       `json:"denoising_strength"`
	OverrideSettings  map[string]any `json:"override_settings"`
	EnableHR          bool           `json:"enable_hr"`
	// The hires fix (enable_hr): Request.Hires with the "Latent" upscaler (bilinear latents).
	HRScale           float64 `json:"hr_scale"`
	HRUpscaler        *string `json:"hr_upscaler"`
	HRSecondPassSteps int     `json:"hr_second_pass_steps"`
	HRResizeX         int     `json:"hr_resize_x"`
	HRResizeY         int     `json:"hr_resize_y"`
	HRSamplerName     *string `json:"hr_sampler_name"`
	HRPrompt          string  `json:"hr_prompt"`
	HRNegativePrompt  string  `json:"hr_negative_prompt"`
	// An SDXL refiner hand-over: refused ("" or "None" is none).
	RefinerCheckpoint string         `json:"refiner_checkpoint"`
	ScriptName        string         `json:"script_name"`
	AlwaysonScripts   map[string]any `json:"alwayson_scripts"`
	SendImages        bool           `json:"send_images"`
	SaveImages        bool           `json:"save_images"`

	// img2img
	InitImages           []string `json:"init_images,omitempty"`
	Mask                 string   `json:"mask,omitempty"`
	InpaintingMaskInvert int      `json:"inpainting_mask_invert"`
	IncludeInitImages    bool     `json:"include_init_images"`
}

func newA1111Request() a1111Request {
	return a1111Request{Seed: -1, Subseed: -1, SamplerIndex: "Euler", BatchSize: 1, NIter: 1, Steps: 50, CFGScale: 7, HRScale: 2,
		SendImages: true, Styles: []string{}, OverrideSettings: map[string]any{}, AlwaysonScripts: map[string]any{}}
}

// a1111Spec checks the request and makes its generation.
func (s *Server) a1111Spec(q *a1111Request, img2img bool) (spec, error) {
	unsupported := func(field string, set bool) error {
		if set {
			return badRequest(field, "%s is not supported by this server", field)
		}
		return nil
	}
	for _, u := range []struct {
		field string
		set   bool
	}{
		{"enable_hr", q.EnableHR && img2img}, {"restore_faces", q.RestoreFaces}, {"tiling", q.Tiling},
		{"script_name", q.ScriptName != ""},
		{"subseed_strength", q.SubseedStrength != 0}, {"styles", len(q.Styles) > 0}, {"save_images", q.SaveImages},
		{"refiner_checkpoint", q.RefinerCheckpoint != "" && q.RefinerCheckpoint != "None"},
	} {
		if err := unsupported(u.field, u.set); err != nil {
			return spec{}, err
		}
	}
	if q.NIter < 1 {
		return spec{}, badRequest("n_iter", "n_iter %d: want at least 1", q.NIter)
	}
	if q.BatchSize < 1 {
		return spec{}, badRequest("batch_size", "batch_size %d: want at least 1", q.BatchSize)
	}
	sampler := q.SamplerName
	if sampler == "" {
		sampler = q.SamplerIndex
	}
	p := params{prompt: q.Prompt, negative: q.NegativePrompt, width: q.Width, height: q.Height, steps: q.Steps,
		cfg: q.CFGScale, sampler: sampler, scheduler: q.Scheduler, seed: q.Seed, batch: q.BatchSize}
	req, err := s.build(p)
	if err != nil {
		return spec{}, err
	}
	if !(q.Eta >= 0 && q.Eta <= 1) {
		return spec{}, badRequest("eta", "eta %v: want between 0 and 1", q.Eta)
	}
	if req.Sampler == diffusion.DDIM {
		req.Eta = q.Eta // the other samplers take no eta; A1111's clients send it anyway
	}
	if v, ok := q.OverrideSettings["CLIP_stop_at_last_layers"]; ok {
		n, ok := v.(float64)
		if !ok || n < 1 || n > 12 || n != float64(int(n)) {
			return spec{}, badRequest("override_settings", "CLIP_stop_at_last_layers %v: want an integer from 1 to 12", v)
		}
		req.ClipSkip = int(n)
	}
	sp := spec{mode: modeTxt2Img, req: req, iterations: q.NIter}
	if !img2img {
		if q.EnableHR {
			if sp.req.Hires, err = s.a1111Hires(q); err != nil {
				return spec{}, err
			}
		}
		sp.controls, err = s.a1111Controls(q.AlwaysonScripts, nil, q.Width, q.Height)
		return sp, err
	}
	if len(q.InitImages) != 1 {
		return spec{}, badRequest("init_images", "init_images: want one image (got %d)", len(q.InitImages))
	}
	if sp.image, _, err = decodeBase64Image(q.InitImages[0], "init_images"); err != nil {
		return spec{}, err
	}
	if err := s.checkImageSize(sp.image, q.Width, q.Height, "init_images"); err != nil {
		return spec{}, err
	}
	sp.mode, sp.strength = modeImg2Img, 0.75
	if q.DenoisingStrength != nil {
		sp.strength = *q.DenoisingStrength
	}
	if !(sp.strength > 0 && sp.strength <= 1) {
		return spec{}, badRequest("denoising_strength", "denoising_strength %v: want in (0, 1]", sp.strength)
	}
	if q.Mask != "" {
		if sp.mask, _, err = decodeBase64Image(q.Mask, "mask"); err != nil {
			return spec{}, err
		}
		if q.InpaintingMaskInvert == 1 {
			sp.mask = invertMask(sp.mask)
		}
		sp.mode = modeInpaint
	}
	sp.controls, err = s.a1111Controls(q.AlwaysonScripts, sp.image, q.Width, q.Height)
	return sp, err
}

// a1111Hires reads the hires-fix fields of a txt2img request with enable_hr: the
// second pass at hr_scale with the "Latent" upscaler (the web UI's default), at
// denoising_strength (default 0.75, the API's) for hr_second_pass_steps (0: steps).
// What the runtime's hires fix does not do (other upscalers, a target size instead of a
// scale, another sampler or prompt for the second pass) is refused.
func (s *Server) a1111Hires(q *a1111Request) (*diffusion.Hires, error) {
	if u := q.HRUpscaler; u != nil && *u != "Latent" {
		return nil, badRequest("hr_upscaler", "hr_upscaler %q is not supported by this server (only \"Latent\")", *u)
	}
	switch {
	case q.HRResizeX != 0 || q.HRResizeY != 0:
		return nil, badRequest("hr_resize_x", "hr_resize_x / hr_resize_y are not supported by this server: give hr_scale")
	case q.HRSamplerName != nil && *q.HRSamplerName != "" && *q.HRSamplerName != q.SamplerName && *q.HRSamplerName != q.SamplerIndex:
		return nil, badRequest("hr_sampler_name", "a second-pass sampler other than the first pass's is not supported by this server")
	case (q.HRPrompt != "" && q.HRPrompt != q.Prompt) || (q.HRNegativePrompt != "" && q.HRNegativePrompt != q.NegativePrompt):
		return nil, badRequest("hr_prompt", "a second-pass prompt other than the first pass's is not supported by this server")
	case !(q.HRScale > 1 && q.HRScale <= 4):
		return nil, badRequest("hr_scale", "hr_scale %v: want more than 1 and at most 4", q.HRScale)
	case q.HRSecondPassSteps < 0 || q.HRSecondPassSteps > s.cfg.MaxSteps:
		return nil, badRequest("hr_second_pass_steps", "hr_second_pass_steps %d: want between 0 and %d", q.HRSecondPassSteps, s.cfg.MaxSteps)
	}
	h := &diffusion.Hires{Scale: q.HRScale, Steps: q.HRSecondPassSteps, Strength: 0.75}
	if q.DenoisingStrength != nil {
		h.Strength = *q.DenoisingStrength
	}
	if !(h.Strength > 0 && h.Strength <= 1) {
		return nil, badRequest("denoising_strength", "denoising_strength %v: want in (0, 1]", h.Strength)
	}
	_, info, _ := s.pool.current()
	w, hgt := cmp.Or(q.Width, info.Width), cmp.Or(q.Height, info.Height)
	if int(float64(w)*q.HRScale) > s.cfg.MaxSize || int(float64(hgt)*q.HRScale) > s.cfg.MaxSize {
		return nil, badRequest("hr_scale", "%dx%d at hr_scale %v is over this server's limit of %d px a side", w, hgt, q.HRScale, s.cfg.MaxSize)
	}
	return h, nil
}

func (s *Server) handleA1111Txt2Img(w http.ResponseWriter, r *http.Request) {
	s.a1111Generate(w, r, false)
}
func (s *Server) handleA1111Img2Img(w http.ResponseWriter, r *http.Request) {
	s.a1111Generate(w, r, true)
}

func (s *Server) a1111Generate(w http.ResponseWriter, r *http.Request, img2img bool) {
	q := newA1111Request()
	if img2img {
		strength := 0.75
		q.DenoisingStrength = &strength
	}
	if err := decodeJSON(r, &q); err != nil {
		writeError(w, r, err)
		return
	}
	sp, err := s.a1111Spec(&q, img2img)
	if err != nil {
		writeError(w, r, err)
		return
	}
	j, err := s.submit(sp, submitOptions{parent: r.Context()})
	if err != nil {
		writeError(w, r, err)
		return
	}
	if !wait(r.Context(), j) {
		return
	}
	v, _ := j.view()
	// An interrupted job answers with the images it finished, as the web UI does.
	if v.Err != nil && (v.State != stateCancelled || len(v.Results) == 0) {
		writeError(w, r, v.Err)
		return
	}
	gen := v.images()
	images := []string{}
	if q.SendImages {
		for _, g := range gen {
			b, err := diffusion.EncodePNG(g.img, g.params.A1111(g.index))
			if err != nil {
				writeError(w, r, err)
				return
			}
			images = append(images, base64.StdEncoding.EncodeToString(b))
		}
	}
	if img2img && q.IncludeInitImages {
		images = append(images, q.InitImages...)
	}
	q.Seed = int64(sp.req.Seed) // the parameters say what ran, as the web UI's do
	info, err := json.Marshal(a1111Info(v, sp, gen))
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"images": images, "parameters": q, "info": string(info)})
}

// a1111Info is the JSON object the web UI returns as info, a string.
func a1111Info(v jobView, sp spec, gen []generated) map[string]any {
	seeds, prompts, negatives, infotexts := []uint64{}, []string{}, []string{}, []string{}
	for _, g := range gen {
		seeds = append(seeds, g.seed())
		prompts = append(prompts, g.params.Prompt)
		negatives = append(negatives, g.params.NegativePrompt)
		infotexts = append(infotexts, g.params.A1111(g.index))
	}
	info := map[string]any{
		"prompt": sp.req.Prompt, "all_prompts": prompts, "negative_prompt": sp.req.NegativePrompt,
		"all_negative_prompts": negatives, "seed": sp.req.Seed, "all_seeds": seeds, "subseed": -1,
		"all_subseeds": seeds, "subseed_strength": 0, "width": sp.req.Width, "height": sp.req.Height,
		"sampler_name": "", "cfg_scale": sp.req.GuidanceScale, "steps": sp.req.Steps, "batch_size": max(1, sp.req.BatchSize),
		"restore_faces": false, "face_restoration_model": nil, "sd_model_name": v.Model.Name, "sd_model_hash": nil,
		"sd_vae_name": nil, "sd_vae_hash": nil, "seed_resize_from_w": -1, "seed_resize_from_h": -1,
		"denoising_strength": sp.strength, "extra_generation_params": map[string]any{}, "index_of_first_image": 0,
		"infotexts": infotexts, "styles": []string{}, "job_timestamp": v.Created.Format("20060102150405"),
		"clip_skip": max(1, sp.req.ClipSkip), "is_using_inpainting_conditioning": sp.mode == modeInpaint && v.Model.Inpainting,
		"version": "gosd",
	}
	if len(gen) > 0 {
		p := gen[0].params
		info["width"], info["height"], info["sampler_name"], info["steps"] = p.Width, p.Height, p.Sampler.A1111Name(), p.Steps
		if p.ModelHash != "" {
			info["sd_model_hash"] = p.ModelHash
		}
	}
	return info
}

// current is the job /sdapi/v1/progress reports on: the running one started last, else
// the oldest queued one.
func (s *Server) currentJob() (*job, int) {
	live := s.liveJobs()
	var cur *job
	var curStart time.Time
	for _, j := range live {
		v, _ := j.view()
		if v.State == stateRunning && (cur == nil || v.Started.After(curStart)) {
			cur, curStart = j, v.Started
		}
	}
	if cur == nil && len(live) > 0 {
		cur = live[0]
	}
	return cur, len(live)
}

func (s *Server) handleA1111Progress(w http.ResponseWriter, r *http.Request) {
	j, count := s.currentJob()
	state := map[string]any{"skipped": false, "interrupted": false, "stopping_generation": false, "job": "",
		"job_count": count, "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}
	resp := map[string]any{"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": nil, "textinfo": nil}
	if j != nil {
		v, _ := j.view()
		iters := max(1, j.spec.iterations)
		state["job"] = v.ID
		state["job_timestamp"] = v.Created.Format("20060102150405")
		state["job_no"] = v.Iteration
		state["sampling_step"], state["sampling_steps"] = v.Progress.Step, v.Progress.Steps
		if v.State == stateRunning && v.Progress.Steps > 0 {
			frac := (float64(v.Iteration) + float64(v.Progress.Step)/float64(v.Progress.Steps)) / float64(iters)
			resp["progress"] = frac
			if elapsed := time.Since(v.Started).Seconds(); frac > 0 {
				resp["eta_relative"] = elapsed/frac - elapsed
			}
			resp["textinfo"] = fmt.Sprintf("Step %d/%d, batch %d/%d", v.Progress.Step, v.Progress.Steps, v.Iteration+1, iters)
			if v.Progress.Preview != nil && r.URL.Query().Get("skip_current_image") != "true" {
				// The preview is at latent resolution; the web UI's is the image's size.
				pw, ph := j.outputSize(v)
				if b, err := diffusion.EncodePNG(scaleNearest(v.Progress.Preview, pw, ph), ""); err == nil {
					resp["current_image"] = base64.StdEncoding.EncodeToString(b)
				}
			}
		}
	}
	writeJSON(w, http.StatusOK, resp)
}

// handleA1111Interrupt stops the running generations; their requests answer with the
// images finished so far.
func (s *Server) handleA1111Interrupt(w http.ResponseWriter, r *http.Request) {
	for _, j := range s.liveJobs() {
		if v, _ := j.view(); v.State == stateRunning {
			j.cancel(errInterrupted)
		}
	}
	writeJSON(w, http.StatusOK, nil)
}

// handleA1111Skip ends the running batch of the running generations; the next of their
// n_iter batches starts.
func (s *Server) handleA1111Skip(w http.ResponseWriter, r *http.Request) {
	for _, j := range s.liveJobs() {
		j.skipIteration()
	}
	writeJSON(w, http.StatusOK, nil)
}

func (s *Server) handleA1111GetOptions(w http.ResponseWriter, r *http.Request) {
	m, _, _ := s.pool.current()
	writeJSON(w, http.StatusOK, map[string]any{"sd_model_checkpoint": m.Name, "sd_checkpoint_hash": nil,
		"CLIP_stop_at_last_layers": 1, "samples_format": "png"})
}

// handleA1111SetOptions switches the model on sd_model_checkpoint, once the running work
// is done; the web UI's other options have no meaning here and are ignored, as it
// ignores unknown ones.
func (s *Server) handleA1111SetOptions(w http.ResponseWriter, r *http.Request) {
	var opts map[string]any
	if err := decodeJSON(r, &opts); err != nil {
		writeError(w, r, err)
		return
	}
	if v, ok := opts["sd_model_checkpoint"]; ok {
		name, _ := v.(string)
		m, ok := s.findModel(name)
		if !ok {
			writeError(w, r, badRequest("sd_model_checkpoint", "model %q not found (GET /sdapi/v1/sd-models lists them)", v))
			return
		}
		if err := s.pool.switchTo(r.Context(), m); err != nil {
			writeError(w, r, err)
			return
		}
		s.log.Info("model switched", "model", m.Name, "request_id", requestID(r))
	}
	writeJSON(w, http.StatusOK, nil)
}

// findModel finds a model by its name (its title in /sdapi/v1/sd-models) or its path.
func (s *Server) findModel(name string) (Model, bool) {
	for _, m := range s.models {
		if name == m.Name || name == m.Path {
			return m, true
		}
	}
	return Model{}, false
}

func (s *Server) handleA1111Models(w http.ResponseWriter, r *http.Request) {
	out := []map[string]any{}
	for _, m := range s.models {
		out = append(out, map[string]any{"title": m.Name, "model_name": strings.TrimSuffix(m.Name, extOf(m.Name)),
			"hash": nil, "sha256": nil, "filename": m.Path, "config": nil})
	}
	writeJSON(w, http.StatusOK, out)
}

func extOf(name string) string {
	if i := strings.LastIndexByte(name, '.'); i > 0 {
		return name[i:]
	}
	return ""
}

func (s *Server) handleA1111Samplers(w http.ResponseWriter, r *http.Request) {
	out := []map[string]any{}
	for _, smp := range diffusion.Samplers() {
		out = append(out, map[string]any{"name": smp.A1111Name(), "aliases": []string{smp.String()}, "options": map[string]any{}})
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleA1111Schedulers(w http.ResponseWriter, r *http.Request) {
	rho := map[string]float64{"automatic": -1, "karras": 7, "exponential": -1}
	out := []map[string]any{}
	for _, sch := range schedulers {
		out = append(out, map[string]any{"name": sch.name, "label": sch.label, "aliases": nil,
			"default_rho": rho[sch.name], "need_inner_model": false})
	}
	writeJSON(w, http.StatusOK, out)
}

// handleA1111Upscalers lists "None" only: the runtime has no upscaler.
func (s *Server) handleA1111Upscalers(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, []map[string]any{{"name": "None", "model_name": nil, "model_path": nil, "model_url": nil, "scale": 4}})
}

// handleA1111Loras lists none: the runtime does not load LoRAs.
// handleA1111Loras lists the adapters of Config.LoRADir as the web UI's Lora extension
// does (name, alias, path, metadata: the safetensors header's __metadata__ is not read).
func (s *Server) handleA1111Loras(w http.ResponseWriter, r *http.Request) {
	out := []map[string]any{}
	if s.cfg.LoRADir != "" {
		index, err := diffusion.IndexLoRAs(s.cfg.LoRADir)
		if err != nil {
			writeError(w, r, fmt.Errorf("listing %s: %w", s.cfg.LoRADir, err))
			return
		}
		for _, name := range slices.Sorted(maps.Keys(index)) {
			for _, path := range index[name] {
				out = append(out, map[string]any{"name": name, "alias": name, "path": path, "metadata": map[string]any{}})
			}
		}
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleA1111PNGInfo(w http.ResponseWriter, r *http.Request) {
	var q struct {
		Image string `json:"image"`
	}
	if err := decodeJSON(r, &q); err != nil {
		writeError(w, r, err)
		return
	}
	if q.Image == "" {
		writeError(w, r, badRequest("image", "image is required (base64 PNG)"))
		return
	}
	_, raw, err := decodeBase64Image(q.Image, "image")
	if err != nil {
		writeError(w, r, err)
		return
	}
	items := map[string]string{}
	if t, err := pngText(raw); err == nil {
		items = t
	}
	info := items["parameters"]
	delete(items, "parameters")
	writeJSON(w, http.StatusOK, map[string]any{"info": info, "items": items, "parameters": parseInfotext(info)})
}

// parseInfotext splits AUTOMATIC1111's parameters text into its fields, as the web UI's
// parse_generation_parameters: Prompt, Negative prompt, then the "Key: value" pairs of
// the last line (quoted values unquoted), with Size also as Size-1 and Size-2.
func parseInfotext(text string) map[string]any {
	out := map[string]any{}
	if text == "" {
		return out
	}
	lines := strings.Split(strings.TrimSpace(text), "\n")
	last := lines[len(lines)-1]
	if strings.Contains(last, "Steps: ") {
		lines = lines[:len(lines)-1]
	} else {
		last = ""
	}
	var prompt, negative []string
	inNeg := false
	for _, l := range lines {
		if t, ok := strings.CutPrefix(l, "Negative prompt: "); ok {
			inNeg, l = true, t
		}
		if inNeg {
			negative = append(negative, l)
		} else {
			prompt = append(prompt, l)
		}
	}
	out["Prompt"] = strings.Join(prompt, "\n")
	out["Negative prompt"] = strings.Join(negative, "\n")
	for rest := last; rest != ""; {
		key, after, ok := strings.Cut(rest, ": ")
		if !ok {
			break
		}
		key = strings.TrimSpace(key)
		var value string
		if strings.HasPrefix(after, `"`) {
			dec := json.NewDecoder(strings.NewReader(after))
			if err := dec.Decode(&value); err != nil {
				break
			}
			after = after[dec.InputOffset():]
			after = strings.TrimPrefix(after, ",")
		} else {
			value, after, _ = strings.Cut(after, ",")
		}
		rest = strings.TrimSpace(after)
		out[key] = value
		if key == "Size" {
			if a, b, ok := strings.Cut(value, "x"); ok {
				out["Size-1"], out["Size-2"] = a, b
			}
		}
	}
	return out
}

// writeA1111Error writes a validation error as FastAPI's 422 {"detail": [...]}, and
// others as the web UI's API does ({"error", "detail", "body", "errors"}).
func writeA1111Error(w http.ResponseWriter, e *apiError) {
	if e.kind == "invalid_request" {
		loc := []any{"body"}
		if e.param != "" {
			loc = append(loc, e.param)
		}
		writeJSON(w, http.StatusUnprocessableEntity, map[string]any{"detail": []map[string]any{{"loc": loc, "msg": e.msg, "type": "value_error"}}})
		return
	}
	writeJSON(w, e.status, map[string]any{"error": e.kind, "detail": e.msg, "body": "", "errors": e.msg})
}

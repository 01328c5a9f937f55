package server

import (
	"encoding/base64"
	"net/http"
	"time"

	"github.com/gosd/gosd/diffusion"
)

// jobRequest is the body of POST /v1/jobs: a txt2img, img2img or inpaint generation in
// this server's own terms (our sampler names or AUTOMATIC1111's).
type jobRequest struct {
	Prompt         string `json:"prompt"`
	NegativePrompt string `json:"negative_prompt"`
	// Prompt2 and NegativePrompt2 go to SDXL's second text encoder ("": the first ones).
	Prompt2         string  `json:"prompt_2"`
	NegativePrompt2 string  `json:"negative_prompt_2"`
	Width           int     `json:"width"`
	Height          int     `json:"height"`
	Steps           int     `json:"steps"`
	CFGScale        float64 `json:"cfg_scale"`
	Sampler         string  `json:"sampler"`
	Scheduler       string  `json:"scheduler"`
	Seed            int64   `json:"seed"`
	BatchSize       int     `json:"batch_size"`
	// Image (base64, or a data URL) makes it img2img; with Mask (white = repaint),
	// inpainting.
	Image    string  `json:"image"`
	Mask     string  `json:"mask"`
	Strength float64 `json:"strength"`
}

// jobJSON is a job as /v1/jobs reports it.
type jobJSON struct {
	ID         string      `json:"id"`
	Status     jobState    `json:"status"`
	CreatedAt  time.Time   `json:"created_at"`
	StartedAt  *time.Time  `json:"started_at,omitempty"`
	FinishedAt *time.Time  `json:"finished_at,omitempty"`
	Progress   progress    `json:"progress"`
	Model      string      `json:"model,omitempty"`
	Error      *errorJSON  `json:"error,omitempty"`
	Images     []imageJSON `json:"images,omitempty"`
}

type progress struct {
	Step  int `json:"step"`
	Steps int `json:"steps"`
	// Preview is a PNG of the first image as it looks now (at latent resolution, or full
	// size with a TAESD: sdcli serve --taesd), in the event stream only.
	Preview string `json:"preview,omitempty"`
}

type errorJSON struct {
	Message string `json:"message"`
	Type    string `json:"type"`
}

type imageJSON struct {
	// PNG is the image with its parameters in a text chunk, base64.
	PNG        string `json:"png"`
	Seed       uint64 `json:"seed"`
	Parameters string `json:"parameters"`
	Width      int    `json:"width"`
	Height     int    `json:"height"`
}

func toJobJSON(v jobView, withImages bool) (jobJSON, error) {
	out := jobJSON{ID: v.ID, Status: v.State, CreatedAt: v.Created, Model: v.Model.Name,
		Progress: progress{Step: v.Progress.Step, Steps: v.Progress.Steps}}
	if !v.Started.IsZero() {
		out.StartedAt = &v.Started
	}
	if !v.Finished.IsZero() {
		out.FinishedAt = &v.Finished
	}
	if v.Err != nil {
		e := classify(v.Err)
		out.Error = &errorJSON{Message: e.msg, Type: e.kind}
	}
	if withImages {
		for _, g := range v.images() {
			text := g.params.A1111(g.index)
			b, err := diffusion.EncodePNG(g.img, text)
			if err != nil {
				return out, err
			}
			out.Images = append(out.Images, imageJSON{PNG: base64.StdEncoding.EncodeToString(b), Seed: g.seed(),
				Parameters: text, Width: g.params.Width, Height: g.params.Height})
		}
	}
	return out, nil
}

func (s *Server) handleJobCreate(w http.ResponseWriter, r *http.Request) {
	q := jobRequest{Steps: 20, CFGScale: 7.5, Seed: -1, BatchSize: 1}
	if err := decodeJSON(r, &q); err != nil {
		writeError(w, r, err)
		return
	}
	req, err := s.build(params{prompt: q.Prompt, negative: q.NegativePrompt, width: q.Width, height: q.Height,
		steps: q.Steps, cfg: q.CFGScale, sampler: q.Sampler, scheduler: q.Scheduler, seed: q.Seed, batch: q.BatchSize})
	if err != nil {
		writeError(w, r, err)
		return
	}
	req.Prompt2, req.NegativePrompt2 = q.Prompt2, q.NegativePrompt2
	sp := spec{mode: modeTxt2Img, req: req, strength: q.Strength}
	if q.Image != "" {
		if sp.image, _, err = decodeBase64Image(q.Image, "image"); err == nil {
			err = s.checkImageSize(sp.image, q.Width, q.Height, "image")
		}
		if err != nil {
			writeError(w, r, err)
			return
		}
		sp.mode = modeImg2Img
		if q.Mask != "" {
			if sp.mask, _, err = decodeBase64Image(q.Mask, "mask"); err != nil {
				writeError(w, r, err)
				return
			}
			sp.mode = modeInpaint
		}
	} else if q.Mask != "" {
		writeError(w, r, badRequest("mask", "a mask needs an image"))
		return
	}
	j, err := s.submit(sp, submitOptions{keep: true})
	if err != nil {
		writeError(w, r, err)
		return
	}
	v, _ := j.view()
	out, _ := toJobJSON(v, false)
	w.Header().Set("Location", "/v1/jobs/"+j.id)
	writeJSON(w, http.StatusAccepted, out)
}

func (s *Server) jobOr404(w http.ResponseWriter, r *http.Request) *job {
	j := s.job(r.PathValue("id"))
	if j == nil {
		writeError(w, r, &apiError{status: http.StatusNotFound, kind: "not_found",
			msg: "no such job (finished jobs are kept for " + s.cfg.ResultTTL.String() + ")"})
	}
	return j
}

func (s *Server) handleJobGet(w http.ResponseWriter, r *http.Request) {
	j := s.jobOr404(w, r)
	if j == nil {
		return
	}
	v, _ := j.view()
	out, err := toJobJSON(v, true)
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// handleJobDelete cancels a queued or running job; a finished one is forgotten.
func (s *Server) handleJobDelete(w http.ResponseWriter, r *http.Request) {
	j := s.jobOr404(w, r)
	if j == nil {
		return
	}
	j.cancel(errCancelled)
	<-j.done // within one runtime operation
	v, _ := j.view()
	out, _ := toJobJSON(v, false)
	writeJSON(w, http.StatusOK, out)
}

// handleJobEvents streams "progress" events (with a preview) while the job runs, then
// one "done" event with the job and its images; a client that joins late gets the
// current state first.
func (s *Server) handleJobEvents(w http.ResponseWriter, r *http.Request) {
	j := s.jobOr404(w, r)
	if j == nil {
		return
	}
	ev := startSSE(w)
	lastStep, lastEval := -1, -1
	for {
		v, changed := j.view()
		if !v.Finished.IsZero() {
			out, err := toJobJSON(v, true)
			if err != nil {
				return
			}
			_ = ev.event("done", out)
			return
		}
		if v.Progress.Evaluation != lastEval || v.Progress.Step != lastStep {
			lastStep, lastEval = v.Progress.Step, v.Progress.Evaluation
			out, _ := toJobJSON(v, false)
			if v.Progress.Preview != nil {
				if b, err := diffusion.EncodePNG(v.Progress.Preview, ""); err == nil {
					out.Progress.Preview = base64.StdEncoding.EncodeToString(b)
				}
			}
			if ev.event("progress", out) != nil {
				return
			}
		}
		select {
		case <-changed:
		case <-r.Context().Done():
			return
		}
	}
}

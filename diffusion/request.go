package diffusion

import (
	"encoding/json"
	"fmt"
	"image"
	"strings"
	"time"

	"github.com/gosd/gosd/diffusion/lora"
	"github.com/gosd/gosd/diffusion/modelfile"
	"github.com/gosd/gosd/diffusion/rng"
	"github.com/gosd/gosd/diffusion/schedule"
)

// Sampler is the sampling algorithm: SamplerAuto, the zero value, uses the scheduler the
// model's scheduler_config.json names, as diffusers does; the others are schedule's
// samplers, shifted by one to make room for it (names and classes live in schedule).
type Sampler int

const (
	SamplerAuto      Sampler = 0
	DDPM             Sampler = Sampler(schedule.DDPM + 1)
	DDIM             Sampler = Sampler(schedule.DDIM + 1)
	PNDM             Sampler = Sampler(schedule.PNDM + 1)
	Euler            Sampler = Sampler(schedule.Euler + 1)
	EulerAncestral   Sampler = Sampler(schedule.EulerAncestral + 1)
	Heun             Sampler = Sampler(schedule.Heun + 1)
	DPM2             Sampler = Sampler(schedule.DPM2 + 1)
	DPMPP2M          Sampler = Sampler(schedule.DPMPP2M + 1)
	DPMPP2SAncestral Sampler = Sampler(schedule.DPMPP2SAncestral + 1)
	LMS              Sampler = Sampler(schedule.LMS + 1)
	UniPC            Sampler = Sampler(schedule.UniPC + 1)
	LCM              Sampler = Sampler(schedule.LCM + 1)
)

// samplerOf is the Sampler that runs schedule's ss.
func samplerOf(ss schedule.Sampler) Sampler { return Sampler(ss) + 1 }

// scheduleSampler is the schedule sampler s runs; s must not be SamplerAuto.
func (s Sampler) scheduleSampler() schedule.Sampler { return schedule.Sampler(s - 1) }

func (s Sampler) valid() bool { return s == SamplerAuto || s.scheduleSampler().Valid() }

// String is the sampler's name: "auto" or schedule's names (ddim, euler_a, dpmpp_2m, ...).
func (s Sampler) String() string {
	if s == SamplerAuto {
		return "auto"
	}
	if !s.valid() {
		return fmt.Sprintf("Sampler(%d)", int(s))
	}
	return s.scheduleSampler().String()
}

// A1111Name is the sampler's name in AUTOMATIC1111's generation parameters.
func (s Sampler) A1111Name() string {
	if s.valid() && s != SamplerAuto {
		return s.scheduleSampler().A1111Name()
	}
	return s.String()
}

// Samplers lists every sampler, SamplerAuto excluded, in the order of their constants.
func Samplers() []Sampler {
	var out []Sampler
	for s := Sampler(1); s.valid(); s++ {
		out = append(out, s)
	}
	return out
}

// ParseSampler parses "auto" or a schedule sampler name.
func ParseSampler(name string) (Sampler, error) {
	if strings.EqualFold(name, "auto") || name == "" {
		return SamplerAuto, nil
	}
	ss, err := schedule.ParseSampler(name)
	if err != nil {
		return 0, fmt.Errorf("%w (or auto: the model's scheduler)", err)
	}
	return samplerOf(ss), nil
}

// ConfiguredSampler is the sampler SamplerAuto means for a model: the scheduler class its
// scheduler_config.json names (Euler when the class is not one of the samplers).
func ConfiguredSampler(cfg modelfile.SchedulerConfig) Sampler {
	if ss, ok := schedule.SamplerForClass(cfg.ClassName); ok {
		return samplerOf(ss)
	}
	return Euler
}

// Request describes one generation. Zero values are the documented defaults.
type Request struct {
	Prompt string
	// NegativePrompt is what classifier-free guidance steers away from ("" is the empty
	// prompt, as diffusers; SDXL models with force_zeros_for_empty_prompt use zeros when
	// it and NegativePrompt2 are both empty, as diffusers with negative_prompt None).
	NegativePrompt string
	// Prompt2 and NegativePrompt2 go to SDXL's second text encoder; "" uses Prompt and
	// NegativePrompt (diffusers' prompt_2 and negative_prompt_2). Models with one text
	// encoder refuse them.
	Prompt2, NegativePrompt2 string
	// SizeConditioning is SDXL's micro-conditioning; the zero value is diffusers'
	// default. Models without it refuse anything else.
	SizeConditioning SizeConditioning
	// Width and Height in pixels, multiples of 8 (and of the VAE's downsampling factor
	// where that is larger).
	// 0: the model's native size (512 for SD 1.x).
	Width, Height int
	// Steps is the number of sampling steps (default 20; second-order samplers evaluate
	// the UNet about twice per step).
	Steps int
	// GuidanceScale is the classifier-free guidance weight (default 7.5). At 1 or below
	// the negative prompt is not used and each step is a single UNet batch; above 1,
	// uncond and cond run as one UNet call on a doubled batch.
	GuidanceScale float64
	// GuidanceRescale is diffusers' guidance_rescale φ in [0, 1] (default 0: off).
	GuidanceRescale float64
	// Sampler is the sampling algorithm (default: the model's configured scheduler).
	Sampler Sampler
	// Schedule is the sigma schedule of sigma-based samplers (default: the scheduler
	// config's). DPM++ 2M Karras is Sampler DPMPP2M with Schedule SigmasKarras.
	Schedule schedule.SigmaSchedule
	// Eta is DDIM's η (default 0).
	Eta float64
	// TimestepSpacing overrides the scheduler config's timestep_spacing (leading,
	// trailing or linspace). The default is the config's value, or when the config has
	// none the sampler's diffusers class default: leading for DDIM and PNDM, linspace
	// for Euler and the other k-diffusion and multistep samplers.
	TimestepSpacing schedule.TimestepSpacing
	// PromptSyntax is how prompts are read (default PromptA1111: emphasis, BREAK and
	// chunks of 75 tokens; PromptPlain: tokenized as diffusers does).
	PromptSyntax PromptSyntax
	// Seed seeds the noise generator; the zero value is seed 0. The initial noise of the
	// whole batch is one draw of BatchSize latents, then stochastic samplers continue
	// the same stream, as diffusers with one generator.
	Seed uint64
	// RNG is the generator family (default rng.CPU, torch's CPU generator as diffusers
	// uses by default; rng.CUDA reproduces seeds of UIs that draw noise on the GPU).
	RNG rng.Kind
	// BatchSize is the number of images generated together, as one batch (default 1).
	BatchSize int
	// ClipSkip in AUTOMATIC1111's numbering: 0 or 1 uses the text encoder's last layer,
	// 2 the penultimate one, and so on.
	ClipSkip int
	// Progress, when set, is called after every UNet evaluation (on the calling
	// goroutine; a slow callback slows the run).
	Progress func(Progress)
	// Preview asks for Progress.Preview (a fast approximation of the first image).
	Preview bool
	// Controls condition the generation on control images through ControlNets (see
	// Control); their residuals are summed.
	Controls []Control
	// Decoder decodes the final image (default DecoderVAE; DecoderTAESD needs WithTAESD).
	Decoder Decoder
	// VAETiling is whether the VAE works in tiles (default TilingAuto: above a memory
	// bound).
	VAETiling Tiling
	// Hires, for Txt2Img, adds AUTOMATIC1111's hires fix: a second pass at a larger
	// size (nil: none).
	Hires *Hires
	// LoRAs are adapters merged into the model's weights for this request, each at its
	// own scales (see LoRA). The weights are a property of the loaded model, shared by
	// its Clones: a request with another set than the installed one waits for the
	// running calls of every clone, then patches only the weights the old and new sets
	// touch (without reloading the model) and runs before any other set can be installed.
	LoRAs []LoRA
	// LoRADir is the folder AUTOMATIC1111 prompt tags such as <lora:NAME:0.8> name their
	// files in (see ParseLoRATags); the tags are taken out of Prompt and their adapters
	// added to LoRAs. Without it a LoRA tag is an error (PromptPlain leaves tags as text).
	// Params.Prompt keeps the tags, as the web UI's generation parameters do.
	LoRADir string
	// Embeddings are textual-inversion files (see lora.LoadEmbedding), and EmbeddingDir a
	// folder searched with its subfolders for more (.safetensors, .pt, .bin): as in
	// AUTOMATIC1111's web UI, a file's base name written in a prompt or negative prompt
	// stands for its N vectors, which count toward the 75-token chunks (PromptPlain: as
	// diffusers' load_textual_inversion tokens, within its one chunk). SDXL embeddings
	// give clip_l to the first text encoder and clip_g to the second.
	Embeddings   []string
	EmbeddingDir string

	// onStep, for tests: the latents after each sampler step.
	onStep func(step int, latents []float32)
}

// Progress reports one finished UNet evaluation.
type Progress struct {
	// Step is the number of sampling steps finished, out of Steps (those the call runs:
	// fewer than Request.Steps for img2img). Second-order samplers evaluate the UNet
	// twice a step, so Step can repeat.
	Step, Steps int
	// Evaluation is the UNet evaluation just finished (1-based), out of Evaluations.
	Evaluation, Evaluations int
	Timestep                float64
	Elapsed                 time.Duration
	// Preview is the first image of the batch as the latents look now; nil unless
	// Request.Preview. With WithTAESD it is TAESD's decoding at the final size, else a
	// linear approximation of the VAE at latent resolution.
	Preview image.Image
}

// Img2ImgRequest transforms an image.
type Img2ImgRequest struct {
	Request
	// Image is the starting picture; it is resized (Lanczos) to Width x Height, which
	// default to its own size rounded down to a multiple of 8.
	Image image.Image
	// Strength in (0, 1] is how much is repainted: the run starts at that fraction of
	// the schedule (default 0.8, diffusers' default).
	Strength float64
}

// InpaintRequest repaints the masked part of an image. Outpainting is inpainting on an
// extended canvas, see ExtendCanvas.
type InpaintRequest struct {
	Request
	Image image.Image
	// Mask selects what is repainted: white (>= 50% luminance) is new, black is kept.
	// Resized to the image like it.
	Mask image.Image
	// Strength in (0, 1] (default 1: the masked area is generated from pure noise).
	Strength float64
}

// Result is the output of one call.
type Result struct {
	Images  []image.Image // *image.RGBA, one per batch element
	Params  Params
	Timings Timings
}

// Timings splits a call's wall time by phase.
type Timings struct {
	TextEncode time.Duration   // tokenizer and text encoder
	Encode     time.Duration   // VAE encoder (img2img, inpainting)
	Steps      []time.Duration // each UNet evaluation with its sampler step
	Decode     time.Duration   // VAE decoder and conversion to images
	Total      time.Duration
}

// Sampling is the sum of Steps.
func (t Timings) Sampling() time.Duration {
	var d time.Duration
	for _, s := range t.Steps {
		d += s
	}
	return d
}

// Params are the parameters a generation actually used, defaults resolved.
type Params struct {
	Prompt, NegativePrompt string
	Width, Height          int
	Steps                  int
	GuidanceScale          float64
	GuidanceRescale        float64
	Sampler                Sampler
	Schedule               schedule.SigmaSchedule
	Eta                    float64
	TimestepSpacing        schedule.TimestepSpacing // resolved: never SpacingDefault
	PromptSyntax           PromptSyntax
	Seed                   uint64
	RNG                    rng.Kind
	BatchSize              int
	ClipSkip               int
	Strength               float64 // img2img / inpaint; 0 for txt2img
	Model                  string  // the model's file or folder name
	// ModelHash is AUTOMATIC1111's short model hash (the first 10 hex digits of the
	// file's SHA-256) for single-file models; "" for folders.
	ModelHash string
	Controls  []ControlParams
	Elapsed   time.Duration
	// LoRAs are the adapters the weights held, in the request's order.
	LoRAs []AppliedLoRA
	// Embeddings are the textual inversions the prompts used, in name order.
	Embeddings []AppliedEmbedding
	embeds     []*lora.Embedding // their vectors, for the conditioner

	// SDXL: the second encoder's prompts as given ("": the first ones) and the
	// micro-conditioning with its defaults filled in; zero for other models.
	Prompt2, NegativePrompt2 string
	SizeConditioning         SizeConditioning
	// UpscaleFactor is an Upscale call's output/input size ratio (4 for the x4
	// upscaler), 0 for other calls; NoiseLevel is that call's low-res noise level.
	UpscaleFactor, NoiseLevel int
	// HiresScale, HiresSteps (0: the first pass's) and HiresUpscaler ("Latent" or the
	// ESRGAN's name) describe a hires fix; HiresScale is 0 without one, and Strength is
	// its denoising strength.
	HiresScale    float64
	HiresSteps    int
	HiresUpscaler string
	// Refiner ("name [hash]", the hash "" for folders) and RefinerSwitchAt (the fraction
	// of the schedule the base model ran) describe a Txt2ImgRefined hand-over; Model and
	// ModelHash then name the base model. Refiner is "" without one.
	Refiner         string
	RefinerSwitchAt float64
}

// A1111 formats the parameters of image index of the batch as AUTOMATIC1111's
// "parameters" PNG text chunk, which image viewers and web UIs read back: the image's own
// seed (Seed+index), values containing "," or ":" quoted as the web UI quotes them, and
// valid UTF-8 only.
func (p Params) A1111(index int) string {
	var b strings.Builder
	b.WriteString(p.Prompt)
	if p.NegativePrompt != "" {
		b.WriteString("\nNegative prompt: " + p.NegativePrompt)
	}
	b.WriteString("\n")
	fields := []a1111Field{
		{"Steps", fmt.Sprint(p.Steps), true},
		{"Sampler", p.Sampler.A1111Name(), true},
		{"Schedule type", scheduleTypeName(p.Schedule), p.Schedule != schedule.SigmasDefault},
		{"CFG scale", fmt.Sprint(p.GuidanceScale), true},
		{"Seed", fmt.Sprint(p.Seed + uint64(index)), true},
		{"Size", fmt.Sprintf("%dx%d", p.Width, p.Height), true},
		{"Model hash", p.ModelHash, p.ModelHash != ""},
		{"Model", p.Model, p.Model != ""},
		{"Refiner", p.Refiner, p.Refiner != ""},
		{"Refiner switch at", fmt.Sprint(p.RefinerSwitchAt), p.Refiner != ""},
		// SDXL's second prompts (no AUTOMATIC1111 field: it gives both encoders one prompt).
		{"Prompt 2", p.Prompt2, p.Prompt2 != ""},
		{"Negative prompt 2", p.NegativePrompt2, p.NegativePrompt2 != ""},
		{"Lora hashes", loraHashes(p.LoRAs), len(p.LoRAs) > 0},
		{"TI hashes", tiHashes(p.Embeddings), len(p.Embeddings) > 0},
		{"Batch size", fmt.Sprint(p.BatchSize), p.BatchSize > 1},
		{"Batch pos", fmt.Sprint(index), p.BatchSize > 1},
		{"Denoising strength", fmt.Sprint(p.Strength), p.Strength > 0},
		{"Noise level", fmt.Sprint(p.NoiseLevel), p.UpscaleFactor > 0},
		{"Hires upscale", fmt.Sprint(p.HiresScale), p.HiresScale > 0},
		{"Hires steps", fmt.Sprint(p.HiresSteps), p.HiresScale > 0 && p.HiresSteps > 0},
		{"Hires upscaler", p.HiresUpscaler, p.HiresScale > 0},
		{"Clip skip", fmt.Sprint(p.ClipSkip), p.ClipSkip > 1},
		{"RNG", map[rng.Kind]string{rng.CPU: "CPU", rng.CUDA: "NV"}[p.RNG], true},
		{"Eta DDIM", fmt.Sprint(p.Eta), p.Eta > 0},
		{"CFG rescale", fmt.Sprint(p.GuidanceRescale), p.GuidanceRescale > 0},
	}
	for i, c := range p.Controls {
		fields = append(fields, a1111Field{fmt.Sprintf("ControlNet %d", i), c.A1111(), true})
	}
	fields = append(fields, a1111Field{"Version", "gosd", true})
	first := true
	for _, f := range fields {
		if !f.on {
			continue
		}
		if !first {
			b.WriteString(", ")
		}
		first = false
		b.WriteString(f.key + ": " + a1111Quote(f.value))
	}
	return strings.ToValidUTF8(b.String(), "\uFFFD")
}

// a1111Field is one "key: value" of the parameters, written when on.
type a1111Field struct {
	key, value string
	on         bool
}

func scheduleTypeName(s schedule.SigmaSchedule) string {
	name := s.String()
	return strings.ToUpper(name[:1]) + name[1:]
}

// a1111Quote quotes a value that holds a separator (",", ":" or a newline) as a JSON
// string, as the web UI does, so the text parses back into the same fields.
func a1111Quote(v string) string {
	if !strings.ContainsAny(v, ",:\n") {
		return v
	}
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v) // a string always encodes
	return strings.TrimSuffix(b.String(), "\n")
}

// Limits of a request.
const (
	MaxSteps     = 1000
	MaxBatchSize = 64
	MaxSide      = 4096
)

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalidRequest}, args...)...)
}

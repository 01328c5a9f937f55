package main

import (
	"context"
	"errors"
	"fmt"
	"image"
	_ "image/jpeg" // init images may be JPEG (png.go registers PNG)
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/gosd/gosd/diffusion"
	"github.com/gosd/gosd/diffusion/rng"
	"github.com/gosd/gosd/diffusion/schedule"
)

// mode is what a generation subcommand does.
type mode int

const (
	modeTxt2Img mode = iota
	modeImg2Img
	modeInpaint
	modeUpscale
)

func (m mode) String() string { return [...]string{"txt2img", "img2img", "inpaint", "upscale"}[m] }

// genOptions are the flags of txt2img, img2img, inpaint and upscale.
type genOptions struct {
	mode             mode
	model            string
	prompt, negative string
	width, height    int
	steps            int
	cfg              float64
	sampler          diffusion.Sampler
	schedule         schedule.SigmaSchedule
	spacing          schedule.TimestepSpacing
	syntax           diffusion.PromptSyntax
	seed             uint64
	randomSeed       bool
	rng              rng.Kind
	batch            int
	output           string
	clipSkip         int
	rescale, eta     float64
	decoder          diffusion.Decoder
	tiling           diffusion.Tiling
	pipe             pipelineOptions
	sdxl             sdxlOptions
	lora             loraOptions
	// img2img and inpaint
	init, mask string
	strength   float64
	outpaint   *margins
	controls   []*controlOptions
	up         upscaleOptions
	hires      hiresOptions
}

// margins are --outpaint's extensions of the canvas, in pixels.
type margins struct{ left, top, right, bottom int }

func parseMargins(s string) (*margins, error) {
	parts := strings.Split(s, ",")
	if len(parts) != 4 {
		return nil, errors.New("want four comma-separated pixel counts L,T,R,B")
	}
	var v [4]int
	var sum int
	for i, p := range parts {
		n, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || n < 0 || n > diffusion.MaxSide {
			return nil, fmt.Errorf("%q: want an integer between 0 and %d", p, diffusion.MaxSide)
		}
		v[i] = n
		sum += n
	}
	if sum == 0 {
		return nil, errors.New("all margins are 0: nothing to outpaint")
	}
	return &margins{left: v[0], top: v[1], right: v[2], bottom: v[3]}, nil
}

func generateCommand(m mode) func(*app, *flagSet) func(context.Context, []string) error {
	return func(a *app, fs *flagSet) func(context.Context, []string) error {
		o := &genOptions{mode: m}
		o.define(fs)
		return func(ctx context.Context, args []string) error { return a.generate(ctx, o, args) }
	}
}

func (o *genOptions) define(fs *flagSet) {
	if o.mode == modeUpscale {
		fs.stringVar(&o.model, "m", "path", "", "an x4 upscaler (diffusers folder or x4-upscaler-ema single file) or an ESRGAN file (.pth, .safetensors)\n(no default: required)")
	} else {
		fs.stringVar(&o.model, "m", "path", "", "model file (.safetensors, .ckpt) or diffusers folder\n(default: the demo model "+demoModel+")")
	}
	fs.stringVar(&o.prompt, "p", "text", "", "prompt (default: empty)")
	fs.stringVar(&o.negative, "n", "text", "", "negative prompt (default: empty)")
	o.sdxl.define(fs, o.mode)
	switch o.mode {
	case modeTxt2Img:
	case modeUpscale:
		fs.stringVar(&o.init, "i", "path", "", "the low-resolution image, PNG or JPEG (no default: required)")
	default:
		fs.stringVar(&o.init, "i", "path", "", "init image, PNG or JPEG (no default: required)")
	}
	if o.mode == modeInpaint {
		fs.stringVar(&o.mask, "mask", "path", "", "mask image, PNG or JPEG: white is repainted, black kept\n(no default: required unless --outpaint)")
		fs.funcVar("outpaint", "L,T,R,B", "extend the canvas by these pixels left, top, right, bottom and paint the new area\n(default: none)",
			func(s string) (err error) {
				o.outpaint, err = parseMargins(s)
				return err
			})
	}
	sizeDefault := "the model's native size"
	if o.mode != modeTxt2Img {
		sizeDefault = "the image's size rounded down to a multiple of 8"
	}
	if o.mode == modeUpscale {
		o.up.define(fs) // the output's size is the image's times 4
	} else {
		fs.intVar(&o.width, "W", "px", 0, "width, a multiple of 8 (default: "+sizeDefault+")", side(diffusion.MaxSide))
		fs.intVar(&o.height, "H", "px", 0, "height, a multiple of 8 (default: "+sizeDefault+")", side(diffusion.MaxSide))
	}
	if o.mode == modeImg2Img || o.mode == modeInpaint {
		def := 0.8
		if o.mode == modeInpaint {
			def = 1
		}
		fs.floatVar(&o.strength, "strength", "x", def, fmt.Sprintf("how much is repainted, in (0, 1] (default %g)", def), func(v float64) error {
			if !(v > 0 && v <= 1) {
				return errors.New("must be in (0, 1]")
			}
			return nil
		})
	}
	fs.intVar(&o.steps, "steps", "N", 20, "sampling steps (default 20)", intRange(1, diffusion.MaxSteps))
	fs.floatVar(&o.cfg, "cfg", "scale", 7.5, "classifier-free guidance scale; at most 1 turns guidance off (default 7.5)", floatRange(0, 100))
	fs.funcVar("sampler", "NAME", "sampler: auto ddpm ddim pndm euler euler_a heun dpm2 dpmpp_2m dpmpp_2s_a lms unipc lcm\n(default auto: the model's scheduler)",
		func(s string) (err error) {
			o.sampler, err = diffusion.ParseSampler(s)
			return err
		})
	fs.funcVar("schedule", "NAME", "sigma schedule of sigma-based samplers: default, karras or exponential\n(default \"default\": the scheduler config's)",
		func(s string) (err error) {
			o.schedule, err = schedule.ParseSigmaSchedule(s)
			return err
		})
	fs.funcVar("timestep-spacing", "NAME", "how the steps' timesteps are spread: leading, trailing or linspace\n(default: the scheduler config's, else the sampler's diffusers default)",
		func(s string) (err error) {
			o.spacing, err = schedule.ParseTimestepSpacing(s)
			return err
		})
	fs.funcVar("prompt-syntax", "NAME", "a1111: (emphasis:1.2), [less], BREAK and prompts past 75 tokens, as AUTOMATIC1111;\nplain: the prompt as diffusers reads it, brackets literal, cut at 75 tokens\n(default a1111)",
		func(s string) (err error) {
			o.syntax, err = diffusion.ParsePromptSyntax(s)
			return err
		})
	o.randomSeed = true
	fs.funcVar("seed", "N", "seed; -1 picks a random one, printed on stderr (default -1)", func(s string) error {
		if s == "-1" {
			o.randomSeed = true
			return nil
		}
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return errors.New("want -1 or an integer between 0 and 2^64-1")
		}
		o.seed, o.randomSeed = v, false
		return nil
	})
	fs.funcVar("rng", "NAME", "noise generator: cpu (torch's CPU generator, as diffusers) or cuda (torch's CUDA generator, as most web UIs)\n(default cpu)",
		func(s string) (err error) {
			o.rng, err = rng.ParseKind(s)
			return err
		})
	fs.intVar(&o.batch, "batch", "N", 1, "images generated together (default 1)", intRange(1, diffusion.MaxBatchSize))
	fs.stringVar(&o.output, "o", "path", "output.png", "output PNG; with --batch N > 1, name-1.png ... name-N.png\n(default output.png; existing files are replaced)")
	fs.intVar(&o.clipSkip, "clip-skip", "N", 0, "text encoder layers to skip, AUTOMATIC1111's numbering: 2 uses the penultimate layer\n(default 0: the last layer)", intRange(0, 1000))
	fs.floatVar(&o.rescale, "guidance-rescale", "x", 0, "guidance rescale phi in [0, 1] (default 0: off)", floatRange(0, 1))
	fs.floatVar(&o.eta, "eta", "x", 0, "DDIM's eta in [0, 1] (default 0)", floatRange(0, 1))
	defineControlFlags(fs, &o.controls)
	fs.funcVar("vae-decoder", "NAME", "what decodes the image: vae (the model's) or taesd:PATH, a TAESD folder or file\n(fast, less detail; default vae)",
		func(s string) (err error) {
			o.decoder, o.pipe.taesd, err = diffusion.ParseVAEDecoder(s)
			return err
		})
	// A bare --vae-tiling forces tiling on; --vae-tiling=off or =auto choose the others.
	usage := "decode (and encode) with the VAE in overlapping tiles, as diffusers' enable_tiling:\nmemory of one tile for any size; =off never, =auto (default) above about 4 GiB of activations"
	fs.BoolFunc("vae-tiling", usage, func(s string) (err error) {
		o.tiling, err = diffusion.ParseTiling(s)
		return err
	})
	fs.document("vae-tiling", "", usage)
	if o.mode == modeTxt2Img {
		o.hires.define(fs)
	}
	o.lora.define(fs)
	o.pipe.define(fs)
}

// outputPaths are the files of a batch: -o itself for one image, else name-1.png, ...
func outputPaths(output string, n int) []string {
	if n == 1 {
		return []string{output}
	}
	ext := filepath.Ext(output)
	base := strings.TrimSuffix(output, ext)
	paths := make([]string, n)
	for i := range paths {
		paths[i] = fmt.Sprintf("%s-%d%s", base, i+1, ext)
	}
	return paths
}

// check validates what the flags cannot check one by one.
func (o *genOptions) check(args []string) error {
	if len(args) > 0 {
		return usagef("unexpected argument %q (quote the prompt: -p \"...\")", args[0])
	}
	if !strings.EqualFold(filepath.Ext(o.output), ".png") {
		return usagef("-o %s: the output must be a .png file", o.output)
	}
	if o.mode != modeTxt2Img && o.init == "" {
		return usagef("%s needs an init image: pass -i", o.mode)
	}
	if o.mode == modeUpscale && o.model == "" {
		return usagef("upscale needs an x4 upscaler model: pass -m")
	}
	if o.mode == modeTxt2Img && o.hires.scale > 0 {
		return o.hires.check()
	}
	if o.mode == modeInpaint {
		switch {
		case o.mask == "" && o.outpaint == nil:
			return usagef("inpaint needs a mask (--mask) or margins to outpaint (--outpaint)")
		case o.mask != "" && o.outpaint != nil:
			return usagef("--mask and --outpaint cannot be combined: --outpaint makes its own mask")
		}
	}
	return checkControls(o.controls, o.mode)
}

func (a *app) generate(ctx context.Context, o *genOptions, args []string) error {
	if err := o.check(args); err != nil {
		return err
	}
	if err := checkOutput(o.output, o.batch); err != nil {
		return err
	}
	modelPath, err := a.modelPath(o.model)
	if err != nil {
		return err
	}
	if o.mode == modeUpscale && diffusion.IsESRGAN(modelPath) {
		return a.esrganUpscale(ctx, o, modelPath)
	}
	var initImg, mask image.Image
	if o.init != "" {
		if initImg, err = readImage(o.init); err != nil {
			return err
		}
	}
	if o.mask != "" {
		if mask, err = readImage(o.mask); err != nil {
			return err
		}
	}
	if o.outpaint != nil {
		m := o.outpaint
		if initImg, mask, err = diffusion.ExtendCanvas(initImg, m.left, m.top, m.right, m.bottom); err != nil {
			return err
		}
	}
	fmt.Fprintf(a.stderr, "loading %s\n", modelPath)
	p, err := o.pipe.open(modelPath, a.stderr)
	if err != nil {
		return err
	}
	defer p.Close()
	controls, nets, err := loadControls(p, o.controls, initImg, mask, o.width, o.height)
	for _, cn := range nets {
		defer cn.Close()
	}
	if err != nil {
		return err
	}
	var refiner *diffusion.Pipeline
	if o.sdxl.refiner != "" {
		fmt.Fprintf(a.stderr, "loading refiner %s\n", o.sdxl.refiner)
		if refiner, err = o.pipe.open(o.sdxl.refiner, a.stderr); err != nil {
			return err
		}
		defer refiner.Close()
	}
	hires, closeHires, err := o.hires.hires(&o.pipe, a.stderr)
	if err != nil {
		return err
	}
	defer closeHires()
	if o.randomSeed {
		o.seed = uint64(rand.Uint32()) // 32 bits, as web UIs pick them
	}
	fmt.Fprintf(a.stderr, "seed %d\n", o.seed)

	bar := newProgressBar(a.stderr, a.stderrTerminal, o.mode.String())
	req := diffusion.Request{
		Prompt: o.prompt, NegativePrompt: o.negative,
		Width: o.width, Height: o.height,
		Steps: o.steps, GuidanceScale: guidanceScale(o.cfg), GuidanceRescale: o.rescale,
		Sampler: o.sampler, Schedule: o.schedule, Eta: o.eta,
		TimestepSpacing: o.spacing, PromptSyntax: o.syntax,
		Seed: o.seed, RNG: o.rng, BatchSize: o.batch, ClipSkip: o.clipSkip,
		Decoder: o.decoder, VAETiling: o.tiling,
		Progress: bar.update, Controls: controls, Hires: hires,
		LoRAs: o.lora.loras, LoRADir: o.lora.dir, EmbeddingDir: o.lora.embeddingDir,
	}
	o.sdxl.apply(&req)
	var res *diffusion.Result
	switch o.mode {
	case modeTxt2Img:
		if refiner != nil {
			res, err = p.Txt2ImgRefined(ctx, req, refiner, o.sdxl.refinerStart)
		} else {
			res, err = p.Txt2Img(ctx, req)
		}
	case modeImg2Img:
		res, err = p.Img2Img(ctx, diffusion.Img2ImgRequest{Request: req, Image: initImg, Strength: o.strength})
	case modeInpaint:
		res, err = p.Inpaint(ctx, diffusion.InpaintRequest{Request: req, Image: initImg, Mask: mask, Strength: o.strength})
	case modeUpscale:
		res, err = p.Upscale(ctx, o.up.request(req, initImg))
	}
	bar.finish()
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err // cancelled as the run ended: write nothing
	}
	fmt.Fprintf(a.stderr, "%d×%d, %d steps in %s\n", res.Params.Width, res.Params.Height, res.Params.Steps, res.Timings.Total.Round(10*time.Millisecond))
	for i, path := range outputPaths(o.output, len(res.Images)) {
		img, parameters := res.Images[i], res.Params.A1111(i)
		if err := writeFileAtomic(path, func(w io.Writer) error { return encodePNG(w, img, parameters) }); err != nil {
			return err
		}
		fmt.Fprintln(a.stdout, path)
	}
	return nil
}

// guidanceScale maps --cfg to the API, where 0 asks for the default: 0 (no guidance, as
// anything up to 1) becomes 1.
func guidanceScale(cfg float64) float64 {
	if cfg == 0 {
		return 1
	}
	return cfg
}

// readImage decodes a PNG or JPEG file, checking the size its header declares first (a
// tiny file can declare a picture that would take gigabytes to decode).
func readImage(path string) (image.Image, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	img, err := diffusion.DecodeImage(f, path)
	if err != nil {
		// A bad file is an error (exit 1), not a mistake on the command line (exit 2),
		// which the API's ErrInvalidRequest would map to.
		return nil, errors.New(err.Error())
	}
	return img, nil
}

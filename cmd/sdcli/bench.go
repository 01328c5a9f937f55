package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/gosd/gosd/diffusion"
	"github.com/gosd/gosd/diffusion/modelfile"
)

type benchOptions struct {
	model   string
	arch    string
	size    int
	steps   int
	cache   string
	json    bool
	profile bool
	control string // a ControlNet to time with the model, or "random"
	taesd   string // a TAESD decoding the image, or "random"
	cfg     float64
	compare bool // --compare-precision
	pipe    pipelineOptions
}

// The benchmark's fixed choices: random fp16 weights of a fixed seed, and by default a run
// with classifier-free guidance (a UNet batch of 2 per step) and a one-evaluation-per-step
// sampler, so that steps are comparable.
const (
	benchDType   = modelfile.F16
	benchSeed    = 1
	benchPrompt  = "a photograph of an astronaut riding a horse"
	benchCFG     = 7.5
	benchSampler = diffusion.DDIM
	// randomMarker is written last into a weights folder: a folder holding it is
	// complete and never written again.
	randomMarker = "gosd-random.json"
)

func benchCommand(a *app, fs *flagSet) func(context.Context, []string) error {
	o := &benchOptions{}
	names := slices.Sorted(func(yield func(string) bool) {
		for n := range a.archs {
			if !yield(n) {
				return
			}
		}
	})
	fs.funcVar("arch", "NAME", "architecture: "+strings.Join(names, " or ")+" (default sd15)", func(s string) error {
		if _, ok := a.archs[s]; !ok {
			return fmt.Errorf("want %s", strings.Join(names, " or "))
		}
		o.arch = s
		return nil
	})
	fs.stringVar(&o.model, "m", "path", "", "time this model file or diffusers folder (default: random weights of --arch)")
	fs.intVar(&o.size, "size", "px", 0, "image width and height, a multiple of 8\n(default 512, sdxl 1024; with -m the model's native size)", side(diffusion.MaxSide))
	fs.intVar(&o.steps, "steps", "N", 3, "sampling steps; the step time reported is their median (default 3)", intRange(1, diffusion.MaxSteps))
	cacheDefault := "$XDG_CACHE_HOME/gosd or ~/.cache/gosd"
	if dir, err := os.UserCacheDir(); err == nil {
		o.cache = filepath.Join(dir, "gosd")
		cacheDefault = o.cache
	}
	fs.stringVar(&o.cache, "cache", "dir", o.cache, "folder of the random weights, one sub-folder per architecture and dtype\n(default "+cacheDefault+")")
	fs.boolVar(&o.json, "json", "print the report as JSON (default false: a table)")
	fs.boolVar(&o.profile, "profile", "also print the runtime's time per op kind on stderr (default false)")
	fs.stringVar(&o.control, "controlnet", "path", "", "also run this ControlNet at every step, or random: random weights of a ControlNet\nof --arch's UNet, written once to the cache (default: none)")
	fs.stringVar(&o.taesd, "taesd", "path", "", "decode the image with this TAESD (folder or file), or random: random weights of\nTAESD's architecture, written once to the cache (default: the model's VAE)")
	fs.floatVar(&o.cfg, "cfg", "scale", benchCFG, "classifier-free guidance scale; at most 1 turns it off, as for SD-Turbo (default 7.5)", floatRange(0, 100))
	fs.boolVar(&o.compare, "compare-precision", "run fp32, then bf16, and report both and the bf16 image's PSNR against fp32's (default false)")
	o.pipe.define(fs)
	return func(ctx context.Context, args []string) error { return a.bench(ctx, o, args) }
}

// benchReport is what bench measures. Times are in seconds, sizes in bytes.
type benchReport struct {
	Arch  string `json:"arch,omitempty"`  // random weights of this architecture; empty with -m
	DType string `json:"dtype,omitempty"` // the random weights' dtype
	Model string `json:"model"`           // the model file or folder timed
	// ControlNet is the ControlNet run at every step with the model; empty for none.
	ControlNet string `json:"controlnet,omitempty"`
	// TAESD decodes the image instead of the model's VAE; empty for the VAE.
	TAESD     string  `json:"taesd,omitempty"`
	CFG       float64 `json:"cfg"` // guidance scale; at most 1: none (a UNet batch of 1)
	Size      int     `json:"size"`
	Steps     int     `json:"steps"`
	Sampler   string  `json:"sampler"`
	Device    string  `json:"device"`
	Backend   string  `json:"backend"`
	Threads   int     `json:"threads"` // 0: one per core
	CPUs      int     `json:"cpus"`
	Precision string  `json:"precision"`
	// Upscale: the model is an x4 upscaler, timed upscaling a Size/4 image to Size.
	Upscale bool `json:"upscale,omitempty"`

	Load        float64   `json:"load_s"`
	TextEncode  float64   `json:"text_encode_s"`
	StepTimes   []float64 `json:"step_s"` // each UNet evaluation with CFG and its sampler step
	StepMedian  float64   `json:"step_median_s"`
	Decode      float64   `json:"vae_decode_s"`
	Total       float64   `json:"total_s"` // the txt2img call, without load
	PeakRSS     uint64    `json:"peak_rss_bytes,omitempty"`
	ArenaPeak   uint64    `json:"arena_peak_bytes"`
	WeightsCopy uint64    `json:"device_weights_bytes"`
}

func (a *app) bench(ctx context.Context, o *benchOptions, args []string) error {
	if len(args) > 0 {
		return usagef("unexpected argument %q", args[0])
	}
	if o.cache == "" && o.model == "" {
		return usagef("no cache folder: pass --cache")
	}
	if o.compare && o.pipe.precision != diffusion.PrecisionFP32 {
		return usagef("--compare-precision runs both precisions: leave out --precision")
	}
	r := benchReport{Model: o.model}
	size := o.size
	if o.model != "" {
		if o.arch != "" {
			return usagef("-m and --arch exclude each other")
		}
		path, err := a.modelPath(o.model)
		if err != nil {
			return err
		}
		r.Model = path
	} else {
		if o.pipe.model.textHeads != 0 || o.pipe.model.textHeads2 != 0 || o.pipe.model.unetHeads != nil {
			// The random weights' config.json records their heads; overriding them
			// would time another model than --arch names.
			return usagef("--text-heads and --unet-heads need -m: the random weights record their head counts")
		}
		r.Arch, r.DType = cmp.Or(o.arch, "sd15"), benchDType.String()
		dir, err := ensureRandomWeights(ctx, filepath.Join(o.cache, r.Arch+"-"+strings.ToLower(r.DType)), a.archs[r.Arch], a.stderr)
		if err != nil {
			return err
		}
		native := 512 // SD 2.1's 768 is timed at 512 too, for comparison with SD 1.5
		if a.archs[r.Arch].Family == modelfile.FamilySDXL {
			native = 1024
		}
		r.Model, size = dir, cmp.Or(size, native)
	}
	r.TAESD, r.CFG = o.taesd, o.cfg
	if o.taesd == "random" {
		dir := filepath.Join(o.cache, "taesd-"+strings.ToLower(benchDType.String()))
		path, err := ensureRandomFolder(ctx, dir, "taesd", a.stderr, func(ctx context.Context, tmp string) error {
			return modelfile.WriteRandomTAESD(ctx, tmp, benchDType, benchSeed)
		})
		if err != nil {
			return err
		}
		r.TAESD = path
	}
	r.ControlNet = o.control
	if o.control == "random" {
		if o.model != "" {
			return usagef("--controlnet random needs random weights (no -m): it is made for --arch")
		}
		path, err := ensureRandomControlNet(ctx, filepath.Join(o.cache, r.Arch+"-"+strings.ToLower(r.DType)+"-controlnet.safetensors"), a.archs[r.Arch].UNet, a.stderr)
		if err != nil {
			return err
		}
		r.ControlNet = path
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if o.compare {
		return a.benchComparePrecision(ctx, o, r, size)
	}
	r, _, err := a.benchRun(ctx, o, r, size)
	if err != nil {
		return err
	}
	if o.json {
		enc := json.NewEncoder(a.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	return r.table(a.stdout)
}

// benchRun opens r.Model as o.pipe says and times one txt2img of size² on it (an upscale
// for an x4 upscaler).
func (a *app) benchRun(ctx context.Context, o *benchOptions, r benchReport, size int) (benchReport, image.Image, error) {
	fmt.Fprintf(a.stderr, "loading %s (%s)\n", r.Model, o.pipe.precision)
	start := time.Now()
	pipe := o.pipe
	pipe.taesd = r.TAESD
	p, err := pipe.open(r.Model, a.stderr)
	if err != nil {
		return r, nil, err
	}
	defer p.Close()

	req := diffusion.Request{
		Prompt: benchPrompt, Width: size, Height: size, Steps: o.steps,
		GuidanceScale: guidanceScale(r.CFG), Sampler: benchSampler, Seed: benchSeed,
	}
	if r.TAESD != "" {
		req.Decoder = diffusion.DecoderTAESD
	}
	if r.ControlNet != "" {
		cn, err := p.LoadControlNet(r.ControlNet)
		if err != nil {
			return r, nil, err
		}
		defer cn.Close()
		req.Controls = []diffusion.Control{{Model: cn, Image: benchControlImage(cmp.Or(size, p.Info().Width), cmp.Or(size, p.Info().Height))}}
	}
	load := time.Since(start)

	p.SetProfiling(o.profile)
	bar := newProgressBar(a.stderr, a.stderrTerminal, "bench")
	req.Progress = bar.update
	var res *diffusion.Result
	if info := p.Info(); info.Upscaler {
		r.Upscale = true
		res, err = benchUpscale(ctx, p, req, cmp.Or(size, info.Width))
	} else {
		res, err = p.Txt2Img(ctx, req)
	}
	bar.finish()
	if err != nil {
		return r, nil, err
	}
	if o.profile {
		fmt.Fprint(a.stderr, p.ProfileReport())
	}
	mem, err := p.MemoryStats()
	if err != nil {
		return r, nil, err
	}
	info := p.Info()
	r.Size, r.Steps, r.Sampler = res.Images[0].Bounds().Dx(), o.steps, benchSampler.String()
	r.Device, r.Backend, r.Threads, r.CPUs = info.Device.String(), info.Backend, o.pipe.threads, runtime.NumCPU()
	r.Precision = o.pipe.precision.String()
	r.Load, r.TextEncode = load.Seconds(), res.Timings.TextEncode.Seconds()
	r.Decode, r.Total = res.Timings.Decode.Seconds(), res.Timings.Total.Seconds()
	r.ArenaPeak, r.WeightsCopy = mem.ArenaPeakBytes, mem.WeightsBytes
	for _, d := range res.Timings.Steps {
		r.StepTimes = append(r.StepTimes, d.Seconds())
	}
	r.StepMedian = median(r.StepTimes)
	r.PeakRSS, _ = peakRSS()
	return r, res.Images[0], nil
}

// benchUpscale times an x4 upscaler making a size x size image from a gray quarter-size
// one (the UNet runs at the low-res size; the default tile, so large sizes run in tiles).
func benchUpscale(ctx context.Context, p *diffusion.Pipeline, req diffusion.Request, size int) (*diffusion.Result, error) {
	low := image.NewGray(image.Rect(0, 0, size/4, size/4))
	for k := range low.Pix {
		low.Pix[k] = uint8(k * 7)
	}
	req.Width, req.Height = 0, 0
	return p.Upscale(ctx, diffusion.UpscaleRequest{Request: req, Image: low})
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(v))
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func (r benchReport) table(w io.Writer) error {
	threads := fmt.Sprintf("%d", r.Threads)
	if r.Threads == 0 {
		threads = fmt.Sprintf("one per core (%d)", r.CPUs)
	}
	rss, rssNote := "not measured", "getrusage is not read on this system"
	if r.PeakRSS > 0 {
		rss, rssNote = formatBytes(r.PeakRSS), "process, getrusage (mapped weights count once touched)"
	}
	plural := "s"
	if r.Steps == 1 {
		plural = ""
	}
	model := "given with -m"
	if r.Arch != "" {
		model = fmt.Sprintf("%s %s random weights", r.Arch, r.DType)
	}
	guidance, batch := fmt.Sprintf("CFG %g", r.CFG), "batch 2 with CFG"
	if r.CFG <= 1 {
		guidance, batch = "no CFG", "batch 1 without CFG"
	}
	stepNote := "UNet " + batch
	rows := [][3]string{
		{"model", model, r.Model},
	}
	if r.ControlNet != "" {
		rows = append(rows, [3]string{"controlnet", "run at every step", r.ControlNet})
		stepNote = "UNet and ControlNet, " + batch
	}
	decode := [3]string{"vae decode", seconds(r.Decode), ""}
	if r.TAESD != "" {
		decode = [3]string{"taesd decode", seconds(r.Decode), r.TAESD}
	}
	rows = append(rows, [][3]string{
		{"device", r.Device, r.Backend},
		{"threads", threads, ""},
		{"precision", r.Precision, "of the matrix products"},
		{"image", fmt.Sprintf("%d×%d", r.Size, r.Size), fmt.Sprintf("%d step%s %s, %s", r.Steps, plural, r.Sampler, guidance)},
		{"load", seconds(r.Load), "Open"},
		{"text encode", seconds(r.TextEncode), "prompt and negative prompt"},
		{"step", seconds(r.StepMedian), fmt.Sprintf("median of %d (min %s, max %s), %s",
			len(r.StepTimes), seconds(slices.Min(r.StepTimes)), seconds(slices.Max(r.StepTimes)), stepNote)},
		decode,
		{"total", seconds(r.Total), map[bool]string{false: "txt2img", true: "upscale from a quarter of the size"}[r.Upscale] + ", without load"},
		{"peak RSS", rss, rssNote},
		{"arena peak", formatBytes(r.ArenaPeak), "runtime activations"},
		{"device weights", formatBytes(r.WeightsCopy), "copied to the device (weights used in place from the file are not counted)"},
	}...)
	var buf strings.Builder
	tw := tabwriter.NewWriter(&buf, 0, 8, 2, ' ', 0)
	for _, row := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", row[0], row[1], row[2])
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for line := range strings.Lines(buf.String()) {
		if _, err := io.WriteString(w, strings.TrimRight(line, " \n")+"\n"); err != nil {
			return err
		}
	}
	return nil
}

func seconds(s float64) string { return fmt.Sprintf("%.3f s", s) }

// formatBytes prints a size in binary units.
func formatBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v, i := float64(n)/unit, 0
	for v >= unit && i < 3 {
		v /= unit
		i++
	}
	return fmt.Sprintf("%.1f %ciB", v, "KMGT"[i])
}

// ensureRandomWeights returns dir holding random weights of arch, writing them first
// when dir is not complete (has no marker): into a temporary folder beside it, renamed
// to dir once complete, so an interrupted write leaves nothing that looks usable.
func ensureRandomWeights(ctx context.Context, dir string, arch modelfile.Architecture, log io.Writer) (string, error) {
	return ensureRandomFolder(ctx, dir, arch.Family.String(), log, func(ctx context.Context, tmp string) error {
		return modelfile.WriteRandom(ctx, tmp, arch, benchDType, benchSeed)
	})
}

// ensureRandomFolder returns dir holding the random weights write writes (of what, a
// family or network named in the marker), writing them first as ensureRandomWeights says.
func ensureRandomFolder(ctx context.Context, dir, what string, log io.Writer, write func(ctx context.Context, tmp string) error) (string, error) {
	marker := filepath.Join(dir, randomMarker)
	if _, err := os.Stat(marker); err == nil {
		return dir, nil
	}
	parent := filepath.Dir(dir)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+".*.tmp")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp) // gone already once renamed
	fmt.Fprintf(log, "writing random %s weights to %s (once; later runs reuse them)\n", benchDType, dir)
	start := time.Now()
	if err := write(ctx, tmp); err != nil {
		return "", fmt.Errorf("writing random weights: %w", err)
	}
	note, err := json.Marshal(map[string]any{"family": what, "dtype": benchDType.String(), "seed": benchSeed})
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(tmp, randomMarker), append(note, '\n'), 0o644); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, dir); err != nil {
		if _, statErr := os.Stat(marker); statErr == nil {
			return dir, nil // another bench completed the same folder first
		}
		if _, statErr := os.Stat(dir); statErr == nil {
			return "", fmt.Errorf("%s exists but is not a complete set of random weights (no %s): remove it", dir, randomMarker)
		}
		return "", err
	}
	fmt.Fprintf(log, "wrote %s in %s\n", dir, time.Since(start).Round(time.Second))
	return dir, nil
}

package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/gosd/gosd/diffusion"
	"github.com/gosd/gosd/diffusion/modelfile"
)

// demoModel is the bundled demo model, a diffusers folder, relative to the folders
// searched.
var demoModel = filepath.Join("models", "gosd-emoji")

// demoModelDirs lists where the demo model is looked for, in order: beside the
// executable's folder and in its parent (an unpacked release: bin/sdcli and models/),
// then the working directory and each of its parents (a source checkout).
func demoModelDirs() []string {
	var dirs []string
	add := func(d string) {
		if !slices.Contains(dirs, d) {
			dirs = append(dirs, d)
		}
	}
	if exe, err := os.Executable(); err == nil {
		if exe, err = filepath.EvalSymlinks(exe); err == nil {
			d := filepath.Dir(exe)
			add(d)
			add(filepath.Dir(d))
		}
	}
	if wd, err := os.Getwd(); err == nil {
		for d := wd; ; d = filepath.Dir(d) {
			add(d)
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	return dirs
}

// modelPath is the model a command uses: path when given, else the demo model.
func (a *app) modelPath(path string) (string, error) {
	if path != "" {
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("model %s: no such file or folder", path)
		} else if err != nil {
			return "", fmt.Errorf("model %s: %w", path, err)
		}
		return path, nil
	}
	var tried []string
	for _, d := range a.demoDirs {
		p := filepath.Join(d, demoModel)
		if _, err := os.Stat(filepath.Join(p, "model_index.json")); err == nil {
			return p, nil
		}
		tried = append(tried, p)
	}
	return "", usagef("no model given and the demo model %s was not found (looked for %s);\npass -m with a model file (.safetensors, .ckpt) or a diffusers folder",
		demoModel, strings.Join(tried, ", "))
}

// modelOptions are the flags saying what a model file does not record.
type modelOptions struct {
	textHeads int // 0: the folder's config, else the text width / 64 as in SD's checkpoints
	// textHeads2 is SDXL's second text encoder's (0: as textHeads' default).
	textHeads2 int
	// unetHeads are the UNet's heads per level (nil: the config, else SD's defaults).
	unetHeads []int
	scheduler string // a scheduler_config.json replacing the model's
}

// maxLevels bounds --unet-heads: the runtime's SD_MAX_LEVELS.
const maxLevels = 8

// maxHeads bounds --text-heads: far above any CLIP, low enough to stay a plausible count.
const maxHeads = 1024

func (o *modelOptions) define(fs *flagSet) {
	fs.funcVar("text-heads", "N[,N2]", "attention heads of the text encoder, and N2 of SDXL's second one, for single files of\na width other than SD's (default: the config, else the width / 64)",
		o.setTextHeads)
	fs.funcVar("unet-heads", "N,N,...", "attention heads of each UNet level, for single files whose heads are not SD's\n(default: the config, else 8 per level for SD 1.x, the width / 64 for SD 2.x and SDXL)",
		func(s string) (err error) {
			o.unetHeads, err = parseHeads(s, maxLevels)
			return err
		})
	fs.stringVar(&o.scheduler, "scheduler-config", "path", "", "a diffusers scheduler_config.json to use instead of the model's, e.g. SD-Turbo's for its single file\n(default: the folder's, else the family's)")
}

// parseHeads reads up to max comma-separated head counts.
func parseHeads(s string, max int) ([]int, error) {
	parts := strings.Split(s, ",")
	if len(parts) > max {
		return nil, fmt.Errorf("%d counts: at most %d", len(parts), max)
	}
	heads := make([]int, len(parts))
	for i, p := range parts {
		n, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || n < 1 || n > maxHeads {
			return nil, fmt.Errorf("%q: want a head count between 1 and %d", p, maxHeads)
		}
		heads[i] = n
	}
	return heads, nil
}

func (o *modelOptions) setTextHeads(s string) error {
	if len(strings.Split(s, ",")) > 2 {
		return errors.New("want N or N,N2")
	}
	heads, err := parseHeads(s, 2)
	if err != nil {
		return err
	}
	o.textHeads = heads[0]
	if len(heads) == 2 {
		o.textHeads2 = heads[1]
	}
	return nil
}

// options are the modelfile.Load options the flags ask for.
func (o *modelOptions) options() []modelfile.Option {
	var opts []modelfile.Option
	if o.textHeads != 0 {
		opts = append(opts, modelfile.WithTextHeads(o.textHeads))
	}
	if o.textHeads2 != 0 {
		opts = append(opts, modelfile.WithTextHeads2(o.textHeads2))
	}
	if o.unetHeads != nil {
		opts = append(opts, modelfile.WithUNetHeads(o.unetHeads...))
	}
	if o.scheduler != "" {
		opts = append(opts, modelfile.WithSchedulerConfig(o.scheduler))
	}
	return opts
}

// pipelineOptions are the flags that open a model.
type pipelineOptions struct {
	threads   int
	device    diffusion.Device
	lib       string
	verbose   bool
	model     modelOptions
	taesd     string // a TAESD to load beside the model (--vae-decoder taesd:PATH)
	precision diffusion.Precision
}

func (o *pipelineOptions) define(fs *flagSet) {
	o.model.define(fs)
	fs.intVar(&o.threads, "threads", "N", 0, "CPU threads (default 0: one per core)", intRange(0, 1024))
	fs.funcVar("device", "NAME", "where the networks run: auto, cpu or cuda (default auto: a CUDA GPU when usable)",
		func(s string) (err error) {
			o.device, err = diffusion.ParseDevice(s)
			return err
		})
	fs.funcVar("precision", "NAME", "what the matrix products compute in: fp32, or bf16 on a CPU with AVX512_BF16\n(default fp32, the exact path)",
		func(s string) (err error) {
			o.precision, err = diffusion.ParsePrecision(s)
			return err
		})
	fs.stringVar(&o.lib, "lib", "path", "", "runtime library file or folder\n(default: search SD_LIB, the executable's folder, lib/ beside it, build/, the system path)")
	fs.boolVar(&o.verbose, "v", "verbose: log the runtime's and the pipeline's messages on stderr (default false)")
}

// open opens the model with these options, logging on stderr.
func (o *pipelineOptions) open(path string, stderr io.Writer) (*diffusion.Pipeline, error) {
	opts := o.options(stderr)
	if o.taesd != "" {
		opts = append(opts, diffusion.WithTAESD(o.taesd))
	}
	p, err := diffusion.Open(path, opts...)
	return p, o.hint(err)
}

// openESRGAN opens an ESRGAN generator with these options.
func (o *pipelineOptions) openESRGAN(path string, stderr io.Writer) (*diffusion.ESRGAN, error) {
	e, err := diffusion.OpenESRGAN(path, o.options(stderr)...)
	return e, o.hint(err)
}

// options are the API's options for these flags, logging on stderr.
func (o *pipelineOptions) options(stderr io.Writer) []diffusion.Option {
	level := slog.LevelWarn
	if o.verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{} // a CLI's messages need no timestamps
			}
			return a
		}}))
	opts := []diffusion.Option{diffusion.WithDevice(o.device), diffusion.WithThreads(o.threads),
		diffusion.WithPrecision(o.precision), diffusion.WithLogger(logger),
		diffusion.WithModelOptions(o.model.options()...)}
	if o.lib != "" {
		opts = append(opts, diffusion.WithLibrary(o.lib))
	}
	return opts
}

// hint adds the --lib flag to a library-not-found error.
func (o *pipelineOptions) hint(err error) error {
	if errors.Is(err, diffusion.ErrLibraryNotFound) {
		return fmt.Errorf("%w; or pass --lib", err)
	}
	return err
}

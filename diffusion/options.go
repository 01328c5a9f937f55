package diffusion

import (
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/gosd/gosd/diffusion/modelfile"
	"github.com/gosd/gosd/diffusion/schedule"
)

// Device chooses where the networks run.
type Device int

const (
	// DeviceAuto uses a CUDA GPU when the GPU build of the runtime and a usable GPU are
	// present, else the CPU (the reason is logged).
	DeviceAuto Device = iota
	// DeviceCPU runs on the CPU.
	DeviceCPU
	// DeviceCUDA runs on a CUDA GPU and fails to open without one.
	DeviceCUDA
)

var deviceNames = []string{"auto", "cpu", "cuda"}

func (d Device) String() string {
	if d >= 0 && int(d) < len(deviceNames) {
		return deviceNames[d]
	}
	return fmt.Sprintf("Device(%d)", int(d))
}

// ParseDevice parses "auto", "cpu" or "cuda".
func ParseDevice(s string) (Device, error) {
	for i, n := range deviceNames {
		if strings.EqualFold(s, n) {
			return Device(i), nil
		}
	}
	return 0, fmt.Errorf("unknown device %q (want %s)", s, strings.Join(deviceNames, ", "))
}

type openOptions struct {
	device    Device
	threads   int
	library   string
	logger    *slog.Logger
	model     []modelfile.Option
	taesd     string // WithTAESD
	precision Precision
}

// Option configures Open.
type Option func(*openOptions)

// WithDevice selects the device (default DeviceAuto).
func WithDevice(d Device) Option { return func(o *openOptions) { o.device = d } }

// WithThreads sets the number of CPU threads (default 0: one per CPU the process may use;
// more than that are capped at it, since extra threads only slow each step).
func WithThreads(n int) Option { return func(o *openOptions) { o.threads = n } }

// WithLibrary names the runtime library file or the directory holding it, instead of
// the default search (SD_LIB, lib/ beside the executable, build/, the system path).
func WithLibrary(path string) Option { return func(o *openOptions) { o.library = path } }

// WithLogger receives the runtime's log messages and the pipeline's (default: discarded).
func WithLogger(l *slog.Logger) Option { return func(o *openOptions) { o.logger = l } }

// WithFamily overrides the detected model family.
func WithFamily(f modelfile.Family) Option {
	return func(o *openOptions) { o.model = append(o.model, modelfile.WithFamily(f)) }
}

// WithPredictionType overrides what the UNet predicts (single files do not record it;
// SD 2.x defaults to v-prediction).
func WithPredictionType(p schedule.PredictionType) Option {
	return func(o *openOptions) { o.model = append(o.model, modelfile.WithPredictionType(p)) }
}

// WithSchedulerConfig takes the scheduler (class, spacing, prediction type, betas) from a
// diffusers scheduler_config.json instead of the model's: what a single-file checkpoint
// of a distilled model such as SD-Turbo needs (see modelfile.WithSchedulerConfig).
func WithSchedulerConfig(path string) Option {
	return func(o *openOptions) { o.model = append(o.model, modelfile.WithSchedulerConfig(path)) }
}

// WithModelOptions passes further options to modelfile.Load (head counts, variants).
func WithModelOptions(opts ...modelfile.Option) Option {
	return func(o *openOptions) { o.model = append(o.model, opts...) }
}

// applyOptions applies opts and returns them with the logger to use (one that discards
// when none was given).
func applyOptions(opts []Option) (openOptions, *slog.Logger) {
	var o openOptions
	for _, opt := range opts {
		opt(&o)
	}
	log := o.logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return o, log
}

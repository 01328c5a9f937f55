package modelfile

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"

	"github.com/gosd/gosd/diffusion/schedule"
)

// Component is one network: its config and its tensors keyed by diffusers
// name, each with the shape the config implies (see TensorSpecs).
type Component[C any] struct {
	Config  C
	Tensors map[string]Tensor
}

// Model is a loaded Stable Diffusion model. Tensor data view memory-mapped
// files: they are valid until Close and must not be written to.
type Model struct {
	Family Family
	Path   string
	Format Format // FormatDiffusers for a folder, else the single file's format
	UNet   Component[UNetConfig]
	VAE    Component[VAEConfig]
	// TextEncoder is the first text encoder (diffusers' text_encoder).
	TextEncoder Component[CLIPConfig]
	Scheduler   SchedulerConfig
	// TokenizerDir is the folder holding TextEncoder's vocab.json and
	// merges.txt, or "" when the model has none (single files): use the
	// family's tokenizer.
	TokenizerDir string
	// ExtraTextEncoders are the text encoders after the first, in diffusers'
	// order, each with its own tokenizer (SDXL's text_encoder_2 and
	// tokenizer_2); none for SD 1.x and 2.x. TextEncoders lists them all.
	ExtraTextEncoders []NamedTextEncoder
	// ForceZerosForEmptyPrompt (SDXL's model_index.json, default true): with no negative
	// prompt the negative conditioning is zeros, not the encoding of "".
	ForceZerosForEmptyPrompt bool
	// RequiresAestheticsScore (SDXL refiner's model_index.json): the UNet's time ids end
	// with an aesthetic score instead of the target size. The refiner has one text
	// encoder, SDXL's second, held as TextEncoder with its tokenizer_2 as TokenizerDir.
	RequiresAestheticsScore bool
	// Upscaler is set for an x4 upscaler pipeline (StableDiffusionUpscalePipeline):
	// its noise augmentation of the low-resolution image; nil for other models.
	Upscaler *UpscalerConfig
	// Unused names the file tensors no component needs (EMA copies,
	// position_ids buffers, OpenCLIP's last layer and projection, ...);
	// for folders they are prefixed with the component's folder.
	Unused []string
	// Warnings name what loaded but looks wrong for a real model, such as a
	// text encoder of non-standard depth in a single file (tiny test models
	// have one); Summary shows them.
	Warnings []string

	files []*File
}

// NamedTextEncoder is a text encoder with its diffusers name and its
// tokenizer's folder ("": the family's tokenizer).
type NamedTextEncoder struct {
	Name string // "text_encoder", "text_encoder_2", ...
	Component[CLIPConfig]
	TokenizerDir string
}

// TextEncoders returns every text encoder in conditioning order:
// TextEncoder with TokenizerDir, then ExtraTextEncoders.
func (m *Model) TextEncoders() []NamedTextEncoder {
	first := NamedTextEncoder{Name: "text_encoder", Component: m.TextEncoder, TokenizerDir: m.TokenizerDir}
	return append([]NamedTextEncoder{first}, m.ExtraTextEncoders...)
}

// ReleaseMemory applies File.ReleaseMemory to every file of the model.
func (m *Model) ReleaseMemory() error {
	var errs []error
	for _, f := range m.files {
		errs = append(errs, f.ReleaseMemory())
	}
	return errors.Join(errs...)
}

// Close unmaps the model's files. Every Tensor of the model is invalid
// afterwards. Closing twice is harmless.
func (m *Model) Close() error {
	var errs []error
	for _, f := range m.files {
		errs = append(errs, f.Close())
	}
	m.files = nil
	return errors.Join(errs...)
}

// Option adjusts Load.
type Option func(*options)

type options struct {
	family     Family
	prediction *schedule.PredictionType // nil: not set
	unetHeads  []int
	textHeads  int
	textHeads2 int
	variant    string
	scheduler  string // WithSchedulerConfig
}

// WithFamily sets the family instead of detecting it. The file's structure
// is still checked; the family chooses the defaults of what the weights do
// not record (head counts, text activation, prediction type).
func WithFamily(f Family) Option { return func(o *options) { o.family = f } }

// WithPredictionType overrides the prediction type. Single files do not
// record it: SD 1.x defaults to epsilon and SD 2.x to v_prediction (the
// 768 px models); SD 2.x 512 px "base" checkpoints need schedule.PredictEpsilon.
func WithPredictionType(p schedule.PredictionType) Option {
	return func(o *options) { o.prediction = &p }
}

// WithUNetHeads sets the attention head count of each UNet level.
func WithUNetHeads(perLevel ...int) Option {
	return func(o *options) { o.unetHeads = slices.Clone(perLevel) }
}

// WithTextHeads sets the text encoder's attention head count.
func WithTextHeads(n int) Option { return func(o *options) { o.textHeads = n } }

// WithTextHeads2 sets the second text encoder's attention head count (SDXL's OpenCLIP
// ViT-bigG: 20).
func WithTextHeads2(n int) Option { return func(o *options) { o.textHeads2 = n } }

// WithVariant prefers a diffusers weights variant such as "fp16"
// (diffusion_pytorch_model.fp16.safetensors) in folders.
func WithVariant(v string) Option { return func(o *options) { o.variant = v } }

func (o *options) validate() error {
	switch {
	case o.family != 0 && o.family != FamilySD1 && o.family != FamilySD2:
		return fmt.Errorf("WithFamily: invalid %v", o.family)
	case o.prediction != nil && !o.prediction.Valid():
		return fmt.Errorf("WithPredictionType: invalid %v", *o.prediction)
	case o.textHeads < 0:
		return fmt.Errorf("WithTextHeads: %d heads", o.textHeads)
	case o.textHeads2 < 0:
		return fmt.Errorf("WithTextHeads2: %d heads", o.textHeads2)
	case o.unetHeads != nil && slices.ContainsFunc(o.unetHeads, func(n int) bool { return n <= 0 }):
		return fmt.Errorf("WithUNetHeads: %v heads", o.unetHeads)
	}
	return nil
}

// Load opens a model: a diffusers folder, or one original single-file
// checkpoint (.safetensors, .ckpt, .pt). The family is detected unless
// WithFamily sets it; configs come from the folder's config.json files or
// are inferred from a single file's tensor shapes. No weight is copied.
//
// Its errors, other than for an invalid option or a path it cannot open, are
// ErrUnsupported for a model of a kind this package does not read and
// ErrBadModel for anything else wrong with the files.
func Load(path string, opts ...Option) (*Model, error) {
	o := &options{}
	for _, opt := range opts {
		opt(o)
	}
	if err := o.validate(); err != nil {
		return nil, err
	}
	sched, err := o.readSchedulerConfig()
	if err != nil {
		return nil, err
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	var m *Model
	if st.IsDir() {
		m, err = loadDiffusers(path, o)
	} else {
		m, err = loadSingleFile(path, o)
	}
	if err == nil && sched != nil {
		m.Scheduler = *sched
	}
	return m, err
}

// predictionFor is the prediction type set by option, else what the
// family's checkpoints predict when nothing says otherwise.
func (o *options) predictionFor(f Family) schedule.PredictionType {
	switch {
	case o.prediction != nil:
		return *o.prediction
	case f == FamilySD2:
		return schedule.PredictV
	}
	return schedule.PredictEpsilon
}

// defaultScheduler is the scheduler config of the family's reference
// model, with the given prediction type.
func defaultScheduler(f Family, pred schedule.PredictionType) SchedulerConfig {
	s := SD15SchedulerConfig()
	switch f {
	case FamilySD2:
		s = SD21SchedulerConfig()
	case FamilySDXL:
		s = SDXLSchedulerConfig()
	}
	s.PredictionType = pred
	return s.withRaw()
}

// specLister is what every component config is.
type specLister interface {
	Validate() error
	fitsIn(tensors int) error
	TensorSpecs() ([]TensorSpec, error)
}

// bindComponent binds a component's tensors, found among the given number
// of file tensors, and records the file tensors it used.
func bindComponent[C specLister](name string, cfg C, fileTensors int, resolve func(string) source, find func(string) (Tensor, bool), used map[string]bool) (Component[C], error) {
	if err := cfg.Validate(); err != nil {
		return Component[C]{}, err
	}
	if err := cfg.fitsIn(fileTensors); err != nil {
		return Component[C]{}, err
	}
	specs, err := cfg.TensorSpecs()
	if err != nil {
		return Component[C]{}, err
	}
	tensors, u, err := bind(name, specs, resolve, find)
	if err != nil {
		return Component[C]{}, err
	}
	for k := range u {
		used[k] = true
	}
	return Component[C]{Config: cfg, Tensors: tensors}, nil
}

// loadSingleFile maps an original checkpoint onto diffusers names.
func loadSingleFile(path string, o *options) (*Model, error) {
	f, err := OpenFile(path)
	if err != nil {
		return nil, err
	}
	m := &Model{Path: path, Format: f.Format, files: []*File{f}}
	if err := m.fromLDM(f.Tensors, o); err != nil {
		m.Close()
		return nil, badModel(fmt.Errorf("%s: %w", path, err))
	}
	return m, nil
}

func (m *Model) fromLDM(tensors []Tensor, o *options) error {
	ts := make(ldmTensors, len(tensors))
	for _, t := range tensors {
		ts[t.Name] = t
	}
	family, err := ts.detectFamily()
	if err != nil {
		return err
	}
	if family == FamilySDXL {
		return m.fromSGM(ts, o)
	}
	if o.family != 0 {
		family = o.family
	}
	pred := o.predictionFor(family)
	upscaler := ts.isX4Upscaler()
	heads := o.unetHeads
	if upscaler && heads == nil {
		if heads, err = ts.x4UpscalerHeads(); err != nil {
			return fmt.Errorf("unet: %w", err)
		}
	}
	unet, err := ts.inferUNet(family, pred, heads)
	if err != nil {
		return fmt.Errorf("unet: %w", err)
	}
	vae, err := ts.inferVAE()
	if err != nil {
		return fmt.Errorf("vae: %w", err)
	}
	if upscaler {
		if err := ts.x4Upscaler(&unet, &vae); err != nil {
			return fmt.Errorf("unet: %w", err)
		}
	}
	text, textSource, err := ts.inferText(family, o.textHeads)
	if err != nil {
		return fmt.Errorf("text_encoder: %w", err)
	}
	warning, err := ts.checkTextDepth(text)
	if err != nil {
		return fmt.Errorf("text_encoder: %w", err)
	}
	used := map[string]bool{}
	if m.UNet, err = bindComponent("unet", unet, len(ts), unetModules(unet).resolver(ldmUNet), ts.find, used); err != nil {
		return err
	}
	if m.VAE, err = bindComponent("vae", vae, len(ts), vaeModules(vae).resolver(ldmVAE), ts.find, used); err != nil {
		return err
	}
	if m.TextEncoder, err = bindComponent("text_encoder", text, len(ts), textSource, ts.find, used); err != nil {
		return err
	}
	m.Family = family
	m.Scheduler = defaultScheduler(family, pred)
	if upscaler {
		m.Scheduler = X4SchedulerConfig()
		m.Scheduler.PredictionType = pred
		m.Scheduler = m.Scheduler.withRaw()
		m.Upscaler = &UpscalerConfig{MaxNoiseLevel: defaultMaxNoiseLevel, LowResScheduler: X4LowResSchedulerConfig()}
	}
	if warning != "" {
		m.Warnings = append(m.Warnings, warning)
	}
	for name := range ts {
		if !used[name] {
			m.Unused = append(m.Unused, name)
		}
	}
	slices.Sort(m.Unused)
	return nil
}

// Summary describes a loaded model for people (sdcli info).
type Summary struct {
	Family         Family
	Format         Format
	Path           string
	PredictionType schedule.PredictionType
	Components     []ComponentSummary
	Unused         int      // file tensors no component needs
	Warnings       []string // Model.Warnings
}

// ComponentSummary describes one network.
type ComponentSummary struct {
	Name       string // "unet", "vae", "text_encoder", "text_encoder_2", ...
	Config     string // the main sizes, on one line
	Tensors    int
	Parameters int64
	Bytes      int64
	DTypes     map[DType]int // tensors per element type
}

// Summary computes the model's summary; it reads shapes only.
func (m *Model) Summary() Summary {
	u, v := m.UNet.Config, m.VAE.Config
	s := Summary{
		Family: m.Family, Format: m.Format, Path: m.Path,
		PredictionType: m.Scheduler.PredictionType,
		Unused:         len(m.Unused),
		Warnings:       slices.Clone(m.Warnings),
		Components: []ComponentSummary{
			summarize("unet", m.UNet.Tensors, fmt.Sprintf("in %d out %d, channels %v, layers %v, heads %v, context %d, linear projection %t, sample %d",
				u.InChannels, u.OutChannels, u.BlockOutChannels, u.LayersPerBlock, u.AttentionHeads, u.CrossAttentionDim, u.UseLinearProjection, u.SampleSize)),
			summarize("vae", m.VAE.Tensors, fmt.Sprintf("channels %v, layers %d, latent %d, scaling %g, shift %g",
				v.BlockOutChannels, v.LayersPerBlock, v.LatentChannels, v.ScalingFactor, v.ShiftFactor)),
		},
	}
	for _, te := range m.TextEncoders() {
		t := te.Config
		s.Components = append(s.Components, summarize(te.Name, te.Tensors, fmt.Sprintf("hidden %d, layers %d, heads %d, mlp %d, %s, vocab %d, positions %d",
			t.HiddenSize, t.NumHiddenLayers, t.NumAttentionHeads, t.IntermediateSize, t.HiddenAct, t.VocabSize, t.MaxPositionEmbeddings)))
	}
	return s
}

func summarize(name string, tensors map[string]Tensor, config string) ComponentSummary {
	s := ComponentSummary{Name: name, Config: config, Tensors: len(tensors), DTypes: map[DType]int{}}
	for _, t := range tensors {
		s.Parameters += t.NumElements()
		s.Bytes += int64(len(t.Data))
		s.DTypes[t.DType]++
	}
	return s
}

// String formats the summary as a few human-readable lines.
func (s Summary) String() string {
	var b strings.Builder
	pred := s.PredictionType.String() + " prediction"
	if s.PredictionType == schedule.PredictV {
		pred = "v-prediction" // the usual name; "v_prediction prediction" reads badly
	}
	fmt.Fprintf(&b, "%s: %s model (%s), %s\n", s.Path, s.Family, s.Format, pred)
	var params, bytes int64
	for _, c := range s.Components {
		var hist []string
		for _, d := range slices.Sorted(maps.Keys(c.DTypes)) {
			hist = append(hist, fmt.Sprintf("%s×%d", d, c.DTypes[d]))
		}
		fmt.Fprintf(&b, "  %-12s %4d tensors, %6.1fM parameters, %7.1f MiB [%s]\n      %s\n",
			c.Name, c.Tensors, float64(c.Parameters)/1e6, float64(c.Bytes)/(1<<20), strings.Join(hist, " "), c.Config)
		params += c.Parameters
		bytes += c.Bytes
	}
	fmt.Fprintf(&b, "  total        %.1fM parameters, %.1f MiB; %d file tensors unused\n", float64(params)/1e6, float64(bytes)/(1<<20), s.Unused)
	for _, w := range s.Warnings {
		fmt.Fprintf(&b, "  warning      %s\n", w)
	}
	return b.String()
}

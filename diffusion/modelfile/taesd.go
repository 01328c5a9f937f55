package modelfile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// TAESDConfig is diffusers' AutoencoderTiny config with defaults resolved.
// A network without levels (nil block lists) is absent: the original
// layout ships the encoder and the decoder as separate files.
type TAESDConfig struct {
	InChannels, OutChannels, LatentChannels int
	EncoderBlockOutChannels                 []int
	NumEncoderBlocks                        []int
	DecoderBlockOutChannels                 []int
	NumDecoderBlocks                        []int
	// Pipelines decode latents / ScalingFactor + ShiftFactor and encode to
	// (z - ShiftFactor) * ScalingFactor; TAESD's are 1 and 0 (its latents are
	// the denoiser's as they are).
	ScalingFactor, ShiftFactor float64
}

// DefaultTAESDConfig is TAESD's (and TAESDXL's): width 64, four levels.
func DefaultTAESDConfig() TAESDConfig {
	return TAESDConfig{
		InChannels: 3, OutChannels: 3, LatentChannels: 4,
		EncoderBlockOutChannels: []int{64, 64, 64, 64}, NumEncoderBlocks: []int{1, 3, 3, 3},
		DecoderBlockOutChannels: []int{64, 64, 64, 64}, NumDecoderBlocks: []int{3, 3, 3, 1},
		ScalingFactor: 1,
	}
}

type taesdJSON struct {
	ClassName               string   `json:"_class_name"`
	InChannels              int      `json:"in_channels"`
	OutChannels             int      `json:"out_channels"`
	LatentChannels          int      `json:"latent_channels"`
	EncoderBlockOutChannels []int    `json:"encoder_block_out_channels"`
	DecoderBlockOutChannels []int    `json:"decoder_block_out_channels"`
	NumEncoderBlocks        []int    `json:"num_encoder_blocks"`
	NumDecoderBlocks        []int    `json:"num_decoder_blocks"`
	ActFn                   string   `json:"act_fn"`
	UpsampleFn              string   `json:"upsample_fn"`
	UpsamplingScalingFactor int      `json:"upsampling_scaling_factor"`
	ScalingFactor           float64  `json:"scaling_factor"`
	ShiftFactor             *float64 `json:"shift_factor"`
}

// ParseTAESDConfig reads a diffusers AutoencoderTiny config.json and
// validates it.
func ParseTAESDConfig(data []byte) (TAESDConfig, error) {
	d := DefaultTAESDConfig()
	j := taesdJSON{ // AutoencoderTiny's defaults
		InChannels: d.InChannels, OutChannels: d.OutChannels, LatentChannels: d.LatentChannels,
		EncoderBlockOutChannels: d.EncoderBlockOutChannels, DecoderBlockOutChannels: d.DecoderBlockOutChannels,
		NumEncoderBlocks: d.NumEncoderBlocks, NumDecoderBlocks: d.NumDecoderBlocks,
		ActFn: "relu", UpsampleFn: "nearest", UpsamplingScalingFactor: 2, ScalingFactor: 1,
	}
	if err := json.Unmarshal(data, &j); err != nil {
		return TAESDConfig{}, badModelf("taesd config: %w", err)
	}
	switch {
	case j.ClassName != "" && j.ClassName != "AutoencoderTiny":
		return TAESDConfig{}, unsupportedf("taesd config: class %s is not supported (want AutoencoderTiny)", j.ClassName)
	case j.ActFn != "relu":
		return TAESDConfig{}, unsupportedf("taesd config: act_fn %q is not supported (want relu)", j.ActFn)
	case j.UpsampleFn != "nearest" || j.UpsamplingScalingFactor != 2:
		return TAESDConfig{}, unsupportedf("taesd config: upsampling %s x%d is not supported (want nearest x2)", j.UpsampleFn, j.UpsamplingScalingFactor)
	}
	c := TAESDConfig{
		InChannels: j.InChannels, OutChannels: j.OutChannels, LatentChannels: j.LatentChannels,
		EncoderBlockOutChannels: j.EncoderBlockOutChannels, NumEncoderBlocks: j.NumEncoderBlocks,
		DecoderBlockOutChannels: j.DecoderBlockOutChannels, NumDecoderBlocks: j.NumDecoderBlocks,
		ScalingFactor: j.ScalingFactor,
	}
	if j.ShiftFactor != nil {
		c.ShiftFactor = *j.ShiftFactor
	}
	return c, c.Validate()
}

// maxTAESDLevels is the runtime's level limit (SD_MAX_LEVELS).
const maxTAESDLevels = 8

// HasEncoder and HasDecoder report which networks the config describes.
func (c TAESDConfig) HasEncoder() bool { return len(c.EncoderBlockOutChannels) > 0 }
func (c TAESDConfig) HasDecoder() bool { return len(c.DecoderBlockOutChannels) > 0 }

// Factor is the ratio of image to latent size of the decoder (or the
// encoder when there is no decoder).
func (c TAESDConfig) Factor() int {
	n := len(c.DecoderBlockOutChannels)
	if n == 0 {
		n = len(c.EncoderBlockOutChannels)
	}
	return 1 << (n - 1)
}

// Validate checks that the config describes a TAESD this package can list
// the tensors of: one width per network, as diffusers builds it.
func (c TAESDConfig) Validate() error {
	switch {
	case c.InChannels <= 0 || c.OutChannels <= 0 || c.LatentChannels <= 0 ||
		c.InChannels > maxWidth || c.OutChannels > maxWidth || c.LatentChannels > maxWidth:
		return badModelf("taesd config: in/out/latent channels %d, %d, %d (1..%d)", c.InChannels, c.OutChannels, c.LatentChannels, maxWidth)
	case !c.HasEncoder() && !c.HasDecoder():
		return badModelf("taesd config: neither an encoder nor a decoder")
	case !(c.ScalingFactor > 0) || math.IsInf(c.ScalingFactor, 0) || math.IsNaN(c.ShiftFactor) || math.IsInf(c.ShiftFactor, 0):
		return badModelf("taesd config: scaling_factor %g must be positive and shift_factor %g finite", c.ScalingFactor, c.ShiftFactor)
	}
	for _, n := range []struct {
		name             string
		channels, blocks []int
	}{{"encoder", c.EncoderBlockOutChannels, c.NumEncoderBlocks}, {"decoder", c.DecoderBlockOutChannels, c.NumDecoderBlocks}} {
		if len(n.channels) != len(n.blocks) || len(n.channels) > maxTAESDLevels {
			return badModelf("taesd config: %s: %d widths and %d block counts (equal, at most %d)", n.name, len(n.channels), len(n.blocks), maxTAESDLevels)
		}
		for i := range n.channels {
			if n.channels[i] != n.channels[0] || n.channels[i] <= 0 || n.channels[i] > maxWidth || n.blocks[i] < 0 || n.blocks[i] > 64 {
				return unsupportedf("taesd config: %s level %d: %d channels, %d blocks (one width for all levels, 0..64 blocks)", n.name, i, n.channels[i], n.blocks[i])
			}
		}
	}
	return nil
}

func (c TAESDConfig) fitsIn(tensors int) error {
	n := 0
	for _, b := range append(slices.Clone(c.NumEncoderBlocks), c.NumDecoderBlocks...) {
		n += 6 * b // three convs with biases per Block
	}
	if n > tensors {
		return badModelf("taesd config: its blocks need %d tensors, the weights hold %d", n, tensors)
	}
	return nil
}

// TensorSpecs lists every tensor of the networks the config describes, in
// diffusers' naming (the indices of its nn.Sequential, where ReLU and
// upsampling layers count without holding tensors).
func (c TAESDConfig) TensorSpecs() ([]TensorSpec, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	var s specList
	blocks := func(net string, idx *int, n, ch int) {
		for range n {
			for k := 0; k < 3; k++ {
				s.conv(fmt.Sprintf("%s.layers.%d.conv.%d", net, *idx, 2*k), ch, ch, 3)
			}
			*idx++
		}
	}
	if c.HasEncoder() {
		ch, idx := c.EncoderBlockOutChannels[0], 0
		for i, n := range c.NumEncoderBlocks {
			if i == 0 {
				s.conv(fmt.Sprintf("encoder.layers.%d", idx), ch, c.InChannels, 3)
			} else {
				s.add(fmt.Sprintf("encoder.layers.%d.weight", idx), ch, ch, 3, 3) // stride 2, no bias
			}
			idx++
			blocks("encoder", &idx, n, ch)
		}
		s.conv(fmt.Sprintf("encoder.layers.%d", idx), c.LatentChannels, ch, 3)
	}
	if c.HasDecoder() {
		ch := c.DecoderBlockOutChannels[0]
		s.conv("decoder.layers.0", ch, c.LatentChannels, 3)
		idx := 2 // 1 is a ReLU
		for i, n := range c.NumDecoderBlocks {
			blocks("decoder", &idx, n, ch)
			if i == len(c.NumDecoderBlocks)-1 {
				s.conv(fmt.Sprintf("decoder.layers.%d", idx), c.OutChannels, ch, 3)
				break
			}
			idx++ // the upsampling
			s.add(fmt.Sprintf("decoder.layers.%d.weight", idx), ch, ch, 3, 3)
			idx++
		}
	}
	return s, nil
}

// TAESD is a loaded tiny autoencoder: its config and tensors in diffusers'
// naming. Tensor data view memory-mapped files, valid until Close.
type TAESD struct {
	Path string
	Component[TAESDConfig]
	files []*File
}

// Close unmaps the files. Closing twice is harmless.
func (t *TAESD) Close() error {
	var errs []error
	for _, f := range t.files {
		errs = append(errs, f.Close())
	}
	t.files = nil
	return errors.Join(errs...)
}

// LoadTAESD loads a TAESD (TAESDXL, ...) from
//   - a diffusers AutoencoderTiny folder (config.json and
//     diffusion_pytorch_model.safetensors or .bin),
//   - a folder of the original layout (madebyollin/taesd: one file whose
//     name ends in encoder and/or one ending in decoder, .safetensors or
//     .pth),
//   - one such original file (the encoder or the decoder alone), or one
//     file in diffusers' naming (encoder.layers.N..., decoder.layers.N...).
//
// Without a config the structure is read from the tensors present.
func LoadTAESD(path string) (*TAESD, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	t := &TAESD{Path: path}
	if err := t.load(path, st.IsDir()); err != nil {
		t.Close()
		return nil, badModel(fmt.Errorf("taesd %s: %w", path, err))
	}
	return t, nil
}

func (t *TAESD) load(path string, dir bool) error {
	var cfg *TAESDConfig
	var paths []string
	switch {
	case dir && fileExists(filepath.Join(path, "config.json")):
		b, err := os.ReadFile(filepath.Join(path, "config.json"))
		if err != nil {
			return err
		}
		c, err := ParseTAESDConfig(b)
		if err != nil {
			return err
		}
		cfg = &c
		files, err := openWeights(path, []string{"diffusion_pytorch_model"}, "")
		t.files = append(t.files, files...)
		if err != nil {
			return err
		}
	case dir:
		for _, part := range []string{"encoder", "decoder"} {
			var found []string
			for _, ext := range []string{"safetensors", "pth"} {
				m, _ := filepath.Glob(filepath.Join(path, "*"+part+"."+ext))
				found = append(found, m...)
			}
			if len(found) > 1 {
				return fmt.Errorf("several %s files (%s): name one", part, strings.Join(baseNames(found), ", "))
			}
			paths = append(paths, found...)
		}
		if len(paths) == 0 {
			return errors.New("no config.json and no *encoder / *decoder weights")
		}
	default:
		paths = []string{path}
	}
	for _, p := range paths {
		f, err := OpenFile(p)
		if err != nil {
			return err
		}
		t.files = append(t.files, f)
	}
	// Every tensor under its diffusers name.
	all := map[string]Tensor{}
	for _, f := range t.files {
		for name, x := range taesdNames(f.Tensors) {
			if _, dup := all[name]; dup {
				return fmt.Errorf("tensor %s is given twice", name)
			}
			all[name] = x
		}
	}
	if cfg == nil {
		c, err := inferTAESDConfig(all)
		if err != nil {
			return err
		}
		cfg = &c
	}
	used := map[string]bool{}
	find := func(n string) (Tensor, bool) { x, ok := all[n]; return x, ok }
	resolve := func(n string) source { return source{name: n} }
	comp, err := bindComponent("taesd", *cfg, len(all), resolve, find, used)
	if err != nil {
		return err
	}
	for n := range all {
		if !used[n] {
			return fmt.Errorf("tensor %s is not part of the TAESD its config or structure describes", n)
		}
	}
	t.Component = comp
	return nil
}

// taesdNames maps a file's tensors to diffusers' names: the original
// layout's indices ("3.conv.0.weight") become encoder.layers.3... in an
// encoder file (its first conv takes the image, 3 channels) and
// decoder.layers.2... in a decoder file (index 0 there is the
// parameter-free clamp, which diffusers leaves out).
func taesdNames(ts []Tensor) map[string]Tensor {
	out := make(map[string]Tensor, len(ts))
	original, decoder := true, true
	for _, x := range ts {
		first, _, _ := strings.Cut(x.Name, ".")
		if _, err := strconv.Atoi(first); err != nil {
			original = false
		}
		if x.Name == "0.weight" {
			decoder = false // the decoder's 0 is the clamp
		}
	}
	for _, x := range ts {
		name := x.Name
		if original {
			first, rest, _ := strings.Cut(x.Name, ".")
			i, _ := strconv.Atoi(first)
			if decoder {
				name = fmt.Sprintf("decoder.layers.%d.%s", i-1, rest)
			} else {
				name = fmt.Sprintf("encoder.layers.%d.%s", i, rest)
			}
		}
		out[name] = x
	}
	return out
}

// inferTAESDConfig reads the structure of diffusers-named tensors: per
// network, which nn.Sequential index holds a plain conv, a Block or nothing.
func inferTAESDConfig(all map[string]Tensor) (TAESDConfig, error) {
	c := TAESDConfig{ScalingFactor: 1}
	kind := func(net string, i int) byte {
		if _, ok := all[fmt.Sprintf("%s.layers.%d.weight", net, i)]; ok {
			return 'C'
		}
		if _, ok := all[fmt.Sprintf("%s.layers.%d.conv.0.weight", net, i)]; ok {
			return 'B'
		}
		return 0
	}
	shape := func(name string) []int64 { return all[name].Shape }
	if kind("encoder", 0) == 'C' {
		w := shape("encoder.layers.0.weight")
		if len(w) != 4 {
			return c, errors.New("encoder.layers.0.weight is not a conv weight")
		}
		// (C B*)+ C: each level's conv and Blocks, then the conv to the latents.
		i := 0
		for {
			n := 0
			for i++; kind("encoder", i) == 'B'; i++ {
				n++
			}
			c.EncoderBlockOutChannels = append(c.EncoderBlockOutChannels, int(w[0]))
			c.NumEncoderBlocks = append(c.NumEncoderBlocks, n)
			if kind("encoder", i) != 'C' || len(c.NumEncoderBlocks) > maxTAESDLevels {
				return c, fmt.Errorf("encoder layer %d: not the conv the structure needs", i)
			}
			if kind("encoder", i+1) == 0 { // nothing after it: the last conv
				break
			}
		}
		out := shape(fmt.Sprintf("encoder.layers.%d.weight", i))
		if len(out) != 4 {
			return c, errors.New("the encoder's last conv is not a conv weight")
		}
		c.InChannels, c.LatentChannels = int(w[1]), int(out[0])
	}
	if kind("decoder", 0) == 'C' {
		w := shape("decoder.layers.0.weight")
		if len(w) != 4 {
			return c, errors.New("decoder.layers.0.weight is not a conv weight")
		}
		// C (ReLU) then per level B* and either C (the last) or (upsample) C.
		i := 2
		for {
			n := 0
			for ; kind("decoder", i) == 'B'; i++ {
				n++
			}
			c.DecoderBlockOutChannels = append(c.DecoderBlockOutChannels, int(w[0]))
			c.NumDecoderBlocks = append(c.NumDecoderBlocks, n)
			if len(c.NumDecoderBlocks) > maxTAESDLevels {
				return c, errors.New("the decoder has more levels than the runtime supports")
			}
			if kind("decoder", i) == 'C' { // the last level's conv to the image
				out := shape(fmt.Sprintf("decoder.layers.%d.weight", i))
				if len(out) != 4 {
					return c, errors.New("the decoder's last conv is not a conv weight")
				}
				c.OutChannels = int(out[0])
				break
			}
			if kind("decoder", i) != 0 || kind("decoder", i+1) != 'C' {
				return c, fmt.Errorf("decoder layer %d: not the upsampling and conv the structure needs", i)
			}
			i += 2
		}
		if c.LatentChannels != 0 && c.LatentChannels != int(w[1]) {
			return c, fmt.Errorf("the encoder makes %d latent channels, the decoder takes %d", c.LatentChannels, w[1])
		}
		c.LatentChannels = int(w[1])
		if c.InChannels == 0 {
			c.InChannels = c.OutChannels
		}
	}
	if c.OutChannels == 0 {
		c.OutChannels = c.InChannels
	}
	if !c.HasEncoder() && !c.HasDecoder() {
		return c, errors.New("neither TAESD encoder nor decoder tensors (encoder.layers.0.weight, decoder.layers.0.weight, or the original 0.weight / 1.weight)")
	}
	return c, c.Validate()
}

// WriteRandomTAESD writes a diffusers AutoencoderTiny folder of TAESD's architecture
// (DefaultTAESDConfig: config.json and diffusion_pytorch_model.safetensors) holding random
// weights of the given type, for benchmarks, drawn as WriteRandom draws a pipeline's.
func WriteRandomTAESD(ctx context.Context, dir string, dtype DType, seed uint64) error {
	if err := checkRandomDType(dtype); err != nil {
		return err
	}
	c := DefaultTAESDConfig()
	specs, err := c.TensorSpecs()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	cfg := map[string]any{
		"_class_name": "AutoencoderTiny", "in_channels": c.InChannels, "out_channels": c.OutChannels,
		"latent_channels": c.LatentChannels, "encoder_block_out_channels": c.EncoderBlockOutChannels,
		"decoder_block_out_channels": c.DecoderBlockOutChannels, "num_encoder_blocks": c.NumEncoderBlocks,
		"num_decoder_blocks": c.NumDecoderBlocks, "act_fn": "relu", "upsample_fn": "nearest",
		"upsampling_scaling_factor": 2, "scaling_factor": c.ScalingFactor, "shift_factor": c.ShiftFactor,
		"force_upcast": false, "latent_magnitude": 3, "latent_shift": 0.5,
	}
	if err := writeJSON(filepath.Join(dir, "config.json"), cfg); err != nil {
		return err
	}
	return writeRandomTensors(ctx, filepath.Join(dir, "diffusion_pytorch_model.safetensors"), randomHeads(specs, dtype), "taesd", seed)
}

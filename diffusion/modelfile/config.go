package modelfile

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/gosd/gosd/diffusion/schedule"
)

// Family is a Stable Diffusion model family: one network layout with its
// text encoder, the unit of key mapping and default configs.
type Family uint8

// Supported families.
const (
	FamilySD1 Family = iota + 1 // SD 1.x: CLIP ViT-L/14 text encoder, 8 heads, conv proj_in
	FamilySD2                   // SD 2.x: OpenCLIP ViT-H/14 text encoder, 64-wide heads, linear proj_in
	// SDXL: CLIP ViT-L/14 and OpenCLIP ViT-bigG/14 text encoders (the second with its
	// projection), a UNet with text_time added conditioning.
	FamilySDXL
)

// String returns "sd1", "sd2" or "sdxl".
func (f Family) String() string {
	switch f {
	case FamilySD1:
		return "sd1"
	case FamilySD2:
		return "sd2"
	case FamilySDXL:
		return "sdxl"
	}
	return fmt.Sprintf("Family(%d)", uint8(f))
}

// ParseFamily is the inverse of String.
func ParseFamily(s string) (Family, error) {
	for _, f := range []Family{FamilySD1, FamilySD2, FamilySDXL} {
		if s == f.String() {
			return f, nil
		}
	}
	return 0, fmt.Errorf("unknown model family %q (want sd1, sd2 or sdxl)", s)
}

// intOrList is a diffusers config value that is either one int for every
// block or a list with one per block.
type intOrList struct {
	set  bool
	list bool
	vals []int
}

func (v *intOrList) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if string(b) == "null" {
		*v = intOrList{}
		return nil
	}
	if len(b) > 0 && b[0] == '[' {
		var vals []int
		if err := json.Unmarshal(b, &vals); err != nil {
			return err
		}
		*v = intOrList{set: true, list: true, vals: vals}
		return nil
	}
	var n int
	if err := json.Unmarshal(b, &n); err != nil {
		return err
	}
	*v = intOrList{set: true, vals: []int{n}}
	return nil
}

func (v intOrList) MarshalJSON() ([]byte, error) {
	switch {
	case !v.set:
		return []byte("null"), nil
	case v.list:
		return json.Marshal(v.vals)
	}
	return json.Marshal(v.vals[0])
}

func listOf(vals []int) intOrList { return intOrList{set: true, list: true, vals: vals} }
func scalar(n int) intOrList      { return intOrList{set: true, vals: []int{n}} }

// perBlock expands the value to n blocks.
func (v intOrList) perBlock(n int, field string) ([]int, error) {
	if !v.list {
		return slices.Repeat([]int{v.vals[0]}, n), nil
	}
	if len(v.vals) != n {
		return nil, fmt.Errorf("%s has %d values for %d blocks", field, len(v.vals), n)
	}
	return slices.Clone(v.vals), nil
}

// UNetConfig is diffusers' UNet2DConditionModel config with its defaults
// resolved: per-level values are always lists with one entry per level.
type UNetConfig struct {
	SampleSize       int // latent side length it was trained at (64 for 512 px)
	InChannels       int // 4; 9 for inpainting (latents + mask + masked image)
	OutChannels      int
	BlockOutChannels []int // channels per level
	LayersPerBlock   []int // ResNets per down level; up levels have one more
	DownBlockTypes   []string
	UpBlockTypes     []string
	MidBlockType     string
	// AttentionHeads is the number of heads per level; the mid block uses
	// the last. diffusers stores it as attention_head_dim (a misnomer kept
	// for compatibility) when num_attention_heads is null; SD 2.x lists one
	// per level because its heads are 64 wide.
	AttentionHeads            []int
	TransformerLayersPerBlock []int // transformer blocks per attention, per level
	CrossAttentionDim         int   // width of the text embeddings attended to
	UseLinearProjection       bool  // proj_in/proj_out are Linear (SD 2.x), not 1×1 convs
	UpcastAttention           bool  // attention scores in float32 even in half-precision runs
	NormNumGroups             int
	NormEps                   float64
	FlipSinToCos              bool // timestep embedding order cos|sin
	FreqShift                 int
	ConvInKernel              int
	ConvOutKernel             int
	TimeEmbeddingDim          int // 4 × BlockOutChannels[0] unless configured

	// OnlyCrossAttention is nil or, per level (down order; up level i uses
	// entry levels-1-i), whether the first attention of each transformer block
	// attends to the text context instead of the image (the x4 upscaler's).
	OnlyCrossAttention []bool
	// AdditionEmbedType is "" or AdditionTextTime (SDXL: pooled text
	// embeddings and micro-conditioning time ids through add_embedding, an
	// MLP from ProjectionClassEmbeddingsInputDim inputs, each time id embedded
	// AdditionTimeEmbedDim wide).
	AdditionEmbedType                 string
	AdditionTimeEmbedDim              int
	ProjectionClassEmbeddingsInputDim int
	// ClassEmbedType is "", ClassTable (an embedding table of NumClassEmbeds
	// rows: diffusers' class_embed_type null with num_class_embeds set, the
	// x4 upscaler's noise level) or ClassTimestep (labels embedded as
	// timesteps, then an MLP).
	ClassEmbedType string
	NumClassEmbeds int
}

// Values of UNetConfig's AdditionEmbedType and ClassEmbedType.
const (
	AdditionTextTime = "text_time"
	ClassTable       = "table"
	ClassTimestep    = "timestep"
)

// unetJSON is config.json as diffusers writes it; it starts from
// UNet2DConditionModel's defaults, so keys missing from older files (and
// nulls, which encoding/json leaves alone) keep them.
type unetJSON struct {
	ClassName                 string    `json:"_class_name"`
	SampleSize                *int      `json:"sample_size"`
	InChannels                int       `json:"in_channels"`
	OutChannels               int       `json:"out_channels"`
	CenterInputSample         bool      `json:"center_input_sample"`
	FlipSinToCos              bool      `json:"flip_sin_to_cos"`
	FreqShift                 int       `json:"freq_shift"`
	DownBlockTypes            []string  `json:"down_block_types"`
	MidBlockType              *string   `json:"mid_block_type"`
	UpBlockTypes              []string  `json:"up_block_types"`
	OnlyCrossAttention        any       `json:"only_cross_attention"`
	BlockOutChannels          []int     `json:"block_out_channels"`
	LayersPerBlock            intOrList `json:"layers_per_block"`
	DownsamplePadding         int       `json:"downsample_padding"`
	MidBlockScaleFactor       float64   `json:"mid_block_scale_factor"`
	ActFn                     string    `json:"act_fn"`
	NormNumGroups             int       `json:"norm_num_groups"`
	NormEps                   float64   `json:"norm_eps"`
	CrossAttentionDim         intOrList `json:"cross_attention_dim"`
	TransformerLayersPerBlock intOrList `json:"transformer_layers_per_block"`
	AttentionHeadDim          intOrList `json:"attention_head_dim"`
	NumAttentionHeads         intOrList `json:"num_attention_heads"`
	UseLinearProjection       bool      `json:"use_linear_projection"`
	UpcastAttention           bool      `json:"upcast_attention"`
	ResnetTimeScaleShift      string    `json:"resnet_time_scale_shift"`
	TimeEmbeddingType         string    `json:"time_embedding_type"`
	TimeEmbeddingDim          *int      `json:"time_embedding_dim"`
	ConvInKernel              int       `json:"conv_in_kernel"`
	ConvOutKernel             int       `json:"conv_out_kernel"`

	// Extra conditioning: SDXL's text_time, class embeddings.
	AdditionEmbedType                 *string `json:"addition_embed_type"`
	AdditionTimeEmbedDim              *int    `json:"addition_time_embed_dim"`
	ProjectionClassEmbeddingsInputDim *int    `json:"projection_class_embeddings_input_dim"`
	ClassEmbedType                    *string `json:"class_embed_type"`
	NumClassEmbeds                    *int    `json:"num_class_embeds"`
	ClassEmbeddingsConcat             bool    `json:"class_embeddings_concat"`

	// Features of other architectures (LCM-distilled UNets, ...) that must
	// stay off.
	EncoderHidDimType                *string   `json:"encoder_hid_dim_type,omitempty"`
	TimeCondProjDim                  *int      `json:"time_cond_proj_dim,omitempty"`
	DualCrossAttention               bool      `json:"dual_cross_attention,omitempty"`
	AttentionType                    string    `json:"attention_type,omitempty"`
	ReverseTransformerLayersPerBlock intOrList `json:"reverse_transformer_layers_per_block"`
}

func defaultUNetJSON() unetJSON {
	return unetJSON{
		InChannels: 4, OutChannels: 4, FlipSinToCos: true,
		DownBlockTypes:            []string{crossAttnDown, crossAttnDown, crossAttnDown, plainDown},
		UpBlockTypes:              []string{plainUp, crossAttnUp, crossAttnUp, crossAttnUp},
		BlockOutChannels:          []int{320, 640, 1280, 1280},
		LayersPerBlock:            scalar(2),
		DownsamplePadding:         1,
		MidBlockScaleFactor:       1,
		ActFn:                     "silu",
		NormNumGroups:             32,
		NormEps:                   1e-5,
		CrossAttentionDim:         scalar(1280),
		TransformerLayersPerBlock: scalar(1),
		AttentionHeadDim:          scalar(8),
		ResnetTimeScaleShift:      "default",
		TimeEmbeddingType:         "positional",
		ConvInKernel:              3,
		ConvOutKernel:             3,
		AttentionType:             "default",
	}
}

// Block types this package knows the tensors of.
const (
	crossAttnDown = "CrossAttnDownBlock2D"
	plainDown     = "DownBlock2D"
	crossAttnUp   = "CrossAttnUpBlock2D"
	plainUp       = "UpBlock2D"
	crossAttnMid  = "UNetMidBlock2DCrossAttn"
	plainMid      = "UNetMidBlock2D" // one ResNet in UNet2DConditionModel
	vaeDown       = "DownEncoderBlock2D"
	vaeUp         = "UpDecoderBlock2D"
)

// ParseUNetConfig reads a diffusers unet/config.json and validates it.
func ParseUNetConfig(data []byte) (UNetConfig, error) {
	j := defaultUNetJSON()
	if err := json.Unmarshal(data, &j); err != nil {
		return UNetConfig{}, fmt.Errorf("unet config: %w", err)
	}
	c, err := j.resolve()
	if err != nil {
		return UNetConfig{}, fmt.Errorf("unet config: %w", err)
	}
	return c, c.Validate()
}

func (j unetJSON) resolve() (UNetConfig, error) {
	switch {
	case j.ClassName != "" && j.ClassName != "UNet2DConditionModel":
		return UNetConfig{}, unsupportedf("class %s is not supported (want UNet2DConditionModel)", j.ClassName)
	case j.AdditionEmbedType != nil && *j.AdditionEmbedType != AdditionTextTime:
		return UNetConfig{}, unsupportedf("addition_embed_type %q is not supported (only %s, SDXL's)", *j.AdditionEmbedType, AdditionTextTime)
	case j.ClassEmbedType != nil && *j.ClassEmbedType != ClassTimestep:
		return UNetConfig{}, unsupportedf("class_embed_type %q is not supported (only none, with num_class_embeds, or %s)", *j.ClassEmbedType, ClassTimestep)
	case j.ClassEmbeddingsConcat:
		return UNetConfig{}, unsupportedf("class_embeddings_concat is not supported")
	case j.EncoderHidDimType != nil:
		return UNetConfig{}, unsupportedf("encoder_hid_dim_type is not supported")
	case j.TimeCondProjDim != nil:
		return UNetConfig{}, unsupportedf("time_cond_proj_dim (guidance-distilled UNets) is not supported")
	case j.DualCrossAttention || j.AttentionType != "default":
		return UNetConfig{}, unsupportedf("dual_cross_attention and non-default attention_type are not supported")
	case j.ReverseTransformerLayersPerBlock.set:
		return UNetConfig{}, unsupportedf("reverse_transformer_layers_per_block is not supported")
	case j.ActFn != "silu" || j.ResnetTimeScaleShift != "default" || j.TimeEmbeddingType != "positional":
		return UNetConfig{}, unsupportedf("act_fn %q, resnet_time_scale_shift %q, time_embedding_type %q: only silu, default, positional are supported", j.ActFn, j.ResnetTimeScaleShift, j.TimeEmbeddingType)
	case j.CenterInputSample || j.DownsamplePadding != 1 || j.MidBlockScaleFactor != 1:
		return UNetConfig{}, unsupportedf("center_input_sample, downsample_padding != 1 and mid_block_scale_factor != 1 are not supported")
	case j.CrossAttentionDim.list:
		return UNetConfig{}, unsupportedf("a per-block cross_attention_dim is not supported")
	}
	levels := len(j.DownBlockTypes)
	c := UNetConfig{
		InChannels: j.InChannels, OutChannels: j.OutChannels,
		BlockOutChannels: j.BlockOutChannels,
		DownBlockTypes:   j.DownBlockTypes, UpBlockTypes: j.UpBlockTypes,
		MidBlockType:        crossAttnMid,
		CrossAttentionDim:   j.CrossAttentionDim.vals[0],
		UseLinearProjection: j.UseLinearProjection, UpcastAttention: j.UpcastAttention,
		NormNumGroups: j.NormNumGroups, NormEps: j.NormEps,
		FlipSinToCos: j.FlipSinToCos, FreqShift: j.FreqShift,
		ConvInKernel: j.ConvInKernel, ConvOutKernel: j.ConvOutKernel,
	}
	if j.SampleSize != nil {
		c.SampleSize = *j.SampleSize
	}
	if j.MidBlockType != nil {
		c.MidBlockType = *j.MidBlockType
	}
	if len(j.BlockOutChannels) > 0 {
		c.TimeEmbeddingDim = 4 * j.BlockOutChannels[0]
	}
	if j.TimeEmbeddingDim != nil {
		c.TimeEmbeddingDim = *j.TimeEmbeddingDim
	}
	heads := j.AttentionHeadDim
	if j.NumAttentionHeads.set {
		heads = j.NumAttentionHeads
	}
	var err error
	if c.LayersPerBlock, err = j.LayersPerBlock.perBlock(levels, "layers_per_block"); err != nil {
		return c, err
	}
	if c.AttentionHeads, err = heads.perBlock(levels, "attention_head_dim"); err != nil {
		return c, err
	}
	if c.TransformerLayersPerBlock, err = j.TransformerLayersPerBlock.perBlock(levels, "transformer_layers_per_block"); err != nil {
		return c, err
	}
	if c.OnlyCrossAttention, err = boolPerBlock(j.OnlyCrossAttention, levels, "only_cross_attention"); err != nil {
		return c, err
	}
	if !slices.Contains(c.OnlyCrossAttention, true) {
		c.OnlyCrossAttention = nil // as the zero config says: no level has it
	}
	if j.AdditionEmbedType != nil {
		c.AdditionEmbedType = *j.AdditionEmbedType
		c.AdditionTimeEmbedDim = deref(j.AdditionTimeEmbedDim)
		c.ProjectionClassEmbeddingsInputDim = deref(j.ProjectionClassEmbeddingsInputDim)
	}
	switch {
	case j.ClassEmbedType != nil:
		c.ClassEmbedType = *j.ClassEmbedType
	case j.NumClassEmbeds != nil:
		c.ClassEmbedType, c.NumClassEmbeds = ClassTable, *j.NumClassEmbeds
	}
	return c, nil
}

func deref(p *int) int {
	if p == nil {
		return 0
	}
	return *p
}

// boolPerBlock resolves a bool-or-list config value (JSON null, a bool, or
// one bool per block) to one value per block.
func boolPerBlock(v any, n int, field string) ([]bool, error) {
	out := make([]bool, n)
	switch v := v.(type) {
	case nil:
	case bool:
		for i := range out {
			out[i] = v
		}
	case []any:
		if len(v) != n {
			return nil, fmt.Errorf("%s has %d entries for %d blocks", field, len(v), n)
		}
		for i, x := range v {
			b, ok := x.(bool)
			if !ok {
				return nil, fmt.Errorf("%s[%d] is %v, not a bool", field, i, x)
			}
			out[i] = b
		}
	default:
		return nil, fmt.Errorf("%s is %v, not a bool or a list of bools", field, v)
	}
	return out, nil
}

// Bounds on config sizes, far above those of any Stable Diffusion model (its
// widest layer is the text encoder's 4096-wide MLP, its latents 96 a side):
// a config beyond them is corrupt, and within them the sizes derived from it
// neither overflow nor lose bits converted to the runtime's int32 fields.
// Layer counts are bounded by the weights instead (see fitsIn).
const (
	maxWidth      = 1 << 16 // channels, hidden, MLP and context widths
	maxKernel     = 15      // conv kernel side
	maxSampleSize = 1 << 10 // latent side length
	maxVocab      = 1 << 20
	maxPositions  = 1 << 14
)

// inRange reports 0 < v <= hi.
func inRange(v, hi int) bool { return v > 0 && v <= hi }

// validEps reports a usable normalisation epsilon (not NaN, not absurd).
func validEps(eps float64) bool { return eps > 0 && eps < 1 }

// Validate checks that the config describes a UNet this package can list
// the tensors of (SD 1.x/2.x-style blocks).
func (c UNetConfig) Validate() error {
	levels := len(c.BlockOutChannels)
	if levels == 0 {
		return errors.New("unet config: no block_out_channels")
	}
	for name, n := range map[string]int{"down_block_types": len(c.DownBlockTypes), "up_block_types": len(c.UpBlockTypes), "layers_per_block": len(c.LayersPerBlock), "attention heads": len(c.AttentionHeads), "transformer_layers_per_block": len(c.TransformerLayersPerBlock)} {
		if n != levels {
			return fmt.Errorf("unet config: %s has %d entries for %d levels", name, n, levels)
		}
	}
	for i := range levels {
		if t := c.DownBlockTypes[i]; t != crossAttnDown && t != plainDown {
			return unsupportedf("unet config: unsupported down block type %q (want %s or %s)", t, crossAttnDown, plainDown)
		}
		if t := c.UpBlockTypes[i]; t != crossAttnUp && t != plainUp {
			return unsupportedf("unet config: unsupported up block type %q (want %s or %s)", t, crossAttnUp, plainUp)
		}
		ch := c.BlockOutChannels[i]
		switch {
		case ch <= 0 || c.LayersPerBlock[i] <= 0 || c.AttentionHeads[i] <= 0 || c.TransformerLayersPerBlock[i] <= 0:
			return fmt.Errorf("unet config: level %d: channels, layers, heads and transformer layers must be positive", i)
		case ch > maxWidth:
			return fmt.Errorf("unet config: level %d: %d channels (at most %d)", i, ch, maxWidth)
		case c.NormNumGroups <= 0 || ch%c.NormNumGroups != 0:
			return fmt.Errorf("unet config: level %d: %d channels do not split into %d norm groups", i, ch, c.NormNumGroups)
		case ch%c.AttentionHeads[i] != 0:
			return fmt.Errorf("unet config: level %d: %d channels do not split into %d attention heads", i, ch, c.AttentionHeads[i])
		}
	}
	if c.MidBlockType != crossAttnMid && c.MidBlockType != plainMid {
		return unsupportedf("unet config: unsupported mid block type %q (want %s or %s)", c.MidBlockType, crossAttnMid, plainMid)
	}
	if c.OnlyCrossAttention != nil && len(c.OnlyCrossAttention) != levels {
		return fmt.Errorf("unet config: only_cross_attention has %d entries for %d levels", len(c.OnlyCrossAttention), levels)
	}
	switch c.AdditionEmbedType {
	case "":
	case AdditionTextTime:
		if !inRange(c.AdditionTimeEmbedDim, maxWidth) || !inRange(c.ProjectionClassEmbeddingsInputDim, maxWidth) {
			return fmt.Errorf("unet config: addition_time_embed_dim %d and projection_class_embeddings_input_dim %d must be in 1..%d", c.AdditionTimeEmbedDim, c.ProjectionClassEmbeddingsInputDim, maxWidth)
		}
	default:
		return unsupportedf("unet config: addition_embed_type %q is not supported", c.AdditionEmbedType)
	}
	switch c.ClassEmbedType {
	case "", ClassTimestep:
	case ClassTable:
		if !inRange(c.NumClassEmbeds, maxVocab) {
			return fmt.Errorf("unet config: num_class_embeds %d must be in 1..%d", c.NumClassEmbeds, maxVocab)
		}
	default:
		return unsupportedf("unet config: class_embed_type %q is not supported", c.ClassEmbedType)
	}
	switch {
	case !inRange(c.InChannels, maxWidth) || !inRange(c.OutChannels, maxWidth) || !inRange(c.CrossAttentionDim, maxWidth) || !inRange(c.TimeEmbeddingDim, maxWidth):
		return fmt.Errorf("unet config: in/out channels %d, %d, cross_attention_dim %d and time embedding dim %d must be in 1..%d", c.InChannels, c.OutChannels, c.CrossAttentionDim, c.TimeEmbeddingDim, maxWidth)
	case !inRange(c.ConvInKernel, maxKernel) || c.ConvInKernel%2 == 0 || !inRange(c.ConvOutKernel, maxKernel) || c.ConvOutKernel%2 == 0:
		return fmt.Errorf("unet config: conv kernels %d, %d must be odd, in 1..%d", c.ConvInKernel, c.ConvOutKernel, maxKernel)
	case c.SampleSize < 0 || c.SampleSize > maxSampleSize:
		return fmt.Errorf("unet config: sample_size %d (at most %d)", c.SampleSize, maxSampleSize)
	case !validEps(c.NormEps):
		return fmt.Errorf("unet config: norm_eps %g must be in (0, 1)", c.NormEps)
	}
	return nil
}

// MarshalJSON writes the config as a diffusers unet/config.json.
func (c UNetConfig) MarshalJSON() ([]byte, error) {
	j := defaultUNetJSON()
	j.ClassName = "UNet2DConditionModel"
	j.SampleSize = &c.SampleSize
	j.InChannels, j.OutChannels = c.InChannels, c.OutChannels
	j.FlipSinToCos, j.FreqShift = c.FlipSinToCos, c.FreqShift
	j.DownBlockTypes, j.UpBlockTypes, j.MidBlockType = c.DownBlockTypes, c.UpBlockTypes, &c.MidBlockType
	j.OnlyCrossAttention = false
	j.BlockOutChannels = c.BlockOutChannels
	j.LayersPerBlock = listOf(c.LayersPerBlock)
	j.NormNumGroups, j.NormEps = c.NormNumGroups, c.NormEps
	j.CrossAttentionDim = scalar(c.CrossAttentionDim)
	j.TransformerLayersPerBlock = listOf(c.TransformerLayersPerBlock)
	j.AttentionHeadDim = listOf(c.AttentionHeads)
	j.UseLinearProjection, j.UpcastAttention = c.UseLinearProjection, c.UpcastAttention
	j.TimeEmbeddingDim = &c.TimeEmbeddingDim
	j.ConvInKernel, j.ConvOutKernel = c.ConvInKernel, c.ConvOutKernel
	if slices.Contains(c.OnlyCrossAttention, true) {
		j.OnlyCrossAttention = c.OnlyCrossAttention
	}
	if c.AdditionEmbedType != "" {
		j.AdditionEmbedType = &c.AdditionEmbedType
		j.AdditionTimeEmbedDim = &c.AdditionTimeEmbedDim
		j.ProjectionClassEmbeddingsInputDim = &c.ProjectionClassEmbeddingsInputDim
	}
	switch c.ClassEmbedType {
	case ClassTable:
		j.NumClassEmbeds = &c.NumClassEmbeds
	case ClassTimestep:
		j.ClassEmbedType = &c.ClassEmbedType
	}
	return json.Marshal(j)
}

// VAEConfig is diffusers' AutoencoderKL config with defaults resolved.
type VAEConfig struct {
	InChannels       int
	OutChannels      int
	LatentChannels   int
	BlockOutChannels []int
	LayersPerBlock   int // ResNets per encoder level; decoder levels have one more
	DownBlockTypes   []string
	UpBlockTypes     []string
	NormNumGroups    int
	// Latents are (z - ShiftFactor) * ScalingFactor; a null shift_factor
	// reads as 0.
	ScalingFactor        float64
	ShiftFactor          float64
	UseQuantConv         bool // quant_conv after the encoder
	UsePostQuantConv     bool // post_quant_conv before the decoder
	MidBlockAddAttention bool
	ForceUpcast          bool // the VAE is run in float32 even in fp16 pipelines
	SampleSize           int  // image side length; diffusers uses it only for tiling
}

type vaeJSON struct {
	ClassName            string   `json:"_class_name"`
	InChannels           int      `json:"in_channels"`
	OutChannels          int      `json:"out_channels"`
	DownBlockTypes       []string `json:"down_block_types"`
	UpBlockTypes         []string `json:"up_block_types"`
	BlockOutChannels     []int    `json:"block_out_channels"`
	LayersPerBlock       int      `json:"layers_per_block"`
	ActFn                string   `json:"act_fn"`
	LatentChannels       int      `json:"latent_channels"`
	NormNumGroups        int      `json:"norm_num_groups"`
	SampleSize           int      `json:"sample_size"`
	ScalingFactor        float64  `json:"scaling_factor"`
	ShiftFactor          *float64 `json:"shift_factor"`
	ForceUpcast          bool     `json:"force_upcast"`
	UseQuantConv         bool     `json:"use_quant_conv"`
	UsePostQuantConv     bool     `json:"use_post_quant_conv"`
	MidBlockAddAttention bool     `json:"mid_block_add_attention"`
}

// ParseVAEConfig reads a diffusers vae/config.json and validates it.
func ParseVAEConfig(data []byte) (VAEConfig, error) {
	j := vaeJSON{ // AutoencoderKL's defaults
		InChannels: 3, OutChannels: 3,
		DownBlockTypes: []string{vaeDown}, UpBlockTypes: []string{vaeUp},
		BlockOutChannels: []int{64}, LayersPerBlock: 1, ActFn: "silu",
		LatentChannels: 4, NormNumGroups: 32, SampleSize: 32, ScalingFactor: 0.18215,
		ForceUpcast: true, UseQuantConv: true, UsePostQuantConv: true, MidBlockAddAttention: true,
	}
	if err := json.Unmarshal(data, &j); err != nil {
		return VAEConfig{}, fmt.Errorf("vae config: %w", err)
	}
	if j.ClassName != "" && j.ClassName != "AutoencoderKL" {
		return VAEConfig{}, unsupportedf("vae config: class %s is not supported (want AutoencoderKL)", j.ClassName)
	}
	if j.ActFn != "silu" {
		return VAEConfig{}, unsupportedf("vae config: act_fn %q is not supported (want silu)", j.ActFn)
	}
	c := VAEConfig{
		InChannels: j.InChannels, OutChannels: j.OutChannels, LatentChannels: j.LatentChannels,
		BlockOutChannels: j.BlockOutChannels, LayersPerBlock: j.LayersPerBlock,
		DownBlockTypes: j.DownBlockTypes, UpBlockTypes: j.UpBlockTypes,
		NormNumGroups: j.NormNumGroups, ScalingFactor: j.ScalingFactor,
		UseQuantConv: j.UseQuantConv, UsePostQuantConv: j.UsePostQuantConv,
		MidBlockAddAttention: j.MidBlockAddAttention, ForceUpcast: j.ForceUpcast,
		SampleSize: j.SampleSize,
	}
	if j.ShiftFactor != nil {
		c.ShiftFactor = *j.ShiftFactor
	}
	return c, c.Validate()
}

// Validate checks that the config describes an AutoencoderKL this package
// can list the tensors of.
func (c VAEConfig) Validate() error {
	levels := len(c.BlockOutChannels)
	switch {
	case levels == 0:
		return errors.New("vae config: no block_out_channels")
	case len(c.DownBlockTypes) != levels || len(c.UpBlockTypes) != levels:
		return fmt.Errorf("vae config: %d down and %d up block types for %d levels", len(c.DownBlockTypes), len(c.UpBlockTypes), levels)
	case c.InChannels <= 0 || c.OutChannels <= 0 || c.LatentChannels <= 0 || c.LayersPerBlock <= 0:
		return errors.New("vae config: channels and layers_per_block must be positive")
	case c.InChannels > maxWidth || c.OutChannels > maxWidth || c.LatentChannels > maxWidth:
		return fmt.Errorf("vae config: in/out/latent channels %d, %d, %d (at most %d)", c.InChannels, c.OutChannels, c.LatentChannels, maxWidth)
	case !(c.ScalingFactor > 0) || math.IsInf(c.ScalingFactor, 0) || math.IsNaN(c.ShiftFactor) || math.IsInf(c.ShiftFactor, 0):
		return fmt.Errorf("vae config: scaling_factor %g must be positive and shift_factor %g finite", c.ScalingFactor, c.ShiftFactor)
	}
	for i, ch := range c.BlockOutChannels {
		switch {
		case c.DownBlockTypes[i] != vaeDown:
			return unsupportedf("vae config: unsupported down block type %q (want %s)", c.DownBlockTypes[i], vaeDown)
		case c.UpBlockTypes[i] != vaeUp:
			return unsupportedf("vae config: unsupported up block type %q (want %s)", c.UpBlockTypes[i], vaeUp)
		case ch <= 0 || c.NormNumGroups <= 0 || ch%c.NormNumGroups != 0:
			return fmt.Errorf("vae config: level %d: %d channels do not split into %d norm groups", i, ch, c.NormNumGroups)
		case ch > maxWidth:
			return fmt.Errorf("vae config: level %d: %d channels (at most %d)", i, ch, maxWidth)
		}
	}
	return nil
}

// MarshalJSON writes the config as a diffusers vae/config.json.
func (c VAEConfig) MarshalJSON() ([]byte, error) {
	j := vaeJSON{
		ClassName: "AutoencoderKL", InChannels: c.InChannels, OutChannels: c.OutChannels,
		DownBlockTypes: c.DownBlockTypes, UpBlockTypes: c.UpBlockTypes,
		BlockOutChannels: c.BlockOutChannels, LayersPerBlock: c.LayersPerBlock, ActFn: "silu",
		LatentChannels: c.LatentChannels, NormNumGroups: c.NormNumGroups, SampleSize: c.SampleSize,
		ScalingFactor: c.ScalingFactor, ForceUpcast: c.ForceUpcast,
		UseQuantConv: c.UseQuantConv, UsePostQuantConv: c.UsePostQuantConv, MidBlockAddAttention: c.MidBlockAddAttention,
	}
	if c.ShiftFactor != 0 {
		j.ShiftFactor = &c.ShiftFactor
	}
	return json.Marshal(j)
}

// CLIPConfig is transformers' CLIPTextConfig with defaults resolved.
type CLIPConfig struct {
	VocabSize             int
	HiddenSize            int
	IntermediateSize      int
	NumHiddenLayers       int
	NumAttentionHeads     int
	MaxPositionEmbeddings int
	HiddenAct             string // "quick_gelu" (SD 1.x) or "gelu" (SD 2.x)
	LayerNormEps          float64
	BOSTokenID            int
	EOSTokenID            int
	PadTokenID            int // as configured; SD's tokenizers pad with their own token
	// ProjectionDim is the width of text_projection: used when WithProjection, else
	// kept for round trips.
	ProjectionDim int
	// WithProjection: a CLIPTextModelWithProjection (SDXL's text_encoder_2), whose
	// text_projection.weight (ProjectionDim, HiddenSize), without bias, maps the pooled
	// output to text_embeds.
	WithProjection bool
}

type clipJSON struct {
	Architectures         []string `json:"architectures,omitempty"`
	ModelType             string   `json:"model_type"`
	VocabSize             int      `json:"vocab_size"`
	HiddenSize            int      `json:"hidden_size"`
	IntermediateSize      int      `json:"intermediate_size"`
	ProjectionDim         int      `json:"projection_dim"`
	NumHiddenLayers       int      `json:"num_hidden_layers"`
	NumAttentionHeads     int      `json:"num_attention_heads"`
	MaxPositionEmbeddings int      `json:"max_position_embeddings"`
	HiddenAct             string   `json:"hidden_act"`
	LayerNormEps          float64  `json:"layer_norm_eps"`
	PadTokenID            int      `json:"pad_token_id"`
	BOSTokenID            int      `json:"bos_token_id"`
	EOSTokenID            int      `json:"eos_token_id"`
}

// ParseCLIPConfig reads a transformers text_encoder/config.json (a
// CLIPTextModel) and validates it.
func ParseCLIPConfig(data []byte) (CLIPConfig, error) {
	j := clipJSON{ // CLIPTextConfig's defaults
		ModelType: "clip_text_model", VocabSize: 49408, HiddenSize: 512, IntermediateSize: 2048,
		ProjectionDim: 512, NumHiddenLayers: 12, NumAttentionHeads: 8, MaxPositionEmbeddings: 77,
		HiddenAct: "quick_gelu", LayerNormEps: 1e-5, PadTokenID: 1, BOSTokenID: 49406, EOSTokenID: 49407,
	}
	if err := json.Unmarshal(data, &j); err != nil {
		return CLIPConfig{}, fmt.Errorf("text encoder config: %w", err)
	}
	if j.ModelType != "clip_text_model" {
		return CLIPConfig{}, unsupportedf("text encoder config: model_type %q is not supported (want clip_text_model)", j.ModelType)
	}
	withProjection := false
	for _, a := range j.Architectures {
		switch a {
		case "CLIPTextModel":
		case "CLIPTextModelWithProjection":
			withProjection = true
		default:
			return CLIPConfig{}, unsupportedf("text encoder config: architecture %s is not supported (want CLIPTextModel or CLIPTextModelWithProjection)", a)
		}
	}
	c := CLIPConfig{
		VocabSize: j.VocabSize, HiddenSize: j.HiddenSize, IntermediateSize: j.IntermediateSize,
		NumHiddenLayers: j.NumHiddenLayers, NumAttentionHeads: j.NumAttentionHeads,
		MaxPositionEmbeddings: j.MaxPositionEmbeddings, HiddenAct: j.HiddenAct, LayerNormEps: j.LayerNormEps,
		BOSTokenID: j.BOSTokenID, EOSTokenID: j.EOSTokenID, PadTokenID: j.PadTokenID, ProjectionDim: j.ProjectionDim,
		WithProjection: withProjection,
	}
	return c, c.Validate()
}

// Validate checks sizes and the activation.
func (c CLIPConfig) Validate() error {
	switch {
	case c.VocabSize <= 0 || c.HiddenSize <= 0 || c.IntermediateSize <= 0 || c.NumHiddenLayers <= 0 || c.NumAttentionHeads <= 0 || c.MaxPositionEmbeddings <= 0:
		return errors.New("text encoder config: sizes must be positive")
	case c.HiddenSize > maxWidth || c.IntermediateSize > maxWidth || c.VocabSize > maxVocab || c.MaxPositionEmbeddings > maxPositions:
		return fmt.Errorf("text encoder config: hidden %d, intermediate %d (at most %d), vocab %d (at most %d), positions %d (at most %d)",
			c.HiddenSize, c.IntermediateSize, maxWidth, c.VocabSize, maxVocab, c.MaxPositionEmbeddings, maxPositions)
	case c.HiddenSize%c.NumAttentionHeads != 0:
		return fmt.Errorf("text encoder config: hidden size %d does not split into %d heads", c.HiddenSize, c.NumAttentionHeads)
	case c.HiddenAct != "quick_gelu" && c.HiddenAct != "gelu":
		return unsupportedf("text encoder config: hidden_act %q is not supported (want quick_gelu or gelu)", c.HiddenAct)
	case !validEps(c.LayerNormEps):
		return fmt.Errorf("text encoder config: layer_norm_eps %g must be in (0, 1)", c.LayerNormEps)
	case c.WithProjection && !inRange(c.ProjectionDim, maxWidth):
		return fmt.Errorf("text encoder config: projection_dim %d not in [1, %d]", c.ProjectionDim, maxWidth)
	}
	return nil
}

// MarshalJSON writes the config as a transformers text_encoder/config.json.
func (c CLIPConfig) MarshalJSON() ([]byte, error) {
	return json.Marshal(clipJSON{
		Architectures: []string{cond(c.WithProjection, "CLIPTextModelWithProjection", "CLIPTextModel")}, ModelType: "clip_text_model",
		VocabSize: c.VocabSize, HiddenSize: c.HiddenSize, IntermediateSize: c.IntermediateSize,
		ProjectionDim: c.ProjectionDim, NumHiddenLayers: c.NumHiddenLayers, NumAttentionHeads: c.NumAttentionHeads,
		MaxPositionEmbeddings: c.MaxPositionEmbeddings, HiddenAct: c.HiddenAct, LayerNormEps: c.LayerNormEps,
		PadTokenID: c.PadTokenID, BOSTokenID: c.BOSTokenID, EOSTokenID: c.EOSTokenID,
	})
}

// SchedulerConfig holds the fields of a diffusers scheduler_config.json
// that every Stable Diffusion scheduler shares; Raw keeps the whole file
// for scheduler-specific keys.
type SchedulerConfig struct {
	ClassName         string                  `json:"_class_name"`
	NumTrainTimesteps int                     `json:"num_train_timesteps"`
	BetaStart         float64                 `json:"beta_start"`
	BetaEnd           float64                 `json:"beta_end"`
	BetaSchedule      string                  `json:"beta_schedule"`
	PredictionType    schedule.PredictionType `json:"prediction_type"`
	StepsOffset       int                     `json:"steps_offset"`
	// TimestepSpacing is "" when the file has no timestep_spacing: each
	// scheduler class then uses its own default (schedule.Config).
	TimestepSpacing string `json:"timestep_spacing,omitempty"`
	ClipSample      bool   `json:"clip_sample"`
	SetAlphaToOne   bool   `json:"set_alpha_to_one"`
	// SkipPRKSteps is PNDMScheduler's skip_prk_steps.
	SkipPRKSteps bool `json:"skip_prk_steps"`
	// Raw is the scheduler_config.json read, or for single files the JSON
	// of the fields above.
	Raw json.RawMessage `json:"-"`
}

// ParseSchedulerConfig reads a diffusers scheduler_config.json. Keys that
// are absent take the defaults diffusers' DDPM-family schedulers share.
func ParseSchedulerConfig(data []byte) (SchedulerConfig, error) {
	c := SchedulerConfig{
		NumTrainTimesteps: 1000, BetaStart: 0.0001, BetaEnd: 0.02, BetaSchedule: "linear",
		PredictionType: schedule.PredictEpsilon,
	}
	if err := json.Unmarshal(data, &c); err != nil {
		return SchedulerConfig{}, fmt.Errorf("scheduler config: %w", err)
	}
	// null unmarshals into the defaults above, but Raw must be an object
	// for the scheduler's own keys to be read and set.
	if bytes.Equal(bytes.TrimSpace(data), []byte("null")) {
		return SchedulerConfig{}, errors.New("scheduler config: null, not a JSON object")
	}
	c.Raw = slices.Clone(data)
	return c, nil
}

// withRaw fills Raw from the fields.
func (c SchedulerConfig) withRaw() SchedulerConfig {
	c.Raw, _ = json.Marshal(c) // only plain fields: cannot fail
	return c
}

// The named configs below mirror the Hugging Face repositories' files as
// diffusers 0.40 writes them; TestNamedConfigsMatchKit checks them against
// the copies in the conformance kit's full-size-tensor-tables.json.

// SD15UNetConfig mirrors runwayml/stable-diffusion-v1-5 unet/config.json.
func SD15UNetConfig() UNetConfig {
	return UNetConfig{
		SampleSize: 64, InChannels: 4, OutChannels: 4,
		BlockOutChannels:          []int{320, 640, 1280, 1280},
		LayersPerBlock:            []int{2, 2, 2, 2},
		DownBlockTypes:            []string{crossAttnDown, crossAttnDown, crossAttnDown, plainDown},
		UpBlockTypes:              []string{plainUp, crossAttnUp, crossAttnUp, crossAttnUp},
		MidBlockType:              crossAttnMid,
		AttentionHeads:            []int{8, 8, 8, 8},
		TransformerLayersPerBlock: []int{1, 1, 1, 1},
		CrossAttentionDim:         768,
		NormNumGroups:             32, NormEps: 1e-5,
		FlipSinToCos: true, FreqShift: 0,
		ConvInKernel: 3, ConvOutKernel: 3,
		TimeEmbeddingDim: 1280,
	}
}

// SD21UNetConfig mirrors stabilityai/stable-diffusion-2-1 unet/config.json
// as converted from the original checkpoint: heads 64 wide, linear
// projections, 1024-wide OpenCLIP context. The Hub's copy sets
// upcast_attention; the conversion sets it only for that exact checkpoint
// (by its global step), and it changes nothing in float32.
func SD21UNetConfig() UNetConfig {
	c := SD15UNetConfig()
	c.SampleSize = 96
	c.AttentionHeads = []int{5, 10, 20, 20}
	c.CrossAttentionDim = 1024
	c.UseLinearProjection = true
	return c
}

// SD15VAEConfig mirrors runwayml/stable-diffusion-v1-5 vae/config.json
// (sample_size as the conversion writes it; it only sets tiling defaults).
func SD15VAEConfig() VAEConfig {
	return VAEConfig{
		InChannels: 3, OutChannels: 3, LatentChannels: 4,
		BlockOutChannels: []int{128, 256, 512, 512},
		LayersPerBlock:   2,
		DownBlockTypes:   []string{vaeDown, vaeDown, vaeDown, vaeDown},
		UpBlockTypes:     []string{vaeUp, vaeUp, vaeUp, vaeUp},
		NormNumGroups:    32, ScalingFactor: 0.18215,
		UseQuantConv: true, UsePostQuantConv: true, MidBlockAddAttention: true, ForceUpcast: true,
		SampleSize: 32,
	}
}

// SD21VAEConfig mirrors stabilityai/stable-diffusion-2-1 vae/config.json:
// the same autoencoder as SD 1.5.
func SD21VAEConfig() VAEConfig { return SD15VAEConfig() }

// SD15TextEncoderConfig mirrors runwayml/stable-diffusion-v1-5
// text_encoder/config.json: CLIP ViT-L/14's text tower.
func SD15TextEncoderConfig() CLIPConfig {
	return CLIPConfig{
		VocabSize: 49408, HiddenSize: 768, IntermediateSize: 3072,
		NumHiddenLayers: 12, NumAttentionHeads: 12, MaxPositionEmbeddings: 77,
		HiddenAct: "quick_gelu", LayerNormEps: 1e-5,
		BOSTokenID: 49406, EOSTokenID: 49407, PadTokenID: 1, ProjectionDim: 512,
	}
}

// SD21TextEncoderConfig mirrors stabilityai/stable-diffusion-2-1
// text_encoder/config.json: OpenCLIP ViT-H/14's text tower without its last
// layer (SD 2.x conditions on the penultimate one).
func SD21TextEncoderConfig() CLIPConfig {
	return CLIPConfig{
		VocabSize: 49408, HiddenSize: 1024, IntermediateSize: 4096,
		NumHiddenLayers: 23, NumAttentionHeads: 16, MaxPositionEmbeddings: 77,
		HiddenAct: "gelu", LayerNormEps: 1e-5,
		BOSTokenID: 49406, EOSTokenID: 49407, PadTokenID: 1, ProjectionDim: 1024,
	}
}

// SD15SchedulerConfig mirrors runwayml/stable-diffusion-v1-5
// scheduler/scheduler_config.json (PNDM over the scaled-linear schedule
// SD was trained with). Like that file it skips PNDM's Runge-Kutta warm-up
// (20 steps are 21 UNet calls, not 29, and 1-3 steps work) and has no
// timestep_spacing, so a sampler switched to keeps its class's spacing, as
// from_single_file and from_config do in diffusers (Euler: linspace).
func SD15SchedulerConfig() SchedulerConfig {
	return SchedulerConfig{
		ClassName: "PNDMScheduler", NumTrainTimesteps: 1000,
		BetaStart: 0.00085, BetaEnd: 0.012, BetaSchedule: "scaled_linear",
		PredictionType: schedule.PredictEpsilon, StepsOffset: 1, SkipPRKSteps: true,
	}.withRaw()
}

// SD21SchedulerConfig mirrors stabilityai/stable-diffusion-2-1
// scheduler/scheduler_config.json: DDIM, v-prediction.
func SD21SchedulerConfig() SchedulerConfig {
	c := SD15SchedulerConfig()
	c.ClassName = "DDIMScheduler"
	c.PredictionType = schedule.PredictV
	return c.withRaw()
}

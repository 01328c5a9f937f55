package binding

import "fmt"

// Ctx is an sd_ctx_t handle.
type Ctx uintptr

// Tensor is an sd_tensor_t handle.
type Tensor uintptr

// ABIVersion is the SD_ABI_VERSION this package was written against.
const ABIVersion = 4

// MaxDims mirrors SD_MAX_DIMS.
const MaxDims = 4

// Backend mirrors sd_backend_kind_t.
type Backend int32

const (
	BackendCPU  Backend = 0
	BackendCUDA Backend = 1
)

func (b Backend) String() string {
	switch b {
	case BackendCPU:
		return "cpu"
	case BackendCUDA:
		return "cuda"
	}
	return fmt.Sprintf("backend(%d)", int32(b))
}

// DType mirrors sd_dtype_t.
type DType int32

const (
	F32  DType = 0
	F16  DType = 1
	BF16 DType = 2
	I32  DType = 3
)

func (d DType) String() string {
	switch d {
	case F32:
		return "f32"
	case F16:
		return "f16"
	case BF16:
		return "bf16"
	case I32:
		return "i32"
	}
	return fmt.Sprintf("dtype(%d)", int32(d))
}

// Size is the element size in bytes (0 for an unknown dtype).
func (d DType) Size() int {
	switch d {
	case F32, I32:
		return 4
	case F16, BF16:
		return 2
	}
	return 0
}

// LogLevel mirrors sd_log_level_t.
type LogLevel int32

const (
	LogDebug LogLevel = 0
	LogInfo  LogLevel = 1
	LogWarn  LogLevel = 2
	LogError LogLevel = 3
)

func (l LogLevel) String() string {
	switch l {
	case LogDebug:
		return "debug"
	case LogInfo:
		return "info"
	case LogWarn:
		return "warn"
	case LogError:
		return "error"
	}
	return fmt.Sprintf("level(%d)", int32(l))
}

// Activation mirrors sd_activation_t.
type Activation int32

const (
	ActSiLU      Activation = 0
	ActGELU      Activation = 1
	ActGELUTanh  Activation = 2
	ActQuickGELU Activation = 3
)

// Layout mirrors sd_layout_t.
type Layout int32

const (
	LayoutTokens        Layout = 0
	LayoutChannelsFirst Layout = 1
)

// CtxParams mirrors sd_ctx_params_t.
type CtxParams struct {
	Backend  Backend
	NThreads int32 // CPU threads; 0 = one per CPU the process may use, which also caps it
	Device   int32 // GPU ordinal
	Flags    uint32
}

// MemoryStats mirrors sd_memory_stats_t (bytes).
type MemoryStats struct {
	TensorsBytes       uint64
	WeightsBytes       uint64
	ArenaReservedBytes uint64
	ArenaPeakBytes     uint64
}

// Conv2DParams mirrors sd_conv2d_params_t.
type Conv2DParams struct {
	StrideH, StrideW  int32
	PadTop, PadBottom int32
	PadLeft, PadRight int32
}

// LinearParams mirrors sd_linear_params_t.
type LinearParams struct {
	InLayout  Layout
	OutLayout Layout
}

// AttentionParams mirrors sd_attention_params_t.
type AttentionParams struct {
	Heads  int32
	Causal int32
	Scale  float32 // 0 = 1/sqrt(head dim)
}

// TimestepEmbeddingParams mirrors sd_timestep_embedding_params_t.
type TimestepEmbeddingParams struct {
	FlipSinToCos       int32
	DownscaleFreqShift float32
	Scale              float32
	MaxPeriod          float32
}

// Model is an sd_model_t handle.
type Model uintptr

// MaxLevels mirrors SD_MAX_LEVELS.
const MaxLevels = 8

// CLIPConfig mirrors sd_clip_config_t.
type CLIPConfig struct {
	VocabSize    int32
	MaxPositions int32
	Hidden       int32
	Intermediate int32
	Layers       int32
	Heads        int32
	Activation   Activation
	LayerNormEps float32
	EOSID        int32
}

// UNetAdditionEmbed mirrors sd_unet_addition_embed_t.
type UNetAdditionEmbed int32

const (
	UNetAdditionNone     UNetAdditionEmbed = 0
	UNetAdditionTextTime UNetAdditionEmbed = 1 // SDXL's "text_time"
)

// UNetClassEmbed mirrors sd_unet_class_embed_t.
type UNetClassEmbed int32

const (
	UNetClassNone     UNetClassEmbed = 0
	UNetClassTable    UNetClassEmbed = 1 // num_class_embeds set, class_embed_type null
	UNetClassTimestep UNetClassEmbed = 2 // class_embed_type "timestep"
)

// UNetConfig mirrors sd_unet_config_t.
type UNetConfig struct {
	InChannels                        int32
	OutChannels                       int32
	Levels                            int32
	BlockOutChannels                  [MaxLevels]int32
	LayersPerBlock                    int32
	DownAttention                     [MaxLevels]int32
	UpAttention                       [MaxLevels]int32
	Heads                             [MaxLevels]int32
	TransformerLayers                 [MaxLevels]int32
	MidAttention                      int32
	CrossAttentionDim                 int32
	NormGroups                        int32
	NormEps                           float32
	FlipSinToCos                      int32
	FreqShift                         float32
	ConvInKernel                      int32
	ConvOutKernel                     int32
	AdditionEmbedType                 UNetAdditionEmbed
	AdditionTimeEmbedDim              int32
	ProjectionClassEmbeddingsInputDim int32
	ClassEmbedType                    UNetClassEmbed
	NumClassEmbeds                    int32
	OnlyCrossAttention                [MaxLevels]int32 // per level (down order); the mid block never
}

// UNetInputs are the inputs of one UNet evaluation (sd_unet_inputs_t); a zero Tensor is an
// absent input. See sd.h for the shapes.
type UNetInputs struct {
	X, T, Context Tensor
	// SDXL's added conditioning (addition_embed_type text_time): pooled text embeddings
	// (B, P) and micro-conditioning ids (B, N).
	TextEmbeds, TimeIDs Tensor
	// (B) I32 rows of a class table, or (B) F32 values for class_embed_type "timestep".
	ClassLabels Tensor
	// ControlNet residuals: DownResiduals[i] is added to skip tensor i, MidResidual to the
	// mid block's output, each multiplied by ResidualScale first.
	DownResiduals []Tensor
	MidResidual   Tensor
	// The zero value scales the residuals to nothing; Library.DefaultUNetInputs sets 1.
	ResidualScale float32
}

// unetInputsC is the C layout of sd_unet_inputs_t.
type unetInputsC struct {
	x, t, context, textEmbeds, timeIDs, classLabels Tensor
	downResiduals                                   *Tensor
	nDownResiduals                                  int32
	midResidual                                     Tensor
	residualScale                                   float32
}

// VAEConfig mirrors sd_vae_config_t.
type VAEConfig struct {
	InChannels       int32
	OutChannels      int32
	LatentChannels   int32
	Levels           int32
	BlockOutChannels [MaxLevels]int32
	LayersPerBlock   int32
	NormGroups       int32
	MidAttention     int32
	UseQuantConv     int32
	UsePostQuantConv int32
}

// weightC mirrors sd_weight_t; it lives in memory outside the Go heap (see WeightTable).
type weightC struct {
	name  uintptr
	dtype DType
	ndim  int32
	shape [MaxDims]int64
	data  uintptr
}

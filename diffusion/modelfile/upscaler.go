package modelfile

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/gosd/gosd/diffusion/schedule"
)

// UpscalerConfig is what a diffusers StableDiffusionUpscalePipeline folder adds to a
// model: the low-resolution image is noised before the UNet sees it, by noise_level
// steps of low_res_scheduler's forward process (the UNet is told the level through its
// class labels).
type UpscalerConfig struct {
	// MaxNoiseLevel is model_index.json's max_noise_level: the highest noise level a
	// call may ask for (350 for stabilityai/stable-diffusion-x4-upscaler).
	MaxNoiseLevel int
	// LowResScheduler is low_res_scheduler/scheduler_config.json (a DDPMScheduler;
	// only its alphas_cumprod is used).
	LowResScheduler SchedulerConfig
}

// defaultMaxNoiseLevel is StableDiffusionUpscalePipeline's max_noise_level default.
const defaultMaxNoiseLevel = 350

// UpscalerClass is the model_index.json class of the x4 upscaler pipeline.
const UpscalerClass = "StableDiffusionUpscalePipeline"

// readUpscaler returns the upscaler part of a diffusers folder, nil when the folder is
// another pipeline. A folder is an upscaler when model_index.json names the class or
// has a low_res_scheduler.
func readUpscaler(dir string) (*UpscalerConfig, error) {
	b, err := os.ReadFile(filepath.Join(dir, "model_index.json"))
	if err != nil {
		return nil, err
	}
	var index struct {
		Class         string          `json:"_class_name"`
		MaxNoiseLevel *int            `json:"max_noise_level"`
		LowRes        json.RawMessage `json:"low_res_scheduler"`
	}
	if err := json.Unmarshal(b, &index); err != nil {
		return nil, fmt.Errorf("model_index.json: %w", err)
	}
	hasLowRes := len(index.LowRes) > 0 && !isNullPair(index.LowRes)
	if index.Class != UpscalerClass && !hasLowRes {
		return nil, nil
	}
	u := &UpscalerConfig{MaxNoiseLevel: defaultMaxNoiseLevel}
	if index.MaxNoiseLevel != nil {
		u.MaxNoiseLevel = *index.MaxNoiseLevel
	}
	if u.MaxNoiseLevel < 0 {
		return nil, fmt.Errorf("model_index.json: max_noise_level %d is negative", u.MaxNoiseLevel)
	}
	sched, err := os.ReadFile(filepath.Join(dir, "low_res_scheduler", "scheduler_config.json"))
	switch {
	case err == nil:
		if u.LowResScheduler, err = ParseSchedulerConfig(sched); err != nil {
			return nil, fmt.Errorf("low_res_scheduler: %w", err)
		}
	case errors.Is(err, os.ErrNotExist) && !hasLowRes:
		// The class alone: the released model's low-res scheduler.
		u.LowResScheduler = X4LowResSchedulerConfig()
	default:
		return nil, fmt.Errorf("low_res_scheduler: %w", err)
	}
	if u.MaxNoiseLevel >= u.LowResScheduler.NumTrainTimesteps {
		return nil, fmt.Errorf("max_noise_level %d is not a timestep of the low-res scheduler (%d)", u.MaxNoiseLevel, u.LowResScheduler.NumTrainTimesteps)
	}
	return u, nil
}

// X4LowResSchedulerConfig mirrors stabilityai/stable-diffusion-x4-upscaler's
// low_res_scheduler/scheduler_config.json: DDPM, scaled_linear 0.0001-0.02 over 1000
// steps.
func X4LowResSchedulerConfig() SchedulerConfig {
	return SchedulerConfig{
		ClassName: "DDPMScheduler", NumTrainTimesteps: 1000, BetaStart: 0.0001, BetaEnd: 0.02,
		BetaSchedule: "scaled_linear",
	}.withRaw()
}

// X4SchedulerConfig mirrors stabilityai/stable-diffusion-x4-upscaler's
// scheduler/scheduler_config.json: DDIM, v-prediction, scaled_linear 0.0001-0.02 (not
// SD's 0.012), steps_offset 1.
func X4SchedulerConfig() SchedulerConfig {
	return SchedulerConfig{
		ClassName: "DDIMScheduler", NumTrainTimesteps: 1000, BetaStart: 0.0001, BetaEnd: 0.02,
		BetaSchedule: "scaled_linear", PredictionType: schedule.PredictV, StepsOffset: 1, SkipPRKSteps: true,
	}.withRaw()
}

// The original x4 upscaler checkpoint (x4-upscaler-ema.ckpt / .safetensors, trained with
// Stability AI's x4-upscaling.yaml) is an LDM single file whose UNet has a noise-level
// table, model.diffusion_model.label_emb.weight (an nn.Embedding of num_classes 1000
// rows), which diffusers' conversion maps to class_embedding.weight. What its names do
// not tell comes from that yaml: 8 heads per level, disable_self_attentions [true, true,
// true, false] (diffusers' only_cross_attention), image_size 128, the VAE's scale_factor
// 0.08333, and the low-res noise augmentation (max_noise_level 350, betas 0.0001-0.02).

// isX4Upscaler reports an LDM UNet with a noise-level table (SDXL's and unCLIP's
// label_emb are MLPs, label_emb.0.*).
func (ts ldmTensors) isX4Upscaler() bool {
	t, ok := ts[ldmUNet+"label_emb.weight"]
	return ok && len(t.Shape) == 2
}

// x4UpscalerHeads is the yaml's num_heads 8 at every level.
func (ts ldmTensors) x4UpscalerHeads() ([]int, error) {
	layout, err := ts.unetLayout()
	if err != nil {
		return nil, err
	}
	return slices.Repeat([]int{8}, layout.levels), nil
}

// x4Upscaler completes the configs inferred from an x4 upscaler's shapes with its
// yaml's settings and checks its noise-level table.
func (ts ldmTensors) x4Upscaler(unet *UNetConfig, vae *VAEConfig) error {
	table, err := ts.shape(ldmUNet+"label_emb.weight", 2)
	if err != nil {
		return err
	}
	if int(table[1]) != unet.TimeEmbeddingDim {
		return fmt.Errorf("label_emb.weight has shape %v: its rows must be %d wide, the time embedding's", table, unet.TimeEmbeddingDim)
	}
	if int(table[0]) <= defaultMaxNoiseLevel {
		return fmt.Errorf("label_emb.weight has %d rows: an x4 upscaler's noise levels go up to %d", table[0], defaultMaxNoiseLevel)
	}
	if unet.InChannels != vae.LatentChannels+3 {
		return fmt.Errorf("a UNet with a noise-level table and %d input channels is no x4 upscaler (latents %d + 3 image channels)", unet.InChannels, vae.LatentChannels)
	}
	unet.ClassEmbedType, unet.NumClassEmbeds = ClassTable, int(table[0])
	levels := len(unet.BlockOutChannels)
	unet.OnlyCrossAttention = make([]bool, levels)
	for l := range levels - 1 {
		unet.OnlyCrossAttention[l] = true
	}
	unet.SampleSize = 128
	vae.ScalingFactor = 0.08333
	return nil
}

// X4Upscaler is Stable Diffusion's x4 upscaler (stabilityai/stable-diffusion-x4-upscaler):
// its UNet (256-512-512-1024 channels, 8 heads, cross-attention-only attn1 in the first
// three levels, 7 input channels, a 1000-row noise-level table), a 3-level VAE scaled by
// 0.08333, SD 2.x's text encoder, v-prediction DDIM and the DDPM low-res schedule.
func X4Upscaler() Architecture {
	u := SD21UNetConfig()
	u.SampleSize, u.InChannels = 128, 7
	u.BlockOutChannels = []int{256, 512, 512, 1024}
	u.AttentionHeads = []int{8, 8, 8, 8}
	u.DownBlockTypes = []string{plainDown, crossAttnDown, crossAttnDown, crossAttnDown}
	u.UpBlockTypes = []string{crossAttnUp, crossAttnUp, crossAttnUp, plainUp}
	u.OnlyCrossAttention = []bool{true, true, true, false}
	u.TimeEmbeddingDim = 4 * 256
	u.ClassEmbedType, u.NumClassEmbeds = ClassTable, 1000
	v := SD21VAEConfig()
	v.BlockOutChannels = []int{128, 256, 512}
	v.DownBlockTypes, v.UpBlockTypes = v.DownBlockTypes[:3], v.UpBlockTypes[:3]
	v.ScalingFactor, v.SampleSize = 0.08333, 256
	return Architecture{Family: FamilySD2, UNet: u, VAE: v, TextEncoder: SD21TextEncoderConfig(), Scheduler: X4SchedulerConfig(),
		Upscaler: &UpscalerConfig{MaxNoiseLevel: defaultMaxNoiseLevel, LowResScheduler: X4LowResSchedulerConfig()}}
}

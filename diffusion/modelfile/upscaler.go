package modelfile

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
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

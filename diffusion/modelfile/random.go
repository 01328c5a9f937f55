package modelfile

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
)

// Architecture is everything that defines a model but its weights: what
// WriteRandom writes.
type Architecture struct {
	Family      Family
	UNet        UNetConfig
	VAE         VAEConfig
	TextEncoder CLIPConfig
	// TextEncoder2 is SDXL's second text encoder (nil for one); WriteRandom then writes an
	// SDXL pipeline.
	TextEncoder2 *CLIPConfig
	// Refiner writes SDXL's refiner: TextEncoder (a CLIPTextModelWithProjection) as
	// text_encoder_2, no text_encoder, requires_aesthetics_score.
	Refiner   bool
	Scheduler SchedulerConfig
	// Upscaler makes an x4 upscaler pipeline folder (StableDiffusionUpscalePipeline
	// with its low_res_scheduler); nil for a StableDiffusionPipeline.
	Upscaler *UpscalerConfig
}

// SD15 is Stable Diffusion 1.5 (runwayml/stable-diffusion-v1-5).
func SD15() Architecture {
	return Architecture{Family: FamilySD1, UNet: SD15UNetConfig(), VAE: SD15VAEConfig(), TextEncoder: SD15TextEncoderConfig(), Scheduler: SD15SchedulerConfig()}
}

// SDXL is Stable Diffusion XL base 1.0 (stabilityai/stable-diffusion-xl-base-1.0).
func SDXL() Architecture {
	te2 := SDXLTextEncoder2Config()
	return Architecture{Family: FamilySDXL, UNet: SDXLUNetConfig(), VAE: SDXLVAEConfig(), TextEncoder: SDXLTextEncoderConfig(),
		TextEncoder2: &te2, Scheduler: SDXLSchedulerConfig()}
}

// SD21 is Stable Diffusion 2.1 (stabilityai/stable-diffusion-2-1).
func SD21() Architecture {
	return Architecture{Family: FamilySD2, UNet: SD21UNetConfig(), VAE: SD21VAEConfig(), TextEncoder: SD21TextEncoderConfig(), Scheduler: SD21SchedulerConfig()}
}

// WriteRandom writes a diffusers folder of the architecture with random
// weights of the given type (F32, F16 or BF16), for benchmarks: configs,
// model_index.json, scheduler_config.json and one safetensors file per
// network; no tokenizer. Norm weights are 1 and biases 0; every other
// weight is normal with standard deviation 1/sqrt(fan_in), so activations
// keep their scale and stay finite. The same seed writes the same bytes.
// Weights are generated and written in chunks, so memory stays small
// whatever the model's size. Cancelling ctx stops between tensors.
func WriteRandom(ctx context.Context, dir string, arch Architecture, dtype DType, seed uint64) error {
	if err := checkRandomDType(dtype); err != nil {
		return err
	}
	index := map[string]any{
		"_class_name":             "StableDiffusionPipeline",
		"_diffusers_version":      "0.40.0",
		"feature_extractor":       []any{nil, nil},
		"requires_safety_checker": false,
		"safety_checker":          []any{nil, nil},
		"tokenizer":               []any{nil, nil},
		"scheduler":               []string{"diffusers", arch.Scheduler.ClassName},
		"text_encoder":            []string{"transformers", "CLIPTextModel"},
		"unet":                    []string{"diffusers", "UNet2DConditionModel"},
		"vae":                     []string{"diffusers", "AutoencoderKL"},
	}
	components := []struct {
		dir, weights string
		config       specLister
	}{
		{"unet", "diffusion_pytorch_model.safetensors", arch.UNet},
		{"vae", "diffusion_pytorch_model.safetensors", arch.VAE},
		{"text_encoder", "model.safetensors", arch.TextEncoder},
	}
	if arch.Refiner {
		index["_class_name"] = "StableDiffusionXLImg2ImgPipeline"
		index["force_zeros_for_empty_prompt"] = false
		index["requires_aesthetics_score"] = true
		index["text_encoder"], index["tokenizer"] = []any{nil, nil}, []any{nil, nil}
		index["text_encoder_2"] = []string{"transformers", "CLIPTextModelWithProjection"}
		index["tokenizer_2"] = []any{nil, nil}
		delete(index, "safety_checker")
		delete(index, "requires_safety_checker")
		components[2].dir = "text_encoder_2"
	}
	if arch.TextEncoder2 != nil {
		index["_class_name"] = "StableDiffusionXLPipeline"
		index["force_zeros_for_empty_prompt"] = true
		index["text_encoder_2"] = []string{"transformers", "CLIPTextModelWithProjection"}
		index["tokenizer_2"] = []any{nil, nil}
		delete(index, "safety_checker")
		delete(index, "requires_safety_checker")
		components = append(components, struct {
			dir, weights string
			config       specLister
		}{"text_encoder_2", "model.safetensors", *arch.TextEncoder2})
	}
	for _, c := range components {
		specs, err := c.config.TensorSpecs()
		if err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Join(dir, c.dir), 0o755); err != nil {
			return err
		}
		if err := writeJSON(filepath.Join(dir, c.dir, "config.json"), c.config); err != nil {
			return err
		}
		// Each component draws from its own stream so that their weights do
		// not depend on one another's sizes.
		if err := writeRandomTensors(ctx, filepath.Join(dir, c.dir, c.weights), randomHeads(specs, dtype), c.dir, seed); err != nil {
			return err
		}
	}
	schedulers := map[string]json.RawMessage{"scheduler": arch.Scheduler.Raw}
	if up := arch.Upscaler; up != nil {
		index["_class_name"] = UpscalerClass
		index["low_res_scheduler"] = []string{"diffusers", up.LowResScheduler.ClassName}
		index["max_noise_level"] = up.MaxNoiseLevel
		schedulers["low_res_scheduler"] = up.LowResScheduler.Raw
	}
	for name, raw := range schedulers {
		if err := os.MkdirAll(filepath.Join(dir, name), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, name, "scheduler_config.json"), raw, 0o644); err != nil {
			return err
		}
	}
	return writeJSON(filepath.Join(dir, "model_index.json"), index)
}

// checkRandomDType refuses random weights of a type the runtime does not compute in.
func checkRandomDType(dtype DType) error {
	if !dtype.IsFloat() {
		return fmt.Errorf("random weights of type %s: want F32, F16 or BF16", dtype)
	}
	return nil
}

// randomHeads are the tensors specs describes, in dtype, without data.
func randomHeads(specs []TensorSpec, dtype DType) []Tensor {
	heads := make([]Tensor, len(specs))
	for i, s := range specs {
		heads[i] = Tensor{Name: s.Name, DType: dtype, Shape: s.Shape}
	}
	return heads
}

// writeRandomTensors writes heads as one safetensors file of random weights drawn from
// the stream named stream of seed; cancelling ctx stops between tensors.
func writeRandomTensors(ctx context.Context, path string, heads []Tensor, stream string, seed uint64) error {
	gen := &randomWeights{seed: seed, stream: hashString(stream), bufs: make([][]byte, runtime.GOMAXPROCS(0))}
	return writeSafetensors(path, heads, map[string]string{"format": "pt"}, func(w io.Writer, i int) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		return gen.write(w, heads[i], uint64(i))
	})
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// hashString is FNV-1a, to derive a stream number from a name.
func hashString(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h = (h ^ uint64(s[i])) * 1099511628211
	}
	return h
}

// mix64 is SplitMix64's finaliser: distinct inputs give unrelated outputs.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

// randomWeights generates the values of WriteRandom; bufs holds one chunk
// per worker, reused from tensor to tensor.
type randomWeights struct {
	seed, stream uint64
	bufs         [][]byte
}

// chunkElements is how many values one worker generates at a time.
const chunkElements = 1 << 18

// write writes tensor i's values: constants for biases and norm weights,
// else normal values from a PCG stream per chunk, generated by parallel
// workers and written in order.
func (g *randomWeights) write(w io.Writer, t Tensor, i uint64) error {
	n := t.NumElements()
	if n == 0 {
		return nil
	}
	fill := -1.0 // normal
	switch {
	case strings.HasSuffix(t.Name, ".bias"):
		fill = 0
	case len(t.Shape) == 1: // every 1-D weight of these networks is a norm's scale
		fill = 1
	}
	std := 1.0
	if len(t.Shape) > 1 {
		std = 1 / math.Sqrt(float64(n/t.Shape[0]))
	}
	workers := len(g.bufs)
	chunks := (n + chunkElements - 1) / chunkElements
	for first := int64(0); first < chunks; first += int64(workers) {
		batch := min(int64(workers), chunks-first)
		var wg sync.WaitGroup
		for k := range batch {
			chunk := first + k
			count := min(chunkElements, n-chunk*chunkElements)
			wg.Go(func() {
				rng := rand.New(rand.NewPCG(g.seed, mix64(g.stream^mix64(i<<32^uint64(chunk)))))
				b := g.bufs[k][:0]
				for range count {
					v := fill
					if fill < 0 {
						v = rng.NormFloat64() * std
					}
					b = appendValue(b, t.DType, float32(v))
				}
				g.bufs[k] = b
			})
		}
		wg.Wait()
		for k := range batch {
			if _, err := w.Write(g.bufs[k]); err != nil {
				return err
			}
		}
	}
	return nil
}

func appendValue(b []byte, d DType, v float32) []byte {
	switch d {
	case F16:
		return binary.LittleEndian.AppendUint16(b, float32ToHalf(v))
	case BF16:
		return binary.LittleEndian.AppendUint16(b, float32ToBF16(v))
	}
	return binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
}

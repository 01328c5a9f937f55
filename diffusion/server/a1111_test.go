package server

import (
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/gosd/gosd/diffusion"
	"github.com/gosd/gosd/diffusion/modelfile"
)

type a1111Response struct {
	Images     []string       `json:"images"`
	Parameters map[string]any `json:"parameters"`
	Info       string         `json:"info"`
}

func TestA1111Txt2Img(t *testing.T) {
	_, hs := testServer(t, nil)
	var res a1111Response
	resp := call(t, "POST", hs.URL+"/sdapi/v1/txt2img", `{"prompt":"a red apple","negative_prompt":"blurry","steps":3,
		"seed":5,"batch_size":2,"n_iter":2,"sampler_name":"DPM++ 2M","scheduler":"Karras","cfg_scale":5}`, &res)
	require.Equal(t, 200, resp.StatusCode)
	require.Len(t, res.Images, 4)
	var info map[string]any
	require.NoError(t, json.Unmarshal([]byte(res.Info), &info))
	assert.Equal(t, []any{5.0, 6.0, 7.0, 8.0}, info["all_seeds"], "n_iter batches continue the seeds")
	assert.Equal(t, 5.0, info["seed"])
	assert.Equal(t, "DPM++ 2M", info["sampler_name"])
	infotexts := info["infotexts"].([]any)
	require.Len(t, infotexts, 4)
	assert.Contains(t, infotexts[3], "Seed: 8,")
	assert.Contains(t, infotexts[0], "Negative prompt: blurry")
	assert.Contains(t, infotexts[0], "Schedule type: Karras")
	assert.Equal(t, 3.0, res.Parameters["steps"])
	assert.Equal(t, true, res.Parameters["send_images"], "the defaults are echoed")
	img, text := decodePNG(t, res.Images[2])
	assert.Equal(t, image.Pt(64, 64), img.Bounds().Size(), "the model's native size by default")
	assert.Equal(t, infotexts[2], text["parameters"])

	// png-info reads the parameters back.
	var pi struct {
		Info       string         `json:"info"`
		Parameters map[string]any `json:"parameters"`
	}
	body, _ := json.Marshal(map[string]string{"image": "data:image/png;base64," + res.Images[0]})
	require.Equal(t, 200, call(t, "POST", hs.URL+"/sdapi/v1/png-info", string(body), &pi).StatusCode)
	assert.Equal(t, infotexts[0], pi.Info)
	assert.Equal(t, "a red apple", pi.Parameters["Prompt"])
	assert.Equal(t, "blurry", pi.Parameters["Negative prompt"])
	assert.Equal(t, "5", pi.Parameters["Seed"])
	assert.Equal(t, "64", pi.Parameters["Size-1"])

	// A random seed is reported.
	require.Equal(t, 200, call(t, "POST", hs.URL+"/sdapi/v1/txt2img", `{"prompt":"x","steps":1}`, &res).StatusCode)
	require.NoError(t, json.Unmarshal([]byte(res.Info), &info))
	assert.NotEqual(t, -1.0, info["seed"])
	assert.Equal(t, info["seed"], res.Parameters["seed"])
}

func TestA1111Img2ImgInpaint(t *testing.T) {
	_, hs := testServer(t, nil)
	init := pngBase64(t, solid(64, 64, color.NRGBA{30, 30, 200, 255}))
	mask := solid(64, 64, color.NRGBA{0, 0, 0, 255})
	for y := range 32 {
		for x := range 64 {
			mask.Set(x, y, color.White)
		}
	}
	var res a1111Response
	body := fmt.Sprintf(`{"prompt":"a red apple","steps":4,"seed":1,"init_images":[%q],"denoising_strength":0.5}`, init)
	require.Equal(t, 200, call(t, "POST", hs.URL+"/sdapi/v1/img2img", body, &res).StatusCode)
	_, text := decodePNG(t, res.Images[0])
	assert.Contains(t, text["parameters"], "Denoising strength: 0.5")

	body = fmt.Sprintf(`{"prompt":"a red apple","steps":4,"seed":1,"init_images":[%q],"mask":%q,"inpainting_mask_invert":1}`,
		init, pngBase64(t, mask))
	require.Equal(t, 200, call(t, "POST", hs.URL+"/sdapi/v1/img2img", body, &res).StatusCode)
	img, text := decodePNG(t, res.Images[0])
	assert.Contains(t, text["parameters"], "Denoising strength: 0.75", "A1111's img2img default")
	// Inverted, the mask keeps its white top half: there the image stays nearer the init
	// image's blue (through the VAE) than where the same request without the inversion
	// repaints it.
	body = fmt.Sprintf(`{"prompt":"a red apple","steps":4,"seed":1,"init_images":[%q],"mask":%q}`, init, pngBase64(t, mask))
	require.Equal(t, 200, call(t, "POST", hs.URL+"/sdapi/v1/img2img", body, &res).StatusCode)
	repainted, _ := decodePNG(t, res.Images[0])
	fromBlue := func(c color.Color) int {
		r, g, b, _ := c.RGBA()
		return abs(int(r>>8)-30) + abs(int(g>>8)-30) + abs(int(b>>8)-200)
	}
	assert.Less(t, fromBlue(img.At(32, 8)), fromBlue(repainted.At(32, 8)), "kept %v, repainted %v", img.At(32, 8), repainted.At(32, 8))
}

func abs(v int) int { return max(v, -v) }

func TestA1111Validation(t *testing.T) {
	_, hs := testServer(t, nil)
	for _, c := range []struct{ path, body, loc string }{
		{"txt2img", `{"steps":0}`, "steps"},
		{"txt2img", `{"width":65}`, "width"},
		{"txt2img", `{"width":100000,"height":64}`, "width"},
		{"txt2img", `{"sampler_name":"nope"}`, "sampler_name"},
		{"txt2img", `{"steps":"many"}`, "steps"},
		{"img2img", `{"enable_hr":true,"init_images":["aGVsbG8="]}`, "enable_hr"},
		{"txt2img", `{"enable_hr":true,"hr_upscaler":"R-ESRGAN 4x+"}`, "hr_upscaler"},
		{"txt2img", `{"refiner_checkpoint":"sd_xl_refiner_1.0.safetensors","refiner_switch_at":0.8}`, "refiner_checkpoint"},
		{"txt2img", `{"enable_hr":true,"hr_scale":1}`, "hr_scale"},
		{"txt2img", `{"enable_hr":true,"hr_scale":2,"width":768,"height":768}`, "hr_scale"},
		{"txt2img", `{"enable_hr":true,"hr_resize_x":128}`, "hr_resize_x"},
		{"txt2img", `{"enable_hr":true,"hr_prompt":"other"}`, "hr_prompt"},
		{"txt2img", `{"enable_hr":true,"denoising_strength":0}`, "denoising_strength"},
		{"txt2img", `{"seed":-7}`, "seed"},
		{"txt2img", `{"batch_size":9}`, "batch_size"},
		{"txt2img", `{"batch_size":4,"n_iter":4}`, "n"},
		{"txt2img", `{"prompt":`, ""},
		{"img2img", `{"init_images":[]}`, "init_images"},
		{"img2img", `{"init_images":["!!!"]}`, "init_images"},
		{"img2img", `{"init_images":["aGVsbG8="]}`, "init_images"},
		{"options", `{"sd_model_checkpoint":"nope"}`, "sd_model_checkpoint"},
	} {
		var d struct {
			Detail []struct {
				Loc  []any  `json:"loc"`
				Msg  string `json:"msg"`
				Type string `json:"type"`
			} `json:"detail"`
		}
		resp := call(t, "POST", hs.URL+"/sdapi/v1/"+c.path, c.body, &d)
		require.Equal(t, 422, resp.StatusCode, "%s %s", c.path, c.body)
		require.Len(t, d.Detail, 1)
		assert.Equal(t, "body", d.Detail[0].Loc[0])
		if c.loc != "" {
			assert.Equal(t, []any{"body", c.loc}, d.Detail[0].Loc, "%s: %s", c.body, d.Detail[0].Msg)
		}
		assert.NotEmpty(t, d.Detail[0].Msg)
	}
}

func TestA1111Lists(t *testing.T) {
	_, hs := testServer(t, nil)
	var list []map[string]any
	require.Equal(t, 200, call(t, "GET", hs.URL+"/sdapi/v1/samplers", "", &list).StatusCode)
	var names []string
	for _, s := range list {
		names = append(names, s["name"].(string))
	}
	assert.Contains(t, names, "Euler a")
	assert.Contains(t, names, "DPM++ 2M")
	call(t, "GET", hs.URL+"/sdapi/v1/schedulers", "", &list)
	assert.Equal(t, "karras", list[1]["name"])
	call(t, "GET", hs.URL+"/sdapi/v1/sd-models", "", &list)
	require.Len(t, list, 1)
	assert.Equal(t, "gosd-emoji", list[0]["title"])
	call(t, "GET", hs.URL+"/sdapi/v1/upscalers", "", &list)
	assert.Equal(t, "None", list[0]["name"])
	call(t, "GET", hs.URL+"/sdapi/v1/loras", "", &list)
	assert.Empty(t, list)
}

// TestA1111ProgressInterruptSkip watches a long run of three batches: skips the first,
// follows the second's progress and preview, then interrupts it.
func TestA1111ProgressInterruptSkip(t *testing.T) {
	_, hs := testServer(t, nil)
	var wg sync.WaitGroup
	var res a1111Response
	var status int
	wg.Add(1)
	go func() {
		defer wg.Done()
		status = call(t, "POST", hs.URL+"/sdapi/v1/txt2img", `{"prompt":"a red apple","steps":150,"n_iter":3,"seed":1}`, &res).StatusCode
	}()
	var p struct {
		Progress     float64        `json:"progress"`
		ETA          float64        `json:"eta_relative"`
		State        map[string]any `json:"state"`
		CurrentImage *string        `json:"current_image"`
	}
	// Skip the first batch as soon as it runs, then wait for the second to move.
	require.Eventually(t, func() bool {
		call(t, "GET", hs.URL+"/sdapi/v1/progress", "", &p)
		return p.State["sampling_step"].(float64) >= 2
	}, 20*time.Second, 5*time.Millisecond)
	call(t, "POST", hs.URL+"/sdapi/v1/skip", "", nil)
	require.Eventually(t, func() bool {
		call(t, "GET", hs.URL+"/sdapi/v1/progress", "", &p)
		return p.State["job_no"].(float64) == 1 && p.State["sampling_step"].(float64) >= 2
	}, 20*time.Second, 5*time.Millisecond)
	assert.Greater(t, p.Progress, 1.0/3)
	assert.Less(t, p.Progress, 2.0/3)
	assert.Greater(t, p.ETA, 0.0)
	require.NotNil(t, p.CurrentImage)
	preview, _ := decodePNG(t, *p.CurrentImage)
	assert.Equal(t, image.Pt(64, 64), preview.Bounds().Size())
	call(t, "POST", hs.URL+"/sdapi/v1/interrupt", "", nil)
	wg.Wait()
	// Skipped, then interrupted: nothing finished, so the request fails as cancelled.
	assert.Equal(t, http.StatusConflict, status)
}

// TestA1111SwitchModel switches between two copies of the demo model.
func TestA1111SwitchModel(t *testing.T) {
	model, _ := demoModel(t)
	other := filepath.Join(t.TempDir(), "emoji-copy")
	require.NoError(t, os.CopyFS(other, os.DirFS(model)))
	broken := filepath.Join(t.TempDir(), "broken")
	require.NoError(t, os.MkdirAll(broken, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(broken, "model_index.json"), []byte("{}"), 0o644))
	s, hs := testServer(t, func(c *Config) { c.Models = append(c.Models, other, broken) })
	var opts map[string]any
	call(t, "GET", hs.URL+"/sdapi/v1/options", "", &opts)
	assert.Equal(t, "gosd-emoji", opts["sd_model_checkpoint"])

	// Queue a generation, then switch: the switch waits for it.
	var res a1111Response
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		call(t, "POST", hs.URL+"/sdapi/v1/txt2img", `{"prompt":"x","steps":20,"seed":1}`, &res)
	}()
	require.Eventually(t, func() bool { return len(s.liveJobs()) == 1 }, 5*time.Second, time.Millisecond)
	require.Equal(t, 200, call(t, "POST", hs.URL+"/sdapi/v1/options", `{"sd_model_checkpoint":"emoji-copy"}`, nil).StatusCode)
	wg.Wait()
	require.Len(t, res.Images, 1)
	var info map[string]any
	require.NoError(t, json.Unmarshal([]byte(res.Info), &info))
	assert.Equal(t, "gosd-emoji", info["sd_model_name"], "the queued run finished on the first model")

	call(t, "GET", hs.URL+"/sdapi/v1/options", "", &opts)
	assert.Equal(t, "emoji-copy", opts["sd_model_checkpoint"])
	require.Equal(t, 200, call(t, "POST", hs.URL+"/sdapi/v1/txt2img", `{"prompt":"x","steps":1}`, &res).StatusCode)
	require.NoError(t, json.Unmarshal([]byte(res.Info), &info))
	assert.Equal(t, "emoji-copy", info["sd_model_name"])
	assert.True(t, strings.Contains(res.Parameters["prompt"].(string), "x"))

	// A model that fails to open: the error is reported and the previous one reopened.
	var e map[string]any
	resp := call(t, "POST", hs.URL+"/sdapi/v1/options", `{"sd_model_checkpoint":"broken"}`, &e)
	assert.GreaterOrEqual(t, resp.StatusCode, 400)
	assert.Contains(t, e["detail"], "broken")
	call(t, "GET", hs.URL+"/sdapi/v1/options", "", &opts)
	assert.Equal(t, "emoji-copy", opts["sd_model_checkpoint"])
	assert.Equal(t, 200, call(t, "GET", hs.URL+"/readyz", "", nil).StatusCode)
	require.Equal(t, 200, call(t, "POST", hs.URL+"/sdapi/v1/txt2img", `{"prompt":"x","steps":1}`, &res).StatusCode)
}

// writeDemoLoRA writes a kohya LoRA for one attention projection of the demo model's
// UNet, with random factors, at path.
func writeDemoLoRA(t *testing.T, path string) {
	t.Helper()
	model, _ := demoModel(t)
	f, err := modelfile.OpenFile(filepath.Join(model, "unet", "diffusion_pytorch_model.safetensors"))
	require.NoError(t, err)
	defer f.Close()
	const module = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
	var shape []int64
	for _, w := range f.Tensors {
		if w.Name == module+".weight" {
			shape = w.Shape
		}
	}
	require.Len(t, shape, 2, module)
	r := rand.New(rand.NewPCG(1, 2))
	factor := func(name string, dims ...int64) modelfile.Tensor {
		v := make([]float32, dims[0]*dims[1])
		for i := range v {
			v[i] = float32(r.NormFloat64())
		}
		return modelfile.Tensor{Name: name, DType: modelfile.F32, Shape: dims, Data: unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 4*len(v))}
	}
	key := "lora_unet_" + strings.ReplaceAll(module, ".", "_")
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(t, modelfile.WriteSafetensors(path, []modelfile.Tensor{
		factor(key+".lora_down.weight", 4, shape[1]), factor(key+".lora_up.weight", shape[0], 4)}, nil))
}

// Prompt tags name adapters of Config.LoRADir (listed by /sdapi/v1/loras) and words
// embeddings of Config.EmbeddingDir; the infotext records both.
func TestA1111LoRAsAndEmbeddings(t *testing.T) {
	loras, embeds := t.TempDir(), t.TempDir()
	writeDemoLoRA(t, filepath.Join(loras, "styles", "style.safetensors"))
	vec := make([]float32, 2*96) // two vectors of the demo text encoder's width
	for i := range vec {
		vec[i] = float32(i%7) / 7
	}
	require.NoError(t, modelfile.WriteSafetensors(filepath.Join(embeds, "shiny.safetensors"), []modelfile.Tensor{{Name: "emb_params",
		DType: modelfile.F32, Shape: []int64{2, 96}, Data: unsafe.Slice((*byte)(unsafe.Pointer(&vec[0])), 4*len(vec))}}, nil))
	_, hs := testServer(t, func(c *Config) { c.LoRADir, c.EmbeddingDir = loras, embeds })

	var list []map[string]any
	require.Equal(t, 200, call(t, "GET", hs.URL+"/sdapi/v1/loras", "", &list).StatusCode)
	require.Len(t, list, 1)
	assert.Equal(t, "style", list[0]["name"])
	assert.Equal(t, filepath.Join(loras, "styles", "style.safetensors"), list[0]["path"])

	gen := func(prompt string) (int, a1111Response) {
		var res a1111Response
		body, _ := json.Marshal(map[string]any{"prompt": prompt, "steps": 2, "seed": 3})
		return call(t, "POST", hs.URL+"/sdapi/v1/txt2img", string(body), &res).StatusCode, res
	}
	status, plain := gen("a red apple")
	require.Equal(t, 200, status)
	status, styled := gen("<lora:style:0.7> a red apple")
	require.Equal(t, 200, status)
	assert.NotEqual(t, plain.Images[0], styled.Images[0], "the adapter changed the image")
	_, text := decodePNG(t, styled.Images[0])
	assert.Contains(t, text["parameters"], `Lora hashes: "style: `)
	status, shiny := gen("a shiny red apple")
	require.Equal(t, 200, status)
	_, text = decodePNG(t, shiny.Images[0])
	assert.Contains(t, text["parameters"], `TI hashes: "shiny: `)

	var e map[string]any
	body, _ := json.Marshal(map[string]any{"prompt": "<lora:missing:1> a red apple", "steps": 2})
	require.Equal(t, 422, call(t, "POST", hs.URL+"/sdapi/v1/txt2img", string(body), &e).StatusCode,
		"an error of the generation itself is not an empty success")
	assert.Contains(t, fmt.Sprint(e), "missing")
}

func TestNewRefusesMissingFolders(t *testing.T) {
	for _, c := range []Config{{LoRADir: filepath.Join(t.TempDir(), "none")}, {EmbeddingDir: "a1111_test.go"}} {
		c.Models, c.Open = []string{"m"}, func(context.Context, string) (*diffusion.Pipeline, error) { return nil, nil }
		_, err := New(context.Background(), c)
		assert.ErrorContains(t, err, "is not a folder")
	}
}

// enable_hr runs the hires fix: twice the size by default, at the request's denoising
// strength, recorded in the infotext as the web UI records it.
func TestA1111HiresFix(t *testing.T) {
	_, hs := testServer(t, nil)
	var res a1111Response
	resp := call(t, "POST", hs.URL+"/sdapi/v1/txt2img", `{"prompt":"a red apple","steps":4,"seed":3,"enable_hr":true,
		"hr_upscaler":"Latent","hr_second_pass_steps":3,"denoising_strength":0.6,"hr_sampler_name":""}`, &res)
	require.Equal(t, 200, resp.StatusCode)
	img, text := decodePNG(t, res.Images[0])
	assert.Equal(t, image.Pt(128, 128), img.Bounds().Size(), "hr_scale 2 of the native 64x64")
	assert.Contains(t, text["parameters"], "Size: 64x64")
	assert.Contains(t, text["parameters"], "Denoising strength: 0.6, Hires upscale: 2, Hires steps: 3, Hires upscaler: Latent")
}

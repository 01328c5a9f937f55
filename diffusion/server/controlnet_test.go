package server

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/gosd/gosd/internal/testutil"
)

// controlNetServer serves the kit's sd1-tiny with a ControlNet folder holding the kit's
// controlnet-tiny twice: as a diffusers folder (cn-tiny) and as its original single file.
func controlNetServer(t *testing.T) (string, string) {
	t.Helper()
	kit := testutil.ConformanceDir(t)
	dir := t.TempDir()
	require.NoError(t, os.Symlink(filepath.Join(kit, "controlnet-tiny", "diffusers"), filepath.Join(dir, "cn-tiny")))
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "sd15"), 0o755))
	require.NoError(t, os.Symlink(filepath.Join(kit, "controlnet-tiny", "controlnet-tiny-ldm.safetensors"),
		filepath.Join(dir, "sd15", "cn-tiny-ldm.safetensors")))
	_, hs := testServer(t, func(c *Config) {
		c.Models = []string{filepath.Join(kit, "sd1-tiny", "diffusers")}
		c.ControlNetDir = dir
	})
	raw, err := os.ReadFile(filepath.Join(kit, "controlnet-tiny", "control.png"))
	require.NoError(t, err)
	return hs.URL, base64.StdEncoding.EncodeToString(raw)
}

// samePixels compares two base64 PNGs' pixels (their parameters may differ).
func samePixels(t *testing.T, a, b string) bool {
	ia, _ := decodePNG(t, a)
	ib, _ := decodePNG(t, b)
	if ia.Bounds() != ib.Bounds() {
		return false
	}
	for y := ia.Bounds().Min.Y; y < ia.Bounds().Max.Y; y++ {
		for x := ia.Bounds().Min.X; x < ia.Bounds().Max.X; x++ {
			if ia.At(x, y) != ib.At(x, y) {
				return false
			}
		}
	}
	return true
}

// AUTOMATIC1111's ControlNet extension API: alwayson_scripts.controlnet units name models
// of Config.ControlNetDir (listed by /controlnet/model_list); the folder and the single
// file of one ControlNet give the same image, which differs from the run without it, and
// the infotext records the unit.
func TestA1111ControlNet(t *testing.T) {
	url, control := controlNetServer(t)
	var models struct {
		ModelList []string `json:"model_list"`
	}
	require.Equal(t, 200, call(t, "GET", url+"/controlnet/model_list", "", &models).StatusCode)
	assert.Equal(t, []string{"cn-tiny", "cn-tiny-ldm"}, models.ModelList)
	var modules struct {
		ModuleList []string `json:"module_list"`
	}
	require.Equal(t, 200, call(t, "GET", url+"/controlnet/module_list", "", &modules).StatusCode)
	assert.Contains(t, modules.ModuleList, "canny")

	gen := func(units ...map[string]any) (int, a1111Response) {
		body := map[string]any{"prompt": "a red apple", "steps": 3, "seed": 4, "width": 64, "height": 64}
		if units != nil {
			body["alwayson_scripts"] = map[string]any{"ControlNet": map[string]any{"args": units}}
		}
		b, _ := json.Marshal(body)
		var res a1111Response
		return call(t, "POST", url+"/sdapi/v1/txt2img", string(b), &res).StatusCode, res
	}
	status, plain := gen()
	require.Equal(t, 200, status)
	unit := func(model string) map[string]any {
		return map[string]any{"enabled": true, "module": "none", "model": model, "weight": 0.8, "image": control,
			"guidance_start": 0, "guidance_end": 1, "resize_mode": "Crop and Resize", "control_mode": "Balanced"}
	}
	status, folder := gen(unit("cn-tiny [0123abcd]"))
	require.Equal(t, 200, status)
	status, single := gen(unit("cn-tiny-ldm"))
	require.Equal(t, 200, status)
	assert.False(t, samePixels(t, plain.Images[0], folder.Images[0]), "the ControlNet changed the image")
	assert.True(t, samePixels(t, folder.Images[0], single.Images[0]), "the same weights in both layouts")
	_, text := decodePNG(t, folder.Images[0])
	assert.Contains(t, text["parameters"], `ControlNet 0: "Module: none, Model: cn-tiny, Weight: 0.8`)
	disabled := unit("cn-tiny")
	disabled["enabled"] = false
	status, off := gen(disabled)
	require.Equal(t, 200, status)
	assert.True(t, samePixels(t, plain.Images[0], off.Images[0]), "a disabled unit is left out")
	canny := unit("cn-tiny")
	canny["module"], canny["threshold_a"], canny["threshold_b"] = "canny", 50, 150
	status, res := gen(canny)
	require.Equal(t, 200, status)
	_, text = decodePNG(t, res.Images[0])
	assert.Contains(t, text["parameters"], "Module: canny")

	for _, tc := range []struct {
		change func(map[string]any)
		want   string
	}{
		{func(u map[string]any) { u["model"] = "nope" }, `no ControlNet "nope"`},
		{func(u map[string]any) { u["module"] = "depth_midas" }, `module "depth_midas"`},
		{func(u map[string]any) { u["control_mode"] = 2 }, "control_mode 2"},
		{func(u map[string]any) { u["guidance_end"] = 0 }, "guidance_start"},
		{func(u map[string]any) { delete(u, "image") }, "no image"},
	} {
		u := unit("cn-tiny")
		tc.change(u)
		status, _ := gen(u)
		assert.Equal(t, 422, status, tc.want)
		b, _ := json.Marshal(map[string]any{"prompt": "x", "steps": 1, "alwayson_scripts": map[string]any{"controlnet": map[string]any{"args": []any{u}}}})
		var e map[string]any
		call(t, "POST", url+"/sdapi/v1/txt2img", string(b), &e)
		assert.Contains(t, fmt.Sprint(e), tc.want)
	}
	var e map[string]any
	require.Equal(t, 422, call(t, "POST", url+"/sdapi/v1/txt2img",
		`{"prompt":"x","alwayson_scripts":{"ADetailer":{"args":[true]}}}`, &e).StatusCode)
	assert.Contains(t, fmt.Sprint(e), `script "ADetailer" is not supported`)
	require.Equal(t, 200, call(t, "POST", url+"/sdapi/v1/txt2img",
		`{"prompt":"x","steps":1,"alwayson_scripts":{"ADetailer":{"args":[]}}}`, nil).StatusCode, "an idle script is no request")

	// img2img: a unit without an image takes the init image, as the extension does.
	b, _ := json.Marshal(map[string]any{"prompt": "x", "steps": 2, "init_images": []string{control},
		"alwayson_scripts": map[string]any{"controlnet": map[string]any{"args": []any{map[string]any{"model": "cn-tiny", "module": "canny"}}}}})
	require.Equal(t, 200, call(t, "POST", url+"/sdapi/v1/img2img", string(b), nil).StatusCode)
}

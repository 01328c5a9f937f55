package diffusion

import (
	"image"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Features that do not combine yet are refused with ErrInvalidRequest before any work,
// never silently dropped: a refiner hand-over with ControlNets or the hires fix,
// the hires fix with ControlNets, and an upscale with ControlNets or another decoder.
func TestUnsupportedCombinationsRefused(t *testing.T) {
	p := openTiny(t, "sd1-tiny")
	base := Request{Prompt: "a red apple", Width: 64, Height: 64, Steps: 2}
	control := []Control{{}} // refused before the control is looked at
	for _, tc := range []struct {
		name string
		req  Request
		want string
	}{
		{"refiner with ControlNets", Request{Controls: control}, "not supported with a refiner"},
		{"refiner with a LoRA tag", Request{Prompt: "<lora:style:0.5> a cat", LoRADir: t.TempDir()}, "style"},
		{"refiner with the hires fix", Request{Hires: &Hires{Scale: 2}}, "not supported with a refiner"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := base
			req.Controls, req.LoRAs, req.Hires = tc.req.Controls, tc.req.LoRAs, tc.req.Hires
			if tc.req.Prompt != "" {
				req.Prompt, req.LoRADir = tc.req.Prompt, tc.req.LoRADir
			}
			_, err := p.Txt2ImgRefined(t.Context(), req, p, 0.5)
			require.ErrorIs(t, err, ErrInvalidRequest)
			assert.Contains(t, err.Error(), tc.want)
		})
	}

	t.Run("hires fix with ControlNets", func(t *testing.T) {
		req := base
		req.Hires, req.Controls = &Hires{Scale: 2}, control
		_, err := p.Txt2Img(t.Context(), req)
		require.ErrorIs(t, err, ErrInvalidRequest)
		assert.Contains(t, err.Error(), "hires fix")
	})

	up := openTiny(t, "upscaler-tiny")
	low := image.NewRGBA(image.Rect(0, 0, 16, 16))
	for _, tc := range []struct {
		name string
		req  Request
	}{
		{"upscale with ControlNets", Request{Prompt: "a cat", Steps: 2, Controls: control}},
		{"upscale with TAESD", Request{Prompt: "a cat", Steps: 2, Decoder: DecoderTAESD}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := up.Upscale(t.Context(), UpscaleRequest{Request: tc.req, Image: low})
			require.ErrorIs(t, err, ErrInvalidRequest)
			assert.Contains(t, err.Error(), "an upscale takes no ControlNets")
		})
	}
}

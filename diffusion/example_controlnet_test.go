package diffusion_test

import (
	"context"
	"log"
	"os"

	"github.com/gosd/gosd/diffusion"
	"github.com/gosd/gosd/diffusion/control"
)

// A ControlNet on Canny edges of a photo (compiled by go test, not run: it needs real
// models).
func ExamplePipeline_LoadControlNet() {
	ctx := context.Background()
	p, err := diffusion.Open("v1-5-pruned-emaonly.safetensors")
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()
	cn, err := p.LoadControlNet("control_v11p_sd15_canny.pth") // once; reused by every request
	if err != nil {
		log.Fatal(err)
	}
	defer cn.Close()
	f, err := os.Open("house.png")
	if err != nil {
		log.Fatal(err)
	}
	photo, err := diffusion.DecodeImage(f, "house.png")
	f.Close()
	if err != nil {
		log.Fatal(err)
	}
	res, err := p.Txt2Img(ctx, diffusion.Request{
		Prompt: "a wooden house in the snow",
		Width:  512, Height: 512,
		Controls: []diffusion.Control{{
			Model: cn, Image: control.Canny(photo, 100, 200), Preprocessor: "canny",
			PreprocessorParams: []float64{100, 200}, Scale: 0.8, End: 0.8,
		}},
	})
	if err != nil {
		log.Fatal(err)
	}
	// The PNG records the ControlNet in the parameters as the web UI's extension does.
	data, err := diffusion.EncodePNG(res.Images[0], res.Params.A1111(0))
	if err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile("house-snow.png", data, 0o644); err != nil {
		log.Fatal(err)
	}
}

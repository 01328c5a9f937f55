package diffusion_test

import (
	"bytes"
	"context"
	"image/png"
	"log"
	"os"

	"github.com/gosd/gosd/diffusion"
	"github.com/gosd/gosd/diffusion/schedule"
)

// The README's example, kept compiling by go test (not run: it needs a real model).
func ExamplePipeline_Txt2Img() {
	ctx := context.Background()
	p, err := diffusion.Open("v1-5-pruned-emaonly.safetensors") // a single file or a diffusers folder
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()
	res, err := p.Txt2Img(ctx, diffusion.Request{
		Prompt:   "a lighthouse on a cliff at sunset, oil painting",
		Steps:    25,
		Sampler:  diffusion.DPMPP2M,
		Schedule: schedule.SigmasKarras, // DPM++ 2M Karras
		Seed:     42,
	})
	if err != nil {
		log.Fatal(err)
	}
	var buf bytes.Buffer
	png.Encode(&buf, res.Images[0]) // in memory: cannot fail
	if err := os.WriteFile("out.png", buf.Bytes(), 0o644); err != nil {
		log.Fatal(err)
	}
}

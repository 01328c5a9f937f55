package main

import (
	"context"
	"encoding/json"
	"fmt"
	"image"
	"math"

	"github.com/gosd/gosd/diffusion"
)

// precisionComparison is what `bench --compare-precision` reports: the same txt2img (seed,
// prompt, size, steps) in fp32 and then in bf16, back to back in one process.
type precisionComparison struct {
	FP32    benchReport `json:"fp32"`
	BF16    benchReport `json:"bf16"`
	PSNR    float64     `json:"bf16_psnr_db"` // of bf16's image against fp32's, over R, G, B
	Speedup float64     `json:"step_speedup"` // fp32's median step time over bf16's
}

func (a *app) benchComparePrecision(ctx context.Context, o *benchOptions, r benchReport, size int) error {
	var c precisionComparison
	var images [2]image.Image
	for i, p := range []diffusion.Precision{diffusion.PrecisionFP32, diffusion.PrecisionBF16} {
		o.pipe.precision = p
		rep, img, err := a.benchRun(ctx, o, r, size)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		images[i] = img
		if i == 0 {
			c.FP32 = rep
		} else {
			c.BF16 = rep
		}
	}
	c.PSNR = psnrRGB(images[1], images[0])
	c.Speedup = c.FP32.StepMedian / c.BF16.StepMedian
	if o.json {
		enc := json.NewEncoder(a.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(c)
	}
	for _, rep := range []benchReport{c.FP32, c.BF16} {
		if err := rep.table(a.stdout); err != nil {
			return err
		}
		fmt.Fprintln(a.stdout)
	}
	_, err := fmt.Fprintf(a.stdout, "bf16 vs fp32  PSNR %.1f dB (final image)  step %.2fx faster\n", c.PSNR, c.Speedup)
	return err
}

// psnrRGB is the PSNR in dB of got against ref (same bounds) over their 8-bit R, G and B
// samples; +Inf when they are equal.
func psnrRGB(got, ref image.Image) float64 {
	b := ref.Bounds()
	var sum float64
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r1, g1, b1, _ := got.At(x, y).RGBA()
			r2, g2, b2, _ := ref.At(x, y).RGBA()
			for _, d := range [3]float64{float64(r1>>8) - float64(r2>>8), float64(g1>>8) - float64(g2>>8), float64(b1>>8) - float64(b2>>8)} {
				sum += d * d
			}
		}
	}
	mse := sum / (3 * float64(b.Dx()*b.Dy()) * 255 * 255)
	return 10 * math.Log10(1/mse)
}

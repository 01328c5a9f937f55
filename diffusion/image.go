package diffusion

import (
	"image"
	"image/color"
	"image/draw"
	"math"
)

// toImages converts decoded images (b, 3, h, w), roughly in [-1, 1], to RGBA as diffusers'
// postprocessing does: (x / 2 + 0.5) clamped to [0, 1], times 255, rounded half to even.
func toImages(pix []float32, b, h, w int) []image.Image {
	out := make([]image.Image, b)
	plane := h * w
	for i := 0; i < b; i++ {
		img := image.NewRGBA(image.Rect(0, 0, w, h))
		src := pix[i*3*plane:]
		for y := 0; y < h; y++ {
			for x := 0; x < w; x++ {
				o := img.PixOffset(x, y)
				for c := 0; c < 3; c++ {
					img.Pix[o+c] = toByte(src[c*plane+y*w+x])
				}
				img.Pix[o+3] = 255
			}
		}
		out[i] = img
	}
	return out
}

func toByte(v float32) uint8 {
	u := v/2 + 0.5
	if !(u > 0) { // also NaN
		return 0
	}
	if u > 1 {
		u = 1
	}
	return uint8(math.RoundToEven(float64(u * 255)))
}

// imageTensor converts an image to (1, 3, h, w) in [-1, 1], resized with Lanczos when its
// size differs, as diffusers' VaeImageProcessor.preprocess.
func imageTensor(img image.Image, w, h int) []float32 {
	return imageTensorWith(img, w, h, lanczosFilter)
}

// imageTensorWith is imageTensor resizing with filter f.
func imageTensorWith(img image.Image, w, h int, f filter) []float32 {
	rgba := resizeWith(toNRGBA(img), w, h, f)
	out := make([]float32, 3*w*h)
	plane := w * h
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			o := rgba.PixOffset(x, y)
			for c := 0; c < 3; c++ {
				out[c*plane+y*w+x] = float32(rgba.Pix[o+c])/255*2 - 1
			}
		}
	}
	return out
}

// maskTensor converts a mask to (1, 1, h, w) in {0, 1}: grayscale, resized, then
// binarised at 0.5 (1 = repaint), as diffusers' mask processor.
func maskTensor(mask image.Image, w, h int) []float32 {
	g := resize(toNRGBA(mask), w, h)
	out := make([]float32, w*h)
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			o := g.PixOffset(x, y)
			// ITU-R 601-2 luma, as PIL's convert("L").
			l := (299*float64(g.Pix[o]) + 587*float64(g.Pix[o+1]) + 114*float64(g.Pix[o+2])) / 1000
			if l/255 >= 0.5 {
				out[y*w+x] = 1
			}
		}
	}
	return out
}

func toNRGBA(img image.Image) *image.NRGBA {
	if n, ok := img.(*image.NRGBA); ok && n.Bounds().Min == (image.Point{}) {
		return n
	}
	b := img.Bounds()
	n := image.NewNRGBA(image.Rect(0, 0, b.Dx(), b.Dy()))
	draw.Draw(n, n.Bounds(), img, b.Min, draw.Src)
	return n
}

// resize scales with a Lanczos-3 filter (separable, as PIL's Image.LANCZOS); the image
// itself when the size already matches.
func resize(src *image.NRGBA, w, h int) *image.NRGBA { return resizeWith(src, w, h, lanczosFilter) }

// filter is a separable resampling kernel with its support radius (in source pixels at
// scale 1), as PIL's filters.
type filter struct {
	kernel  func(float64) float64
	support float64
}

var (
	lanczosFilter = filter{lanczos, 3}
	bicubicFilter = filter{bicubic, 2}
)

func resizeWith(src *image.NRGBA, w, h int, f filter) *image.NRGBA {
	sw, sh := src.Bounds().Dx(), src.Bounds().Dy()
	if sw == w && sh == h {
		return src
	}
	tmp := resample1D(src.Pix, sw, sh, src.Stride, w, true, f) // horizontal: w x sh
	outPix := resample1D(tmp, w, sh, 4*w, h, false, f)         // vertical: w x h
	return &image.NRGBA{Pix: outPix, Stride: 4 * w, Rect: image.Rect(0, 0, w, h)}
}

// bicubic is PIL's Image.BICUBIC kernel (Keys' cubic convolution with a = -0.5).
func bicubic(x float64) float64 {
	const a = -0.5
	x = math.Abs(x)
	switch {
	case x < 1:
		return ((a+2)*x-(a+3))*x*x + 1
	case x < 2:
		return (((x-5)*x+8)*x - 4) * a
	}
	return 0
}

func lanczos(x float64) float64 {
	const a = 3
	if x == 0 {
		return 1
	}
	if x <= -a || x >= a {
		return 0
	}
	px := math.Pi * x
	return a * math.Sin(px) * math.Sin(px/a) / (px * px)
}

// resample1D resizes RGBA rows (horizontal) or columns (vertical) to n samples.
func resample1D(pix []uint8, w, h, stride, n int, horizontal bool, f filter) []uint8 {
	srcLen, other := w, h
	if !horizontal {
		srcLen, other = h, w
	}
	scale := float64(srcLen) / float64(n)
	support := f.support * math.Max(scale, 1)
	filterScale := math.Max(scale, 1)
	outW, outH := n, h
	if !horizontal {
		outW, outH = w, n
	}
	out := make([]uint8, 4*outW*outH)
	weights := make([]float64, 0, int(2*support)+2)
	for i := 0; i < n; i++ {
		center := (float64(i) + 0.5) * scale
		lo := max(int(math.Floor(center-support)), 0)
		hi := min(int(math.Ceil(center+support)), srcLen)
		weights = weights[:0]
		var sum float64
		for j := lo; j < hi; j++ {
			wt := f.kernel((float64(j) + 0.5 - center) / filterScale)
			weights = append(weights, wt)
			sum += wt
		}
		for o := 0; o < other; o++ {
			var acc [4]float64
			for j := lo; j < hi; j++ {
				var at int
				if horizontal {
					at = o*stride + 4*j
				} else {
					at = j*stride + 4*o
				}
				wt := weights[j-lo]
				for c := 0; c < 4; c++ {
					acc[c] += wt * float64(pix[at+c])
				}
			}
			var at int
			if horizontal {
				at = o*4*outW + 4*i
			} else {
				at = i*4*outW + 4*o
			}
			for c := 0; c < 4; c++ {
				v := math.Round(acc[c] / sum)
				out[at+c] = uint8(math.Max(0, math.Min(255, v)))
			}
		}
	}
	return out
}

// latentPreview approximates the image from SD latents (c == 4) with a linear map per
// pixel, at latent resolution; nil for other latent widths.
func latentPreview(x []float32, c, h, w int) image.Image {
	if c != 4 {
		return nil
	}
	// Widely used least-squares factors from SD 1.x latents to RGB.
	f := [4][3]float32{
		{0.298, 0.207, 0.208},
		{0.187, 0.286, 0.173},
		{-0.158, 0.189, 0.264},
		{-0.184, -0.271, -0.473},
	}
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	plane := h * w
	for k := 0; k < plane; k++ {
		var rgb [3]float32
		for ch := 0; ch < 4; ch++ {
			for o := 0; o < 3; o++ {
				rgb[o] += x[ch*plane+k] * f[ch][o]
			}
		}
		img.Set(k%w, k/w, color.RGBA{toByte(rgb[0]), toByte(rgb[1]), toByte(rgb[2]), 255})
	}
	return img
}

// ExtendCanvas prepares outpainting: it returns img on a canvas grown by the given
// margins (the new area repeats the nearest edge pixels, a neutral start for the
// sampler) and the matching mask (white where the canvas was extended). Pass both to
// Inpaint. Margins are rounded up so the canvas stays a multiple of 8. Margins must not
// be negative, and the canvas may not exceed MaxSide a side.
func ExtendCanvas(img image.Image, left, top, right, bottom int) (canvas *image.RGBA, mask *image.Gray, err error) {
	if err := checkImage("image to extend", img); err != nil {
		return nil, nil, err
	}
	if left < 0 || top < 0 || right < 0 || bottom < 0 {
		return nil, nil, invalid("canvas margins %d,%d,%d,%d: must not be negative", left, top, right, bottom)
	}
	b := img.Bounds()
	// Each margin is at most MaxSide here, so the sums cannot overflow.
	if left > MaxSide || top > MaxSide || right > MaxSide || bottom > MaxSide ||
		b.Dx()+left+right > MaxSide || b.Dy()+top+bottom > MaxSide {
		return nil, nil, invalid("extended canvas of %dx%d plus margins %d,%d,%d,%d exceeds %d pixels a side",
			b.Dx(), b.Dy(), left, top, right, bottom, MaxSide)
	}
	w, h := b.Dx()+left+right, b.Dy()+top+bottom
	right += (8 - w%8) % 8
	bottom += (8 - h%8) % 8
	w, h = b.Dx()+left+right, b.Dy()+top+bottom
	canvas = image.NewRGBA(image.Rect(0, 0, w, h))
	mask = image.NewGray(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		sy := min(max(y-top, 0), b.Dy()-1)
		for x := 0; x < w; x++ {
			sx := min(max(x-left, 0), b.Dx()-1)
			canvas.Set(x, y, img.At(b.Min.X+sx, b.Min.Y+sy))
			if x < left || y < top || x >= left+b.Dx() || y >= top+b.Dy() {
				mask.SetGray(x, y, color.Gray{255})
			}
		}
	}
	return canvas, mask, nil
}

// Package control makes ControlNet control images without a model: Canny edges as
// OpenCV's cv2.Canny, the luma of an image as cv2.cvtColor and its negative (scribble
// and lineart maps are white lines on black), and the inpainting ControlNet's condition
// as diffusers' make_inpaint_condition. It is pure Go and needs no runtime library.
//
// Images are read as 8-bit straight (not premultiplied) RGB, as PIL's convert("RGB") and
// cv2.imread give them to the Python pipelines reproduced: alpha is dropped, not
// composited, and 16-bit samples keep their high byte. The exact results of the tests
// hold for PNG; JPEG files decode to slightly different RGB in Go and in libjpeg, so the
// same JPEG can give a few different pixels.
package control

import (
	"image"
	"image/color"
)

// rgb returns img's pixels as 8-bit R, G, B triplets, row by row from its top-left
// corner, and its size.
func rgb(img image.Image) (pix []uint8, w, h int) {
	b := img.Bounds()
	w, h = b.Dx(), b.Dy()
	pix = make([]uint8, 0, 3*w*h)
	switch m := img.(type) {
	case *image.NRGBA:
		for y := b.Min.Y; y < b.Max.Y; y++ {
			row := m.Pix[m.PixOffset(b.Min.X, y):m.PixOffset(b.Max.X, y)]
			for i := 0; i < len(row); i += 4 {
				pix = append(pix, row[i], row[i+1], row[i+2])
			}
		}
	case *image.Gray:
		for y := b.Min.Y; y < b.Max.Y; y++ {
			for _, v := range m.Pix[m.PixOffset(b.Min.X, y):m.PixOffset(b.Max.X, y)] {
				pix = append(pix, v, v, v)
			}
		}
	default:
		for y := b.Min.Y; y < b.Max.Y; y++ {
			for x := b.Min.X; x < b.Max.X; x++ {
				c := color.NRGBAModel.Convert(img.At(x, y)).(color.NRGBA)
				pix = append(pix, c.R, c.G, c.B)
			}
		}
	}
	return pix, w, h
}

// Gray returns the luma of img as cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) computes it for
// 8-bit images (OpenCV 4): the weights 0.299, 0.587 and 0.114 in 15-bit fixed point
// (9798, 19235 and 3735, summing to 2^15), the weighted sum rounded half up. This is not
// PIL's convert("L"), whose 16-bit weights round 0.13% of the colours differently; a
// gray image is returned unchanged (as a copy).
func Gray(img image.Image) *image.Gray {
	b := img.Bounds()
	out := image.NewGray(image.Rect(0, 0, b.Dx(), b.Dy()))
	if g, ok := img.(*image.Gray); ok {
		for y := 0; y < b.Dy(); y++ {
			copy(out.Pix[y*out.Stride:], g.Pix[g.PixOffset(b.Min.X, b.Min.Y+y):g.PixOffset(b.Max.X, b.Min.Y+y)])
		}
		return out
	}
	pix, _, _ := rgb(img)
	for i := range out.Pix {
		r, g, b := uint32(pix[3*i]), uint32(pix[3*i+1]), uint32(pix[3*i+2])
		out.Pix[i] = uint8((r*9798 + g*19235 + b*3735 + 1<<14) >> 15)
	}
	return out
}

// Invert returns 255 minus the luma of img (as Gray), turning black lines drawn on
// white into the white-on-black scribble and lineart maps ControlNet is trained on.
func Invert(img image.Image) *image.Gray {
	out := Gray(img)
	for i, v := range out.Pix {
		out.Pix[i] = 255 - v
	}
	return out
}

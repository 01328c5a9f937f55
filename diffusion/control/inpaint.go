package control

import (
	"errors"
	"fmt"
	"image"
)

// InpaintCondition returns the control image of the inpainting ControlNet
// (control_v11p_sd15_inpaint) as diffusers' documented make_inpaint_condition makes it:
// the image's RGB divided by 255, and -1 in all three channels where the mask is set,
// which is where its luma / 255 exceeds 0.5. pix is float32 in CHW order (the three
// planes R, G, B of h rows of w), one image of the (1, 3, h, w) tensor the pipeline
// takes; -1 lies outside the [0, 1] of real pixels, so the network tells masked pixels
// from black ones.
//
// The mask's luma is PIL's convert("L"), as make_inpaint_condition uses: weights 0.299,
// 0.587 and 0.114 in 16-bit fixed point, rounded, so a pixel is masked when its luma is
// 128 or more. White is masked, as for sdcli inpaint's --mask. The mask must be the
// image's size: make_inpaint_condition does not resize it either.
func InpaintCondition(img, mask image.Image) (pix []float32, w, h int, err error) {
	ib, mb := img.Bounds(), mask.Bounds()
	if ib.Empty() {
		return nil, 0, 0, errors.New("control: the image is empty")
	}
	if ib.Size() != mb.Size() {
		return nil, 0, 0, fmt.Errorf("control: the mask is %d×%d pixels, the image %d×%d", mb.Dx(), mb.Dy(), ib.Dx(), ib.Dy())
	}
	rgbPix, w, h := rgb(img)
	maskPix, _, _ := rgb(mask)
	plane := w * h
	pix = make([]float32, 3*plane)
	for i := 0; i < plane; i++ {
		r, g, b := uint32(maskPix[3*i]), uint32(maskPix[3*i+1]), uint32(maskPix[3*i+2])
		masked := (r*19595+g*38470+b*7471+1<<15)>>16 >= 128
		for c := 0; c < 3; c++ {
			v := float32(-1)
			if !masked {
				v = float32(rgbPix[3*i+c]) / 255
			}
			pix[c*plane+i] = v
		}
	}
	return pix, w, h, nil
}

package control

import "image"

// CannyLow and CannyHigh are the default hysteresis thresholds: those of diffusers'
// Canny ControlNet example, which sdcli's --control-preprocess canny and the demo
// ControlNet's training edges (tools/train/canny) use.
const (
	CannyLow  = 100
	CannyHigh = 200
)

// Canny returns the edges of img, 255 on 0, as OpenCV's cv2.Canny(image, low, high)
// with its defaults: a 3×3 Sobel aperture and the L1 gradient magnitude |dx| + |dy|
// (L2gradient=False). A gray image (*image.Gray) is one channel; any other is taken as
// its 8-bit RGB (see the package comment) and is the H×W×3 array that ControlNet's
// canny annotator and diffusers' ControlNet example pass to cv2.Canny, both without
// blurring it first. For cv2.Canny on the luma instead, pass Gray(img).
//
// The steps are OpenCV's:
//
//   - Sobel derivatives per channel, with the image's edge pixels replicated past its
//     border (BORDER_REPLICATE); of several channels, each pixel takes the derivatives
//     of the one with the largest magnitude, the first on a tie.
//   - Non-maximum suppression: a pixel whose magnitude exceeds low is kept when it
//     peaks across the gradient's direction, one of horizontal, vertical or diagonal.
//     The direction is chosen from |dy| / |dx| against tan 22.5° and tan 67.5° in
//     15-bit fixed point. The left (or upper) neighbour must be strictly lower, the
//     right (or lower) one lower or equal, so that a plateau two pixels wide gives one
//     edge; diagonally both must be strictly lower. Past the border the magnitude is 0.
//   - Hysteresis: kept pixels whose magnitude exceeds high are edges, and so is every
//     kept pixel 8-connected to an edge through kept pixels.
//
// cv2.Canny floors its thresholds, so integer ones lose nothing (pass floor(t)); as
// cv2.Canny, Canny swaps them when low > high. The result is sized as img, its origin
// at (0, 0).
func Canny(img image.Image, low, high int) *image.Gray {
	if low > high {
		low, high = high, low
	}
	var pix []uint8
	var w, h, cn int
	if g, ok := img.(*image.Gray); ok {
		pix, cn = Gray(g).Pix, 1 // Gray's copy is compact: stride w, origin 0
		w, h = g.Bounds().Dx(), g.Bounds().Dy()
	} else {
		pix, w, h = rgb(img)
		cn = 3
	}
	dx, dy, mag := sobel(pix, w, h, cn)
	out := image.NewGray(image.Rect(0, 0, w, h))
	hysteresis(suppress(dx, dy, mag, w, h, low, high), w, h, out.Pix)
	return out
}

// sobel returns the 3×3 Sobel derivatives (dx to the right, dy downwards) and their L1
// magnitude per pixel of pix, w×h pixels of cn interleaved channels, keeping per pixel
// the channel of the largest magnitude. Borders replicate the edge pixels. Derivatives
// of 8-bit samples are at most 4·255 in absolute value, magnitudes twice that: int16.
func sobel(pix []uint8, w, h, cn int) (dx, dy, mag []int16) {
	dx, dy, mag = make([]int16, w*h), make([]int16, w*h), make([]int16, w*h)
	for y := 0; y < h; y++ {
		up, row, down := max(y-1, 0)*w, y*w, min(y+1, h-1)*w
		for x := 0; x < w; x++ {
			left, right := max(x-1, 0), min(x+1, w-1)
			best := -1
			for c := 0; c < cn; c++ {
				p := func(r, x int) int { return int(pix[(r+x)*cn+c]) }
				gx := p(up, right) + 2*p(row, right) + p(down, right) - p(up, left) - 2*p(row, left) - p(down, left)
				gy := p(down, left) + 2*p(down, x) + p(down, right) - p(up, left) - 2*p(up, x) - p(up, right)
				if m := abs(gx) + abs(gy); m > best {
					best = m
					dx[row+x], dy[row+x], mag[row+x] = int16(gx), int16(gy), int16(m)
				}
			}
		}
	}
	return dx, dy, mag
}

// Pixel states after non-maximum suppression.
const (
	suppressed = iota
	weak       // a local maximum above low
	edge       // a local maximum above high, or a weak one reached by hysteresis
)

// tan22 is tan 22.5° in 15-bit fixed point, rounded: |dy| < tan22·|dx| / 2^15 is a
// horizontal gradient, and |dy| > (tan22 + 2·2^15)·|dx| / 2^15, beyond tan 67.5° =
// tan 22.5° + 2, a vertical one.
const (
	tanShift = 15
	tan22    = 13573
)

// suppress classifies each pixel by non-maximum suppression and the two thresholds.
func suppress(dx, dy, mag []int16, w, h, low, high int) []uint8 {
	at := func(x, y int) int {
		if x < 0 || x >= w || y < 0 || y >= h {
			return 0
		}
		return int(mag[y*w+x])
	}
	state := make([]uint8, w*h)
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			i := y*w + x
			m := int(mag[i])
			if m <= low {
				continue
			}
			gx, gy := int(dx[i]), int(dy[i])
			t22 := abs(gx) * tan22
			ty := abs(gy) << tanShift
			var peak bool
			switch {
			case ty < t22:
				peak = m > at(x-1, y) && m >= at(x+1, y)
			case ty > t22+abs(gx)<<(tanShift+1):
				peak = m > at(x, y-1) && m >= at(x, y+1)
			default:
				// Along the diagonal the gradient points to: down-right when dx and dy
				// have the same sign (0 counting as positive), else down-left.
				s := 1
				if (gx < 0) != (gy < 0) {
					s = -1
				}
				peak = m > at(x-s, y-1) && m > at(x+s, y+1)
			}
			switch {
			case !peak:
			case m > high:
				state[i] = edge
			default:
				state[i] = weak
			}
		}
	}
	return state
}

// hysteresis grows the edges of state into the weak pixels 8-connected to them and
// writes 255 in out (w×h, compact) for every edge.
func hysteresis(state []uint8, w, h int, out []uint8) {
	var stack []int
	for i, s := range state {
		if s == edge {
			stack = append(stack, i)
		}
	}
	for len(stack) > 0 {
		i := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		x, y := i%w, i/w
		for ny := max(y-1, 0); ny <= min(y+1, h-1); ny++ {
			for nx := max(x-1, 0); nx <= min(x+1, w-1); nx++ {
				if j := ny*w + nx; state[j] == weak {
					state[j] = edge
					stack = append(stack, j)
				}
			}
		}
	}
	for i, s := range state {
		if s == edge {
			out[i] = 255
		}
	}
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}

package control

import (
	"image"
	"image/color"
	"image/draw"
	"slices"
	"testing"
)

// TestBoundsAndModels: the origin of a sub-image and the colour model do not change the
// results, which always start at (0, 0).
func TestBoundsAndModels(t *testing.T) {
	src := readPNG(t, "shapes.png").(*image.RGBA)
	sub := src.SubImage(image.Rect(7, 5, 50, 41))
	flat := image.NewNRGBA(image.Rect(0, 0, 43, 36))
	draw.Draw(flat, flat.Bounds(), sub, sub.Bounds().Min, draw.Src)
	offset := image.NewNRGBA(image.Rect(100, 200, 143, 236))
	draw.Draw(offset, offset.Bounds(), sub, sub.Bounds().Min, draw.Src)

	want := Canny(flat, 100, 200)
	wantGray := Gray(flat)
	for _, img := range []image.Image{sub, offset} {
		if got := Canny(img, 100, 200); got.Rect != want.Rect || !slices.Equal(got.Pix, want.Pix) {
			t.Errorf("Canny of a %T at %v differs from Canny of a copy at (0, 0)", img, img.Bounds())
		}
		if got := Gray(img); got.Rect != wantGray.Rect || !slices.Equal(got.Pix, wantGray.Pix) {
			t.Errorf("Gray of a %T at %v differs", img, img.Bounds())
		}
	}
	// A gray sub-image goes through the one-channel path, which a copy must match.
	g := readPNG(t, "graynoise.png").(*image.Gray)
	gsub := g.SubImage(image.Rect(3, 2, 20, 15)).(*image.Gray)
	gflat := Gray(gsub)
	if gflat.Rect != image.Rect(0, 0, 17, 13) || gflat.GrayAt(0, 0) != g.GrayAt(3, 2) || gflat.GrayAt(16, 12) != g.GrayAt(19, 14) {
		t.Fatalf("Gray of a gray sub-image: %v, corners %v %v", gflat.Rect, gflat.GrayAt(0, 0), gflat.GrayAt(16, 12))
	}
	if got, want := Canny(gsub, 20, 60), Canny(gflat, 20, 60); !slices.Equal(got.Pix, want.Pix) {
		t.Error("Canny of a gray sub-image differs from Canny of its copy")
	}
	// As three equal channels, a gray image has its one channel's edges.
	asRGB := image.NewRGBA(gflat.Rect)
	draw.Draw(asRGB, asRGB.Bounds(), gflat, image.Point{}, draw.Src)
	if got, want := Canny(asRGB, 20, 60), Canny(gflat, 20, 60); !slices.Equal(got.Pix, want.Pix) {
		t.Error("Canny of a gray image as RGB differs from Canny of its one channel")
	}
	if got, want := Canny(image.NewRGBA(image.Rect(0, 0, 0, 0)), 1, 2), image.Rect(0, 0, 0, 0); got.Rect != want {
		t.Errorf("Canny of an empty image: %v", got.Rect)
	}
}

// TestCannyThresholds: low > high is swapped; a threshold at or above every magnitude
// leaves no edge; the edges at a lower high threshold include those at a higher one.
func TestCannyThresholds(t *testing.T) {
	img := readPNG(t, "blobs.png")
	if a, b := Canny(img, 30, 90), Canny(img, 90, 30); !slices.Equal(a.Pix, b.Pix) {
		t.Error("Canny(img, 90, 30) differs from Canny(img, 30, 90)")
	}
	if n := count(Canny(img, 2040, 2040)); n != 0 {
		t.Errorf("%d edges above the largest possible magnitude 2040", n)
	}
	strong, weaker := Canny(img, 100, 300), Canny(img, 100, 200)
	for i, v := range strong.Pix {
		if v == 255 && weaker.Pix[i] != 255 {
			t.Fatalf("pixel %d is an edge at high 300, not at high 200", i)
		}
	}
	if count(weaker) <= count(strong) || count(strong) == 0 {
		t.Errorf("%d edges at high 200, %d at 300", count(weaker), count(strong))
	}
	// A flat image has no gradient: no edge, even with negative thresholds.
	flat := image.NewGray(image.Rect(0, 0, 5, 4))
	for i := range flat.Pix {
		flat.Pix[i] = 200
	}
	if n := count(Canny(flat, -10, -5)); n != 0 {
		t.Errorf("%d edges on a flat image", n)
	}
}

func count(g *image.Gray) (n int) {
	for _, v := range g.Pix {
		if v != 0 {
			n++
		}
	}
	return n
}

func TestGrayInvert(t *testing.T) {
	img := image.NewNRGBA(image.Rect(0, 0, 4, 1))
	// Pure colours give the rounded weights; on (0, 0, 250) OpenCV's 15-bit weights give
	// 28, where 14-bit ones would give 29.
	for x, c := range []color.NRGBA{{255, 0, 0, 255}, {0, 255, 0, 255}, {0, 0, 250, 255}, {10, 20, 30, 0}} {
		img.SetNRGBA(x, 0, c)
	}
	want := []uint8{76, 150, 28, 18} // alpha 0 does not count: (10, 20, 30) → 18
	if g := Gray(img); !slices.Equal(g.Pix, want) {
		t.Errorf("Gray: %v, want %v", g.Pix, want)
	}
	if g := Invert(img); !slices.Equal(g.Pix, []uint8{179, 105, 227, 237}) {
		t.Errorf("Invert: %v", g.Pix)
	}
}

func TestInpaintCondition(t *testing.T) {
	img := image.NewNRGBA(image.Rect(0, 0, 3, 2))
	mask := image.NewNRGBA(image.Rect(10, 10, 13, 12)) // any origin: only the size counts
	for i := range img.Pix {
		img.Pix[i] = uint8(i * 10)
	}
	// Mask lumas 127 and 128 straddle 0.5; red (76) is not masked, green (150) is.
	for i, c := range []color.NRGBA{{127, 127, 127, 255}, {128, 128, 128, 255}, {255, 0, 0, 255}, {0, 255, 0, 255}, {0, 0, 0, 255}, {255, 255, 255, 0}} {
		mask.SetNRGBA(10+i%3, 10+i/3, c)
	}
	pix, w, h, err := InpaintCondition(img, mask)
	if err != nil || w != 3 || h != 2 || len(pix) != 18 {
		t.Fatalf("got %d values, %d×%d, %v", len(pix), w, h, err)
	}
	masked := []bool{false, true, false, true, false, true}
	for i, m := range masked {
		for c := 0; c < 3; c++ {
			want := float32(img.Pix[4*i+c]) / 255
			if m {
				want = -1
			}
			if got := pix[c*6+i]; got != want {
				t.Errorf("pixel %d channel %d: %v, want %v", i, c, got, want)
			}
		}
	}
	if _, _, _, err := InpaintCondition(img, image.NewGray(image.Rect(0, 0, 2, 3))); err == nil {
		t.Error("a mask of another size is accepted")
	}
	if _, _, _, err := InpaintCondition(image.NewGray(image.Rect(0, 0, 0, 0)), image.NewGray(image.Rect(0, 0, 0, 0))); err == nil {
		t.Error("an empty image is accepted")
	}
}

package control

import (
	"bufio"
	"image"
	"image/png"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func readPNG(t *testing.T, name string) image.Image {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return img
}

// grayPix returns img's samples, which must be 8-bit gray, row by row.
func grayPix(t *testing.T, name string, img image.Image) []uint8 {
	t.Helper()
	g, ok := img.(*image.Gray)
	if !ok {
		t.Fatalf("%s is a %T, not gray", name, img)
	}
	return Gray(g).Pix
}

// diff counts the pixels where got differs from want and describes the first.
func diff(got, want []uint8, w int) (n int, first string) {
	for i := range want {
		if got[i] != want[i] {
			if n == 0 {
				first = "first at (" + strconv.Itoa(i%w) + ", " + strconv.Itoa(i/w) + "): got " + strconv.Itoa(int(got[i])) + ", want " + strconv.Itoa(int(want[i]))
			}
			n++
		}
	}
	return n, first
}

// TestOpenCVReference compares Canny and Gray with what OpenCV made of the images in
// testdata (see make_canny.py): every pixel must be equal.
func TestOpenCVReference(t *testing.T) {
	f, err := os.Open("testdata/cases.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	var cases int
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		t.Run(strings.Join(fields[:len(fields)-1], "_"), func(t *testing.T) {
			in := readPNG(t, fields[1])
			want := grayPix(t, fields[len(fields)-1], readPNG(t, fields[len(fields)-1]))
			var got *image.Gray
			switch fields[0] {
			case "canny":
				low, _ := strconv.Atoi(fields[2])
				high, _ := strconv.Atoi(fields[3])
				got = Canny(in, low, high)
			case "gray":
				got = Gray(in)
			default:
				t.Fatalf("unknown case %q", line)
			}
			if got.Bounds() != in.Bounds().Sub(in.Bounds().Min) || len(got.Pix) != len(want) {
				t.Fatalf("got %v, want %v", got.Bounds(), in.Bounds())
			}
			if n, first := diff(got.Pix, want, got.Bounds().Dx()); n > 0 {
				t.Errorf("%d of %d pixels differ from OpenCV's, %s", n, len(want), first)
			}
		})
		cases++
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if cases < 40 {
		t.Fatalf("only %d cases in testdata/cases.txt", cases)
	}
}

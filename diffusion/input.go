package diffusion

import (
	"bytes"
	"errors"
	"fmt"
	"image"
	_ "image/jpeg" // DecodeImage reads JPEG
	_ "image/png"  // and PNG
	"io"
	"math"
	"reflect"
	"strings"
)

// Limits of the images a request may carry (init images and masks, which are resized to
// the request's size): they bound the memory a conversion can take, about 4 bytes a pixel.
const (
	MaxInputSide   = 16384
	MaxInputPixels = 64 << 20
)

// checkImage rejects a missing image (nil, or a typed nil such as (*image.RGBA)(nil)) and
// one whose bounds are empty or too large to convert.
func checkImage(what string, img image.Image) error {
	if img == nil {
		return invalid("%s is missing", what)
	}
	if v := reflect.ValueOf(img); v.Kind() == reflect.Pointer && v.IsNil() {
		return invalid("%s is a nil %T", what, img)
	}
	b := img.Bounds()
	if err := checkSize(b.Dx(), b.Dy()); err != nil {
		return invalid("%s is %d×%d pixels: %v", what, b.Dx(), b.Dy(), err)
	}
	return nil
}

func checkSize(w, h int) error {
	if w <= 0 || h <= 0 {
		return errors.New("empty")
	}
	if w > MaxInputSide || h > MaxInputSide || int64(w)*int64(h) > MaxInputPixels {
		return fmt.Errorf("at most %d a side and %d Mpixels in all are accepted; scale it down first", MaxInputSide, MaxInputPixels>>20)
	}
	return nil
}

// inputError is a bad input image: it matches ErrInvalidRequest without the prefix, so its
// message starts with the file's name as the errors of other file tools do.
type inputError struct{ msg string }

func (e *inputError) Error() string { return e.msg }
func (e *inputError) Unwrap() error { return ErrInvalidRequest }

// DecodeImage reads a PNG or JPEG image, checking the size its header declares against
// the input limits before decoding it, so that a small file declaring a huge picture is
// refused without the memory a decode would take. The header is replayed to the decoder,
// not re-read, so r may be a pipe. name (a file name, "mask") starts every error; errors
// about the image itself match ErrInvalidRequest.
func DecodeImage(r io.Reader, name string) (image.Image, error) {
	var header bytes.Buffer
	cfg, format, err := image.DecodeConfig(io.TeeReader(r, &header))
	if errors.Is(err, image.ErrFormat) {
		return nil, &inputError{name + ": not a PNG or JPEG image"}
	}
	if err != nil {
		return nil, decodeError(name, format, err)
	}
	if err := checkSize(cfg.Width, cfg.Height); err != nil {
		return nil, &inputError{fmt.Sprintf("%s declares %d×%d pixels: %v", name, cfg.Width, cfg.Height, err)}
	}
	img, _, err := image.Decode(io.MultiReader(&header, r))
	if err != nil {
		return nil, decodeError(name, format, err)
	}
	return img, nil
}

// decodeError names the image and the format of a decoding error, the format only where
// the decoder's message does not already ("png: invalid format", "invalid JPEG format"),
// so as not to print "png: png:".
func decodeError(name, format string, err error) error {
	if strings.Contains(strings.ToLower(err.Error()), format) {
		return &inputError{fmt.Sprintf("%s: %v", name, err)}
	}
	return &inputError{fmt.Sprintf("%s: %s: %v", name, format, err)}
}

// checkFinite fails when v holds a NaN or an infinity, naming the stage that made it: a
// non-finite value would otherwise flow on and come out as a black image.
func checkFinite(stage string, v []float32) error {
	for k, x := range v {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return fmt.Errorf("%w: the %s produced %v (at element %d of %d); the model's weights or the request's settings are broken",
				ErrNonFinite, stage, x, k, len(v))
		}
	}
	return nil
}

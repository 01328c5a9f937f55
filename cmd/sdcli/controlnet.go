package main

import (
	"context"
	"errors"
	"fmt"
	"image"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"github.com/gosd/gosd/diffusion"
	"github.com/gosd/gosd/diffusion/control"
	"github.com/gosd/gosd/diffusion/modelfile"
)

// controlOptions are one --controlnet and the flags after it, which apply to it.
type controlOptions struct {
	path, image       string
	scale, start, end float64
	guess             bool
	preprocess        string // none, canny, invert or inpaint
	low, high         int
	cannySet          bool
}

// defineControlFlags adds --controlnet (repeatable) and the flags that set up the latest
// one to fs; the ControlNets given are appended to *list.
func defineControlFlags(fs *flagSet, list *[]*controlOptions) {
	latest := func(flag string) (*controlOptions, error) {
		if len(*list) == 0 {
			return nil, fmt.Errorf("--%s applies to a ControlNet: give --controlnet PATH first", flag)
		}
		return (*list)[len(*list)-1], nil
	}
	fs.funcVar("controlnet", "path", "ControlNet: a diffusers ControlNetModel folder or an original single file (control_v11*);\nrepeatable, the --control-* flags after it apply to it (default: none)",
		func(s string) error {
			*list = append(*list, &controlOptions{path: s, scale: 1, end: 1, preprocess: "none", low: control.CannyLow, high: control.CannyHigh})
			return nil
		})
	fs.funcVar("control-image", "path", "the ControlNet's control image, PNG or JPEG, resized to the output (no default: required)",
		func(s string) error {
			c, err := latest("control-image")
			if err == nil {
				c.image = s
			}
			return err
		})
	fraction := func(flag string, set func(*controlOptions, float64)) func(string) error {
		return func(s string) error {
			c, err := latest(flag)
			if err != nil {
				return err
			}
			v, err := strconv.ParseFloat(s, 64)
			if err != nil || !(v >= 0 && v <= 1) {
				return errors.New("want a number in [0, 1]")
			}
			set(c, v)
			return nil
		}
	}
	fs.funcVar("control-scale", "x", "conditioning scale of the ControlNet, >= 0; 0 leaves it out (default 1.0)", func(s string) error {
		c, err := latest("control-scale")
		if err != nil {
			return err
		}
		v, err := strconv.ParseFloat(s, 64)
		if err != nil || !(v >= 0 && v <= 100) {
			return errors.New("want a number in [0, 100]")
		}
		c.scale = v
		return nil
	})
	fs.funcVar("control-start", "x", "fraction of the steps after which the ControlNet starts acting (default 0)",
		fraction("control-start", func(c *controlOptions, v float64) { c.start = v }))
	fs.funcVar("control-end", "x", "fraction of the steps after which it stops acting (default 1)",
		fraction("control-end", func(c *controlOptions, v float64) { c.end = v }))
	fs.BoolFunc("guess-mode", "", func(s string) error {
		c, err := latest("guess-mode")
		if err != nil {
			return err
		}
		if c.guess, err = strconv.ParseBool(s); err != nil {
			return errors.New("want true or false")
		}
		return nil
	})
	fs.document("guess-mode", "", "guess mode: the ControlNet sees the prompt's half of the guidance batch only\n(default off)")
	fs.funcVar("control-preprocess", "NAME", "make the control image from the picture: none, canny (edges), invert\n(white-background line art to the white-on-black maps models take) or inpaint (inpaint only:\nthe inpainting ControlNet's condition from -i and the mask; no --control-image) (default none)",
		func(s string) error {
			c, err := latest("control-preprocess")
			if err != nil {
				return err
			}
			switch s {
			case "none", "canny", "invert", "inpaint":
				c.preprocess = s
				return nil
			}
			return errors.New("want none, canny, invert or inpaint")
		})
	fs.funcVar("canny", "LOW,HIGH", "thresholds of --control-preprocess canny (default 100,200)", func(s string) error {
		c, err := latest("canny")
		if err != nil {
			return err
		}
		c.low, c.high, err = parseThresholds(s)
		c.cannySet = true
		return err
	})
}

// checkControls validates what the flags cannot check one by one.
func checkControls(list []*controlOptions, m mode) error {
	for _, c := range list {
		switch {
		case c.preprocess == "inpaint" && m != modeInpaint:
			return usagef("--controlnet %s: --control-preprocess inpaint is for sdcli inpaint", c.path)
		case c.preprocess == "inpaint" && c.image != "":
			return usagef("--controlnet %s: --control-preprocess inpaint makes the control image from -i and the mask: drop --control-image", c.path)
		case c.image == "" && c.preprocess != "inpaint":
			return usagef("--controlnet %s needs --control-image", c.path)
		case c.start >= c.end:
			return usagef("--controlnet %s: --control-start %g must be below --control-end %g", c.path, c.start, c.end)
		case c.cannySet && c.preprocess != "canny":
			return usagef("--controlnet %s: --canny is for --control-preprocess canny", c.path)
		}
	}
	return nil
}

// loadControls loads the ControlNets (each path once) and reads and preprocesses their
// images; initImg and mask (or nil) are inpainting's, for the inpaint preprocessor, and
// w, h the requested size (0: the image's). The caller closes the ControlNets returned.
func loadControls(p *diffusion.Pipeline, list []*controlOptions, initImg, mask image.Image, w, h int) ([]diffusion.Control, []*diffusion.ControlNet, error) {
	var out []diffusion.Control
	var nets []*diffusion.ControlNet
	loaded := map[string]*diffusion.ControlNet{}
	for _, c := range list {
		cn := loaded[c.path]
		if cn == nil {
			var err error
			if cn, err = p.LoadControlNet(c.path); err != nil {
				return nil, nets, err
			}
			loaded[c.path] = cn
			nets = append(nets, cn)
		}
		ctl := diffusion.Control{Model: cn, Scale: c.scale, Start: c.start, End: c.end, GuessMode: c.guess}
		if c.preprocess == "inpaint" {
			cond, cw, ch, err := control.InpaintCondition(initImg, mask)
			if err != nil {
				return nil, nets, err
			}
			// The condition is not resized (as diffusers' make_inpaint_condition): the
			// output must be the image's size.
			if cw%8 != 0 || ch%8 != 0 || (w != 0 && w != cw) || (h != 0 && h != ch) {
				return nil, nets, fmt.Errorf("--control-preprocess inpaint: the image is %dx%d; it needs an output of the image's size, a multiple of 8", cw, ch)
			}
			ctl.Condition, ctl.Preprocessor = cond, "inpaint_only"
			if c.scale != 0 {
				out = append(out, ctl)
			}
			continue
		}
		img, err := readImage(c.image)
		if err != nil {
			return nil, nets, err
		}
		switch c.preprocess {
		case "canny":
			img = control.Canny(img, c.low, c.high)
			ctl.Preprocessor, ctl.PreprocessorParams = "canny", []float64{float64(c.low), float64(c.high)}
		case "invert":
			img = control.Invert(img)
			ctl.Preprocessor = "invert"
		}
		if c.scale == 0 {
			// Residuals scaled by 0 change nothing (the API reads 0 as its default 1).
			continue
		}
		ctl.Image = img
		out = append(out, ctl)
	}
	return out, nets, nil
}

// benchControlImage is a w x h control image with structure at every scale (concentric
// rings), so that a benchmark's ControlNet sees edges as it would in use.
func benchControlImage(w, h int) image.Image {
	img := image.NewGray(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			dx, dy := x-w/2, y-h/2
			if (dx*dx+dy*dy)/64%2 == 0 {
				img.Pix[y*img.Stride+x] = 255
			}
		}
	}
	return img
}

// ensureRandomControlNet returns path holding a random ControlNet for a UNet of config u
// (lllyasviel's hint embedding, the original single-file layout), writing it first when
// it is missing: to a temporary file renamed to path once complete.
func ensureRandomControlNet(ctx context.Context, path string, u modelfile.UNetConfig, log io.Writer) (string, error) {
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", err
	}
	cfg := modelfile.SD15ControlNetConfig()
	cfg.UNetConfig = u
	tmp := path + fmt.Sprintf(".%d.tmp", os.Getpid())
	defer os.Remove(tmp) // gone already once renamed
	fmt.Fprintf(log, "writing a random %s ControlNet to %s (once; later runs reuse it)\n", benchDType, path)
	if err := modelfile.WriteRandomControlNet(ctx, tmp, cfg, benchDType, benchSeed); err != nil {
		return "", fmt.Errorf("writing a random ControlNet: %w", err)
	}
	return path, os.Rename(tmp, path)
}

package server

import (
	"cmp"
	"encoding/json"
	"fmt"
	"image"
	"io/fs"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/gosd/gosd/diffusion"
	"github.com/gosd/gosd/diffusion/control"
)

// controlUnit is one ControlNet of a request, resolved to a file of Config.ControlNetDir
// and a control image ready for the model; the worker loads the model (once per loaded
// base model) and makes the diffusion.Control.
type controlUnit struct {
	name, path         string
	image              image.Image
	scale, start, end  float64
	preprocessor       string
	preprocessorParams []float64
}

// controlNetExtensions are the single-file ControlNets a ControlNet folder is searched for.
var controlNetExtensions = []string{".safetensors", ".pth", ".ckpt"}

// listControlNets maps the names of the ControlNets under dir (and its subfolders) to
// their paths: diffusers ControlNet folders (a config.json naming ControlNetModel) by
// folder name, single files by base name without extension. A name found twice is an
// error, as a request naming it would be ambiguous.
func listControlNets(dir string) (map[string]string, error) {
	out := map[string]string{}
	add := func(name, path string) error {
		if prev, dup := out[name]; dup {
			return fmt.Errorf("two ControlNets are named %q: %s and %s", name, prev, path)
		}
		out[name] = path
		return nil
	}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		isDir := d.IsDir()
		if d.Type()&fs.ModeSymlink != 0 { // a linked model folder (not walked into)
			st, err := os.Stat(path)
			isDir = err == nil && st.IsDir()
		}
		if isDir {
			if path != dir && isDiffusersControlNet(path) {
				if err := add(d.Name(), path); err != nil {
					return err
				}
				if d.IsDir() {
					return filepath.SkipDir // its weights are not models of their own
				}
			}
			return nil
		}
		ext := filepath.Ext(path)
		if slices.ContainsFunc(controlNetExtensions, func(e string) bool { return strings.EqualFold(e, ext) }) {
			return add(strings.TrimSuffix(d.Name(), ext), path)
		}
		return nil
	})
	return out, err
}

func isDiffusersControlNet(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return false
	}
	var c struct {
		Class string `json:"_class_name"`
	}
	return json.Unmarshal(b, &c) == nil && c.Class == "ControlNetModel"
}

// a1111ControlModules are the ControlNet extension's preprocessor ("module") names this
// server runs, and the control.* function each stands for.
var a1111ControlModules = map[string]string{
	"none": "", "canny": "canny", "invert": "invert", "invert (from white bg & black line)": "invert",
}

// a1111ControlUnit is one entry of alwayson_scripts.controlnet.args, as the ControlNet
// extension's API takes it.
type a1111ControlUnit struct {
	Enabled       *bool    `json:"enabled"`
	Module        string   `json:"module"`
	Model         string   `json:"model"`
	Weight        *float64 `json:"weight"`
	Image         any      `json:"image"` // base64, or {"image": base64, "mask": ...}
	InputImage    any      `json:"input_image"`
	ResizeMode    any      `json:"resize_mode"`
	GuidanceStart float64  `json:"guidance_start"`
	GuidanceEnd   *float64 `json:"guidance_end"`
	ControlMode   any      `json:"control_mode"`
	ThresholdA    *float64 `json:"threshold_a"`
	ThresholdB    *float64 `json:"threshold_b"`
}

// a1111Controls reads alwayson_scripts.controlnet (the ControlNet extension's units): the
// enabled units with a model become controls; init is img2img's image, the control image
// of a unit without one, as the extension does. width and height are the output's size
// (0: the model's native one) for the resize check.
func (s *Server) a1111Controls(scripts map[string]any, init image.Image, width, height int) ([]controlUnit, error) {
	const field = "alwayson_scripts"
	var args any
	for k, v := range scripts {
		m, ok := v.(map[string]any)
		if !ok {
			return nil, badRequest(field, "%s: want an object with args", k)
		}
		if strings.EqualFold(k, "controlnet") {
			args = m["args"]
			continue
		}
		if list, _ := m["args"].([]any); len(list) > 0 { // clients list idle scripts with no args
			return nil, badRequest(field, "script %q is not supported by this server (only controlnet)", k)
		}
	}
	raw, err := json.Marshal(args)
	if err != nil {
		return nil, badRequest(field, "controlnet args: %v", err)
	}
	var units []a1111ControlUnit
	if args != nil {
		if err := json.Unmarshal(raw, &units); err != nil {
			return nil, badRequest(field, "controlnet args: want a list of units: %v", err)
		}
	}
	var out []controlUnit
	var models map[string]string // listed once, for the first enabled unit
	for i, u := range units {
		name := strings.TrimSpace(u.Model)
		if k := strings.LastIndex(name, " ["); k > 0 && strings.HasSuffix(name, "]") {
			name = name[:k] // "control_v11p_sd15_canny [d14c016b]": the hash is informative
		}
		if (u.Enabled != nil && !*u.Enabled) || name == "" || name == "None" {
			continue
		}
		if s.cfg.ControlNetDir == "" {
			return nil, badRequest(field, "controlnet unit %d: this server has no ControlNet folder", i)
		}
		if models == nil {
			if models, err = s.controlNetFiles(); err != nil {
				return nil, err
			}
		}
		path, ok := models[name]
		if !ok {
			return nil, badRequest(field, "controlnet unit %d: no ControlNet %q (GET /controlnet/model_list lists them)", i, u.Model)
		}
		cu := controlUnit{name: name, path: path, scale: 1, start: u.GuidanceStart, end: 1}
		if u.Weight != nil {
			cu.scale = *u.Weight
		}
		if u.GuidanceEnd != nil {
			cu.end = *u.GuidanceEnd
		}
		switch {
		case !(cu.scale >= 0 && cu.scale <= 2):
			return nil, badRequest(field, "controlnet unit %d: weight %v: want between 0 and 2", i, cu.scale)
		case !(cu.start >= 0 && cu.start < cu.end && cu.end <= 1):
			return nil, badRequest(field, "controlnet unit %d: guidance_start %v and guidance_end %v: want 0 <= start < end <= 1", i, cu.start, cu.end)
		}
		if mode := fmt.Sprint(u.ControlMode); u.ControlMode != nil && mode != "0" && mode != "Balanced" {
			return nil, badRequest(field, "controlnet unit %d: control_mode %v is not supported by this server (only Balanced)", i, u.ControlMode)
		}
		img := init
		for _, v := range []any{u.Image, u.InputImage} {
			if m, ok := v.(map[string]any); ok {
				v = m["image"]
			}
			if b64, ok := v.(string); ok && b64 != "" {
				if img, _, err = decodeBase64Image(b64, field); err != nil {
					return nil, badRequest(field, "controlnet unit %d: image: %v", i, err)
				}
				break
			}
		}
		if img == nil {
			return nil, badRequest(field, "controlnet unit %d: no image", i)
		}
		if b := img.Bounds(); b.Dx() > 4*s.cfg.MaxSize || b.Dy() > 4*s.cfg.MaxSize {
			return nil, badRequest(field, "controlnet unit %d: the image is %dx%d, over 4 times this server's size limit", i, b.Dx(), b.Dy())
		}
		if err := s.checkControlResize(u.ResizeMode, img, width, height); err != nil {
			return nil, badRequest(field, "controlnet unit %d: %v", i, err)
		}
		module, ok := a1111ControlModules[strings.ToLower(strings.TrimSpace(u.Module))]
		if !ok && u.Module != "" {
			return nil, badRequest(field, "controlnet unit %d: module %q is not supported by this server (GET /controlnet/module_list lists them)", i, u.Module)
		}
		switch module {
		case "canny":
			low, high := float64(control.CannyLow), float64(control.CannyHigh)
			if u.ThresholdA != nil && *u.ThresholdA >= 0 {
				low = *u.ThresholdA
			}
			if u.ThresholdB != nil && *u.ThresholdB >= 0 {
				high = *u.ThresholdB
			}
			if low > 2040 || high > 2040 || low != math.Trunc(low) || high != math.Trunc(high) {
				return nil, badRequest(field, "controlnet unit %d: canny thresholds %v, %v: want integers from 0 to 2040", i, low, high)
			}
			cu.image = control.Canny(img, int(low), int(high))
			cu.preprocessor, cu.preprocessorParams = "canny", []float64{low, high}
		case "invert":
			cu.image, cu.preprocessor = control.Invert(img), "invert"
		default:
			cu.image = img
		}
		out = append(out, cu)
	}
	return out, nil
}

// checkControlResize accepts the extension's resize modes that the runtime's stretch to
// the output size reproduces: "Just Resize" always, "Crop and Resize" (the extension's
// default) and "Resize and Fill" when the image has the output's aspect ratio.
func (s *Server) checkControlResize(mode any, img image.Image, width, height int) error {
	m := fmt.Sprint(mode)
	if mode == nil || m == "0" || m == "Just Resize" {
		return nil
	}
	if m != "1" && m != "2" && m != "Crop and Resize" && m != "Resize and Fill" {
		return fmt.Errorf("resize_mode %v: want Just Resize, Crop and Resize or Resize and Fill", mode)
	}
	_, info, _ := s.pool.current()
	w, h := cmp.Or(width, info.Width), cmp.Or(height, info.Height)
	b := img.Bounds()
	if w > 0 && h > 0 && b.Dx()*h != b.Dy()*w {
		return fmt.Errorf("resize_mode %v with a %dx%d image for a %dx%d output is not supported by this server: give an image of the output's aspect ratio, or resize_mode Just Resize", mode, b.Dx(), b.Dy(), w, h)
	}
	return nil
}

// controls makes the request's Controls with pl's ControlNets (loaded once per loaded
// model and shared by its pipelines); call it inside pool.with.
func (p *pool) controls(pl *diffusion.Pipeline, units []controlUnit) ([]diffusion.Control, error) {
	var out []diffusion.Control
	for _, u := range units {
		cn, err := p.controlNet(pl, u.path)
		if err != nil {
			return nil, fmt.Errorf("ControlNet %s: %w", u.name, err)
		}
		out = append(out, diffusion.Control{Model: cn, Image: u.image, Scale: u.scale, Start: u.start, End: u.end,
			Preprocessor: u.preprocessor, PreprocessorParams: u.preprocessorParams})
	}
	return out, nil
}

// controlNetFiles lists Config.ControlNetDir (see listControlNets); its errors are the
// server's, not the request's.
func (s *Server) controlNetFiles() (map[string]string, error) {
	models, err := listControlNets(s.cfg.ControlNetDir)
	if err != nil {
		return nil, fmt.Errorf("listing the ControlNet folder %s: %w", s.cfg.ControlNetDir, err)
	}
	return models, nil
}

func (s *Server) handleControlNetModels(w http.ResponseWriter, r *http.Request) {
	names := []string{}
	if s.cfg.ControlNetDir != "" {
		models, err := s.controlNetFiles()
		if err != nil {
			writeError(w, r, err)
			return
		}
		for name := range models {
			names = append(names, name)
		}
		slices.Sort(names)
	}
	writeJSON(w, http.StatusOK, map[string]any{"model_list": names})
}

func (s *Server) handleControlNetModules(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"module_list": []string{"none", "canny", "invert (from white bg & black line)"}})
}

package lora

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/gosd/gosd/diffusion/modelfile"
	"github.com/gosd/gosd/internal/sderr"
)

// Components an adapter can target, named as the diffusers folders are.
const (
	UNet         = "unet"
	TextEncoder  = "text_encoder"
	TextEncoder2 = "text_encoder_2"
)

// ErrMismatch marks an adapter that does not fit the model it is applied
// to: a module the model lacks, a shape the model's weight contradicts, a
// component the model does not have. It is what an adapter made for another
// base model (SDXL keys on an SD 1.5 model) gives.
var ErrMismatch = errors.New("adapter does not fit the model")

// Kind is the algorithm of one adapted module.
type Kind uint8

// Kinds of modules.
const (
	LoRA Kind = iota + 1 // up @ down, LoCon for convolutions
	LoHa                 // Hadamard product of two low-rank products
	LoKr                 // Kronecker product
)

// String names the kind as LyCORIS does.
func (k Kind) String() string {
	switch k {
	case LoRA:
		return "lora"
	case LoHa:
		return "loha"
	case LoKr:
		return "lokr"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Module is one adapted layer of a File.
type Module struct {
	// Component is UNet, TextEncoder or TextEncoder2.
	Component string
	// Key is the module's key in the file without its suffix
	// ("lora_unet_mid_block_resnets_0_conv1", "unet.mid_block.resnets.0.conv1").
	Key string
	// Path is the module path inside its component: dotted for PEFT keys; for
	// kohya keys the "_"-joined form, resolved against the model by Apply.
	Path     string
	Kind     Kind
	Alpha    float64 // meaningful when HasAlpha
	HasAlpha bool
	// DoRA reports a weight-decomposition magnitude vector.
	DoRA bool

	kohya   bool
	tensors map[string]modelfile.Tensor // by suffix ("lora_down.weight", "hada_w1_a", ...)
}

// File is a loaded adapter. Its tensors view the mapped file: keep the File
// open while patches are being computed; the patched tensors Apply returns
// are independent copies.
type File struct {
	Path    string
	Modules []*Module // sorted by component, then key

	f *modelfile.File
}

// suffixes lists every key suffix this package reads, with the kind it
// implies (0 for those any kind may carry).
var suffixes = []struct {
	name string
	kind Kind
}{
	{"lora_down.weight", LoRA}, {"lora_up.weight", LoRA}, {"lora_mid.weight", LoRA},
	{"lora_A.weight", LoRA}, {"lora_B.weight", LoRA},
	{"hada_w1_a", LoHa}, {"hada_w1_b", LoHa}, {"hada_w2_a", LoHa}, {"hada_w2_b", LoHa},
	{"hada_t1", LoHa}, {"hada_t2", LoHa},
	{"lokr_w1", LoKr}, {"lokr_w1_a", LoKr}, {"lokr_w1_b", LoKr},
	{"lokr_w2", LoKr}, {"lokr_w2_a", LoKr}, {"lokr_w2_b", LoKr}, {"lokr_t2", LoKr},
	{"alpha", 0}, {"dora_scale", 0}, {"lora_magnitude_vector", 0}, {"lora_magnitude_vector.weight", 0},
}

// kohyaPrefixes maps the kohya-style key prefixes to components.
var kohyaPrefixes = []struct{ prefix, component string }{
	{"lora_unet_", UNet},
	{"lora_te1_", TextEncoder},
	{"lora_te2_", TextEncoder2},
	{"lora_te_", TextEncoder},
}

// Load opens an adapter file (.safetensors, .pt, .ckpt) and groups its
// tensors into modules. Keys of no known format are an error naming them;
// matching the modules with a model is Apply's part.
func Load(path string) (*File, error) {
	mf, err := modelfile.OpenFile(path)
	if err != nil {
		return nil, err
	}
	lf, err := parse(path, mf.Tensors)
	if err != nil {
		mf.Close()
		return nil, err
	}
	lf.f = mf
	return lf, nil
}

// Close unmaps the file; its modules are unusable afterwards.
func (f *File) Close() error {
	if f.f == nil {
		return nil
	}
	err := f.f.Close()
	f.f = nil
	return err
}

// Components lists the components the file has modules for, in the order
// UNet, TextEncoder, TextEncoder2.
func (f *File) Components() []string {
	var out []string
	for _, c := range []string{UNet, TextEncoder, TextEncoder2} {
		if slices.ContainsFunc(f.Modules, func(m *Module) bool { return m.Component == c }) {
			out = append(out, c)
		}
	}
	return out
}

// CheckComponents fails with ErrMismatch when the file adapts a component
// not among have: a second text encoder's modules on a model with one
// (an SDXL adapter on SD 1.5) would otherwise be silently dropped.
func (f *File) CheckComponents(have ...string) error {
	for _, c := range f.Components() {
		if !slices.Contains(have, c) {
			var keys []string
			for _, m := range f.Modules {
				if m.Component == c {
					keys = append(keys, m.Key)
				}
			}
			return fmt.Errorf("%w: %s adapts %s, which the model does not have (%d modules, e.g. %s)",
				ErrMismatch, f.Path, c, len(keys), keys[0])
		}
	}
	return nil
}

func badf(format string, args ...any) error {
	return sderr.Mark(modelfile.ErrBadModel, fmt.Errorf(format, args...))
}

func unsupportedf(format string, args ...any) error {
	return sderr.Mark(modelfile.ErrUnsupported, fmt.Errorf(format, args...))
}

// parse groups tensors into modules and checks that each module has a
// complete, consistent set of tensors for its kind.
func parse(path string, tensors []modelfile.Tensor) (*File, error) {
	byKey := map[string]*Module{}
	var unknown []string
	for _, t := range tensors {
		key, suffix, ok := splitSuffix(t.Name)
		if !ok {
			unknown = append(unknown, t.Name)
			continue
		}
		m := byKey[key]
		if m == nil {
			comp, p, kohya, ok := splitComponent(key)
			if !ok {
				unknown = append(unknown, t.Name)
				continue
			}
			m = &Module{Component: comp, Key: key, Path: p, kohya: kohya, tensors: map[string]modelfile.Tensor{}}
			byKey[key] = m
		}
		m.tensors[suffix] = t
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return nil, unsupportedf("%s: %d keys of no known adapter format: %s", path, len(unknown), list(unknown))
	}
	if len(byKey) == 0 {
		return nil, badf("%s: no adapter tensors", path)
	}
	f := &File{Path: path}
	for _, m := range byKey {
		if err := m.classify(); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		f.Modules = append(f.Modules, m)
	}
	slices.SortFunc(f.Modules, func(a, b *Module) int {
		return strings.Compare(a.Component+"\x00"+a.Key, b.Component+"\x00"+b.Key)
	})
	return f, nil
}

// splitSuffix splits a tensor name into module key and a known suffix; the
// longest matching suffix wins ("lora_magnitude_vector.weight").
func splitSuffix(name string) (key, suffix string, ok bool) {
	for _, s := range suffixes {
		if strings.HasSuffix(name, "."+s.name) && len(s.name) > len(suffix) {
			key, suffix, ok = strings.TrimSuffix(name, "."+s.name), s.name, true
		}
	}
	return key, suffix, ok && key != ""
}

// splitComponent finds the component of a module key and the path inside it.
func splitComponent(key string) (component, path string, kohya, ok bool) {
	for _, p := range kohyaPrefixes {
		if rest, found := strings.CutPrefix(key, p.prefix); found && rest != "" {
			return p.component, rest, true, true
		}
	}
	if strings.HasPrefix(key, "lora_") {
		return "", "", false, false // another kohya prefix (lora_prior_unet_, ...)
	}
	key = strings.TrimPrefix(key, "base_model.model.")
	for _, c := range []string{UNet, TextEncoder2, TextEncoder} {
		if rest, found := strings.CutPrefix(key, c+"."); found && rest != "" {
			return c, rest, false, true
		}
	}
	if strings.HasPrefix(key, "text_model.") {
		return TextEncoder, key, false, true
	}
	return UNet, key, false, true
}

// classify sets the module's kind and alpha and checks its tensor set.
func (m *Module) classify() error {
	for suffix, t := range m.tensors {
		if !t.DType.IsFloat() {
			return badf("%s.%s has dtype %s; adapters hold float tensors", m.Key, suffix, t.DType)
		}
		for _, s := range suffixes {
			if s.name != suffix || s.kind == 0 {
				continue
			}
			if m.Kind != 0 && m.Kind != s.kind {
				return badf("module %s mixes %s and %s tensors", m.Key, m.Kind, s.kind)
			}
			m.Kind = s.kind
		}
	}
	if m.Kind == 0 {
		return badf("module %s has only %s, no weights", m.Key, strings.Join(sortedKeys(m.tensors), ", "))
	}
	if a, ok := m.tensors["alpha"]; ok {
		v, err := a.Float32s()
		if err != nil || len(v) != 1 {
			return badf("module %s: alpha is %v, want one value", m.Key, a.Shape)
		}
		m.Alpha, m.HasAlpha = float64(v[0]), true
	}
	_, m.DoRA = m.magnitude()
	need := map[Kind][][]string{
		// Each inner list is a set of alternatives; one of them must be there.
		LoRA: {{"lora_down.weight", "lora_A.weight"}, {"lora_up.weight", "lora_B.weight"}},
		LoHa: {{"hada_w1_a"}, {"hada_w1_b"}, {"hada_w2_a"}, {"hada_w2_b"}},
		LoKr: {{"lokr_w1", "lokr_w1_a"}, {"lokr_w2", "lokr_w2_a"}},
	}[m.Kind]
	for _, alts := range need {
		n := 0
		for _, a := range alts {
			if _, ok := m.tensors[a]; ok {
				n++
			}
		}
		if n != 1 {
			return badf("module %s (%s) needs exactly one of %s, has %s", m.Key, m.Kind, strings.Join(alts, ", "), strings.Join(sortedKeys(m.tensors), ", "))
		}
	}
	pairs := [][2]string{{"lokr_w1_a", "lokr_w1_b"}, {"lokr_w2_a", "lokr_w2_b"}}
	for _, p := range pairs {
		_, a := m.tensors[p[0]]
		_, b := m.tensors[p[1]]
		if a != b {
			return badf("module %s has one of %s and %s without the other", m.Key, p[0], p[1])
		}
	}
	if _, t := m.tensors["lokr_t2"]; t {
		if _, a := m.tensors["lokr_w2_a"]; !a {
			return badf("module %s has lokr_t2 without lokr_w2_a/b", m.Key)
		}
	}
	_, t1 := m.tensors["hada_t1"]
	_, t2 := m.tensors["hada_t2"]
	if t1 != t2 {
		return badf("module %s has only one of hada_t1 and hada_t2", m.Key)
	}
	return nil
}

// magnitude returns the DoRA magnitude tensor, if any.
func (m *Module) magnitude() (modelfile.Tensor, bool) {
	for _, s := range []string{"dora_scale", "lora_magnitude_vector", "lora_magnitude_vector.weight"} {
		if t, ok := m.tensors[s]; ok {
			return t, true
		}
	}
	return modelfile.Tensor{}, false
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

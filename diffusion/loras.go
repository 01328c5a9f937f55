package diffusion

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	"github.com/gosd/gosd/binding"
	"github.com/gosd/gosd/diffusion/lora"
	"github.com/gosd/gosd/diffusion/modelfile"
)

// LoRA is an adapter (LoRA, LoCon, LoHa, LoKr, DoRA; kohya / AUTOMATIC1111 or diffusers /
// PEFT keys; .safetensors, .pt, .ckpt) merged into the model's weights for a request.
type LoRA struct {
	Path string
	// Scale multiplies the adapter's update of both networks; 0 means 1 (AUTOMATIC1111's
	// default multiplier). To leave an adapter out, leave it out of the list.
	Scale float64
	// UNetScale and TextScale, when set, replace Scale for the UNet or the text encoder
	// (AUTOMATIC1111's unet and te multipliers); 0 there leaves that network unpatched.
	UNetScale, TextScale *float64
}

// scales are the resolved multipliers of the UNet and the text encoder.
func (l LoRA) scales() (unet, text float64) {
	s := l.Scale
	if s == 0 {
		s = 1
	}
	unet, text = s, s
	if l.UNetScale != nil {
		unet = *l.UNetScale
	}
	if l.TextScale != nil {
		text = *l.TextScale
	}
	return unet, text
}

// AppliedLoRA is an adapter a generation ran with, as Params reports it.
type AppliedLoRA struct {
	// Name is the file's base name without extension, AUTOMATIC1111's network name.
	Name string
	Path string
	// Hash is AUTOMATIC1111's short hash of the file (12 hex digits; for .safetensors
	// the SHA-256 of everything after the header, else of the whole file).
	Hash                 string
	UNetScale, TextScale float64
}

// checkLoRAs validates what a request can be checked for before its turn: paths given,
// scales finite.
func checkLoRAs(ls []LoRA) error {
	for i, l := range ls {
		u, t := l.scales()
		switch {
		case l.Path == "":
			return invalid("LoRA %d has no path", i)
		case math.IsNaN(u) || math.IsInf(u, 0) || math.IsNaN(t) || math.IsInf(t, 0):
			return invalid("LoRA %s: scales must be finite (unet %v, text %v)", l.Path, u, t)
		}
	}
	return nil
}

// loraKey identifies a set of adapters at their scales: the weights are only patched
// again when the key changes (so a file rewritten on disk under the same path is read
// again only after a request with another set).
func loraKey(ls []LoRA) string {
	var b strings.Builder
	for _, l := range ls {
		u, t := l.scales()
		if u == 0 && t == 0 {
			continue
		}
		abs, err := filepath.Abs(l.Path)
		if err != nil {
			abs = l.Path
		}
		fmt.Fprintf(&b, "%q %s %s\n", abs, strconv.FormatFloat(u, 'g', -1, 64), strconv.FormatFloat(t, 'g', -1, 64))
	}
	return b.String()
}

// loraState is the adapter set merged into the weights of one share group's networks:
// the weights are a property of the loaded model, so every Pipeline of the share (see
// Clone) runs with the set the last switch installed. Generations hold mu for reading
// while they run with the installed set; a generation that needs another set takes mu
// for writing, which waits for every running generation of the share, patches, and runs
// under the write lock (so that it cannot be switched away before its turn).
type loraState struct {
	mu sync.RWMutex
	// key is the installed set (loraKey; "" for the base weights). broken marks a switch
	// that failed after it began to change the weights: they are a mix of two sets until
	// the next switch rewrites every weight of patched.
	key    string
	broken bool
	// patched names, per network, the weights that may hold other values than the
	// model's files, with the float32 memory the runtime reads for those it reads in
	// place (a hostBuffer, freed when the weight is replaced); an empty one for those it
	// copied (a CPU GEMM pack, a device upload).
	patched map[string]map[string]hostBuffer
	// stale is memory the runtime may still read after a failed replacement.
	stale   []hostBuffer
	applied []AppliedLoRA
	hashes  map[string]string // short hashes by path
}

// unpin releases the patches' memory; the networks must be freed or no longer read it.
func (s *loraState) unpin() {
	for _, ws := range s.patched {
		for _, b := range ws {
			b.free()
		}
	}
	for _, b := range s.stale {
		b.free()
	}
	s.patched, s.stale = nil, nil
}

// withLoRAs runs call with the engine's networks holding the adapter set ls, switching
// the share's weights when they hold another set. It returns what was applied.
func (p *Pipeline) withLoRAs(ls []LoRA, call func(applied []AppliedLoRA) error) error {
	s := &p.eng.share.lora
	want := loraKey(ls)
	s.mu.RLock()
	if s.key == want && !s.broken {
		defer s.mu.RUnlock()
		return call(s.applied)
	}
	s.mu.RUnlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.key != want || s.broken {
		if err := p.switchLoRAs(s, ls, want); err != nil {
			return err
		}
	}
	return call(s.applied)
}

// switchLoRAs installs the set ls (key want) in place of the installed one: it merges the
// new set into the base weights (float32, see merger), puts back the base values of the
// weights only the old set patched, and replaces exactly those in the native networks (a
// repack of the GEMM weights on the CPU, an upload on the GPU). The caller holds s.mu for
// writing.
func (p *Pipeline) switchLoRAs(s *loraState, ls []LoRA, want string) error {
	var files []*lora.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	type net struct {
		component string
		base      map[string]modelfile.Tensor
		model     binding.Model
		text      bool // patched at the text scale
		alias     func(string) string
	}
	// kohya's SDXL trainer names UNet modules as the original checkpoint does
	// (input_blocks.4.1...), SD 1.x trainers as diffusers does: both match. SDXL's
	// adapters also patch the second text encoder (kohya's lora_te2_, PEFT's
	// text_encoder_2.).
	nets := []net{
		{lora.UNet, p.model.UNet.Tensors, p.eng.unet, false, p.model.UNet.Config.LDMNames()},
		{lora.TextEncoder, p.model.TextEncoder.Tensors, p.eng.clip, true, nil},
	}
	if p.eng.clip2 != 0 {
		nets = append(nets, net{lora.TextEncoder2, p.model.ExtraTextEncoders[0].Tensors, p.eng.clip2, true, nil})
	}
	components := make([]string, len(nets))
	for i, n := range nets {
		components[i] = n.component
	}
	var applied []AppliedLoRA
	var unetSet, textSet []lora.Scaled
	for _, l := range ls {
		u, t := l.scales()
		if u == 0 && t == 0 {
			continue
		}
		f, err := lora.Load(l.Path)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return invalid("LoRA %s: %v", l.Path, err)
			}
			return err
		}
		files = append(files, f)
		if err := f.CheckComponents(components...); err != nil {
			return err
		}
		if u != 0 {
			unetSet = append(unetSet, lora.Scaled{File: f, Scale: u})
		}
		if t != 0 {
			textSet = append(textSet, lora.Scaled{File: f, Scale: t})
		}
		hash, err := s.shortHash(l.Path)
		if err != nil {
			return err
		}
		name := strings.TrimSuffix(filepath.Base(l.Path), filepath.Ext(l.Path))
		applied = append(applied, AppliedLoRA{Name: name, Path: l.Path, Hash: hash, UNetScale: u, TextScale: t})
	}
	// Match everything, and ask the runtime whether it can replace every weight (and
	// which it copies), before touching the networks: a misfit fails with them unchanged.
	plans := make([][]lora.Patch, len(nets))
	copies := make([]map[string]bool, len(nets))
	for i, n := range nets {
		set := unetSet
		if n.text {
			set = textSet
		}
		if len(set) == 0 {
			continue
		}
		var err error
		if plans[i], err = lora.PlanAliased(n.base, n.alias, n.component, set...); err != nil {
			return err
		}
		copies[i] = map[string]bool{}
		for _, pt := range plans[i] {
			if copies[i][pt.Weight], err = p.eng.lib.ModelWeightCopied(p.eng.ctx, n.model, pt.Weight, binding.F32); err != nil {
				return fmt.Errorf("LoRA: %w", err)
			}
		}
	}
	// From here on a failure (out of memory) leaves the weights a mix of both sets, which
	// patched records.
	s.broken = true
	m := p.eng.newMerger()
	defer m.free()
	for i, n := range nets {
		if err := s.install(m, n.model, n.component, n.base, plans[i], copies[i]); err != nil {
			return fmt.Errorf("applying LoRAs: %w", err)
		}
	}
	s.key, s.broken, s.applied = want, false, applied
	return nil
}

// install gives one network the weights of plan, merged one at a time, and the base
// values back to the weights the installed set patched and plan does not, keeping
// s.patched true at every step. The runtime merges what it can where it keeps the weight;
// otherwise a merged weight the runtime copies (copied) passes through the merger's
// staging memory, and one it reads in place gets float32 memory of its own (its previous
// patch's, when it had one).
func (s *loraState) install(m *merger, model binding.Model, component string, base map[string]modelfile.Tensor, plan []lora.Patch, copied map[string]bool) error {
	lib, ctx := m.e.lib, m.e.ctx
	if s.patched == nil {
		s.patched = map[string]map[string]hostBuffer{}
	}
	patched := s.patched[component]
	if patched == nil {
		patched = map[string]hostBuffer{}
		s.patched[component] = patched
	}
	set := func(name string, t modelfile.Tensor) error {
		return lib.ModelSetWeights(ctx, model, []binding.Weight{weightOf(name, t)})
	}
	inPlan := make(map[string]bool, len(plan))
	for _, pt := range plan {
		inPlan[pt.Weight] = true
		t := base[pt.Weight]
		size := 4 * int(numel(t.Shape))
		old, had := patched[pt.Weight]
		var err error
		if failMerge != nil {
			err = failMerge(pt.Weight)
		}
		var fs []lowRank
		if err == nil {
			fs, err = lowRanks(t, pt.Updates)
		}
		resident := false
		if err == nil && residentMerges {
			resident, err = m.mergeResident(model, pt.Weight, t, fs)
		}
		if err != nil {
			return fmt.Errorf("merging LoRAs into %s: %w", pt.Weight, err)
		}
		if resident {
			patched[pt.Weight] = hostBuffer{} // the runtime holds the merged values
			old.free()
			continue
		}
		var dst []byte
		var own hostBuffer // new memory of its own
		inPlace := false
		switch {
		case copied[pt.Weight]:
			dst, err = m.stagingBuffer(size)
		case had && len(old.b) == size:
			dst, inPlace = old.b, true // read by the runtime: overwritten while no generation runs
		default:
			own, err = newHostBuffer(size)
			dst = own.b
		}
		if err != nil {
			return err
		}
		err = m.merge(t, pt.Updates, fs, dst)
		if err != nil {
			own.free()
			return fmt.Errorf("merging LoRAs into %s: %w", pt.Weight, err)
		}
		err = set(pt.Weight, modelfile.Tensor{Name: t.Name, DType: modelfile.F32, Shape: t.Shape, Data: dst})
		if !inPlace {
			patched[pt.Weight] = own // empty when copied
			if err == nil {
				old.free()
			} else {
				// The weight's uses may read the old memory or the new.
				s.stale = append(s.stale, old)
			}
		}
		if err != nil {
			return err
		}
	}
	for name, old := range patched {
		if inPlan[name] {
			continue
		}
		if err := set(name, base[name]); err != nil {
			return err
		}
		delete(patched, name)
		old.free()
	}
	return nil
}

// residentMerges lets the runtime merge low-rank updates where it keeps the weights (tests
// turn it off to compare with the host merge the other backends use).
var residentMerges = true

// failMerge, when tests set it, makes the merge of the weights it returns an error for fail.
var failMerge func(weight string) error

// weightOf describes a tensor for the runtime: base weights view the model's mapped
// files, patched ones a hostBuffer or the merger's staging memory.
func weightOf(name string, t modelfile.Tensor) binding.Weight {
	dt := binding.F32
	switch t.DType {
	case modelfile.F16:
		dt = binding.F16
	case modelfile.BF16:
		dt = binding.BF16
	}
	return binding.Weight{Name: name, DType: dt, Shape: t.Shape, Data: unsafe.Pointer(&t.Data[0])}
}

// shortHash is AUTOMATIC1111's short hash of an adapter file (its "Lora hashes"): the
// first 12 hex digits of the SHA-256 of a .safetensors file's tensor data (what follows
// the 8-byte length and the JSON header; kohya's sd-scripts' "addnet" hash), or of a
// whole other file. Cached by path, size and modification time.
func (s *loraState) shortHash(path string) (string, error) {
	fh, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		return "", err
	}
	key := fmt.Sprintf("%s\x00%d\x00%d", path, st.Size(), st.ModTime().UnixNano())
	if h, ok := s.hashes[key]; ok {
		return h, nil
	}
	if strings.EqualFold(filepath.Ext(path), ".safetensors") {
		var n [8]byte
		if _, err := io.ReadFull(fh, n[:]); err != nil {
			return "", fmt.Errorf("%s: %w", path, err)
		}
		if _, err := fh.Seek(int64(binary.LittleEndian.Uint64(n[:]))+8, io.SeekStart); err != nil {
			return "", fmt.Errorf("%s: %w", path, err)
		}
	}
	h := sha256.New()
	if _, err := io.Copy(h, fh); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	sum := hex.EncodeToString(h.Sum(nil))[:12]
	if s.hashes == nil {
		s.hashes = map[string]string{}
	}
	s.hashes[key] = sum
	return sum, nil
}

// loraHashes is AUTOMATIC1111's "Lora hashes" value: "name: hash" pairs joined by ", "
// (quoted as a whole by A1111's field quoting).
func loraHashes(ls []AppliedLoRA) string {
	parts := make([]string, len(ls))
	for i, l := range ls {
		parts[i] = l.Name + ": " + l.Hash
	}
	return strings.Join(parts, ", ")
}

package lora

import (
	"fmt"
	"math"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/gosd/gosd/diffusion/modelfile"
)

// Scaled is an adapter with the scale to merge it at.
type Scaled struct {
	File  *File
	Scale float64
}

// Apply merges the file's modules for component into targets, the
// component's weights keyed by their diffusers names (a modelfile
// Component's Tensors), at the given scale. See Merge.
func (f *File) Apply(targets map[string]modelfile.Tensor, component string, scale float64) (map[string]modelfile.Tensor, error) {
	return Merge(targets, component, Scaled{f, scale})
}

// Targets names the weights of targets that the file's modules for
// component patch, sorted; it fails like Apply for modules that match no
// weight or whose shapes do not fit. A caller switching adapters between
// requests re-patches the union of the old and new sets and restores the
// rest by dropping their patches.
func (f *File) Targets(targets map[string]modelfile.Tensor, component string) ([]string, error) {
	bs, err := f.resolve(targets, component, nil)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(bs))
	for i, b := range bs {
		names[i] = b.weight
	}
	slices.Sort(names)
	return names, nil
}

// Merge merges several adapters, each at its own scale, into the weights of
// one component and returns new tensors for the patched names only; targets
// and their data are not modified (they usually view a read-only mapping).
// Restoring the model is dropping the patch. The result is in each weight's
// own dtype (F32, F16 or BF16), computed in float64 from the base weight and
// the sum of every adapter's update, rounded once.
//
// Every module of every adapter for component must match a weight of
// targets with a fitting shape, otherwise the error (ErrMismatch) names the
// modules that do not: an adapter for another model is an error, not a
// partial no-op. Modules of other components are ignored; see
// CheckComponents for a component the model lacks.
func Merge(targets map[string]modelfile.Tensor, component string, adapters ...Scaled) (map[string]modelfile.Tensor, error) {
	return MergeAs(0, targets, component, adapters...)
}

// MergeAs is Merge storing the patched weights as dtype (F32, F16 or BF16)
// instead of their own; 0 keeps their own. Rounding a merged weight to
// float16 moves it by up to 2^-11 of its value, which shows in the outputs
// (about 1e-3 of the largest value on the kit's tiny SD 1.5 with its LoRA at
// scale 1); F32 keeps the merge exact for a float32 runtime at twice the
// memory of the patched tensors.
func MergeAs(dtype modelfile.DType, targets map[string]modelfile.Tensor, component string, adapters ...Scaled) (map[string]modelfile.Tensor, error) {
	if dtype != 0 && !dtype.IsFloat() {
		return nil, fmt.Errorf("lora: cannot store patched weights as %s", dtype)
	}
	patches, err := Plan(targets, component, adapters...)
	if err != nil {
		return nil, err
	}
	// Weights are patched in parallel, one per goroutine at a time (so the peak memory
	// is GOMAXPROCS weights' float64 buffers): each is independent of the others.
	results := make([]modelfile.Tensor, len(patches))
	errs := make([]error, len(patches))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(patches)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1) - 1); i < len(patches); i = int(next.Add(1) - 1) {
				results[i], errs[i] = PatchWeight(targets[patches[i].Weight], patches[i].Updates, dtype)
			}
		}()
	}
	wg.Wait()
	out := make(map[string]modelfile.Tensor, len(patches))
	for i, p := range patches {
		if errs[i] != nil {
			return nil, errs[i]
		}
		out[p.Weight] = results[i]
	}
	return out, nil
}

// Patch is one weight an adapter set changes and the updates that change it.
type Patch struct {
	Weight  string // its name in targets
	Updates []Update
}

// Update is one adapter's module applied to a weight at a scale.
type Update struct {
	Module *Module
	Scale  float64
	File   string // the adapter's path, for errors
}

// Plan matches the adapters' modules for component with the weights of targets and
// groups them by weight, sorted by weight name; it fails as Merge does, before any
// update is computed.
func Plan(targets map[string]modelfile.Tensor, component string, adapters ...Scaled) ([]Patch, error) {
	return PlanAliased(targets, nil, component, adapters...)
}

// PlanAliased is Plan for adapters whose modules may also be named by alias
// (see modelfile.UNetConfig.LDMNames): alias maps a module path of targets
// (a weight's name without ".weight") to its other name.
func PlanAliased(targets map[string]modelfile.Tensor, alias func(string) string, component string, adapters ...Scaled) ([]Patch, error) {
	byWeight := map[string][]Update{}
	for _, a := range adapters {
		if a.File.f == nil {
			return nil, fmt.Errorf("lora: %s is closed", a.File.Path)
		}
		bs, err := a.File.resolve(targets, component, alias)
		if err != nil {
			return nil, err
		}
		for _, b := range bs {
			byWeight[b.weight] = append(byWeight[b.weight], Update{b.module, a.Scale, a.File.Path})
		}
	}
	patches := make([]Patch, 0, len(byWeight))
	for _, name := range sortedKeys(byWeight) {
		patches = append(patches, Patch{name, byWeight[name]})
	}
	return patches, nil
}

// PatchWeight computes one weight's merged value from its base t and the updates (in
// float64, rounded once into dtype, or into t's own dtype with 0).
func PatchWeight(t modelfile.Tensor, updates []Update, dtype modelfile.DType) (modelfile.Tensor, error) {
	base, err := floats(t)
	if err != nil {
		return modelfile.Tensor{}, err
	}
	merged := slices.Clone(base)
	for _, u := range updates {
		d, err := u.Module.update(base, t.Shape)
		if err != nil {
			return modelfile.Tensor{}, fmt.Errorf("%s: %w", u.File, err)
		}
		for i, v := range d {
			merged[i] += u.Scale * v
		}
	}
	dt := dtype
	if dt == 0 {
		dt = t.DType
	}
	data, err := encode(merged, dt)
	if err != nil {
		return modelfile.Tensor{}, fmt.Errorf("%s: %w", t.Name, err)
	}
	return modelfile.Tensor{Name: t.Name, DType: dt, Shape: slices.Clone(t.Shape), Data: data}, nil
}

// LowRank returns the update of a plain LoRA or LoCon module (no Tucker core, no DoRA
// magnitude; other modules report false) as two factors, c·ΔW = up @ down with the
// alpha / rank factor c folded into up: up [out, r] and down [r, cols] row-major in
// float32, cols = in·kh·kw. A caller may then compute W + s·up@down with a float32
// GEMM instead of PatchWeight's float64 loops.
func (m *Module) LowRank() (up, down []float32, rank int, ok bool, err error) {
	if _, dora := m.magnitude(); dora || m.Kind != LoRA {
		return nil, nil, 0, false, nil
	}
	if _, mid := m.tensors["lora_mid.weight"]; mid {
		return nil, nil, 0, false, nil
	}
	dn, un := "lora_down.weight", "lora_up.weight"
	if _, peft := m.tensors["lora_A.weight"]; peft {
		dn, un = "lora_A.weight", "lora_B.weight"
	}
	if up, err = m.tensors[un].Float32s(); err != nil {
		return nil, nil, 0, false, err
	}
	if down, err = m.tensors[dn].Float32s(); err != nil {
		return nil, nil, 0, false, err
	}
	_, _, rank, err = m.factors()
	if err != nil {
		return nil, nil, 0, false, err
	}
	if m.HasAlpha && rank > 0 {
		c := float32(m.Alpha / float64(rank))
		for i := range up {
			up[i] *= c
		}
	}
	return up, down, rank, true, nil
}

// binding is a module matched with the weight it adapts.
type binding struct {
	module *Module
	weight string
}

// resolve matches the file's modules for component with weights of targets
// and checks their shapes, reporting every module that does not fit. alias,
// when not nil, gives a second name of a module path of targets (the
// original checkpoint's) that modules may use instead.
func (f *File) resolve(targets map[string]modelfile.Tensor, component string, alias func(string) string) ([]binding, error) {
	aliases := map[string]string{} // alternative module path -> module path of targets
	if alias != nil {
		for name := range targets {
			if p, ok := strings.CutSuffix(name, ".weight"); ok {
				if a := alias(p); a != p {
					aliases[a] = p
				}
			}
		}
	}
	// kohya keys write the module path with "_" for "."; several paths may
	// collapse to one such name, which is then ambiguous (marked by "").
	var underscored map[string]string
	var bs []binding
	var unmatched, misfit []string
	owner := map[string]string{}
	for _, m := range f.Modules {
		if m.Component != component {
			continue
		}
		path := m.Path
		if m.kohya {
			if underscored == nil {
				underscored = map[string]string{}
				add := func(name, p string) {
					u := strings.ReplaceAll(name, ".", "_")
					if q, dup := underscored[u]; dup && q != p {
						underscored[u] = ""
					} else {
						underscored[u] = p
					}
				}
				for name := range targets {
					if p, ok := strings.CutSuffix(name, ".weight"); ok {
						add(p, p)
					}
				}
				for a, p := range aliases {
					add(a, p)
				}
			}
			p, ok := underscored[m.Path]
			if ok && p == "" {
				misfit = append(misfit, fmt.Sprintf("%s (ambiguous: several module paths read %s)", m.Key, m.Path))
				continue
			}
			path = p
		} else if p, ok := aliases[path]; ok {
			if _, own := targets[path+".weight"]; !own {
				path = p
			}
		}
		t, ok := targets[path+".weight"]
		if !ok || path == "" {
			unmatched = append(unmatched, m.Key)
			continue
		}
		if err := m.fits(t.Shape); err != nil {
			misfit = append(misfit, fmt.Sprintf("%s: %v", m.Key, err))
			continue
		}
		if other, dup := owner[t.Name]; dup {
			misfit = append(misfit, fmt.Sprintf("%s and %s both adapt %s", other, m.Key, t.Name))
			continue
		}
		owner[t.Name] = m.Key
		bs = append(bs, binding{module: m, weight: t.Name})
	}
	var parts []string
	if len(unmatched) > 0 {
		parts = append(parts, fmt.Sprintf("%d modules match no %s weight: %s", len(unmatched), component, list(unmatched)))
	}
	if len(misfit) > 0 {
		parts = append(parts, fmt.Sprintf("%d modules do not fit: %s", len(misfit), list(misfit)))
	}
	if len(parts) > 0 {
		return nil, fmt.Errorf("%w: %s: %s (an adapter for another base model?)", ErrMismatch, f.Path, strings.Join(parts, "; "))
	}
	return bs, nil
}

// list joins names for an error, cut after 20 so that an adapter for
// another model does not print thousands.
func list(names []string) string {
	const most = 20
	if len(names) <= most {
		return strings.Join(names, ", ")
	}
	return strings.Join(names[:most], ", ") + fmt.Sprintf(", and %d more", len(names)-most)
}

// outIn views a weight shape as the matrix [out, in·kh·kw] and returns its
// input channels (shape[1], or the columns of a matrix).
func outIn(shape []int64) (out, cols, in int, ok bool) {
	if len(shape) < 2 {
		return 0, 0, 0, false
	}
	n := int64(1)
	for _, d := range shape[1:] {
		n *= d
	}
	return int(shape[0]), int(n), int(shape[1]), true
}

// fits checks the module's tensor shapes against the weight's.
func (m *Module) fits(weight []int64) error {
	out, cols, in, ok := outIn(weight)
	if !ok {
		return fmt.Errorf("the weight is %v, not a matrix or kernel", weight)
	}
	o, c, _, err := m.factors()
	if err != nil {
		return err
	}
	if o != out || c != cols {
		return fmt.Errorf("the update is [%d, %d], the weight %v is [%d, %d]", o, c, weight, out, cols)
	}
	if mag, ok := m.magnitude(); ok {
		if _, err := doraAxis(mag.Shape, out, in); err != nil {
			return err
		}
	}
	return nil
}

// doraAxis tells how a magnitude of this shape normalizes a weight:
// true for per output row, false for per input channel.
func doraAxis(shape []int64, out, in int) (perRow bool, err error) {
	n := 1
	for _, d := range shape {
		n *= int(d)
	}
	switch {
	case len(shape) >= 1 && int(shape[0]) == out && n == out:
		return true, nil
	case len(shape) >= 2 && shape[0] == 1 && int(shape[1]) == in && n == in:
		return false, nil
	}
	return false, fmt.Errorf("DoRA magnitude %v fits neither the %d outputs nor the %d inputs", shape, out, in)
}

// matrix is a dense row-major float64 matrix.
type matrix struct {
	rows, cols int
	v          []float64
}

func (a matrix) at(i, j int) float64 { return a.v[i*a.cols+j] }

// tensorMatrix reads t as [shape[0], rest].
func tensorMatrix(t modelfile.Tensor) (matrix, error) {
	if len(t.Shape) < 1 || t.Shape[0] == 0 {
		return matrix{}, badf("%s is %v, not a matrix", t.Name, t.Shape)
	}
	v, err := floats(t)
	if err != nil {
		return matrix{}, err
	}
	return matrix{int(t.Shape[0]), len(v) / int(t.Shape[0]), v}, nil
}

func matmul(a, b matrix) (matrix, error) {
	if a.cols != b.rows {
		return matrix{}, fmt.Errorf("[%d, %d] @ [%d, %d] does not multiply", a.rows, a.cols, b.rows, b.cols)
	}
	c := matrix{a.rows, b.cols, make([]float64, a.rows*b.cols)}
	for i := range a.rows {
		row := c.v[i*c.cols : (i+1)*c.cols]
		for k := range a.cols {
			x := a.v[i*a.cols+k]
			for j, y := range b.v[k*b.cols : (k+1)*b.cols] {
				row[j] += x * y
			}
		}
	}
	return c, nil
}

// tucker rebuilds F[o, i·K + k] = Σ_{p,q} t[p, q, k] · a[p, o] · b[q, i]
// from a core t [P, Q, kh, kw] and factors a [P, out], b [Q, in].
func tucker(t modelfile.Tensor, a, b matrix) (matrix, error) {
	if len(t.Shape) < 2 || int(t.Shape[0]) != a.rows || int(t.Shape[1]) != b.rows {
		return matrix{}, fmt.Errorf("Tucker core %v does not fit factors [%d, %d] and [%d, %d]", t.Shape, a.rows, a.cols, b.rows, b.cols)
	}
	core, err := floats(t)
	if err != nil {
		return matrix{}, err
	}
	P, Q := a.rows, b.rows
	K := len(core) / (P * Q)
	out, in := a.cols, b.cols
	f := matrix{out, in * K, make([]float64, out*in*K)}
	for p := range P {
		for q := range Q {
			for k := range K {
				c := core[(p*Q+q)*K+k]
				if c == 0 {
					continue
				}
				for o := range out {
					co := c * a.at(p, o)
					row := f.v[o*f.cols:]
					for i := range in {
						row[i*K+k] += co * b.at(q, i)
					}
				}
			}
		}
	}
	return f, nil
}

// loraMid rebuilds LoCon's Tucker form: ΔW[o, i·K + k] =
// Σ_{n,m} up[o, n] · mid[n, m, k] · down[m, i].
func loraMid(up, down matrix, mid modelfile.Tensor) (matrix, error) {
	// The core's first factor is up transposed: a [n, out] with a[n, o] = up[o, n].
	upT := matrix{up.cols, up.rows, make([]float64, len(up.v))}
	for o := range up.rows {
		for n := range up.cols {
			upT.v[n*upT.cols+o] = up.at(o, n)
		}
	}
	return tucker(mid, upT, down)
}

func kron(a, b matrix) matrix {
	c := matrix{a.rows * b.rows, a.cols * b.cols, make([]float64, a.rows*b.rows*a.cols*b.cols)}
	for i := range a.rows {
		for j := range a.cols {
			x := a.at(i, j)
			for k := range b.rows {
				row := c.v[(i*b.rows+k)*c.cols+j*b.cols:]
				for l := range b.cols {
					row[l] = x * b.at(k, l)
				}
			}
		}
	}
	return c
}

// factors returns the update's matrix shape and the module's rank (0 when
// it has none) from the tensor shapes alone, without computing it.
func (m *Module) factors() (out, cols, rank int, err error) {
	dims := func(s string) []int64 { return m.tensors[s].Shape }
	has := func(s string) bool { _, ok := m.tensors[s]; return ok }
	flat := func(s []int64) (int, int) {
		if len(s) == 0 || s[0] == 0 {
			return 0, 0
		}
		n := int64(1)
		for _, d := range s {
			n *= d
		}
		return int(s[0]), int(n / s[0])
	}
	bad := func() (int, int, int, error) {
		var shapes []string
		for _, k := range sortedKeys(m.tensors) {
			shapes = append(shapes, fmt.Sprintf("%s %v", k, m.tensors[k].Shape))
		}
		return 0, 0, 0, fmt.Errorf("inconsistent %s shapes: %s", m.Kind, strings.Join(shapes, ", "))
	}
	// tuckerShape is the [out, in·K] of a Tucker operand (core, a [P, out], b [Q, in]).
	tuckerShape := func(core, a, b string) (int, int, bool) {
		t, sa, sb := dims(core), dims(a), dims(b)
		if len(t) < 2 || len(sa) != 2 || len(sb) != 2 || t[0] != sa[0] || t[1] != sb[0] {
			return 0, 0, false
		}
		k := int64(1)
		for _, d := range t[2:] {
			k *= d
		}
		return int(sa[1]), int(sb[1] * k), true
	}
	// product is the [out, cols] of a @ b.
	product := func(a, b string) (int, int, bool) {
		ar, ac := flat(dims(a))
		br, bc := flat(dims(b))
		return ar, bc, ar > 0 && br > 0 && ac == br
	}
	switch m.Kind {
	case LoRA:
		down, up := "lora_down.weight", "lora_up.weight"
		if has("lora_A.weight") {
			down, up = "lora_A.weight", "lora_B.weight"
		}
		r, _ := flat(dims(down))
		if has("lora_mid.weight") {
			o, n := flat(dims(up))
			mid := dims("lora_mid.weight")
			mr, in := flat(dims(down))
			if len(mid) < 2 || int(mid[0]) != n || int(mid[1]) != mr || o == 0 {
				return bad()
			}
			k := int64(1)
			for _, d := range mid[2:] {
				k *= d
			}
			return o, in * int(k), r, nil
		}
		o, c, ok := product(up, down)
		if !ok {
			return bad()
		}
		return o, c, r, nil
	case LoHa:
		r, _ := flat(dims("hada_w1_b"))
		var o1, c1, o2, c2 int
		var ok1, ok2 bool
		if has("hada_t1") {
			o1, c1, ok1 = tuckerShape("hada_t1", "hada_w1_a", "hada_w1_b")
			o2, c2, ok2 = tuckerShape("hada_t2", "hada_w2_a", "hada_w2_b")
		} else {
			o1, c1, ok1 = product("hada_w1_a", "hada_w1_b")
			o2, c2, ok2 = product("hada_w2_a", "hada_w2_b")
		}
		if !ok1 || !ok2 || o1 != o2 || c1 != c2 {
			return bad()
		}
		return o1, c1, r, nil
	case LoKr:
		var o1, c1, o2, c2 int
		ok1, ok2 := true, true
		if has("lokr_w1") {
			o1, c1 = flat(dims("lokr_w1"))
		} else {
			o1, c1, ok1 = product("lokr_w1_a", "lokr_w1_b")
			rank, _ = flat(dims("lokr_w1_b"))
		}
		switch {
		case has("lokr_w2"):
			o2, c2 = flat(dims("lokr_w2"))
		case has("lokr_t2"):
			o2, c2, ok2 = tuckerShape("lokr_t2", "lokr_w2_a", "lokr_w2_b")
		default:
			o2, c2, ok2 = product("lokr_w2_a", "lokr_w2_b")
		}
		if rank == 0 && has("lokr_w2_b") {
			rank, _ = flat(dims("lokr_w2_b"))
		}
		if !ok1 || !ok2 || o1*o2 == 0 || c1*c2 == 0 {
			return bad()
		}
		return o1 * o2, c1 * c2, rank, nil
	}
	return bad()
}

// delta computes the module's ΔW as the matrix [out, cols], unscaled.
func (m *Module) delta() (matrix, error) {
	get := func(s string) (matrix, error) { return tensorMatrix(m.tensors[s]) }
	has := func(s string) bool { _, ok := m.tensors[s]; return ok }
	// pair gets the two factors a and b and combines them.
	pair := func(a, b string, combine func(x, y matrix) (matrix, error)) (matrix, error) {
		x, err := get(a)
		if err != nil {
			return matrix{}, err
		}
		y, err := get(b)
		if err != nil {
			return matrix{}, err
		}
		return combine(x, y)
	}
	product := func(a, b string) (matrix, error) { return pair(a, b, matmul) }
	withCore := func(core, a, b string) (matrix, error) {
		return pair(a, b, func(x, y matrix) (matrix, error) { return tucker(m.tensors[core], x, y) })
	}
	switch m.Kind {
	case LoRA:
		down, up := "lora_down.weight", "lora_up.weight"
		if has("lora_A.weight") {
			down, up = "lora_A.weight", "lora_B.weight"
		}
		if has("lora_mid.weight") {
			return pair(up, down, func(u, d matrix) (matrix, error) { return loraMid(u, d, m.tensors["lora_mid.weight"]) })
		}
		return product(up, down)
	case LoHa:
		// Each Hadamard operand is w?_a @ w?_b, or its Tucker form with hada_t?.
		operand := func(core, a, b string) (matrix, error) {
			if has(core) {
				return withCore(core, a, b)
			}
			return product(a, b)
		}
		f1, err := operand("hada_t1", "hada_w1_a", "hada_w1_b")
		if err != nil {
			return matrix{}, err
		}
		f2, err := operand("hada_t2", "hada_w2_a", "hada_w2_b")
		if err != nil {
			return matrix{}, err
		}
		for i := range f1.v {
			f1.v[i] *= f2.v[i]
		}
		return f1, nil
	case LoKr:
		var w1, w2 matrix
		var err error
		if has("lokr_w1") {
			w1, err = get("lokr_w1")
		} else {
			w1, err = product("lokr_w1_a", "lokr_w1_b")
		}
		if err != nil {
			return matrix{}, err
		}
		switch {
		case has("lokr_w2"):
			w2, err = get("lokr_w2")
		case has("lokr_t2"):
			w2, err = withCore("lokr_t2", "lokr_w2_a", "lokr_w2_b")
		default:
			w2, err = product("lokr_w2_a", "lokr_w2_b")
		}
		if err != nil {
			return matrix{}, err
		}
		return kron(w1, w2), nil
	}
	return matrix{}, fmt.Errorf("module %s: no update for kind %s", m.Key, m.Kind)
}

// update returns the module's contribution at scale 1 to a weight of the
// given shape whose values are base: c·ΔW, or W_d − W with DoRA (see the
// package documentation).
func (m *Module) update(base []float64, shape []int64) ([]float64, error) {
	out, _, in, _ := outIn(shape)
	_, _, rank, err := m.factors()
	if err != nil {
		return nil, err
	}
	d, err := m.delta()
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", m.Key, err)
	}
	c := 1.0
	if m.HasAlpha && rank > 0 {
		c = m.Alpha / float64(rank)
	}
	for i := range d.v {
		d.v[i] *= c
	}
	mag, ok := m.magnitude()
	if !ok {
		return d.v, nil
	}
	perRow, err := doraAxis(mag.Shape, out, in)
	if err != nil {
		return nil, err
	}
	mv, err := floats(mag)
	if err != nil {
		return nil, err
	}
	// V = W + c·ΔW, then W_d = m · V / (‖V‖ + ε) and the update W_d − W.
	v := d.v
	for i := range v {
		v[i] += base[i]
	}
	cols := d.cols
	k := cols / in
	norms := make([]float64, len(mv))
	for o := range out {
		for j := range cols {
			x := v[o*cols+j]
			if perRow {
				norms[o] += x * x
			} else {
				norms[j/k] += x * x
			}
		}
	}
	const eps = 0x1p-23 // float32 machine epsilon, what LyCORIS adds
	for i := range norms {
		norms[i] = mv[i] / (math.Sqrt(norms[i]) + eps)
	}
	for o := range out {
		for j := range cols {
			g := norms[j/k]
			if perRow {
				g = norms[o]
			}
			v[o*cols+j] = v[o*cols+j]*g - base[o*cols+j]
		}
	}
	return v, nil
}

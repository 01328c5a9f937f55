package diffusion

import (
	"fmt"
	"unsafe"

	"github.com/gosd/gosd/binding"
	"github.com/gosd/gosd/diffusion/lora"
	"github.com/gosd/gosd/diffusion/modelfile"
)

// merger computes float32 patched weights. Plain LoRA / LoCon updates, nearly every
// adapter in use, are low-rank products W' = W + s·up@down: where the backend merges a
// weight itself (the CPU, see mergeResident) the runtime computes it where the weight lives;
// elsewhere (CUDA) it runs here as the runtime's float32 GEMM (a linear op with the base
// weight as its residual) and the result is installed with ModelSetWeights. Either way
// switching adapters on a full-size model takes under a second instead of the minutes of
// lora.PatchWeight's float64 loops; the other kinds (LoHa, LoKr, Tucker cores, DoRA) stay
// on lora.PatchWeight. It uses its engine's context, which the caller holds.
type merger struct {
	e *engine
	// staging holds merged weights the runtime copies (packs, uploads) on their way in.
	staging hostBuffer
}

func (e *engine) newMerger() *merger { return &merger{e: e} }

// lowRank is one update as a product, checked against its weight: up (rows x r, with alpha / r
// and the adapter's scale applied), down (r x cols).
type lowRank struct {
	up, down []float32
	r        int
}

// lowRanks reads the updates of weight t as low-rank products (LoRA, LoCon), the form both the
// runtime's merge and the host's GEMM merge take; nil when one is of another kind (LoHa, LoKr,
// a Tucker core, DoRA), which lora.PatchWeight merges.
func lowRanks(t modelfile.Tensor, updates []lora.Update) ([]lowRank, error) {
	rows := t.Shape[0]
	cols := numel(t.Shape) / rows
	fs := make([]lowRank, 0, len(updates))
	for _, u := range updates {
		up, down, r, ok, err := u.Module.LowRank()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", u.File, err)
		}
		if !ok {
			return nil, nil
		}
		if int64(len(up)) != rows*int64(r) || int64(len(down)) != int64(r)*cols {
			return nil, fmt.Errorf("%s: module %s is [%d, %d] @ [%d, %d], the weight [%d, %d]",
				u.File, u.Module.Key, len(up)/max(r, 1), r, r, len(down)/max(r, 1), rows, cols)
		}
		s := float32(u.Scale)
		for j := range up { // LowRank's factors are fresh copies
			up[j] *= s
		}
		fs = append(fs, lowRank{up, down, r})
	}
	return fs, nil
}

// merge writes the float32 weight t + Σ updates into dst (4 bytes per element): fs, the
// updates as lowRanks gave them, by the runtime's GEMM, or all by lora.PatchWeight (fs nil).
func (m *merger) merge(t modelfile.Tensor, updates []lora.Update, fs []lowRank, dst []byte) error {
	if fs != nil {
		return m.mergeLowRank(t, fs, dst)
	}
	w, err := lora.PatchWeight(t, updates, modelfile.F32)
	if err == nil {
		copy(dst, w.Data)
	}
	return err
}

// mergeResident has the runtime merge the low-rank updates fs into the weight name of model
// where it keeps it, when the backend merges that weight (the CPU adds the product while it
// packs a linear layer's weight, one pass over the base with no float32 copy of the merged
// weight, and merges convolution kernels into memory of its own): the factors go in as one
// product, up = [s1·up1 | s2·up2 ...] and down = [down1; down2 ...]. False, with nothing
// changed, otherwise.
func (m *merger) mergeResident(model binding.Model, name string, t modelfile.Tensor, fs []lowRank) (bool, error) {
	if len(fs) == 0 {
		return false, nil
	}
	rows := int(t.Shape[0])
	up, down, total := fs[0].up, fs[0].down, fs[0].r
	if len(fs) > 1 {
		total = 0
		for _, f := range fs {
			total += f.r
		}
		up, down = make([]float32, rows*total), nil
		off := 0
		for _, f := range fs {
			for row := range rows {
				copy(up[row*total+off:row*total+off+f.r], f.up[row*f.r:(row+1)*f.r])
			}
			down = append(down, f.down...)
			off += f.r
		}
	}
	return m.e.lib.ModelMergeWeight(m.e.ctx, model, weightOf(name, t), up, down, total)
}

// stagingBuffer returns the staging memory, n bytes, grown as needed.
func (m *merger) stagingBuffer(n int) ([]byte, error) {
	if len(m.staging.b) < n {
		m.staging.free()
		var err error
		if m.staging, err = newHostBuffer(n); err != nil {
			m.staging = hostBuffer{}
			return nil, err
		}
	}
	return m.staging.b[:n], nil
}

func numel(shape []int64) int64 {
	n := int64(1)
	for _, d := range shape {
		n *= d
	}
	return n
}

// mergeBlockFloats is the size of the row blocks a weight merges in: small enough for the
// engine to keep their tensors from one switch to the next, so that a switch works in
// memory already touched rather than fresh allocations the size of its largest weights.
const mergeBlockFloats = 1 << 18

// mergeLowRank is W + Σ up@down for one weight t viewed as [out, cols] (the factors of
// lowRanks, scaled), in float32, a block of rows at a time: acc (1, n, cols) starts as the
// block of t converted, then each update is one linear op acc = x·w^T + acc with x = up's
// rows (1, n, r) and w = down^T (cols, r).
func (m *merger) mergeLowRank(t modelfile.Tensor, updates []lowRank, dst []byte) error {
	lib, ctx := m.e.lib, m.e.ctx
	rows := t.Shape[0]
	cols := numel(t.Shape) / rows
	type factor struct {
		up []float32 // scaled, rows x r
		r  int64
		wt binding.Tensor
	}
	fs := make([]factor, len(updates))
	for i, u := range updates {
		up, down, r := u.up, u.down, u.r
		downT := make([]float32, len(down))
		for k := range r {
			for j := range cols {
				downT[j*int64(r)+int64(k)] = down[int64(k)*cols+j]
			}
		}
		wt, err := m.tensor(fmt.Sprintf("down%d", i), binding.F32, cols, int64(r))
		if err != nil {
			return err
		}
		if err := lib.TensorUpload(ctx, wt, f32Bytes(downT)); err != nil {
			return err
		}
		fs[i] = factor{up, int64(r), wt}
	}
	dt := weightOf(t.Name, t).DType
	es := int64(lib.DTypeSize(dt))
	block := max(1, mergeBlockFloats/cols)
	params := lib.DefaultLinearParams()
	for r0 := int64(0); r0 < rows; r0 += block {
		n := min(block, rows-r0)
		acc, err := m.tensor("acc", binding.F32, 1, n, cols)
		if err != nil {
			return err
		}
		src := t.Data[r0*cols*es : (r0+n)*cols*es]
		if dt == binding.F32 {
			err = lib.TensorUpload(ctx, acc, src)
		} else {
			var b binding.Tensor
			if b, err = m.tensor("base", dt, 1, n, cols); err == nil {
				if err = lib.TensorUpload(ctx, b, src); err == nil {
					err = lib.OpConvert(ctx, acc, b)
				}
			}
		}
		if err != nil {
			return err
		}
		for _, f := range fs {
			x, err := m.tensor("up", binding.F32, 1, n, f.r)
			if err != nil {
				return err
			}
			if err := lib.TensorUpload(ctx, x, f32Bytes(f.up[r0*f.r:(r0+n)*f.r])); err != nil {
				return err
			}
			if err := lib.OpLinear(ctx, acc, x, f.wt, 0, acc, &params); err != nil {
				return err
			}
		}
		if err := lib.TensorDownload(ctx, acc, dst[4*r0*cols:4*(r0+n)*cols]); err != nil {
			return err
		}
	}
	return nil
}

// f32Bytes views float32s as their bytes (little-endian hosts, as the runtime).
func f32Bytes(v []float32) []byte {
	if len(v) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 4*len(v))
}

type scratchKey struct {
	role       string
	dtype      binding.DType
	rows, cols int64
}

// tensor returns the engine's merge tensor of a role (distinct tensors of one call need
// distinct roles) with the dtype and shape (1, rows, cols) or, for 2-D shapes, (rows, cols).
// The down factors are whole (cols x rank); the rest are row blocks.
func (m *merger) tensor(role string, dt binding.DType, shape ...int64) (binding.Tensor, error) {
	k := scratchKey{role, dt, shape[len(shape)-2], shape[len(shape)-1]}
	e := m.e
	if x, ok := e.mergeTensors[k]; ok {
		return x, nil
	}
	x, err := e.lib.TensorNew(e.ctx, dt, shape...)
	if err == nil {
		if e.mergeTensors == nil {
			e.mergeTensors = map[scratchKey]binding.Tensor{}
		}
		e.mergeTensors[k] = x
	}
	return x, err
}

func (m *merger) free() { m.staging.free() }

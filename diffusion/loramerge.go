package diffusion

import (
	"fmt"
	"slices"
	"unsafe"

	"github.com/gosd/gosd/binding"
	"github.com/gosd/gosd/diffusion/lora"
	"github.com/gosd/gosd/diffusion/modelfile"
)

// mergeLoRAs computes the float32 patched weights of one network. Plain LoRA / LoCon
// updates, nearly every adapter in use, are low-rank products: W' = W + s·up@down runs as
// the runtime's float32 GEMM (a linear op with the base weight as its residual), which
// is what makes switching adapters on a full-size model take about a second instead of
// the minutes of lora.PatchWeight's float64 loops; those (LoHa, LoKr, Tucker cores,
// DoRA) stay on lora.PatchWeight. Uses e's context, which the caller holds.
func (e *engine) mergeLoRAs(base map[string]modelfile.Tensor, patches []lora.Patch) (map[string]modelfile.Tensor, error) {
	out := make(map[string]modelfile.Tensor, len(patches))
	for _, p := range patches {
		t := base[p.Weight]
		lowRank := true
		for _, u := range p.Updates {
			_, _, _, ok, err := u.Module.LowRank()
			if err != nil {
				return nil, fmt.Errorf("%s: %w", u.File, err)
			}
			lowRank = lowRank && ok
		}
		var err error
		if lowRank {
			out[p.Weight], err = e.mergeLowRank(t, p.Updates)
		} else {
			out[p.Weight], err = lora.PatchWeight(t, p.Updates, modelfile.F32)
		}
		if err != nil {
			return nil, fmt.Errorf("merging LoRAs into %s: %w", p.Weight, err)
		}
	}
	return out, nil
}

// mergeLowRank is W + Σ s·up@down for one weight t viewed as [out, cols], in float32:
// acc (1, out, cols) starts as t converted, then each update is one linear op
// acc = x·w^T + acc with x = s·up (1, out, r) and w = down^T (cols, r).
func (e *engine) mergeLowRank(t modelfile.Tensor, updates []lora.Update) (modelfile.Tensor, error) {
	lib, ctx := e.lib, e.ctx
	rows := t.Shape[0]
	cols := int64(1)
	for _, d := range t.Shape[1:] {
		cols *= d
	}
	var tensors []binding.Tensor
	defer func() {
		for _, x := range tensors {
			lib.TensorFree(ctx, x)
		}
	}()
	tensor := func(dt binding.DType, shape ...int64) (binding.Tensor, error) {
		x, err := lib.TensorNew(ctx, dt, shape...)
		if err == nil {
			tensors = append(tensors, x)
		}
		return x, err
	}
	acc, err := tensor(binding.F32, 1, rows, cols)
	if err != nil {
		return modelfile.Tensor{}, err
	}
	w := weightOf(t.Name, t)
	if w.DType == binding.F32 {
		err = lib.TensorUpload(ctx, acc, t.Data)
	} else {
		var src binding.Tensor
		if src, err = tensor(w.DType, 1, rows, cols); err == nil {
			if err = lib.TensorUpload(ctx, src, t.Data); err == nil {
				err = lib.OpConvert(ctx, acc, src)
			}
		}
	}
	if err != nil {
		return modelfile.Tensor{}, err
	}
	params := lib.DefaultLinearParams()
	for _, u := range updates {
		up, down, r, _, err := u.Module.LowRank()
		if err != nil {
			return modelfile.Tensor{}, err
		}
		if int64(len(up)) != rows*int64(r) || int64(len(down)) != int64(r)*cols {
			return modelfile.Tensor{}, fmt.Errorf("%s: module %s is [%d, %d] @ [%d, %d], the weight [%d, %d]",
				u.File, u.Module.Key, len(up)/max(r, 1), r, r, len(down)/max(r, 1), rows, cols)
		}
		s := float32(u.Scale)
		for i := range up {
			up[i] *= s
		}
		downT := make([]float32, len(down))
		for k := range r {
			for j := range cols {
				downT[j*int64(r)+int64(k)] = down[int64(k)*cols+j]
			}
		}
		x, err := tensor(binding.F32, 1, rows, int64(r))
		if err != nil {
			return modelfile.Tensor{}, err
		}
		wt, err := tensor(binding.F32, cols, int64(r))
		if err != nil {
			return modelfile.Tensor{}, err
		}
		if err := lib.TensorUpload(ctx, x, f32Bytes(up)); err != nil {
			return modelfile.Tensor{}, err
		}
		if err := lib.TensorUpload(ctx, wt, f32Bytes(downT)); err != nil {
			return modelfile.Tensor{}, err
		}
		if err := lib.OpLinear(ctx, acc, x, wt, 0, acc, &params); err != nil {
			return modelfile.Tensor{}, err
		}
	}
	data := make([]byte, 4*rows*cols)
	if err := lib.TensorDownload(ctx, acc, data); err != nil {
		return modelfile.Tensor{}, err
	}
	return modelfile.Tensor{Name: t.Name, DType: modelfile.F32, Shape: slices.Clone(t.Shape), Data: data}, nil
}

// f32Bytes views float32s as their bytes (little-endian hosts, as the runtime).
func f32Bytes(v []float32) []byte {
	if len(v) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 4*len(v))
}

package binding

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Weight describes one named tensor of a model in host memory the caller keeps valid
// (typically a view into an mmapped model file) until the model is freed.
type Weight struct {
	Name  string
	DType DType
	Shape []int64
	Data  unsafe.Pointer // must not point into the Go heap
}

// weightTable is an sd_weight_t array with its names, built in anonymous mmap memory so
// that no Go pointer is handed to C.
type weightTable struct {
	mem []byte
	ptr uintptr
	n   int
}

func newWeightTable(ws []Weight) (*weightTable, error) {
	entry := unsafe.Sizeof(weightC{})
	size := uintptr(len(ws)) * entry
	for _, w := range ws {
		size += uintptr(len(w.Name)) + 1
	}
	if size == 0 {
		size = 1
	}
	mem, err := unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return nil, fmt.Errorf("weight table: %w", err)
	}
	base := uintptr(unsafe.Pointer(&mem[0]))
	names := uintptr(len(ws)) * entry
	for i, w := range ws {
		if len(w.Shape) < 1 || len(w.Shape) > MaxDims {
			unix.Munmap(mem)
			return nil, fmt.Errorf("%w: weight %s has %d dims", ErrInvalidArgument, w.Name, len(w.Shape))
		}
		e := (*weightC)(unsafe.Pointer(&mem[uintptr(i)*entry]))
		e.name = base + names
		copy(mem[names:], w.Name)
		mem[names+uintptr(len(w.Name))] = 0
		names += uintptr(len(w.Name)) + 1
		e.dtype = w.DType
		e.ndim = int32(len(w.Shape))
		copy(e.shape[:], w.Shape)
		e.data = uintptr(w.Data)
	}
	return &weightTable{mem: mem, ptr: base, n: len(ws)}, nil
}

func (t *weightTable) free() { unix.Munmap(t.mem) }

//go:build !unix

package diffusion

import "runtime"

// hostBuffer is Go memory where anonymous mappings are not available, pinned while the
// runtime may read it.
type hostBuffer struct {
	b   []byte
	pin *runtime.Pinner
}

func newHostBuffer(n int) (hostBuffer, error) {
	b := make([]byte, max(n, 1))
	pin := &runtime.Pinner{}
	pin.Pin(&b[0])
	return hostBuffer{b[:n], pin}, nil
}

func (h hostBuffer) free() {
	if h.pin != nil {
		h.pin.Unpin()
	}
}

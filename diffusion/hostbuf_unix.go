//go:build unix

package diffusion

import "golang.org/x/sys/unix"

// hostBuffer is host memory outside the Go heap for data the runtime keeps reading after
// a call returns (merged adapter weights): no pinning, freed explicitly when replaced, and
// on Linux backed by transparent huge pages, since first-touch faults on 4 KiB pages cost
// more than the copy into a gigabyte of merged weights.
type hostBuffer struct{ b []byte }

func newHostBuffer(n int) (hostBuffer, error) {
	b, err := unix.Mmap(-1, 0, max(n, 1), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return hostBuffer{}, err
	}
	_ = madviseHuge(b) // advice only
	return hostBuffer{b[:n]}, nil
}

func (h hostBuffer) free() {
	if h.b != nil {
		_ = unix.Munmap(h.b[:cap(h.b)])
	}
}

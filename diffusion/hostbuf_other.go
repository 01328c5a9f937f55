//go:build !unix

package diffusion

// hostBuffer is Go memory where anonymous mappings are not available (loraState pins
// what it hands to the runtime).
type hostBuffer struct{ b []byte }

func newHostBuffer(n int) (hostBuffer, error) { return hostBuffer{make([]byte, n)}, nil }

func (h hostBuffer) free() {}

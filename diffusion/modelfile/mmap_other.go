//go:build !unix

package modelfile

import "os"

// mapFile reads the whole file: x/sys/unix's mmap is not available on this
// platform, so weights live on the heap instead of in a mapping.
func mapFile(path string) ([]byte, func() error, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	return data, func() error { return nil }, nil
}

// releaseMapping does nothing where files are read into memory rather than mapped.
func releaseMapping([]byte) error { return nil }

//go:build unix

package modelfile

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// mapFile maps the whole file read-only. The returned release function
// unmaps it; slices of the mapping must not be used after that.
func mapFile(path string) ([]byte, func() error, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	size := st.Size()
	if size == 0 {
		// mmap refuses empty mappings; an empty file is still a valid
		// (if useless) input for the parsers to reject with their own words.
		return []byte{}, func() error { return nil }, nil
	}
	if size != int64(int(size)) {
		return nil, nil, fmt.Errorf("%s: %d bytes do not fit the address space", path, size)
	}
	data, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, nil, fmt.Errorf("mmap %s: %w", path, err)
	}
	preferHugePages(int(f.Fd()), data)
	return data, func() error { return unix.Munmap(data) }, nil
}

// releaseMapping drops the mapping's resident pages (MADV_DONTNEED). The mapping is
// read-only and backed by the file, so its contents stay valid and come back from the file
// (or the page cache) on the next access.
func releaseMapping(data []byte) error {
	if len(data) == 0 {
		return nil
	}
	return unix.Madvise(data, unix.MADV_DONTNEED)
}

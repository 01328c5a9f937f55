package modelfile

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	pmdSize = 2 << 20
	// hugeFileMin is the size from which a mapped file is worth 2 MiB pages: model
	// files; adapters and configs are left as they are.
	hugeFileMin = 64 << 20
)

// preferHugePages asks the kernel to map the file's page cache in 2 MiB pages (PMDs)
// rather than 4 KiB ones. The runtime reads a model's weights through its mapping at load
// (to pack them) and at every step (convolution kernels), after releaseMapping dropped
// the page tables: with 4 KiB pages each access to a new page is a fault, which on
// shadow-paging hypervisors costs microseconds (touching SD 1.5's 1.7 GB UNet file took
// 0.95 s so, 0.03 s in 2 MiB pages on the development VM).
//
// A 2 MiB mapping needs the cached file in 2 MiB folios, which the kernel makes when it
// reads the file for a mapping advised MADV_HUGEPAGE and whose file system supports
// large folios (xfs; ext4 since Linux 6.16); pages cached earlier in small folios (a
// file just written or copied) stay small. So the mapping is advised, a 2 MiB probe is
// read, and when its pages turn out small the probe range is dropped from the cache and
// read again: if it comes back in one 2 MiB page, the file system can, and the whole file
// is dropped from the cache so that it is read again in 2 MiB pages (once: the next
// opens find them cached). Pages mapped or dirty elsewhere are not dropped and stay small.
// Everything here is advice: failures leave the mapping as mapped.
func preferHugePages(fd int, data []byte) {
	if len(data) < hugeFileMin || uintptr(unsafe.Pointer(&data[0]))%pmdSize != 0 {
		return
	}
	if unix.Madvise(data, unix.MADV_HUGEPAGE) != nil {
		return
	}
	probe := data[pmdSize : 2*pmdSize]
	if touchHuge(data, probe) {
		return
	}
	_ = unix.Madvise(probe, unix.MADV_DONTNEED)
	if unix.Fadvise(fd, pmdSize, pmdSize, unix.FADV_DONTNEED) != nil || !touchHuge(data, probe) {
		return
	}
	_ = unix.Madvise(data, unix.MADV_DONTNEED)
	_ = unix.Fadvise(fd, 0, 0, unix.FADV_DONTNEED)
}

// touchHuge reads a byte of probe (one 2 MiB-aligned range of the mapping data) and
// reports whether the mapping now has 2 MiB pages.
func touchHuge(data, probe []byte) bool {
	var s byte
	for i := 0; i < len(probe); i += 4096 {
		s += probe[i]
	}
	sink = s
	return filePmdMapped(uintptr(unsafe.Pointer(&data[0]))) > 0
}

// sink keeps the probe's reads from being optimised away.
var sink byte

// filePmdMapped returns the "FilePmdMapped" bytes of this process's mapping that starts
// at addr, read from /proc/self/smaps (0 when it cannot be read).
func filePmdMapped(addr uintptr) int64 {
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		return 0
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	in := false
	for sc.Scan() {
		line := sc.Text()
		if start, _, ok := strings.Cut(line, "-"); ok && !strings.Contains(start, ":") {
			if a, err := strconv.ParseUint(start, 16, 64); err == nil {
				in = uintptr(a) == addr
				continue
			}
		}
		if v, ok := strings.CutPrefix(line, "FilePmdMapped:"); in && ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

package modelfile

import (
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// A large file just written sits in the page cache in small pages; mapFile must leave it
// mapped in 2 MiB pages wherever the kernel and file system can do that for this folder
// (checked by doing it by hand when mapFile did not).
func TestMapFilePrefersHugePages(t *testing.T) {
	path := filepath.Join(t.TempDir(), "big.safetensors")
	f, err := os.Create(path)
	require.NoError(t, err)
	const size = hugeFileMin + 8<<20
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	for range size / len(buf) {
		_, err := f.Write(buf)
		require.NoError(t, err)
	}
	require.NoError(t, f.Sync()) // clean pages, which the cache may drop
	require.NoError(t, f.Close())

	data, release, err := mapFile(path)
	require.NoError(t, err)
	touch := func(b []byte) {
		var s byte
		for i := 0; i < len(b); i += 4096 {
			s += b[i]
		}
		sink = s
	}
	touch(data)
	got := filePmdMapped(uintptr(unsafe.Pointer(&data[0])))
	require.NoError(t, release())
	if got > 0 {
		t.Logf("%d of %d bytes mapped in 2 MiB pages", got, len(data))
		return
	}
	// By hand: drop the cached file, map it advised, read it.
	f, err = os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	require.NoError(t, unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED))
	data, err = unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ, unix.MAP_SHARED)
	require.NoError(t, err)
	defer unix.Munmap(data)
	if unix.Madvise(data, unix.MADV_HUGEPAGE) != nil {
		t.Skip("this kernel does not take MADV_HUGEPAGE for file mappings")
	}
	touch(data)
	if filePmdMapped(uintptr(unsafe.Pointer(&data[0]))) == 0 {
		t.Skip("the kernel or the file system of the test folder keeps files in small pages")
	}
	t.Fatal("mapFile left the file in 4 KiB pages though this file system caches it in 2 MiB pages")
}

// Package testutil holds helpers shared by the project's tests: locating the
// repository and the shared conformance kit that lives beside it.
package testutil

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"image"
	"image/png"
	"os"
	"path/filepath"
	"testing"
)

// RepoRoot returns the directory holding go.mod, found by walking up from the
// test's working directory (the package directory under `go test`).
func RepoRoot(tb testing.TB) string {
	tb.Helper()
	dir, err := os.Getwd()
	if err != nil {
		tb.Fatalf("getwd: %v", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			tb.Fatalf("no go.mod above the working directory")
		}
		dir = parent
	}
}

// ConformanceDir returns the diffusers conformance kit: $SD_CONFORMANCE_DIR when
// set, else ../shared/conformance beside the repository. The test is skipped
// when the kit is absent, so a fresh clone passes its own tests.
func ConformanceDir(tb testing.TB) string {
	tb.Helper()
	dir := os.Getenv("SD_CONFORMANCE_DIR")
	if dir == "" {
		dir = filepath.Join(RepoRoot(tb), "..", "shared", "conformance")
	}
	if _, err := os.Stat(filepath.Join(dir, "manifest.json")); err != nil {
		tb.Skipf("conformance kit not found at %s (set SD_CONFORMANCE_DIR): %v", dir, err)
	}
	return dir
}

// KitFolder lays out a copy of the kit's folder rel (e.g. "sd1-tiny/diffusers") in a
// temporary directory, its files linked rather than copied, except those in replace
// (path relative to the folder → contents written instead; nil deletes the file).
func KitFolder(tb testing.TB, rel string, replace map[string][]byte) string {
	tb.Helper()
	src := filepath.Join(ConformanceDir(tb), rel)
	dst := tb.TempDir()
	err := filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		r, _ := filepath.Rel(src, p)
		if _, ok := replace[r]; ok {
			return nil
		}
		// Folders exist only for the files they hold: deleting all of one deletes it.
		if err := os.MkdirAll(filepath.Join(dst, filepath.Dir(r)), 0o755); err != nil {
			return err
		}
		return os.Symlink(p, filepath.Join(dst, r))
	})
	if err != nil {
		tb.Fatalf("laying out %s: %v", rel, err)
	}
	for r, data := range replace {
		if data == nil {
			continue
		}
		if err := os.MkdirAll(filepath.Join(dst, filepath.Dir(r)), 0o755); err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, r), data, 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	return dst
}

// DeclaringPNG is a valid 1×1 PNG whose header declares w×h pixels: a file of a few dozen
// bytes that a decoder would allocate w×h pixels for.
func DeclaringPNG(tb testing.TB, w, h uint32) []byte {
	tb.Helper()
	var buf bytes.Buffer
	if err := png.Encode(&buf, image.NewGray(image.Rect(0, 0, 1, 1))); err != nil {
		tb.Fatal(err)
	}
	b := buf.Bytes()
	if string(b[12:16]) != "IHDR" {
		tb.Fatalf("the first chunk is %q, not IHDR", b[12:16])
	}
	// signature (8), IHDR length (4), "IHDR" (4), width, height, ...; CRC over type+data.
	binary.BigEndian.PutUint32(b[16:], w)
	binary.BigEndian.PutUint32(b[20:], h)
	binary.BigEndian.PutUint32(b[29:], crc32.ChecksumIEEE(b[12:29]))
	return b
}

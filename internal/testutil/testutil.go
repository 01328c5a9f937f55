// Package testutil holds helpers shared by the project's tests: locating the
// repository and the shared conformance kit that lives beside it.
package testutil

import (
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

package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPrecisionFlag(t *testing.T) {
	for _, cmd := range []string{"txt2img", "img2img", "inpaint", "bench", "serve"} {
		t.Run(cmd, func(t *testing.T) {
			r := runArgs(t, cmd, "--precision", "fp16")
			assert.Equal(t, exitUsage, r.code)
			assert.Contains(t, r.stderr, `invalid value "fp16" for flag -precision: unknown precision "fp16" (want fp32, bf16)`)
		})
	}
}

// txt2img --precision bf16 draws where the CPU has AVX512_BF16; elsewhere it fails saying
// why and writes nothing. The runtime reads SD_CPU_ISA at context creation (the avx2
// kernels cannot run bf16) from the environment the process started with, so the refusal
// runs in a child process.
func TestPrecisionBF16(t *testing.T) {
	model, rt := tinyModel(t)
	out := filepath.Join(t.TempDir(), "apple.png")
	args := slices.Concat([]string{"txt2img", "-m", model, "-p", "a red apple", "--steps", "2", "--precision", "bf16", "-o", out}, rt)
	if os.Getenv("GOSD_TEST_SDCLI_BF16_CHILD") == "1" {
		r := runArgs(t, args...)
		assert.Equal(t, exitError, r.code)
		assert.Contains(t, r.stderr, "bf16 precision is not available")
		assert.NoFileExists(t, out)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestPrecisionBF16$", "-test.v")
	cmd.Env = append(os.Environ(), "GOSD_TEST_SDCLI_BF16_CHILD=1", "SD_CPU_ISA=avx2")
	child, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", child)
	assert.Contains(t, string(child), "--- PASS: TestPrecisionBF16")

	r := runArgs(t, args...)
	if r.code == exitError && strings.Contains(r.stderr, "bf16 precision is not available") {
		t.Skipf("no bf16 on this CPU: %s", r.stderr)
	}
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	assert.FileExists(t, out)
}

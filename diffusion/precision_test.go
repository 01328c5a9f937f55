package diffusion

import (
	"context"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParsePrecision(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Precision
		ok   bool
	}{
		{"fp32", PrecisionFP32, true},
		{"BF16", PrecisionBF16, true},
		{"fp16", 0, false},
		{"", 0, false},
	} {
		t.Run(tc.in, func(t *testing.T) {
			p, err := ParsePrecision(tc.in)
			if !tc.ok {
				assert.ErrorContains(t, err, "unknown precision")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, p)
			assert.Equal(t, p, must(ParsePrecision(p.String())), "String round-trips")
		})
	}
	assert.Equal(t, "Precision(7)", Precision(7).String())
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func openTinyAt(t *testing.T, model string, p Precision) (*Pipeline, error) {
	t.Helper()
	testLibrary(t)
	pipe, err := Open(filepath.Join(testutil.ConformanceDir(t), model, "diffusers"), WithDevice(DeviceCPU),
		WithThreads(2), WithPrecision(p), WithLibrary(filepath.Join(testutil.RepoRoot(t), "build")))
	if err == nil {
		t.Cleanup(func() { pipe.Close() })
	}
	return pipe, err
}

// psnr8 is the PSNR in dB of one 8-bit image against another (+Inf when equal).
func psnr8(got, ref []uint8) float64 {
	var mse float64
	for i := range ref {
		d := (float64(got[i]) - float64(ref[i])) / 255
		mse += d * d
	}
	return 10 * math.Log10(float64(len(ref))/mse)
}

// bf16 against fp32 on the kit's whole txt2img runs (6 steps, CFG 7.5, 64x64), and both
// against diffusers' float32 image (logged). bf16 keeps 8 significant bits per operand, a
// relative error of about 2^-8 per product that averages down over the sums. Measured
// (2 threads, Zen 5): SD 1.x 42.8-45.3 dB, SD 2.x 37.0-38.2 dB (its tiny model amplifies
// rounding: its float32 trajectory already drifts from diffusers' float64 one, see
// TestTxt2ImgMatchesDiffusers). The floors, 38 and 32 dB, leave about 5 dB for another
// CPU or thread count (the results are deterministic on one machine), and a broken bf16
// path (a lost depth, swapped pairs) lands far below them.
func TestBF16PSNRAgainstFP32(t *testing.T) {
	floors := map[string]float64{"sd1-tiny": 38, "sd2-tiny-v": 32}
	for _, model := range []string{"sd1-tiny", "sd2-tiny-v"} {
		for _, run := range kitRuns {
			t.Run(model+"/"+run.name, func(t *testing.T) {
				bf, err := openTinyAt(t, model, PrecisionBF16)
				if err != nil {
					require.ErrorIs(t, err, ErrUnsupported)
					t.Skipf("bf16 is not available here: %v", err)
				}
				fp, err := openTinyAt(t, model, PrecisionFP32)
				require.NoError(t, err)
				req := kitRequest(run.sampler)
				got, err := bf.Txt2Img(context.Background(), req)
				require.NoError(t, err)
				want, err := fp.Txt2Img(context.Background(), req)
				require.NoError(t, err)
				g := openGolden(t, filepath.Join(testutil.ConformanceDir(t), model, "txt2img-"+run.name+".safetensors"))
				ref, _ := g.floats("image")
				db := psnr8(imageCHW(got.Images[0]), imageCHW(want.Images[0]))
				t.Logf("bf16 vs fp32: %.1f dB; vs diffusers: bf16 %.1f dB, fp32 %.1f dB", db,
					psnr(imageCHW(got.Images[0]), ref), psnr(imageCHW(want.Images[0]), ref))
				assert.GreaterOrEqual(t, db, floors[model])
			})
		}
	}
}

// On a CPU without AVX512_BF16 Open refuses bf16 with ErrUnsupported. The runtime reads
// SD_CPU_ISA at context creation (avx2 kernels cannot run bf16), and only the
// environment a process starts with reaches it, so the check runs in a child process.
func TestOpenBF16Refused(t *testing.T) {
	if os.Getenv("GOSD_TEST_BF16_CHILD") == "1" {
		_, err := openTinyAt(t, "sd1-tiny", PrecisionBF16)
		require.ErrorIs(t, err, ErrUnsupported)
		require.ErrorContains(t, err, "bf16 precision is not available")
		return
	}
	testutil.ConformanceDir(t)
	testLibrary(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestOpenBF16Refused$", "-test.v")
	cmd.Env = append(os.Environ(), "GOSD_TEST_BF16_CHILD=1", "SD_CPU_ISA=avx2")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), "--- PASS: TestOpenBF16Refused")
	_, err = openTinyAt(t, "sd1-tiny", Precision(5))
	assert.ErrorIs(t, err, ErrInvalidRequest)
}

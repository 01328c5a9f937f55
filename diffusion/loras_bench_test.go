package diffusion

import (
	"context"
	"encoding/binary"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gosd/gosd/diffusion/modelfile"
	"github.com/gosd/gosd/internal/testutil"
)

// benchSD15 opens the random full-size SD 1.5 that `sdcli bench` writes (F16), from
// $GOSD_BENCH_MODEL or ~/.cache/gosd/sd15-f16; the benchmark skips without it.
func benchSD15(b *testing.B) *Pipeline {
	b.Helper()
	dir := os.Getenv("GOSD_BENCH_MODEL")
	if dir == "" {
		home, _ := os.UserHomeDir()
		dir = filepath.Join(home, ".cache", "gosd", "sd15-f16")
	}
	if _, err := os.Stat(filepath.Join(dir, "model_index.json")); err != nil {
		b.Skipf("no random SD 1.5 (run sdcli bench once, or set GOSD_BENCH_MODEL): %v", err)
	}
	testLibrary(b)
	p, err := Open(dir, WithDevice(DeviceCPU), WithLibrary(filepath.Join(testutil.RepoRoot(b), "build")))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Close() })
	return p
}

// writeRandomLoRA writes a kohya LoRA of the given rank (F16, alpha = rank / 2) for the
// modules kohya-ss trains by default: every linear and 1x1 convolution inside the UNet's
// transformer blocks (attention, feed-forward, proj_in / proj_out) and the text
// encoder's attention and MLP.
func writeRandomLoRA(b *testing.B, m *modelfile.Model, rank int64, seed uint64) string {
	b.Helper()
	rng := rand.New(rand.NewPCG(seed, 1))
	f16 := func(name string, shape ...int64) modelfile.Tensor {
		n := int64(1)
		for _, d := range shape {
			n *= d
		}
		data := make([]byte, 2*n)
		for i := range n {
			binary.LittleEndian.PutUint16(data[2*i:], halfBits(float32(rng.NormFloat64()*0.02)))
		}
		return modelfile.Tensor{Name: name, DType: modelfile.F16, Shape: shape, Data: data}
	}
	var ts []modelfile.Tensor
	add := func(prefix string, tensors map[string]modelfile.Tensor, want func(string) bool) {
		for name, t := range tensors {
			path, ok := strings.CutSuffix(name, ".weight")
			if !ok || !want(path) || len(t.Shape) < 2 || (len(t.Shape) == 4 && t.Shape[2]*t.Shape[3] != 1) {
				continue
			}
			key := prefix + strings.ReplaceAll(path, ".", "_")
			down, up := []int64{rank, t.Shape[1]}, []int64{t.Shape[0], rank}
			if len(t.Shape) == 4 {
				down, up = append(down, 1, 1), append(up, 1, 1)
			}
			alpha := f16(key + ".alpha")
			binary.LittleEndian.PutUint16(alpha.Data, halfBits(float32(rank)/2))
			ts = append(ts, f16(key+".lora_down.weight", down...), f16(key+".lora_up.weight", up...), alpha)
		}
	}
	add("lora_unet_", m.UNet.Tensors, func(p string) bool { return strings.Contains(p, ".attentions.") })
	add("lora_te_", m.TextEncoder.Tensors, func(p string) bool {
		return strings.Contains(p, ".self_attn.") || strings.Contains(p, ".mlp.")
	})
	path := filepath.Join(b.TempDir(), "lora.safetensors")
	if err := modelfile.WriteSafetensors(path, ts, nil); err != nil {
		b.Fatal(err)
	}
	return path
}

// halfBits rounds a small normal float32 to IEEE half (no overflow or subnormals here).
func halfBits(f float32) uint16 {
	bits := math.Float32bits(f)
	sign := uint16(bits>>16) & 0x8000
	exp := int32(bits>>23&0xff) - 127 + 15
	if exp <= 0 {
		return sign
	}
	mant := bits & 0x7fffff
	h := uint32(exp)<<10 | mant>>13
	if mant&0x1fff > 0x1000 || (mant&0x1fff == 0x1000 && h&1 == 1) {
		h++
	}
	return sign | uint16(h)
}

// Applying a rank-32 LoRA to a full-size SD 1.5 (merge in float32, install in the
// runtime): to a model just loaded ("first": the runtime makes float32 packs of the
// patched GEMM weights), to the base weights after another adapter ("apply": the packs
// exist), and switching between two ("switch"): what a request with a new adapter set
// waits before its first step. Run: go test ./diffusion -run '^$' -bench LoRA -benchtime 3x
func BenchmarkLoRA(b *testing.B) {
	p := benchSD15(b)
	one := []LoRA{{Path: writeRandomLoRA(b, p.model, 32, 1)}}
	two := []LoRA{{Path: writeRandomLoRA(b, p.model, 32, 2)}}
	install := func(b *testing.B, p *Pipeline, ls []LoRA) {
		if err := p.acquire(context.Background()); err != nil {
			b.Fatal(err)
		}
		defer p.release()
		if err := p.withLoRAs(ls, func([]AppliedLoRA) error { return nil }); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("first", func(b *testing.B) {
		for b.Loop() {
			b.StopTimer()
			q := benchSD15(b)
			b.StartTimer()
			install(b, q, one)
			b.StopTimer()
			q.Close()
			b.StartTimer()
		}
	})
	b.Run("apply", func(b *testing.B) {
		install(b, p, two)
		for b.Loop() {
			b.StopTimer()
			install(b, p, nil)
			b.StartTimer()
			install(b, p, one)
		}
	})
	b.Run("switch", func(b *testing.B) {
		install(b, p, one)
		sets := [][]LoRA{two, one}
		i := 0
		for b.Loop() {
			install(b, p, sets[i%2])
			i++
		}
	})
}

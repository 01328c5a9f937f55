package diffusion

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/gosd/gosd/diffusion/modelfile"
	"github.com/gosd/gosd/diffusion/tokenizer"
	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// safetensorsFile assembles a safetensors file from a raw header and data.
func safetensorsFile(header string, data []byte) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	return append(append(b, header...), data...)
}

func TestErrorSentinelsAreShared(t *testing.T) {
	assert.Same(t, ErrBadModel, modelfile.ErrBadModel)
	assert.Same(t, ErrUnsupported, modelfile.ErrUnsupported)
	_, err := tokenizer.Load(t.TempDir())
	assert.ErrorIs(t, err, ErrBadModel, "a tokenizer folder without files")
}

// Errors of the model's files reach the caller of Open classified; these are
// found before the runtime library is loaded, so no library is needed.
func TestOpenModelErrorKinds(t *testing.T) {
	unetFile := "unet/diffusion_pytorch_model.safetensors"
	kitBytes, err := os.ReadFile(filepath.Join(testutil.ConformanceDir(t), "sd1-tiny", "diffusers", unetFile))
	require.NoError(t, err)
	cases := []struct {
		name    string
		replace map[string][]byte
		kind    error
		wantErr string
	}{
		{"truncated weights", map[string][]byte{unetFile: kitBytes[:len(kitBytes)/2]}, ErrBadModel, "safetensors:"},
		{"tokenizer folder without vocab.json", map[string][]byte{"tokenizer/vocab.json": nil}, ErrBadModel, "no vocab.json in the tokenizer folder"},
		{"layer count beyond the weights", map[string][]byte{"text_encoder/config.json": []byte(`{"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1000000000}`)},
			ErrBadModel, "num_hidden_layers 1000000000 exceeds the tensors the weights hold"},
		{"unsupported activation", map[string][]byte{"text_encoder/config.json": []byte(`{"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 4, "hidden_act": "gelu_new"}`)},
			ErrUnsupported, `hidden_act "gelu_new" is not supported`},
		{"F8 tensor", map[string][]byte{"text_encoder/model.safetensors": safetensorsFile(`{"w":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}}`, []byte{1, 2})},
			ErrUnsupported, `unsupported dtype "F8_E4M3"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Open(testutil.KitFolder(t, "sd1-tiny/diffusers", c.replace), WithLibrary(filepath.Join(t.TempDir(), "no-library")))
			assert.ErrorContains(t, err, c.wantErr)
			assert.ErrorIs(t, err, c.kind)
		})
	}
}

// A tokenizer folder with broken files fails Open with ErrBadModel; it used
// to panic setting up the pipeline.
func TestOpenRejectsBrokenTokenizer(t *testing.T) {
	testLibrary(t)
	cases := []struct {
		name, file, content, wantErr string
	}{
		{"vocab not json", "vocab.json", "{", "vocab.json"},
		{"empty vocab", "vocab.json", "{}", "empty vocabulary"},
		{"vocab is a list", "vocab.json", "[]", "vocab.json"},
		{"garbage merges", "merges.txt", "\x00garbage\n", "merges.txt: line 1"},
		{"empty merges", "merges.txt", "", "merges.txt: no merges"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := testutil.KitFolder(t, "sd1-tiny/diffusers", map[string][]byte{filepath.Join("tokenizer", c.file): []byte(c.content)})
			p, err := Open(dir, WithDevice(DeviceCPU), WithThreads(2), WithLibrary(filepath.Join(testutil.RepoRoot(t), "build")))
			if err == nil {
				p.Close()
			}
			assert.ErrorContains(t, err, c.wantErr)
			assert.ErrorIs(t, err, ErrBadModel)
		})
	}
}

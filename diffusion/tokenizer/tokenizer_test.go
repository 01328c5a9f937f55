package tokenizer

import (
	"encoding/json"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/gosd/gosd/internal/testutil"
)

type referenceEncoding struct {
	Padded      []int `json:"input_ids_padded_77"`
	Untruncated []int `json:"input_ids_untruncated"`
}

// loadReference reads the conformance kit's tokenizer.json: prompt -> ids from
// transformers' CLIPTokenizer as diffusers configures it for SD 1.x.
func loadReference(t *testing.T) map[string]referenceEncoding {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(testutil.ConformanceDir(t), "tokenizer.json"))
	require.NoError(t, err)
	var ref map[string]referenceEncoding
	require.NoError(t, json.Unmarshal(data, &ref))
	require.NotEmpty(t, ref)
	return ref
}

func kitTokenizerDir(t *testing.T, model string) string {
	return filepath.Join(testutil.ConformanceDir(t), model, "diffusers", "tokenizer")
}

func TestEncodeMatchesReference(t *testing.T) {
	ref := loadReference(t)
	def, err := Default()
	require.NoError(t, err)
	sd1, err := Load(kitTokenizerDir(t, "sd1-tiny"))
	require.NoError(t, err)
	for name, tok := range map[string]*Tokenizer{"default": def, "sd1-folder": sd1} {
		for prompt, want := range ref {
			t.Run(name+"/"+prompt, func(t *testing.T) {
				untruncated := append([]int{tok.BOS()}, tok.Encode(prompt)...)
				untruncated = append(untruncated, tok.EOS())
				assert.Equal(t, want.Untruncated, untruncated)
				assert.Equal(t, want.Padded, tok.EncodePadded(prompt, tok.EOS()))
				assert.Equal(t, want.Padded, tok.EncodePadded(prompt, tok.PadID()))
			})
		}
	}
}

// SD 2.x: the same ids, padded with "!" (id 0) after the end-of-text id.
func TestEncodePaddedSD2(t *testing.T) {
	ref := loadReference(t)
	sd2, err := Load(kitTokenizerDir(t, "sd2-tiny-v"))
	require.NoError(t, err)
	require.Equal(t, 0, sd2.PadID())
	for prompt, want := range ref {
		t.Run(prompt, func(t *testing.T) {
			n := min(len(want.Untruncated), ContextLength)
			expected := append([]int{}, want.Padded[:n]...)
			for len(expected) < ContextLength {
				expected = append(expected, 0)
			}
			assert.Equal(t, expected, sd2.EncodePadded(prompt, sd2.PadID()))
		})
	}
}

// CLIP derives its vocabulary from the merges; the derivation from the
// embedded merges must reproduce a real vocab.json id for id.
func TestDefaultVocabMatchesVocabJSON(t *testing.T) {
	var want map[string]int
	data, err := os.ReadFile(filepath.Join(kitTokenizerDir(t, "sd1-tiny"), "vocab.json"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(data, &want))
	def, err := Default()
	require.NoError(t, err)
	assert.Equal(t, 49408, def.VocabSize())
	assert.Equal(t, want, def.vocab)
	assert.Equal(t, 49406, def.BOS())
	assert.Equal(t, 49407, def.EOS())
	assert.Equal(t, 49407, def.PadID())
}

func TestEncodePaddedTruncation(t *testing.T) {
	tok, err := Default()
	require.NoError(t, err)
	word := tok.Encode("cat")
	require.Len(t, word, 1)
	for _, n := range []int{0, 1, 74, 75, 76, 200} {
		text := ""
		for range n {
			text += "cat "
		}
		ids := tok.EncodePadded(text, 7)
		require.Len(t, ids, ContextLength)
		kept := min(n, ChunkLength)
		assert.Equal(t, tok.BOS(), ids[0], "n=%d", n)
		for i := 1; i <= kept; i++ {
			assert.Equal(t, word[0], ids[i], "n=%d i=%d", n, i)
		}
		assert.Equal(t, tok.EOS(), ids[kept+1], "n=%d", n)
		for i := kept + 2; i < ContextLength; i++ {
			assert.Equal(t, 7, ids[i], "n=%d i=%d", n, i)
		}
	}
}

func TestSpecialTokensInText(t *testing.T) {
	tok, err := Default()
	require.NoError(t, err)
	cat := tok.Encode("cat")
	dog := tok.Encode("dog")
	tests := []struct {
		text string
		want []int
	}{
		{"cat<|endoftext|>dog", concat(cat, []int{tok.EOS()}, dog)},
		{"<|startoftext|>cat", concat([]int{tok.BOS()}, cat)},
		{"cat <|endoftext|><|startoftext|> dog", concat(cat, []int{tok.EOS(), tok.BOS()}, dog)},
		// Matched on the raw text, case-sensitively: upper case stays plain text.
		{"<|ENDOFTEXT|>", concat(tok.Encode("<|"), tok.Encode("endoftext"), tok.Encode("|>"))},
	}
	for _, tc := range tests {
		t.Run(tc.text, func(t *testing.T) {
			assert.Equal(t, tc.want, tok.Encode(tc.text))
		})
	}
}

func concat(parts ...[]int) []int {
	var out []int
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func TestEncodeConcurrent(t *testing.T) {
	tok, err := Default()
	require.NoError(t, err)
	prompts := []string{"a red apple on a table", "photo of a cat, 4k", "naïve café 東京 🍎", "(masterpiece) don't"}
	want := make([][]int, len(prompts))
	for i, p := range prompts {
		want[i] = tok.Encode(p)
	}
	tok.cache = wordCache{}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				k := (g + i) % len(prompts)
				assert.Equal(t, want[k], tok.Encode(prompts[k]))
			}
		}()
	}
	wg.Wait()
}

// The reference normalizes to NFC first: decomposed accents tokenize like the
// precomposed ones of the kit's prompt.
func TestEncodeDecomposedAccents(t *testing.T) {
	ref := loadReference(t)
	const composed = "naïve café — résumé 東京 🍎"
	want, ok := ref[composed]
	require.True(t, ok, "kit prompt %q", composed)
	decomposed := "nai\u0308ve cafe\u0301 — re\u0301sume\u0301 東京 🍎"
	require.NotEqual(t, composed, decomposed)
	tok, err := Default()
	require.NoError(t, err)
	assert.Equal(t, want.Padded, tok.EncodePadded(decomposed, tok.EOS()))
}

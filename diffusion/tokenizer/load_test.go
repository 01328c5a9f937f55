package tokenizer

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/gosd/gosd/internal/sderr"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A miniature tokenizer folder: "ab</w>" is reachable only through the merge.
const (
	tinyVocab  = `{"!": 0, "a": 1, "b": 2, "a</w>": 3, "b</w>": 4, "ab</w>": 5, "<|startoftext|>": 6, "<|endoftext|>": 7}`
	tinyMerges = "#version: 0.2\na b</w>\n"
)

func writeFolder(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644))
	}
	return dir
}

func TestLoad(t *testing.T) {
	tests := []struct {
		name    string
		files   map[string]string
		wantPad int
		wantErr string
	}{
		{"no config pads with end-of-text", map[string]string{"vocab.json": tinyVocab, "merges.txt": tinyMerges}, 7, ""},
		{"pad token string", map[string]string{"vocab.json": tinyVocab, "merges.txt": tinyMerges, "tokenizer_config.json": `{"pad_token": "!"}`}, 0, ""},
		{"pad token object", map[string]string{"vocab.json": tinyVocab, "merges.txt": tinyMerges, "tokenizer_config.json": `{"pad_token": {"content": "!", "lstrip": false}}`}, 0, ""},
		{"config without pad token", map[string]string{"vocab.json": tinyVocab, "merges.txt": tinyMerges, "tokenizer_config.json": `{"model_max_length": 77}`}, 7, ""},
		{"missing folder files", map[string]string{}, 0, "vocab.json"},
		{"vocab not json", map[string]string{"vocab.json": "{", "merges.txt": tinyMerges}, 0, "vocab.json"},
		{"empty vocab", map[string]string{"vocab.json": "{}", "merges.txt": tinyMerges}, 0, "empty vocabulary"},
		{"vocab is a list", map[string]string{"vocab.json": "[]", "merges.txt": tinyMerges}, 0, "vocab.json"},
		{"vocab is null", map[string]string{"vocab.json": "null", "merges.txt": tinyMerges}, 0, "empty vocabulary"},
		{"vocab of strings", map[string]string{"vocab.json": `{"a": "0"}`, "merges.txt": tinyMerges}, 0, "vocab.json"},
		{"negative id", map[string]string{"vocab.json": `{"<|startoftext|>": 0, "<|endoftext|>": -1}`, "merges.txt": tinyMerges}, 0, `token "<|endoftext|>" has id -1, outside 0..1`},
		{"id past the vocabulary", map[string]string{"vocab.json": `{"<|startoftext|>": 0, "<|endoftext|>": 49407}`, "merges.txt": tinyMerges}, 0, "has id 49407, outside 0..1"},
		{"empty merges", map[string]string{"vocab.json": tinyVocab, "merges.txt": ""}, 0, "no merges"},
		{"garbage merges", map[string]string{"vocab.json": tinyVocab, "merges.txt": "\x00\x01\x02garbage\n"}, 0, "line 1: want two space-separated symbols"},
		{"missing merges", map[string]string{"vocab.json": tinyVocab}, 0, "merges.txt"},
		{"bad merge line", map[string]string{"vocab.json": tinyVocab, "merges.txt": "#version: 0.2\na b c\n"}, 0, "line 2"},
		{"no merges", map[string]string{"vocab.json": tinyVocab, "merges.txt": "#version: 0.2\n"}, 0, "no merges"},
		{"special token not in vocab", map[string]string{"vocab.json": `{"a": 0}`, "merges.txt": tinyMerges}, 0, `"<|startoftext|>"`},
		{"unknown pad token", map[string]string{"vocab.json": tinyVocab, "merges.txt": tinyMerges, "tokenizer_config.json": `{"pad_token": "<pad>"}`}, 0, `"<pad>"`},
		{"config not json", map[string]string{"vocab.json": tinyVocab, "merges.txt": tinyMerges, "tokenizer_config.json": `{"pad_token": 3}`}, 0, "tokenizer_config.json"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tok, err := Load(writeFolder(t, tc.files))
			if tc.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.wantErr)
				assert.ErrorIs(t, err, sderr.BadModel, "diffusion.ErrBadModel")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.wantPad, tok.PadID())
			assert.Equal(t, 6, tok.BOS())
			assert.Equal(t, 7, tok.EOS())
			assert.Equal(t, 8, tok.VocabSize())
			assert.Equal(t, []int{5, 3, 4}, tok.Encode("ab a b"))
		})
	}
}

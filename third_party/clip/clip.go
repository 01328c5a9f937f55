// Package clip embeds the byte-pair-encoding merge list of OpenAI's CLIP text
// tokenizer, the vocabulary every Stable Diffusion 1.x and 2.x text encoder
// uses. See README.md for its source and LICENSE for its terms (MIT).
//
// Only the merges are stored: CLIP derives its 49,408-entry vocabulary from
// them (256 byte symbols, the same with an end-of-word suffix, one token per
// merge, then the two special tokens), which package
// github.com/gosd/gosd/diffusion/tokenizer reproduces.
package clip

import (
	"bytes"
	"compress/gzip"
	_ "embed"
	"fmt"
	"io"
)

// MergeCount is the number of merges CLIP uses: the first 49152-256-2 lines
// after the version header of bpe_simple_vocab_16e6.txt.
const MergeCount = 48894

//go:embed bpe_simple_vocab_16e6.merges.txt.gz
var mergesGzip []byte

// OpenMerges returns the merges in the format of a Hugging Face merges.txt:
// a "#version: 0.2" header line, then one space-separated pair per line in
// priority order (MergeCount lines). The caller closes the reader.
func OpenMerges() (io.ReadCloser, error) {
	zr, err := gzip.NewReader(bytes.NewReader(mergesGzip))
	if err != nil {
		return nil, fmt.Errorf("clip: embedded merges: %w", err)
	}
	return zr, nil
}

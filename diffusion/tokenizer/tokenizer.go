// Package tokenizer is CLIP's byte-level BPE tokenizer in pure Go, exact to the
// tokenizer diffusers uses for Stable Diffusion 1.x and 2.x, plus the prompt
// emphasis syntax and long-prompt chunking of the AUTOMATIC1111 web UI.
//
// Basic use:
//
//	tok, err := tokenizer.Default() // the embedded CLIP vocabulary
//	ids := tok.EncodePadded("a photograph of an astronaut", tok.PadID())
//
// SD 1.x pads with the end-of-text id (49407), SD 2.x with 0 ("!"); Load reads
// a model's tokenizer folder and picks the pad id from its tokenizer_config.json.
// A Tokenizer is safe for concurrent use.
package tokenizer

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/gosd/gosd/internal/sderr"
	"github.com/gosd/gosd/third_party/clip"
)

const (
	// ContextLength is the number of ids the CLIP text encoder takes.
	ContextLength = 77
	// ChunkLength is the number of prompt tokens that fit between the
	// begin- and end-of-text ids of one sequence.
	ChunkLength = ContextLength - 2

	startOfText = "<|startoftext|>"
	endOfText   = "<|endoftext|>"
)

// Tokenizer turns text into CLIP token ids.
type Tokenizer struct {
	vocab    map[string]int
	ranks    map[string]int // pairKey(left, right) -> merge priority, lower first
	specials map[string]int // literal special-token text -> id
	bos, eos int
	pad      int
	comma    int // id of ",</w>", or -1
	cache    wordCache
}

// newTokenizer builds a tokenizer from a vocabulary, the merges, and the text
// of its begin-of-text, end-of-text and padding tokens.
func newTokenizer(vocab map[string]int, merges []merge, bosTok, eosTok, padTok string) (*Tokenizer, error) {
	t := &Tokenizer{vocab: vocab, ranks: make(map[string]int, len(merges)), comma: -1}
	for i, m := range merges {
		key := pairKey(m.Left, m.Right)
		if _, dup := t.ranks[key]; !dup {
			t.ranks[key] = i
		}
	}
	ids := make([]int, 3)
	for i, tok := range []string{bosTok, eosTok, padTok} {
		id, ok := vocab[tok]
		if !ok {
			return nil, fmt.Errorf("special token %q is not in the vocabulary", tok)
		}
		ids[i] = id
	}
	t.bos, t.eos, t.pad = ids[0], ids[1], ids[2]
	t.specials = map[string]int{bosTok: t.bos, eosTok: t.eos}
	if id, ok := vocab[","+endOfWord]; ok {
		t.comma = id
	}
	return t, nil
}

var defaultTokenizer = sync.OnceValues(func() (*Tokenizer, error) {
	r, err := clip.OpenMerges()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	merges, err := parseMerges(r)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: embedded merges: %w", err)
	}
	return newTokenizer(clipVocab(merges, startOfText, endOfText), merges, startOfText, endOfText, endOfText)
})

// Default returns the tokenizer of the CLIP vocabulary embedded in
// third_party/clip, as SD 1.x configures it (padding with end-of-text). It is
// built once and shared.
func Default() (*Tokenizer, error) { return defaultTokenizer() }

// Load reads a Hugging Face tokenizer folder (a diffusers model's tokenizer/):
// vocab.json, merges.txt and, when present, tokenizer_config.json for the
// begin/end-of-text and padding tokens (SD 2.x pads with "!", id 0). The
// vocabulary must map tokens to the ids 0..n-1 (as Hugging Face writes it)
// and hold the special tokens; merges.txt must hold merges. Every error,
// a missing file included, matches diffusion.ErrBadModel (and
// modelfile.ErrBadModel) with errors.Is.
func Load(dir string) (*Tokenizer, error) {
	t, err := load(dir)
	return t, sderr.Mark(sderr.BadModel, err)
}

func load(dir string) (*Tokenizer, error) {
	vocabPath := filepath.Join(dir, "vocab.json")
	var vocab map[string]int
	if err := readJSON(vocabPath, &vocab); err != nil {
		return nil, err
	}
	if len(vocab) == 0 {
		return nil, fmt.Errorf("tokenizer: %s: empty vocabulary", vocabPath)
	}
	// Ids index the text encoder's embedding table, which the caller sizes
	// against VocabSize: one outside 0..n-1 would be out of its range.
	for tok, id := range vocab {
		if id < 0 || id >= len(vocab) {
			return nil, fmt.Errorf("tokenizer: %s: token %q has id %d, outside 0..%d", vocabPath, tok, id, len(vocab)-1)
		}
	}
	mergesPath := filepath.Join(dir, "merges.txt")
	f, err := os.Open(mergesPath)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	defer f.Close()
	merges, err := parseMerges(f)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %s: %w", mergesPath, err)
	}
	bosTok, eosTok, padTok := startOfText, endOfText, endOfText
	cfgPath := filepath.Join(dir, "tokenizer_config.json")
	var cfg struct {
		BOS configToken `json:"bos_token"`
		EOS configToken `json:"eos_token"`
		Pad configToken `json:"pad_token"`
	}
	switch err := readJSON(cfgPath, &cfg); {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, err
	default:
		bosTok, eosTok, padTok = cfg.BOS.or(bosTok), cfg.EOS.or(eosTok), cfg.Pad.or(eosTok)
	}
	t, err := newTokenizer(vocab, merges, bosTok, eosTok, padTok)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %s: %w", dir, err)
	}
	return t, nil
}

// configToken is a special token in tokenizer_config.json: a string, or an
// object whose "content" is the string.
type configToken string

func (c *configToken) UnmarshalJSON(data []byte) error {
	var s string
	if err := json.Unmarshal(data, &s); err == nil {
		*c = configToken(s)
		return nil
	}
	var obj struct {
		Content string `json:"content"`
	}
	if err := json.Unmarshal(data, &obj); err != nil {
		return fmt.Errorf("special token: want a string or an object with content, got %s", data)
	}
	*c = configToken(obj.Content)
	return nil
}

func (c configToken) or(def string) string {
	if c == "" {
		return def
	}
	return string(c)
}

func readJSON(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("tokenizer: %w", err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("tokenizer: %s: %w", path, err)
	}
	return nil
}

// BOS returns the begin-of-text id (49406 for CLIP).
func (t *Tokenizer) BOS() int { return t.bos }

// EOS returns the end-of-text id (49407 for CLIP).
func (t *Tokenizer) EOS() int { return t.eos }

// PadID returns the padding id the tokenizer was configured with: EOS for
// SD 1.x and Default, 0 for SD 2.x folders.
func (t *Tokenizer) PadID() int { return t.pad }

// VocabSize returns the number of tokens in the vocabulary (49408 for CLIP).
func (t *Tokenizer) VocabSize() int { return len(t.vocab) }

// Encode returns the ids of text without begin/end-of-text ids and without
// truncation. The literal texts "<|startoftext|>" and "<|endoftext|>" become
// their special ids, as in the reference. Invalid UTF-8 is read as U+FFFD.
func (t *Tokenizer) Encode(text string) []int {
	var ids []int
	text = validUTF8(text)
	for text != "" {
		at, special := len(text), ""
		for s := range t.specials {
			if i := strings.Index(text, s); i >= 0 && i < at {
				at, special = i, s
			}
		}
		ids = t.appendWords(ids, text[:at])
		if special == "" {
			break
		}
		ids = append(ids, t.specials[special])
		text = text[at+len(special):]
	}
	return ids
}

func (t *Tokenizer) appendWords(ids []int, text string) []int {
	splitWords(lower(nfc(text)), func(word string) {
		wordIDs, ok := t.cache.get(word)
		if !ok {
			wordIDs = bpe(word, t.ranks, t.vocab, t.eos)
			t.cache.put(word, wordIDs)
		}
		ids = append(ids, wordIDs...)
	})
	return ids
}

// EncodePadded returns the ContextLength ids diffusers feeds the text encoder:
// begin-of-text, at most ChunkLength tokens of text, end-of-text, then padID
// up to ContextLength.
func (t *Tokenizer) EncodePadded(text string, padID int) []int {
	tokens := t.Encode(text)
	if len(tokens) > ChunkLength {
		tokens = tokens[:ChunkLength]
	}
	ids := make([]int, 0, ContextLength)
	ids = append(ids, t.bos)
	ids = append(ids, tokens...)
	ids = append(ids, t.eos)
	for len(ids) < ContextLength {
		ids = append(ids, padID)
	}
	return ids
}

package tokenizer

import (
	"fmt"
	"slices"
)

// commaBacktrack is how far back from a chunk's end a comma may be for the
// words after it to move to the next chunk, so that a phrase is not cut in
// two (the web UI's comma_padding_backtrack setting, default 20).
const commaBacktrack = 20

// Chunk is one sequence for the text encoder: begin-of-text, up to ChunkLength
// prompt tokens, end-of-text, padding; and the emphasis weight of each id
// (1 for the begin/end-of-text and padding ids).
type Chunk struct {
	IDs     [ContextLength]int32
	Weights [ContextLength]float32
}

// EncodeWeighted tokenizes a prompt with emphasis syntax (see ParseEmphasis)
// into chunks of ChunkLength tokens, as the AUTOMATIC1111 web UI does for
// prompts of any length:
//   - each segment is tokenized on its own, so emphasis brackets also end words;
//   - a chunk is full at ChunkLength tokens; when the token that would
//     overflow it is not a comma and the chunk's last comma is at most
//     commaBacktrack tokens from its end, the tokens after that comma move
//     to the next chunk;
//   - BREAK ends the current chunk (an empty prompt, or BREAK at the start,
//     still gives a chunk of padding);
//   - each chunk is begin-of-text, its tokens, end-of-text, then padID.
//
// A prompt without emphasis and of at most ChunkLength tokens gives one chunk
// whose ids are EncodePadded's and whose weights are all 1.
//
// Where the web UI differs: it pads SD 1.x chunks with end-of-text and, for
// SD 2.x, turns everything after the first end-of-text id into padding; this
// pads after the chunk's own end-of-text, which is the same unless the prompt
// spells out "<|endoftext|>". Prompt editing ("[a:b:0.5]", "[a|b]") is not handled
// here; textual-inversion embeddings are EncodeWeightedWith's.
func (t *Tokenizer) EncodeWeighted(prompt string, padID int) ([]Chunk, error) {
	return t.EncodeWeightedWith(prompt, padID, nil)
}

// Word is a textual-inversion token: where the prompt's tokens spell Text (tokenized as
// a prompt word, so matching is case-insensitive and whole-token as in the web UI), IDs
// stand in their place (ids past the vocabulary that the text encoder maps to the
// embedding's vectors).
type Word struct {
	Text string
	IDs  []int
}

// EncodeWeightedWith is EncodeWeighted with the words' ids in place of their text, as
// the web UI inserts embeddings: the longest word matching first; a word's ids take the
// emphasis of its segment and stay in one chunk (a word that does not fit in the current
// chunk starts the next). A word of more than ChunkLength ids is an error.
func (t *Tokenizer) EncodeWeightedWith(prompt string, padID int, words []Word) ([]Chunk, error) {
	match, err := t.matcher(words)
	if err != nil {
		return nil, err
	}
	segments, err := ParseEmphasis(prompt)
	if err != nil {
		return nil, err
	}
	var (
		chunks    []Chunk
		ids       []int
		weights   []float32
		lastComma = -1
	)
	flush := func() {
		chunks = append(chunks, t.chunk(ids, weights, padID))
		ids, weights, lastComma = nil, nil, -1
	}
	for _, seg := range segments {
		if seg.IsBreak() {
			flush()
			continue
		}
		w := float32(seg.Weight)
		toks := t.Encode(seg.Text)
		for i := 0; i < len(toks); i++ {
			if word, n := match(toks[i:]); word != nil {
				if len(ids)+len(word.IDs) > ChunkLength {
					flush()
				}
				for _, id := range word.IDs {
					ids = append(ids, id)
					weights = append(weights, w)
				}
				i += n - 1
				continue
			}
			id := toks[i]
			switch {
			case id == t.comma:
				lastComma = len(ids)
			case len(ids) == ChunkLength && lastComma >= 0 && len(ids)-lastComma <= commaBacktrack:
				movedIDs := append([]int(nil), ids[lastComma+1:]...)
				movedWeights := append([]float32(nil), weights[lastComma+1:]...)
				ids, weights = ids[:lastComma+1], weights[:lastComma+1]
				flush()
				ids, weights = movedIDs, movedWeights
			}
			if len(ids) == ChunkLength {
				flush()
			}
			ids = append(ids, id)
			weights = append(weights, w)
		}
	}
	if len(ids) > 0 || len(chunks) == 0 {
		flush()
	}
	return chunks, nil
}

// matcher returns a function finding the word that toks starts with (longest text
// first) and the number of tokens it spans.
func (t *Tokenizer) matcher(words []Word) (func(toks []int) (*Word, int), error) {
	type spelled struct {
		w    *Word
		toks []int
	}
	var sp []spelled
	for i := range words {
		w := &words[i]
		if len(w.IDs) == 0 || len(w.IDs) > ChunkLength {
			return nil, fmt.Errorf("embedding %q has %d vectors: a chunk holds 1 to %d", w.Text, len(w.IDs), ChunkLength)
		}
		if toks := t.Encode(w.Text); len(toks) > 0 {
			sp = append(sp, spelled{w, toks})
		}
	}
	slices.SortStableFunc(sp, func(a, b spelled) int { return len(b.toks) - len(a.toks) })
	return func(toks []int) (*Word, int) {
		for _, s := range sp {
			if len(toks) >= len(s.toks) && slices.Equal(toks[:len(s.toks)], s.toks) {
				return s.w, len(s.toks)
			}
		}
		return nil, 0
	}, nil
}

// chunk wraps up to ChunkLength tokens into one encoder sequence.
func (t *Tokenizer) chunk(ids []int, weights []float32, padID int) Chunk {
	var c Chunk
	for i := range c.IDs {
		c.IDs[i] = int32(padID)
		c.Weights[i] = 1
	}
	c.IDs[0] = int32(t.bos)
	for i, id := range ids {
		c.IDs[1+i] = int32(id)
		c.Weights[1+i] = weights[i]
	}
	c.IDs[1+len(ids)] = int32(t.eos)
	return c
}

// EncodePlain tokenizes a prompt as diffusers' pipelines do, without emphasis
// syntax: one chunk of EncodePadded's ids (brackets and BREAK are ordinary
// text), all weights 1. dropped counts the tokens past ChunkLength that were
// cut off, for the warning diffusers prints.
func (t *Tokenizer) EncodePlain(prompt string, padID int) (c Chunk, dropped int) {
	c, dropped, _ = t.EncodePlainWith(prompt, padID, nil)
	return c, dropped
}

// EncodePlainWith is EncodePlain with the words' ids in place of their text (the
// longest word matching first), as diffusers' pipelines read the tokens a loaded
// textual inversion added: its name stands for its vectors. The truncation counts the
// words' ids. A word of more than ChunkLength ids is an error.
func (t *Tokenizer) EncodePlainWith(prompt string, padID int, words []Word) (c Chunk, dropped int, err error) {
	match, err := t.matcher(words)
	if err != nil {
		return c, 0, err
	}
	toks := t.Encode(prompt)
	ids := make([]int, 0, len(toks))
	for i := 0; i < len(toks); i++ {
		if word, n := match(toks[i:]); word != nil {
			ids = append(ids, word.IDs...)
			i += n - 1
			continue
		}
		ids = append(ids, toks[i])
	}
	if len(ids) > ChunkLength {
		dropped = len(ids) - ChunkLength
		ids = ids[:ChunkLength]
	}
	weights := make([]float32, len(ids))
	for i := range weights {
		weights[i] = 1
	}
	return t.chunk(ids, weights, padID), dropped, nil
}

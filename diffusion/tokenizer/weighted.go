package tokenizer

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
// spells out "<|endoftext|>". Textual-inversion embeddings and prompt editing
// ("[a:b:0.5]", "[a|b]") are not handled here.
func (t *Tokenizer) EncodeWeighted(prompt string, padID int) ([]Chunk, error) {
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
		for _, id := range t.Encode(seg.Text) {
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
	ids := t.Encode(prompt)
	if len(ids) > ChunkLength {
		dropped = len(ids) - ChunkLength
		ids = ids[:ChunkLength]
	}
	weights := make([]float32, len(ids))
	for i := range weights {
		weights[i] = 1
	}
	return t.chunk(ids, weights, padID), dropped
}

package tokenizer

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// run is n copies of one token with one weight.
type run struct {
	id     int
	n      int
	weight float32
}

// wantChunk builds the expected sequence: BOS, the runs, EOS, then pad.
func wantChunk(tok *Tokenizer, pad int, runs ...run) Chunk {
	var c Chunk
	ids := []int32{int32(tok.BOS())}
	weights := []float32{1}
	for _, r := range runs {
		for range r.n {
			ids = append(ids, int32(r.id))
			weights = append(weights, r.weight)
		}
	}
	ids = append(ids, int32(tok.EOS()))
	weights = append(weights, 1)
	for i := range c.IDs {
		c.IDs[i], c.Weights[i] = int32(pad), 1
		if i < len(ids) {
			c.IDs[i], c.Weights[i] = ids[i], weights[i]
		}
	}
	return c
}

func single(t *testing.T, tok *Tokenizer, word string) int {
	t.Helper()
	ids := tok.Encode(word)
	require.Len(t, ids, 1, "%q", word)
	return ids[0]
}

func TestEncodeWeightedPlainMatchesEncodePadded(t *testing.T) {
	tok, err := Default()
	require.NoError(t, err)
	prompts := []string{"", "a photograph of an astronaut riding a horse", "A RED apple, on a wooden table!!", "naïve café — résumé 東京 🍎", strings.Repeat("word ", 75)}
	for prompt := range loadReference(t) {
		if !strings.ContainsAny(prompt, `()[]\:`) && !strings.Contains(prompt, "BREAK") && len(tok.Encode(prompt)) <= ChunkLength {
			prompts = append(prompts, prompt)
		}
	}
	for _, prompt := range prompts {
		for _, pad := range []int{tok.EOS(), 0} {
			chunks, err := tok.EncodeWeighted(prompt, pad)
			require.NoError(t, err)
			require.Len(t, chunks, 1, "%q", prompt)
			padded := tok.EncodePadded(prompt, pad)
			for i := range ContextLength {
				assert.Equal(t, int32(padded[i]), chunks[0].IDs[i], "%q pad %d id %d", prompt, pad, i)
				assert.Equal(t, float32(1), chunks[0].Weights[i], "%q weight %d", prompt, i)
			}
		}
	}
}

func TestEncodeWeighted(t *testing.T) {
	tok, err := Default()
	require.NoError(t, err)
	cat, dog, comma := single(t, tok, "cat"), single(t, tok, "dog"), single(t, tok, ",")
	red, apple := single(t, tok, "red"), single(t, tok, "apple")
	eos := tok.EOS()
	words := func(w string, n int) string { return strings.Repeat(w+" ", n) }
	tests := []struct {
		name   string
		prompt string
		pad    int
		want   [][]run
	}{
		{"empty", "", eos, [][]run{{}}},
		{"weights", "a (red:1.5) [apple]", 0, [][]run{{{single(t, tok, "a"), 1, 1}, {red, 1, 1.5}, {apple, 1, float32(1 / 1.1)}}}},
		{"75 tokens fit", words("cat", 75), eos, [][]run{{{cat, 75, 1}}}},
		{"76 tokens", words("cat", 76), eos, [][]run{{{cat, 75, 1}}, {{cat, 1, 1}}}},
		{"long prompt", words("cat", 160), 0, [][]run{{{cat, 75, 1}}, {{cat, 75, 1}}, {{cat, 10, 1}}}},
		{
			"comma near the end moves the rest",
			words("cat", 70) + ", " + words("dog", 10), eos,
			[][]run{{{cat, 70, 1}, {comma, 1, 1}}, {{dog, 10, 1}}},
		},
		{
			"comma exactly 20 back",
			words("cat", 55) + ", " + words("dog", 30), eos,
			[][]run{{{cat, 55, 1}, {comma, 1, 1}}, {{dog, 30, 1}}},
		},
		{
			"comma 21 back stays",
			words("cat", 54) + ", " + words("dog", 30), eos,
			[][]run{{{cat, 54, 1}, {comma, 1, 1}, {dog, 20, 1}}, {{dog, 10, 1}}},
		},
		{
			"comma as the overflowing token",
			words("cat", 75) + ", dog", eos,
			[][]run{{{cat, 75, 1}}, {{comma, 1, 1}, {dog, 1, 1}}},
		},
		{
			"comma as the last token of a full chunk",
			words("cat", 74) + ", dog", eos,
			[][]run{{{cat, 74, 1}, {comma, 1, 1}}, {{dog, 1, 1}}},
		},
		{
			"moved tokens keep their weights",
			words("cat", 72) + ", (dog:1.2) dog dog dog", eos,
			[][]run{{{cat, 72, 1}, {comma, 1, 1}}, {{dog, 1, 1.2}, {dog, 3, 1}}},
		},
		{"break", "cat BREAK dog", eos, [][]run{{{cat, 1, 1}}, {{dog, 1, 1}}}},
		{"break alone", "BREAK", eos, [][]run{{}}},
		{"break at the start", "BREAK cat", eos, [][]run{{}, {{cat, 1, 1}}}},
		{"break after a full chunk", words("cat", 75) + "BREAK dog", eos, [][]run{{{cat, 75, 1}}, {{dog, 1, 1}}}},
		{"break inside brackets is text", "(cat BREAK)", eos, [][]run{{{cat, 1, 1.1}, {single(t, tok, "break"), 1, -1.1}}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			chunks, err := tok.EncodeWeighted(tc.prompt, tc.pad)
			require.NoError(t, err)
			require.Len(t, chunks, len(tc.want))
			for i, runs := range tc.want {
				assert.Equal(t, wantChunk(tok, tc.pad, runs...), chunks[i], "chunk %d", i)
			}
		})
	}
}

// Emphasis brackets end words: each segment is tokenized on its own.
func TestEncodeWeightedSegmentsEndWords(t *testing.T) {
	tok, err := Default()
	require.NoError(t, err)
	chunks, err := tok.EncodeWeighted("(masterpiece)s", tok.EOS())
	require.NoError(t, err)
	require.Len(t, chunks, 1)
	want := append(tok.Encode("masterpiece"), tok.Encode("s")...)
	require.NotEqual(t, want, tok.Encode("masterpieces"))
	for i, id := range want {
		assert.Equal(t, int32(id), chunks[0].IDs[1+i])
	}
	assert.Equal(t, int32(tok.EOS()), chunks[0].IDs[1+len(want)])
}

func TestEncodeWeightedBadWeight(t *testing.T) {
	tok, err := Default()
	require.NoError(t, err)
	_, err = tok.EncodeWeighted("(cat:1..2)", tok.EOS())
	require.Error(t, err)
}

// TestEncodePlainMatchesDiffusers checks plain prompts against the kit's
// diffusers encodings, brackets and over-long prompts included: one chunk of
// the truncated ids, weights 1, and the count of the tokens cut off.
func TestEncodePlainMatchesDiffusers(t *testing.T) {
	tok, err := Default()
	require.NoError(t, err)
	ref := loadReference(t)
	require.Contains(t, ref, "(masterpiece) [best quality] don't stop; it's 1024x768 #tags @user 3.14", "a prompt with brackets")
	for prompt, want := range ref {
		t.Run(prompt, func(t *testing.T) {
			c, dropped := tok.EncodePlain(prompt, tok.EOS())
			ids := make([]int, ContextLength)
			for i, id := range c.IDs {
				ids[i] = int(id)
				assert.Equal(t, float32(1), c.Weights[i])
			}
			assert.Equal(t, want.Padded, ids)
			assert.Equal(t, max(len(want.Untruncated)-ContextLength, 0), dropped)
		})
	}
	// Emphasis syntax is text, and long prompts are cut, not chunked (SD 2.x
	// padding).
	for _, prompt := range []string{"(detailed) [x] BREAK (y:1.5)", strings.Repeat("((word)) ", 80)} {
		c, dropped := tok.EncodePlain(prompt, 0)
		padded := tok.EncodePadded(prompt, 0)
		for i := range ContextLength {
			assert.Equal(t, int32(padded[i]), c.IDs[i], "%q id %d", prompt, i)
			assert.Equal(t, float32(1), c.Weights[i], "%q weight %d", prompt, i)
		}
		assert.Equal(t, max(len(tok.Encode(prompt))-ChunkLength, 0), dropped, prompt)
	}
	assert.Contains(t, tok.Encode("(detailed)"), single(t, tok, "("), "brackets are tokens")
}

func TestEncodeWeightedWithWords(t *testing.T) {
	tok, err := Default()
	require.NoError(t, err)
	cat, dog := single(t, tok, "cat"), single(t, tok, "dog")
	const e0 = 50000 // ids past the vocabulary, as the conditioner assigns them
	style := Word{Text: "my-style", IDs: []int{e0, e0 + 1, e0 + 2}}
	styleXL := Word{Text: "my-style-xl", IDs: []int{e0 + 3}}
	words := []Word{style, styleXL}
	tests := []struct {
		name   string
		prompt string
		want   []Chunk
	}{
		{"in place of the name's tokens", "cat my-style dog",
			[]Chunk{wantChunk(tok, 0, run{cat, 1, 1}, run{e0, 1, 1}, run{e0 + 1, 1, 1}, run{e0 + 2, 1, 1}, run{dog, 1, 1})}},
		{"case-insensitive, emphasis applies", "(My-Style:1.5)",
			[]Chunk{wantChunk(tok, 0, run{e0, 1, 1.5}, run{e0 + 1, 1, 1.5}, run{e0 + 2, 1, 1.5})}},
		{"longest name first", "my-style-xl cat",
			[]Chunk{wantChunk(tok, 0, run{e0 + 3, 1, 1}, run{cat, 1, 1})}},
		{"part of a word is not the name", "my-stylex",
			[]Chunk{wantChunk(tok, 0, runsOf(tok.Encode("my-stylex"))...)}},
		{"a word that does not fit starts the next chunk", strings.Repeat("cat ", 73) + "my-style",
			[]Chunk{wantChunk(tok, 0, run{cat, 73, 1}), wantChunk(tok, 0, run{e0, 1, 1}, run{e0 + 1, 1, 1}, run{e0 + 2, 1, 1})}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tok.EncodeWeightedWith(tt.prompt, 0, words)
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
	_, err = tok.EncodeWeightedWith("x", 0, []Word{{Text: "big", IDs: make([]int, ChunkLength+1)}})
	assert.ErrorContains(t, err, `embedding "big" has 76 vectors`)
}

// runsOf is one run per id, weight 1.
func runsOf(ids []int) []run {
	rs := make([]run, len(ids))
	for i, id := range ids {
		rs[i] = run{id, 1, 1}
	}
	return rs
}

// Plain syntax reads textual-inversion names as the weighted syntax does, within its one
// chunk: the words' ids count toward the 75 kept tokens.
func TestEncodePlainWithWords(t *testing.T) {
	tok, err := Default()
	require.NoError(t, err)
	cat := single(t, tok, "cat")
	const e0 = 50000
	words := []Word{{Text: "my-style", IDs: []int{e0, e0 + 1, e0 + 2}}}
	got, dropped, err := tok.EncodePlainWith("cat (my-style) dog", 0, words)
	require.NoError(t, err)
	assert.Zero(t, dropped)
	assert.Equal(t, wantChunk(tok, 0, runsOf(append(append(tok.Encode("cat ("), e0, e0+1, e0+2), tok.Encode(") dog")...))...), got,
		"brackets are text; the name still stands for its vectors")
	got, dropped, err = tok.EncodePlainWith(strings.Repeat("cat ", 73)+"my-style dog", 0, words)
	require.NoError(t, err)
	assert.Equal(t, 2, dropped, "73 + 3 + 1 tokens, 75 kept")
	assert.Equal(t, wantChunk(tok, 0, run{cat, 73, 1}, run{e0, 1, 1}, run{e0 + 1, 1, 1}), got)
	_, _, err = tok.EncodePlainWith("x", 0, []Word{{Text: "big", IDs: make([]int, ChunkLength+1)}})
	assert.ErrorContains(t, err, `embedding "big" has 76 vectors`)
}

package tokenizer

import (
	"math"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseEmphasis(t *testing.T) {
	brk := Segment{"BREAK", -1}
	tests := []struct {
		prompt string
		want   []Segment
	}{
		{"", []Segment{{"", 1}}},
		{"normal text", []Segment{{"normal text", 1}}},
		{"an (important) word", []Segment{{"an ", 1}, {"important", 1.1}, {" word", 1}}},
		{"[unimportant] word", []Segment{{"unimportant", 1 / 1.1}, {" word", 1}}},
		{"((very)) important", []Segment{{"very", 1.1 * 1.1}, {" important", 1}}},
		{"(word:1.3)", []Segment{{"word", 1.3}}},
		{"( word : 0.5 )", []Segment{{" word ", 0.5}}},
		{"(word:+.5)", []Segment{{"word", 0.5}}},
		{"(word:-1)", []Segment{{"word", -1}}},
		{"(unnecessary)(parens)", []Segment{{"unnecessaryparens", 1.1}}},
		{
			"a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
			[]Segment{
				{"a ", 1}, {"house", 1.3 * 1.1 * 1.1}, {" ", 1.1}, {"on", 1.1 / 1.1}, {" a ", 1.1},
				{"hill", 0.5 * 1.1}, {", sun, ", 1.1}, {"sky", 1.1 * 1.1 * 1.1 * 1.1}, {".", 1.1},
			},
		},
		// Escapes and stray backslashes.
		{`\(literal\]`, []Segment{{"(literal]", 1}}},
		{`a \\ b`, []Segment{{`a \ b`, 1}}},
		{`a\b`, []Segment{{"ab", 1}}},
		{`(a\)b)`, []Segment{{"a)b", 1.1}}},
		// Malformed brackets.
		{"(unbalanced", []Segment{{"unbalanced", 1.1}}},
		{"[unbalanced", []Segment{{"unbalanced", 1 / 1.1}}},
		{"closing) only]", []Segment{{"closing) only]", 1}}},
		{"(a]b)", []Segment{{"a]b", 1.1}}},
		{"([a)b]", []Segment{{"a", 1.1 / 1.1}, {"b", 1 / 1.1}}},
		{"word:1.3)", []Segment{{"word:1.3)", 1}}},
		{"[word:1.3]", []Segment{{"word:1.3", 1 / 1.1}}},
		{"(a:b)", []Segment{{"a:b", 1.1}}},
		{"(a:1.5", []Segment{{"a:1.5", 1.1}}},
		{"time 10:30", []Segment{{"time 10:30", 1}}},
		// BREAK.
		{"a BREAK b", []Segment{{"a", 1}, brk, {"b", 1}}},
		{"a  BREAK\tb", []Segment{{"a", 1}, brk, {"b", 1}}},
		{"BREAK", []Segment{{"", 1}, brk, {"", 1}}},
		{"a BREAK BREAK b", []Segment{{"a", 1}, brk, {"", 1}, brk, {"b", 1}}},
		{"BREAKfast break _BREAK BREAK_", []Segment{{"BREAKfast break _BREAK BREAK_", 1}}},
		{"a,BREAK,b", []Segment{{"a,", 1}, brk, {",b", 1}}},
		{"(a) BREAK [b]", []Segment{{"a", 1.1}, {"", 1}, brk, {"", 1}, {"b", 1 / 1.1}}},
		// Inside brackets the marker is rescaled and stops being a break.
		{"(a BREAK b)", []Segment{{"a", 1.1}, {"BREAK", -1.1}, {"b", 1.1}}},
	}
	for _, tc := range tests {
		t.Run(tc.prompt, func(t *testing.T) {
			got, err := ParseEmphasis(tc.prompt)
			require.NoError(t, err)
			require.Len(t, got, len(tc.want), "%q", got)
			for i := range got {
				assert.Equal(t, tc.want[i].Text, got[i].Text, "segment %d", i)
				assert.InDelta(t, tc.want[i].Weight, got[i].Weight, 1e-12, "segment %d", i)
				assert.Equal(t, tc.want[i].IsBreak(), got[i].IsBreak(), "segment %d", i)
			}
		})
	}
}

func TestParseEmphasisBadWeight(t *testing.T) {
	for _, prompt := range []string{"(a:1.2.3)", "(a:.)", "(a:..5)"} {
		t.Run(prompt, func(t *testing.T) {
			_, err := ParseEmphasis(prompt)
			require.Error(t, err)
			assert.Contains(t, err.Error(), "not a number")
		})
	}
}

// multiplied is factor^n multiplied out as ParseEmphasis does, one factor at a
// time, onto w (1 when omitted).
func multiplied(n int, factor float64, w ...float64) float64 {
	v := 1.0
	if len(w) > 0 {
		v = w[0]
	}
	for range n {
		v *= factor
	}
	return v
}

// TestParseEmphasisBounds checks that no prompt gives a weight that is
// infinite, NaN, or a non-zero weight that vanishes in float32: nesting past
// maxEmphasisDepth is literal text and weights are clamped.
func TestParseEmphasisBounds(t *testing.T) {
	deep := func(open, body, closing string, n int) string {
		return strings.Repeat(open, n) + body + strings.Repeat(closing, n)
	}
	over := maxEmphasisDepth + 8
	tests := []struct {
		name   string
		prompt string
		want   []Segment
	}{
		{"32 round brackets are emphasis", deep("(", "x", ")", maxEmphasisDepth),
			[]Segment{{"x", multiplied(maxEmphasisDepth, roundFactor)}}},
		{"deeper round brackets are literal", deep("(", "x", ")", over),
			[]Segment{{strings.Repeat("(", 8) + "x", multiplied(maxEmphasisDepth, roundFactor)}, {strings.Repeat(")", 8), 1}}},
		{"deeper square brackets are literal", deep("[", "x", "]", over),
			[]Segment{{strings.Repeat("[", 8) + "x", multiplied(maxEmphasisDepth, squareFactor)}, {strings.Repeat("]", 8), 1}}},
		{"mixed brackets count together", deep("(", deep("[", "x", "]", 20), ")", 20),
			[]Segment{{strings.Repeat("[", 8) + "x", multiplied(20, roundFactor, multiplied(12, squareFactor))}, {strings.Repeat("]", 8), multiplied(20, roundFactor)}}},
		{"huge explicit weight", "(x:1000000)", []Segment{{"x", maxEmphasisWeight}}},
		{"huge negative weight", "(x:-1000000)", []Segment{{"x", -maxEmphasisWeight}}},
		{"weight beyond float64", "(x:" + strings.Repeat("9", 400) + ")", []Segment{{"x", maxEmphasisWeight}}},
		{"zero inside an infinite weight", "((x:0):" + strings.Repeat("9", 400) + ")", []Segment{{"x", 0}}},
		{"nested large weights", deep("(", "x", ":100)", 10), []Segment{{"x", maxEmphasisWeight}}},
		{"tiny weight", "(x:0.0000001)", []Segment{{"x", 1.0 / maxEmphasisWeight}}},
		{"nested tiny weights", deep("(", "x", ":0.01)", 10), []Segment{{"x", 1.0 / maxEmphasisWeight}}},
		{"zero is kept", "(x:0)", []Segment{{"x", 0}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseEmphasis(tc.prompt)
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

// TestEncodeWeightedDeepNesting is the hardening case: 1000 nested brackets
// give finite, non-zero float32 weights.
func TestEncodeWeightedDeepNesting(t *testing.T) {
	tok, err := Default()
	require.NoError(t, err)
	for _, open := range []string{"(", "["} {
		closing := map[string]string{"(": ")", "[": "]"}[open]
		chunks, err := tok.EncodeWeighted(strings.Repeat(open, 1000)+"cat"+strings.Repeat(closing, 1000), tok.EOS())
		require.NoError(t, err)
		for _, c := range chunks {
			for _, w := range c.Weights {
				f := float64(w)
				require.False(t, math.IsInf(f, 0) || math.IsNaN(f), "weight %v", w)
				require.GreaterOrEqual(t, f, 1.0/maxEmphasisWeight)
				require.LessOrEqual(t, f, float64(maxEmphasisWeight))
			}
		}
	}
}

package tokenizer

import (
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

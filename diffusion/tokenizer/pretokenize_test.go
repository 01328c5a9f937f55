package tokenizer

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestSplitWords(t *testing.T) {
	tests := []struct {
		name string
		text string
		want []string
	}{
		{"empty", "", nil},
		{"only space", " \t\n", nil},
		{"words", "a red apple", []string{"a", "red", "apple"}},
		{"upper case", "A RED Apple", []string{"a", "red", "apple"}},
		{"contractions", "don't it's we're they've i'm you'll he'd", []string{"don", "'t", "it", "'s", "we", "'re", "they", "'ve", "i", "'m", "you", "'ll", "he", "'d"}},
		{"contraction before letters", "'sup", []string{"'s", "up"}},
		{"apostrophe in a symbol run", "!'s ''s", []string{"!'", "s", "''", "s"}},
		{"lone apostrophe", "rock 'n roll", []string{"rock", "'", "n", "roll"}},
		{"one digit per word", "1024x768 3.14", []string{"1", "0", "2", "4", "x", "7", "6", "8", "3", ".", "1", "4"}},
		{"other numbers", "½ Ⅻ", []string{"½", "ⅻ"}},
		{"punctuation runs", "hello,world!! (a) #tag @user", []string{"hello", ",", "world", "!!", "(", "a", ")", "#", "tag", "@", "user"}},
		{"unicode white space", "a\tb\u00a0c\u3000d\u2028e\n", []string{"a", "b", "c", "d", "e"}},
		{"accents", "naïve Café", []string{"naïve", "café"}},
		{"cjk runs are one word", "東京タワー", []string{"東京タワー"}},
		{"emoji", "🍎🍏 ok", []string{"🍎🍏", "ok"}},
		{"letters then symbols", "résumé—cv", []string{"résumé", "—", "cv"}},
		{"dotted capital I", "İstanbul", []string{"i", "\u0307", "stanbul"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			splitWords(lower(tc.text), func(w string) { got = append(got, w) })
			assert.Equal(t, tc.want, got)
		})
	}
}

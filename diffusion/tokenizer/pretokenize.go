package tokenizer

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// The reference is Hugging Face's CLIPTokenizer (the tokenizers-library one
// that transformers uses by default): the text is normalized to NFC (nfc.go),
// lower-cased, and runs of white space collapse to one space; then it is
// split into words by the pattern
//
//	's|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+
//
// keeping the matches and dropping what lies between them (white space).
// Each word is then byte-level encoded and merged with BPE on its own.
// OpenAI's original tokenizer also ran ftfy and HTML unescaping; diffusers'
// reference does not, so neither does this package.

// lower lower-cases s with Unicode's full lower-case mapping, rune by rune.
// Go's unicode.ToLower is the simple mapping; the only rune whose full
// mapping differs is U+0130 (capital I with dot above), which becomes "i"
// followed by a combining dot above.
func lower(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	for _, r := range s {
		if r == 'İ' {
			b.WriteString("i\u0307")
			continue
		}
		b.WriteRune(unicode.ToLower(r))
	}
	return b.String()
}

// contractions are the English clitics the pattern keeps as words of their
// own, tried in this order after an apostrophe.
var contractions = [...]string{"s", "t", "re", "ve", "m", "ll", "d"}

// splitWords calls emit for every word of the lower-cased text s, in order.
func splitWords(s string, emit func(word string)) {
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		end := i + size
		switch {
		case unicode.IsSpace(r):
			i = end
			continue
		case r == '\'' && contractionLen(s[end:]) > 0:
			end += contractionLen(s[end:])
		case unicode.IsLetter(r):
			end = runEnd(s, end, unicode.IsLetter)
		case unicode.IsNumber(r):
			// One digit per word: "1024" is four words.
		default:
			end = runEnd(s, end, isSymbol)
		}
		emit(s[i:end])
		i = end
	}
}

func contractionLen(rest string) int {
	for _, c := range contractions {
		if strings.HasPrefix(rest, c) {
			return len(c)
		}
	}
	return 0
}

// isSymbol reports whether r belongs to [^\s\p{L}\p{N}]: punctuation, symbols,
// emoji, combining marks, controls.
func isSymbol(r rune) bool {
	return !unicode.IsSpace(r) && !unicode.IsLetter(r) && !unicode.IsNumber(r)
}

// runEnd returns the end of the run of runes satisfying in that starts at i.
func runEnd(s string, i int, in func(rune) bool) int {
	for i < len(s) {
		r, size := utf8.DecodeRuneInString(s[i:])
		if !in(r) {
			break
		}
		i += size
	}
	return i
}

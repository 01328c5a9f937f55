package tokenizer

//go:generate go run ./internal/nfcgen /usr/share/unicode

import (
	"slices"
	"strings"
)

// The reference normalizes text to NFC (Unicode canonical composition, UAX
// #15) before anything else, so that "e" + U+0301 and the precomposed "é"
// tokenize alike. The tables come from the Unicode Character Database (see
// internal/nfcgen); Hangul syllables are computed.

// Hangul syllable arithmetic (Unicode 15.0, section 3.12).
const (
	hangulBase   = 0xAC00
	hangulLBase  = 0x1100
	hangulVBase  = 0x1161
	hangulTBase  = 0x11A7
	hangulLCount = 19
	hangulVCount = 21
	hangulTCount = 28
	hangulNCount = hangulVCount * hangulTCount
	hangulCount  = hangulLCount * hangulNCount
)

// canonicalComposition maps a pair to its primary composite: every two-rune
// canonical decomposition except the excluded ones and those of runes that
// are not starters or decompose to a non-starter.
var canonicalComposition = func() map[[2]rune]rune {
	m := make(map[[2]rune]rune, len(canonicalDecomposition))
	for r, d := range canonicalDecomposition {
		if d[1] == 0 || compositionExclusions[r] || combiningClass[r] != 0 || combiningClass[d[0]] != 0 {
			continue
		}
		m[d] = r
	}
	return m
}()

// nfc returns s in Normalization Form C.
func nfc(s string) string {
	// Below U+0300 nothing decomposes into, or composes with, anything that
	// changes the text: it is already NFC.
	quick := true
	for i := 0; i < len(s); i++ {
		if s[i] >= 0xCC { // lead bytes of U+0300 and above
			quick = false
			break
		}
	}
	if quick {
		return s
	}
	runes := make([]rune, 0, len(s))
	for _, r := range s {
		runes = appendDecomposed(runes, r)
	}
	reorder(runes)
	runes = compose(runes)
	var b strings.Builder
	b.Grow(len(s))
	for _, r := range runes {
		b.WriteRune(r)
	}
	return b.String()
}

// appendDecomposed appends the full canonical decomposition of r.
func appendDecomposed(dst []rune, r rune) []rune {
	if s := r - hangulBase; 0 <= s && s < hangulCount {
		dst = append(dst, hangulLBase+s/hangulNCount, hangulVBase+(s%hangulNCount)/hangulTCount)
		if t := s % hangulTCount; t != 0 {
			dst = append(dst, hangulTBase+t)
		}
		return dst
	}
	d, ok := canonicalDecomposition[r]
	if !ok {
		return append(dst, r)
	}
	dst = appendDecomposed(dst, d[0])
	if d[1] != 0 {
		dst = appendDecomposed(dst, d[1])
	}
	return dst
}

// reorder sorts each run of non-starters by combining class, keeping the
// order of equal classes (the canonical ordering algorithm).
func reorder(runes []rune) {
	for i := 0; i < len(runes); {
		if combiningClass[runes[i]] == 0 {
			i++
			continue
		}
		j := i
		for j < len(runes) && combiningClass[runes[j]] != 0 {
			j++
		}
		slices.SortStableFunc(runes[i:j], func(a, b rune) int {
			return int(combiningClass[a]) - int(combiningClass[b])
		})
		i = j
	}
}

// compose runs the canonical composition algorithm over decomposed, ordered
// runes, in place.
func compose(runes []rune) []rune {
	out := runes[:0]
	starter := -1 // index in out of the last starter
	lastClass := -1
	for _, r := range runes {
		class := int(combiningClass[r])
		// r may join the starter unless a rune between them blocks it: one
		// of class 0, or of a class not below r's.
		if starter >= 0 && (lastClass < 0 || (lastClass != 0 && lastClass < class)) {
			if c, ok := composePair(out[starter], r); ok {
				out[starter] = c
				continue
			}
		}
		if class == 0 {
			starter, lastClass = len(out), -1
		} else {
			lastClass = class
		}
		out = append(out, r)
	}
	return out
}

func composePair(a, b rune) (rune, bool) {
	if l, v := a-hangulLBase, b-hangulVBase; 0 <= l && l < hangulLCount && 0 <= v && v < hangulVCount {
		return hangulBase + (l*hangulVCount+v)*hangulTCount, true
	}
	if s, t := a-hangulBase, b-hangulTBase; 0 <= s && s < hangulCount && s%hangulTCount == 0 && 0 < t && t < hangulTCount {
		return a + t, true
	}
	c, ok := canonicalComposition[[2]rune{a, b}]
	return c, ok
}

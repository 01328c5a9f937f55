package tokenizer

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Prompt emphasis as the AUTOMATIC1111 web UI (and the UIs that copied it)
// parses it, including how it tolerates malformed input:
//
//	(text)      weight × 1.1        [text]      weight ÷ 1.1
//	(text:1.3)  weight × 1.3        nesting multiplies
//	\( \) \[ \] \\  literal characters; a backslash before anything else
//	            is dropped
//	BREAK       (a whole word, upper case) ends the current 75-token chunk
//
// An unmatched ")" or "]" is literal text; an unclosed "(" or "[" applies
// its factor up to the end of the prompt. "(text:w)" needs a round bracket
// open, else ":w)" is literal text.
//
// Two bounds the web UI does not have keep weights finite: a bracket opened
// while maxEmphasisDepth brackets are already open is literal text (so the
// closing bracket that would match it closes an outer one or is literal in
// turn), and every weight, explicit or multiplied out, is clamped to
// ±maxEmphasisWeight, a non-zero one to at least 1/maxEmphasisWeight in
// magnitude. Without them 1000 nested "(" weigh 1.1^1000, which is +Inf in
// float32 and turns the whole image black; within them nothing a person
// would write changes.

const breakWord = "BREAK"

const (
	// maxEmphasisDepth is the deepest bracket nesting that is emphasis:
	// 32 round brackets weigh 1.1^32 ≈ 21, already far past useful.
	maxEmphasisDepth = 32
	// maxEmphasisWeight bounds weight magnitudes. Text encoder outputs are
	// of order 1-100, so products stay far inside float32.
	maxEmphasisWeight = 1000.0
)

// The bracket factors, computed in float64 as the web UI computes them, so
// that equal weights (which merge) stay equal bit for bit.
var (
	roundFactor  = 1.1
	squareFactor = 1 / roundFactor
)

// Segment is a run of prompt text sharing one weight. A BREAK keyword is the
// segment {Text: "BREAK", Weight: -1}, as the web UI represents it; brackets
// around it rescale that weight too, turning it back into the plain word
// "BREAK", which the web UI then encodes as text.
type Segment struct {
	Text   string
	Weight float64
}

// IsBreak reports whether the segment is a chunk break.
func (s Segment) IsBreak() bool { return s.Text == breakWord && s.Weight == -1 }

// ParseEmphasis splits prompt into weighted segments. Adjacent segments of
// equal weight are merged; a prompt with no text gives one empty segment of
// weight 1. The only error is a weight that is not a number, such as
// "(a:1.2.3)", which the web UI rejects too.
func ParseEmphasis(prompt string) ([]Segment, error) {
	var (
		res            []Segment
		round, square  []int // indexes into res where open brackets began
		multiplyFromAt = func(start int, factor float64) {
			for i := start; i < len(res); i++ {
				res[i].Weight *= factor
			}
		}
	)
	prompt = validUTF8(prompt)
	for i := 0; i < len(prompt); {
		c := prompt[i]
		switch {
		case c == '\\':
			if i+1 < len(prompt) && strings.IndexByte(`()[]\`, prompt[i+1]) >= 0 {
				res = append(res, Segment{prompt[i+1 : i+2], 1})
				i += 2
			} else {
				// A lone backslash stands for nothing; the web UI still
				// records an empty segment, which can matter for merging.
				res = append(res, Segment{"", 1})
				i++
			}
		case (c == '(' || c == '[') && len(round)+len(square) >= maxEmphasisDepth:
			res = appendText(res, prompt[i:i+1])
			i++
		case c == '(':
			round = append(round, len(res))
			i++
		case c == '[':
			square = append(square, len(res))
			i++
		case c == ':':
			weight, n, ok := parseWeight(prompt[i:])
			switch {
			case !ok:
				res = appendText(res, ":")
				i++
				continue
			case len(round) > 0:
				w, err := strconv.ParseFloat(weight, 64)
				if err != nil && !errors.Is(err, strconv.ErrRange) {
					return nil, fmt.Errorf("tokenizer: emphasis weight %q at byte %d is not a number", weight, i)
				}
				multiplyFromAt(round[len(round)-1], clampWeight(w))
				round = round[:len(round)-1]
			default:
				res = appendText(res, prompt[i:i+n])
			}
			i += n
		case c == ')' && len(round) > 0:
			multiplyFromAt(round[len(round)-1], roundFactor)
			round = round[:len(round)-1]
			i++
		case c == ']' && len(square) > 0:
			multiplyFromAt(square[len(square)-1], squareFactor)
			square = square[:len(square)-1]
			i++
		case c == ')' || c == ']':
			res = appendText(res, prompt[i:i+1])
			i++
		default:
			end := i + strings.IndexAny(prompt[i:], `\()[]:`)
			if end < i {
				end = len(prompt)
			}
			res = appendText(res, prompt[i:end])
			i = end
		}
	}
	for _, start := range round {
		multiplyFromAt(start, roundFactor)
	}
	for _, start := range square {
		multiplyFromAt(start, squareFactor)
	}
	if len(res) == 0 {
		return []Segment{{"", 1}}, nil
	}
	for i := range res {
		res[i].Weight = clampWeight(res[i].Weight)
	}
	merged := res[:1]
	for _, s := range res[1:] {
		if last := &merged[len(merged)-1]; last.Weight == s.Weight {
			last.Text += s.Text
		} else {
			merged = append(merged, s)
		}
	}
	return merged, nil
}

// clampWeight bounds a weight's magnitude to [1/maxEmphasisWeight,
// maxEmphasisWeight], keeping 0 (a way to mute words) and the sign. An
// explicit weight too large for float64 (ParseFloat's ±Inf) is clamped before
// it multiplies anything, so that a 0 nested in it cannot become NaN.
func clampWeight(w float64) float64 {
	switch a := math.Abs(w); {
	case w == 0:
		return 0
	case a > maxEmphasisWeight:
		return math.Copysign(maxEmphasisWeight, w)
	case a < 1/maxEmphasisWeight:
		return math.Copysign(1/maxEmphasisWeight, w)
	}
	return w
}

// parseWeight matches `:\s*([+-]?[.\d]+)\s*\)` at the start of s and returns
// the number text and the length of the match.
func parseWeight(s string) (weight string, n int, ok bool) {
	i := skipSpace(s, 1)
	start := i
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		i++
	}
	digits := i
	for i < len(s) && (s[i] == '.' || ('0' <= s[i] && s[i] <= '9')) {
		i++
	}
	if i == digits {
		return "", 0, false
	}
	end := i
	i = skipSpace(s, i)
	if i >= len(s) || s[i] != ')' {
		return "", 0, false
	}
	return s[start:end], i + 1, true
}

func skipSpace(s string, i int) int {
	for i < len(s) {
		r, size := utf8.DecodeRuneInString(s[i:])
		if !isPySpace(r) {
			break
		}
		i += size
	}
	return i
}

// appendText appends plain text, split at BREAK keywords into text and break
// segments, as the web UI splits it with `\s*\bBREAK\b\s*`.
func appendText(res []Segment, text string) []Segment {
	for {
		start, end, found := findBreak(text)
		if !found {
			return append(res, Segment{text, 1})
		}
		res = append(res, Segment{text[:start], 1}, Segment{breakWord, -1})
		text = text[end:]
	}
}

// findBreak finds the first BREAK that is a whole word and returns the span
// to cut: the keyword with the white space on both sides of it.
func findBreak(text string) (start, end int, found bool) {
	for from := 0; ; {
		k := strings.Index(text[from:], breakWord)
		if k < 0 {
			return 0, 0, false
		}
		k += from
		before, _ := utf8.DecodeLastRuneInString(text[:k])
		after, _ := utf8.DecodeRuneInString(text[k+len(breakWord):])
		if (k == 0 || !isPyWord(before)) && (k+len(breakWord) == len(text) || !isPyWord(after)) {
			start = k
			for start > 0 {
				r, size := utf8.DecodeLastRuneInString(text[:start])
				if !isPySpace(r) {
					break
				}
				start -= size
			}
			return start, skipSpace(text, k+len(breakWord)), true
		}
		from = k + 1
	}
}

// isPySpace is Python's \s for str patterns: Unicode white space plus the
// ASCII file, group, record and unit separators.
func isPySpace(r rune) bool { return unicode.IsSpace(r) || (0x1c <= r && r <= 0x1f) }

// isPyWord is Python's \w for str patterns: letters, numbers, underscore.
func isPyWord(r rune) bool { return r == '_' || unicode.IsLetter(r) || unicode.IsNumber(r) }

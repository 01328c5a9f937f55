package tokenizer

import (
	"bufio"
	"fmt"
	"io"
	"strings"
	"sync"
	"unicode/utf8"
)

// endOfWord marks the last symbol of a word in CLIP's BPE, so that "a" inside
// a word and "a</w>" at its end are different tokens.
const endOfWord = "</w>"

// byteOrder lists the 256 byte values in the order CLIP (after GPT-2) assigns
// them vocabulary ids 0..255: first the bytes that are printable Latin-1
// characters, then the rest.
// byteRunes maps each byte value to the rune that stands for it in the
// vocabulary: printable bytes map to themselves, the others to 256+n in the
// order above, so that every token is a string of printable runes.
var byteOrder, byteRunes = byteLevelAlphabet()

func byteLevelAlphabet() (order [256]byte, runes [256]rune) {
	printable := func(b int) bool {
		return ('!' <= b && b <= '~') || ('¡' <= b && b <= '¬') || ('®' <= b && b <= 'ÿ')
	}
	n := 0
	for b := range 256 {
		if printable(b) {
			order[n] = byte(b)
			runes[b] = rune(b)
			n++
		}
	}
	extra := 0
	for b := range 256 {
		if !printable(b) {
			order[n] = byte(b)
			runes[b] = rune(256 + extra)
			n++
			extra++
		}
	}
	return order, runes
}

// byteLevel rewrites the UTF-8 bytes of s as the runes standing for them.
func byteLevel(s string) []string {
	symbols := make([]string, len(s))
	for i := 0; i < len(s); i++ {
		symbols[i] = string(byteRunes[s[i]])
	}
	return symbols
}

// merge is one BPE rule: the adjacent symbols Left and Right become Left+Right.
type merge struct{ Left, Right string }

// parseMerges reads a merges.txt: an optional "#version" header line, then one
// "left right" pair per line in priority order. Blank lines are skipped.
func parseMerges(r io.Reader) ([]merge, error) {
	var merges []merge
	sc := bufio.NewScanner(r)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimRight(sc.Text(), "\r")
		if text == "" || (line == 1 && strings.HasPrefix(text, "#version")) {
			continue
		}
		left, right, ok := strings.Cut(text, " ")
		if !ok || left == "" || right == "" || strings.Contains(right, " ") {
			return nil, fmt.Errorf("line %d: want two space-separated symbols, got %q", line, text)
		}
		merges = append(merges, merge{left, right})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(merges) == 0 {
		return nil, fmt.Errorf("no merges")
	}
	return merges, nil
}

// clipVocab derives the vocabulary from the merges the way CLIP builds it: the
// 256 byte symbols, the same with the end-of-word suffix, one token per merge
// (its two symbols joined), then the special tokens.
func clipVocab(merges []merge, specials ...string) map[string]int {
	vocab := make(map[string]int, 2*256+len(merges)+len(specials))
	add := func(tok string) {
		if _, dup := vocab[tok]; !dup {
			vocab[tok] = len(vocab)
		}
	}
	for _, b := range byteOrder {
		add(string(byteRunes[b]))
	}
	for _, b := range byteOrder {
		add(string(byteRunes[b]) + endOfWord)
	}
	for _, m := range merges {
		add(m.Left + m.Right)
	}
	for _, s := range specials {
		add(s)
	}
	return vocab
}

// pairKey joins two symbols into a map key; byte-level symbols never contain
// a space, so the key is unambiguous.
func pairKey(left, right string) string { return left + " " + right }

// bpe applies the merges to one pre-tokenized word (raw UTF-8) and returns its
// ids: all occurrences of the best-ranked adjacent pair are merged, left to
// right, until no adjacent pair has a rule. Symbols missing from the
// vocabulary (possible only with an inconsistent vocab.json) become unkID.
func bpe(word string, ranks map[string]int, vocab map[string]int, unkID int) []int {
	symbols := byteLevel(word)
	symbols[len(symbols)-1] += endOfWord
	for len(symbols) > 1 {
		best, bestRank := -1, 0
		for i := 0; i+1 < len(symbols); i++ {
			if r, ok := ranks[pairKey(symbols[i], symbols[i+1])]; ok && (best < 0 || r < bestRank) {
				best, bestRank = i, r
			}
		}
		if best < 0 {
			break
		}
		left, right := symbols[best], symbols[best+1]
		merged := symbols[:best]
		for i := best; i < len(symbols); {
			if i+1 < len(symbols) && symbols[i] == left && symbols[i+1] == right {
				merged = append(merged, left+right)
				i += 2
			} else {
				merged = append(merged, symbols[i])
				i++
			}
		}
		symbols = merged
	}
	ids := make([]int, len(symbols))
	for i, s := range symbols {
		id, ok := vocab[s]
		if !ok {
			id = unkID
		}
		ids[i] = id
	}
	return ids
}

// wordCache remembers the ids of words already encoded. It is safe for
// concurrent use and bounded: when full it starts over, which keeps memory
// flat for a long-running process fed arbitrary text.
type wordCache struct {
	mu    sync.RWMutex
	words map[string][]int
}

const wordCacheLimit = 1 << 16

func (c *wordCache) get(word string) ([]int, bool) {
	c.mu.RLock()
	ids, ok := c.words[word]
	c.mu.RUnlock()
	return ids, ok
}

func (c *wordCache) put(word string, ids []int) {
	c.mu.Lock()
	if c.words == nil || len(c.words) >= wordCacheLimit {
		c.words = make(map[string][]int)
	}
	c.words[word] = ids
	c.mu.Unlock()
}

// validUTF8 replaces invalid UTF-8 with U+FFFD, as a Python or Rust string
// holding the same text would already have it.
func validUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

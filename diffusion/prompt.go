package diffusion

import (
	"fmt"
	"strings"
)

// PromptSyntax is how a prompt's text is read.
type PromptSyntax int

const (
	// PromptA1111 is AUTOMATIC1111's web UI syntax: (word) and [word] emphasis,
	// (word:1.3) weights, BREAK, and prompts of any length in chunks of 75 tokens.
	PromptA1111 PromptSyntax = iota
	// PromptPlain tokenizes the prompt as diffusers' StableDiffusionPipeline does:
	// brackets are literal tokens, and tokens past the 75th are dropped (with a
	// warning in the log, as diffusers warns).
	PromptPlain
)

var promptSyntaxNames = []string{"a1111", "plain"}

func (s PromptSyntax) valid() bool { return s >= 0 && int(s) < len(promptSyntaxNames) }

// String returns "a1111" or "plain".
func (s PromptSyntax) String() string {
	if !s.valid() {
		return fmt.Sprintf("PromptSyntax(%d)", int(s))
	}
	return promptSyntaxNames[s]
}

// ParsePromptSyntax parses a name returned by PromptSyntax.String.
func ParsePromptSyntax(name string) (PromptSyntax, error) {
	for i, n := range promptSyntaxNames {
		if n == name {
			return PromptSyntax(i), nil
		}
	}
	return 0, fmt.Errorf("unknown prompt syntax %q (valid: %s)", name, strings.Join(promptSyntaxNames, ", "))
}

// applyEmphasis multiplies each token's embedding by its weight and restores the chunk's
// original mean, as the web UI does; a chunk without emphasis is left untouched.
func applyEmphasis(z []float32, weights []float32, width int) {
	plain := true
	for _, w := range weights {
		plain = plain && w == 1
	}
	if plain {
		return
	}
	var before, after float64
	for _, v := range z {
		before += float64(v)
	}
	for t, w := range weights {
		row := z[t*width : (t+1)*width]
		for k := range row {
			row[k] *= w
			after += float64(row[k])
		}
	}
	if after == 0 {
		return
	}
	ratio := float32(before / after)
	for k := range z {
		z[k] *= ratio
	}
}

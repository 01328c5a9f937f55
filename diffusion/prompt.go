package diffusion

import (
	"fmt"
	"strings"

	"github.com/gosd/gosd/diffusion/tokenizer"
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

// promptChunks tokenizes one prompt in the request's syntax.
func (p *Pipeline) promptChunks(syntax PromptSyntax, prompt string) ([]tokenizer.Chunk, error) {
	if syntax == PromptPlain {
		c, dropped := p.tok.EncodePlain(prompt, p.padID)
		if dropped > 0 {
			p.log.Warn("prompt truncated: CLIP takes at most 75 tokens", "dropped_tokens", dropped)
		}
		return []tokenizer.Chunk{c}, nil
	}
	return p.tok.EncodeWeighted(prompt, p.padID)
}

// encodePrompts turns the prompt (and, with classifier-free guidance, the negative
// prompt) into the UNet's context: (B, T, width), or (2B, T, width) with the negative
// prompt's batch first, as diffusers concatenates them. T is 77 per chunk. In A1111
// syntax, prompts of more than 75 tokens are split into chunks that are encoded
// separately and joined, and (word:1.2) emphasis scales token embeddings, both as
// AUTOMATIC1111's web UI does; a prompt of at most 75 tokens without emphasis or BREAK
// gives exactly diffusers' embeddings. Plain syntax always gives diffusers' embeddings.
func (p *Pipeline) encodePrompts(par Params, cfg bool) ([]float32, int, error) {
	cond, err := p.promptChunks(par.PromptSyntax, par.Prompt)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: prompt: %v", ErrInvalidRequest, err)
	}
	prompts := [][]tokenizer.Chunk{cond}
	if cfg {
		uncond, err := p.promptChunks(par.PromptSyntax, par.NegativePrompt)
		if err != nil {
			return nil, 0, fmt.Errorf("%w: negative prompt: %v", ErrInvalidRequest, err)
		}
		prompts = [][]tokenizer.Chunk{uncond, cond}
	}
	// Both prompts need the same length to share a batch: pad with empty chunks.
	chunks := 0
	for _, pr := range prompts {
		chunks = max(chunks, len(pr))
	}
	empty, err := p.tok.EncodeWeighted("", p.padID)
	if err != nil {
		return nil, 0, err
	}
	const ctxLen = tokenizer.ContextLength
	ids := make([]int32, 0, len(prompts)*chunks*ctxLen)
	for i := range prompts {
		for len(prompts[i]) < chunks {
			prompts[i] = append(prompts[i], empty[0])
		}
		for _, c := range prompts[i] {
			ids = append(ids, c.IDs[:]...)
		}
	}
	hidden, _, err := p.eng.encodeText(ids, len(prompts)*chunks, ctxLen, max(par.ClipSkip-1, 0), true, false)
	if err != nil {
		return nil, 0, err
	}
	width := len(hidden) / (len(prompts) * chunks * ctxLen)
	for i, pr := range prompts {
		for j, c := range pr {
			at := (i*chunks + j) * ctxLen * width
			applyEmphasis(hidden[at:at+ctxLen*width], c.Weights[:], width)
		}
	}
	// Each prompt's chunks are already consecutive: (prompts, chunks*77, width). Repeat
	// each prompt for the batch.
	per := chunks * ctxLen * width
	out := make([]float32, 0, len(prompts)*par.BatchSize*per)
	for i := range prompts {
		for k := 0; k < par.BatchSize; k++ {
			out = append(out, hidden[i*per:(i+1)*per]...)
		}
	}
	return out, chunks * ctxLen, nil
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

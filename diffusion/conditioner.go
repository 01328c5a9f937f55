package diffusion

import (
	"fmt"
	"log/slog"

	"github.com/gosd/gosd/binding"
	"github.com/gosd/gosd/diffusion/lora"
	"github.com/gosd/gosd/diffusion/tokenizer"
)

// conditioner turns a request's prompts into the denoiser's conditioning: tokenizer, text
// encoder, emphasis, and the upload of the result. SDXL's second text encoder is a second
// tokenizer and clipNet here (sdxl.go), its pooled output and time ids more fields of
// conditioning.
type conditioner struct {
	tok   *tokenizer.Tokenizer
	padID int
	clip  clipNet
	// SDXL: the second tokenizer (nil for one-encoder models) and text encoder, and
	// force_zeros_for_empty_prompt; sdxl also for the refiner, whose one encoder is
	// the first here.
	tok2       *tokenizer.Tokenizer
	padID2     int
	clip2      clipNet
	forceZeros bool
	sdxl       bool
	log        *slog.Logger
}

func (p *Pipeline) conditioner() *conditioner {
	return &conditioner{tok: p.tok, padID: p.padID, clip: p.eng.clipNet(),
		tok2: p.tok2, padID2: p.padID2, clip2: p.eng.clipNet2(), forceZeros: p.model.ForceZerosForEmptyPrompt,
		sdxl: p.desc.sdxl, log: p.log}
}

// conditioning is what every UNet evaluation of one request is conditioned on, in backend
// memory for the whole request: uploaded once after the text encoder (and Go's emphasis),
// passed to each UNet call as it is, freed by free when the request ends.
type conditioning struct {
	lib     *binding.Library
	ctx     binding.Ctx
	context binding.Tensor // (B, tokens, width), or (2B, ...) with the negative prompt's first
	// SDXL's added conditioning, rows as the context's (nil for other models): the
	// pooled text_embeds (rows, P) and the micro-conditioning time ids (rows, 6).
	textEmbeds, timeIDs []float32
}

func (c *conditioning) free() { c.lib.TensorFree(c.ctx, c.context) }

// condition encodes the request's prompts (with classifier-free guidance, the negative
// prompt too) and uploads the context; the caller frees it.
func (c *conditioner) condition(par Params, cfg bool) (*conditioning, error) {
	if c.sdxl {
		return c.conditionSDXL(par, cfg)
	}
	hidden, tokens, err := c.encodePrompts(par, cfg)
	if err != nil {
		return nil, err
	}
	return c.upload(hidden, tokens, c.clip.width())
}

// upload checks the host context (rows, tokens, width) and uploads it.
func (c *conditioner) upload(hidden []float32, tokens, width int) (*conditioning, error) {
	if err := checkFinite("text encoder", hidden); err != nil {
		return nil, err
	}
	rows := int64(len(hidden) / (tokens * width))
	t, err := newActivationTensor(c.clip.lib, c.clip.ctx, hidden, rows, int64(tokens), int64(width))
	if err != nil {
		return nil, err
	}
	return &conditioning{lib: c.clip.lib, ctx: c.clip.ctx, context: t}, nil
}

// promptChunks tokenizes one prompt in the request's syntax.
func (c *conditioner) promptChunks(syntax PromptSyntax, prompt string, words []tokenizer.Word) ([]tokenizer.Chunk, error) {
	return tokenize(c.tok, c.padID, syntax, prompt, words, c.log)
}

// tokenize tokenizes one prompt in a syntax with tok, padding with padID; words
// (textual inversions) stand in for their names.
func tokenize(tok *tokenizer.Tokenizer, padID int, syntax PromptSyntax, prompt string, words []tokenizer.Word, log *slog.Logger) ([]tokenizer.Chunk, error) {
	if syntax == PromptPlain {
		ch, dropped, err := tok.EncodePlainWith(prompt, padID, words)
		if err != nil {
			return nil, err
		}
		if dropped > 0 {
			log.Warn("prompt truncated: CLIP takes at most 75 tokens", "dropped_tokens", dropped)
		}
		return []tokenizer.Chunk{ch}, nil
	}
	return tok.EncodeWeightedWith(prompt, padID, words)
}

// encodePrompts turns the prompt (and, with classifier-free guidance, the negative
// prompt) into the UNet's context in host memory: (B, T, width), or (2B, T, width) with
// the negative prompt's batch first, as diffusers concatenates them. T is 77 per chunk.
// In A1111 syntax, prompts of more than 75 tokens are split into chunks that are encoded
// separately and joined, and (word:1.2) emphasis scales token embeddings, both as
// AUTOMATIC1111's web UI does; a prompt of at most 75 tokens without emphasis or BREAK
// gives exactly diffusers' embeddings. Plain syntax always gives diffusers' embeddings.
func (c *conditioner) encodePrompts(par Params, cfg bool) ([]float32, int, error) {
	ti := newTITable(par.embeds, lora.TextEncoder, int(c.clip.cfg.VocabSize))
	cond, err := c.promptChunks(par.PromptSyntax, par.Prompt, ti.words)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: prompt: %v", ErrInvalidRequest, err)
	}
	prompts := [][]tokenizer.Chunk{cond}
	if cfg {
		uncond, err := c.promptChunks(par.PromptSyntax, par.NegativePrompt, ti.words)
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
	empty, err := c.tok.EncodeWeighted("", c.padID)
	if err != nil {
		return nil, 0, err
	}
	const ctxLen = tokenizer.ContextLength
	ids := make([]int32, 0, len(prompts)*chunks*ctxLen)
	for i := range prompts {
		for len(prompts[i]) < chunks {
			prompts[i] = append(prompts[i], empty[0])
		}
		for _, ch := range prompts[i] {
			ids = append(ids, ch.IDs[:]...)
		}
	}
	hidden, _, err := c.clip.encodeWith(ids, ti.rows, len(prompts)*chunks, ctxLen, max(par.ClipSkip-1, 0), true, false)
	if err != nil {
		return nil, 0, err
	}
	width := len(hidden) / (len(prompts) * chunks * ctxLen)
	for i, pr := range prompts {
		for j, ch := range pr {
			at := (i*chunks + j) * ctxLen * width
			applyEmphasis(hidden[at:at+ctxLen*width], ch.Weights[:], width)
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

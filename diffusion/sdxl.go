package diffusion

import (
	"fmt"
	"image"

	"github.com/gosd/gosd/diffusion/lora"
	"github.com/gosd/gosd/diffusion/modelfile"
	"github.com/gosd/gosd/diffusion/tokenizer"
)

// Size is an image size in pixels.
type Size struct{ Width, Height int }

// SizeConditioning is SDXL's micro-conditioning, the six time ids of each UNet row:
// original height and width, crop top and left, target height and width (diffusers'
// original_size, crops_coords_top_left, target_size and their negative_ forms).
type SizeConditioning struct {
	// OriginalSize is the size the model is told the training image had; zero: the
	// output size.
	OriginalSize Size
	// CropTopLeft is the crop offset it is told (X left, Y top); default (0, 0).
	CropTopLeft image.Point
	// TargetSize is the size it is told to aim at; zero: the output size.
	TargetSize Size
	// The negative prompt's row: used only when both NegativeOriginalSize and
	// NegativeTargetSize are set (as diffusers); otherwise the negative row repeats the
	// positive one.
	NegativeOriginalSize Size
	NegativeCropTopLeft  image.Point
	NegativeTargetSize   Size
	// The refiner's (requires_aesthetics_score) last time id instead of the target size:
	// 0 means diffusers' defaults, 6 and 2.5 for the negative row. Other models ignore
	// them.
	AestheticScore, NegativeAestheticScore float64
}

// maxConditionedSide bounds the sizes of SizeConditioning (they are embedded as numbers,
// not allocated; SDXL was trained on originals up to a few thousand pixels).
const maxConditionedSide = 1 << 16

func (s Size) zero() bool { return s == Size{} }

// resolveSizeConditioning checks a request's micro-conditioning and fills in its
// defaults for an output of w x h (the aesthetic scores too; only refiners use them).
func resolveSizeConditioning(c SizeConditioning, w, h int) (SizeConditioning, error) {
	for _, s := range []struct {
		name string
		v    Size
	}{{"original size", c.OriginalSize}, {"target size", c.TargetSize},
		{"negative original size", c.NegativeOriginalSize}, {"negative target size", c.NegativeTargetSize}} {
		if !s.v.zero() && !(s.v.Width >= 1 && s.v.Width <= maxConditionedSide && s.v.Height >= 1 && s.v.Height <= maxConditionedSide) {
			return c, invalid("%s %dx%d: both sides in [1, %d], or both 0 for the default", s.name, s.v.Width, s.v.Height, maxConditionedSide)
		}
	}
	for _, p := range []struct {
		name string
		v    image.Point
	}{{"crop top-left", c.CropTopLeft}, {"negative crop top-left", c.NegativeCropTopLeft}} {
		if p.v.X < 0 || p.v.Y < 0 || p.v.X > maxConditionedSide || p.v.Y > maxConditionedSide {
			return c, invalid("%s (%d, %d): coordinates in [0, %d]", p.name, p.v.X, p.v.Y, maxConditionedSide)
		}
	}
	for _, v := range []float64{c.AestheticScore, c.NegativeAestheticScore} {
		if !(v >= 0 && v <= 1000) {
			return c, invalid("aesthetic score %g not in [0, 1000]", v)
		}
	}
	if c.AestheticScore == 0 {
		c.AestheticScore = 6
	}
	if c.NegativeAestheticScore == 0 {
		c.NegativeAestheticScore = 2.5
	}
	out := Size{w, h}
	if c.OriginalSize.zero() {
		c.OriginalSize = out
	}
	if c.TargetSize.zero() {
		c.TargetSize = out
	}
	if c.NegativeOriginalSize.zero() != c.NegativeTargetSize.zero() {
		return c, invalid("negative original size and negative target size are used together: set both or neither")
	}
	if c.NegativeOriginalSize.zero() {
		if c.NegativeCropTopLeft != (image.Point{}) {
			return c, invalid("a negative crop needs the negative original and target sizes")
		}
		c.NegativeOriginalSize, c.NegativeCropTopLeft, c.NegativeTargetSize = c.OriginalSize, c.CropTopLeft, c.TargetSize
	}
	return c, nil
}

// timeIDs are the six ids of one row, in the order the UNet embeds them.
func timeIDs(orig Size, crop image.Point, target Size) []float32 {
	return []float32{float32(orig.Height), float32(orig.Width), float32(crop.Y), float32(crop.X),
		float32(target.Height), float32(target.Width)}
}

// checkSDXL checks that an SDXL model's networks fit together: the UNet attends to both
// encoders' states side by side and embeds the second's projection with six time ids.
func checkSDXL(m *modelfile.Model) error {
	if m.RequiresAestheticsScore && len(m.ExtraTextEncoders) == 0 {
		return checkRefiner(m)
	}
	if len(m.ExtraTextEncoders) != 1 {
		return fmt.Errorf("%w: %d text encoders (SDXL has 2)", ErrUnsupported, 1+len(m.ExtraTextEncoders))
	}
	u, t1, t2 := m.UNet.Config, m.TextEncoder.Config, m.ExtraTextEncoders[0].Config
	switch {
	case u.AdditionEmbedType != modelfile.AdditionTextTime:
		return fmt.Errorf("%w: a model with two text encoders needs a UNet with text_time added conditioning", ErrUnsupported)
	case !t2.WithProjection:
		return fmt.Errorf("%w: the second text encoder has no text_projection", ErrBadModel)
	case u.CrossAttentionDim != t1.HiddenSize+t2.HiddenSize:
		return fmt.Errorf("%w: the UNet attends to %d-wide states, the text encoders give %d + %d", ErrBadModel, u.CrossAttentionDim, t1.HiddenSize, t2.HiddenSize)
	case u.ProjectionClassEmbeddingsInputDim != t2.ProjectionDim+6*u.AdditionTimeEmbedDim:
		return fmt.Errorf("%w: the UNet's add_embedding takes %d inputs, not text_embeds %d + 6 time ids x %d", ErrBadModel, u.ProjectionClassEmbeddingsInputDim, t2.ProjectionDim, u.AdditionTimeEmbedDim)
	}
	return nil
}

// checkRefiner checks SDXL's refiner: one encoder with its projection, five time ids
// (original size, crop, aesthetic score).
func checkRefiner(m *modelfile.Model) error {
	u, t := m.UNet.Config, m.TextEncoder.Config
	switch {
	case u.AdditionEmbedType != modelfile.AdditionTextTime:
		return fmt.Errorf("%w: requires_aesthetics_score needs a UNet with text_time added conditioning", ErrUnsupported)
	case !t.WithProjection:
		return fmt.Errorf("%w: the refiner's text encoder has no text_projection", ErrBadModel)
	case u.CrossAttentionDim != t.HiddenSize:
		return fmt.Errorf("%w: the UNet attends to %d-wide states, the text encoder gives %d", ErrBadModel, u.CrossAttentionDim, t.HiddenSize)
	case u.ProjectionClassEmbeddingsInputDim != t.ProjectionDim+5*u.AdditionTimeEmbedDim:
		return fmt.Errorf("%w: the UNet's add_embedding takes %d inputs, not text_embeds %d + 5 time ids x %d", ErrBadModel, u.ProjectionClassEmbeddingsInputDim, t.ProjectionDim, u.AdditionTimeEmbedDim)
	}
	return nil
}

// setupSecondTokenizer loads SDXL's tokenizer_2 (or the built-in vocabulary padding with
// "!", OpenCLIP's, for single files).
func (p *Pipeline) setupSecondTokenizer(m *modelfile.Model) error {
	if len(m.ExtraTextEncoders) == 0 {
		return nil
	}
	te2 := m.ExtraTextEncoders[0]
	var err error
	if te2.TokenizerDir != "" {
		if p.tok2, err = tokenizer.Load(te2.TokenizerDir); err != nil {
			return err
		}
		p.padID2 = p.tok2.PadID()
	} else {
		if p.tok2, err = tokenizer.Default(); err != nil {
			return err
		}
		p.padID2 = 0
	}
	if n, embedded := p.tok2.VocabSize(), te2.Config.VocabSize; n > embedded {
		return fmt.Errorf("%w: tokenizer_2 has %d tokens, the second text encoder embeds %d", ErrBadModel, n, embedded)
	}
	return nil
}

// conditionSDXL is SDXL's conditioning, as diffusers' StableDiffusionXLPipeline builds it:
// the context is both encoders' hidden states (the penultimate layer, before the final
// norm) side by side; text_embeds is the second encoder's pooled output through its
// text_projection; the time ids are the micro-conditioning. With classifier-free
// guidance the negative rows come first, zeros (context and text_embeds) when both
// negative prompts are empty and the model has force_zeros_for_empty_prompt. The
// refiner (StableDiffusionXLImg2ImgPipeline with one encoder) conditions on that one
// encoder alone, given Prompt and NegativePrompt as diffusers does, and its time ids end
// with the aesthetic score.
//
// In A1111 syntax each encoder's prompt is chunked and emphasised on its own, as the web
// UI does; chunks are joined along the tokens, and text_embeds comes from the first
// chunk. ClipSkip k >= 2 takes hidden_states[-(k+1)] (diffusers' clip_skip k-1).
func (c *conditioner) conditionSDXL(par Params, cfg bool) (*conditioning, error) {
	prompt2, neg2 := par.Prompt2, par.NegativePrompt2
	if prompt2 == "" {
		prompt2 = par.Prompt
	}
	if neg2 == "" {
		neg2 = par.NegativePrompt
	}
	zeroNeg := cfg && c.forceZeros && par.NegativePrompt == "" && par.NegativePrompt2 == ""
	type encoder struct {
		tok     *tokenizer.Tokenizer
		pad     int
		net     clipNet
		prompts []string
		chunks  [][]tokenizer.Chunk
		ti      tiTable
	}
	first := lora.TextEncoder
	if c.tok2 == nil { // the refiner's one encoder is OpenCLIP bigG, clip_g's
		first = lora.TextEncoder2
	}
	encs := []*encoder{{tok: c.tok, pad: c.padID, net: c.clip, prompts: []string{par.NegativePrompt, par.Prompt},
		ti: newTITable(par.embeds, first, int(c.clip.cfg.VocabSize))}}
	if c.tok2 != nil {
		encs = append(encs, &encoder{tok: c.tok2, pad: c.padID2, net: c.clip2, prompts: []string{neg2, prompt2},
			ti: newTITable(par.embeds, lora.TextEncoder2, int(c.clip2.cfg.VocabSize))})
	}
	for _, e := range encs {
		if !cfg || zeroNeg {
			e.prompts = e.prompts[1:]
		}
	}
	// The last encoder's pooled output is projected into text_embeds.
	proj := encs[len(encs)-1]
	// Every prompt of both encoders needs the same number of chunks (the states are
	// joined side by side): pad with empty ones.
	chunks := 0
	for k, e := range encs {
		for i, pr := range e.prompts {
			ch, err := tokenize(e.tok, e.pad, par.PromptSyntax, pr, e.ti.words, c.log)
			if err != nil {
				return nil, fmt.Errorf("%w: prompt %d of text encoder %d: %v", ErrInvalidRequest, i+1, k+1, err)
			}
			e.chunks = append(e.chunks, ch)
			chunks = max(chunks, len(ch))
		}
	}
	skip := max(par.ClipSkip, 1)
	const ctxLen = tokenizer.ContextLength
	prompts := len(encs[0].prompts)
	hidden := make([][]float32, len(encs))
	var pooled []float32
	for k, e := range encs {
		empty, err := e.tok.EncodeWeighted("", e.pad)
		if err != nil {
			return nil, err
		}
		ids := make([]int32, 0, prompts*chunks*ctxLen)
		for i := range e.chunks {
			for len(e.chunks[i]) < chunks {
				e.chunks[i] = append(e.chunks[i], empty[0])
			}
			for _, ch := range e.chunks[i] {
				ids = append(ids, ch.IDs[:]...)
			}
		}
		var pool []float32
		hidden[k], pool, err = e.net.encodeWith(ids, e.ti.rows, prompts*chunks, ctxLen, skip, false, e == proj)
		if err != nil {
			return nil, err
		}
		width := e.net.width()
		for i := range e.chunks {
			for j, ch := range e.chunks[i] {
				at := (i*chunks + j) * ctxLen * width
				applyEmphasis(hidden[k][at:at+ctxLen*width], ch.Weights[:], width)
			}
		}
		if e == proj { // the first chunk of each prompt
			for i := 0; i < prompts; i++ {
				pooled = append(pooled, pool[i*chunks*width:(i*chunks+1)*width]...)
			}
		}
	}
	embeds, err := proj.net.project(pooled, prompts)
	if err != nil {
		return nil, err
	}
	if err := checkFinite("text encoder's projection", embeds); err != nil {
		return nil, err
	}
	width, tokens, projDim := 0, chunks*ctxLen, len(embeds)/prompts
	for _, e := range encs {
		width += e.net.width()
	}
	joined := make([]float32, 0, prompts*tokens*width)
	for r := 0; r < prompts*tokens; r++ {
		for k, e := range encs {
			w := e.net.width()
			joined = append(joined, hidden[k][r*w:(r+1)*w]...)
		}
	}
	sc := par.SizeConditioning
	pos := timeIDs(sc.OriginalSize, sc.CropTopLeft, sc.TargetSize)
	neg := timeIDs(sc.NegativeOriginalSize, sc.NegativeCropTopLeft, sc.NegativeTargetSize)
	if c.tok2 == nil { // the refiner: the aesthetic score instead of the target size
		pos = append(pos[:4], float32(sc.AestheticScore))
		neg = append(neg[:4], float32(sc.NegativeAestheticScore))
	}
	// Rows: [negative x batch,] positive x batch.
	var ctxRows, embRows, idRows []float32
	add := func(ctxRow, embRow, ids []float32) {
		for k := 0; k < par.BatchSize; k++ {
			ctxRows = append(ctxRows, ctxRow...)
			embRows = append(embRows, embRow...)
			idRows = append(idRows, ids...)
		}
	}
	per := tokens * width
	if zeroNeg {
		add(make([]float32, per), make([]float32, projDim), neg)
	}
	for i := 0; i < prompts; i++ {
		ids := pos
		if cfg && !zeroNeg && i == 0 {
			ids = neg
		}
		add(joined[i*per:(i+1)*per], embeds[i*projDim:(i+1)*projDim], ids)
	}
	cond, err := c.upload(ctxRows, tokens, width)
	if err != nil {
		return nil, err
	}
	cond.textEmbeds, cond.timeIDs = embRows, idRows
	return cond, nil
}

package diffusion

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/gosd/gosd/diffusion/lora"
	"github.com/gosd/gosd/diffusion/tokenizer"
)

// embeddingExtensions are the textual-inversion files an embedding folder is searched for.
var embeddingExtensions = []string{".safetensors", ".pt", ".bin"}

// AppliedEmbedding is a textual inversion a request's prompts used.
type AppliedEmbedding struct {
	// Name is the file's base name without extension: the word prompts call it by.
	Name string
	Path string
	// Hash is AUTOMATIC1111's short hash of the file ("TI hashes"): the first 12 hex
	// digits of its SHA-256.
	Hash string
}

// requestEmbeddings loads the textual inversions of req (Embeddings, and the files of
// EmbeddingDir and its subfolders) whose names occur in its prompts, in name order, and
// checks them against the model's text encoders: SD 1.x / 2.x need vectors as wide as
// the encoder (emb_params), SDXL clip_l and clip_g for both encoders. Both prompt
// syntaxes use them (PromptPlain as diffusers' load_textual_inversion tokens).
func (p *Pipeline) requestEmbeddings(req Request) ([]*lora.Embedding, []AppliedEmbedding, error) {
	if len(req.Embeddings) == 0 && req.EmbeddingDir == "" {
		return nil, nil, nil
	}
	files := map[string][]string{} // name -> paths
	for _, path := range req.Embeddings {
		name := strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
		files[name] = append(files[name], path)
	}
	if req.EmbeddingDir != "" {
		found, err := indexFiles(req.EmbeddingDir, embeddingExtensions)
		if err != nil {
			return nil, nil, invalid("embedding folder: %v", err)
		}
		for name, paths := range found {
			files[name] = append(files[name], paths...)
		}
	}
	// A name is used where the prompts' tokens spell it, as the tokenizer will match it.
	text := p.tok.Encode(strings.Join([]string{req.Prompt, req.NegativePrompt, req.Prompt2, req.NegativePrompt2}, "\n"))
	names := make([]string, 0, len(files))
	for name := range files {
		if spelled := p.tok.Encode(name); len(spelled) > 0 && containsRun(text, spelled) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	var embeds []*lora.Embedding
	var applied []AppliedEmbedding
	for _, name := range names {
		if paths := files[name]; len(paths) > 1 {
			return nil, nil, invalid("embedding %q: several files have that name: %s", name, strings.Join(paths, ", "))
		}
		path := files[name][0]
		e, err := lora.LoadEmbedding(path)
		if err != nil {
			return nil, nil, invalid("embedding %q: %v", name, err)
		}
		if err := p.checkEmbedding(e); err != nil {
			return nil, nil, err
		}
		hash, err := fileShortHash(path)
		if err != nil {
			return nil, nil, invalid("embedding %q: %v", name, err)
		}
		embeds = append(embeds, e)
		applied = append(applied, AppliedEmbedding{Name: name, Path: path, Hash: hash})
	}
	return embeds, applied, nil
}

// checkEmbedding checks that e has vectors of the right width for each text encoder.
func (p *Pipeline) checkEmbedding(e *lora.Embedding) error {
	encs := []struct {
		component, what string
		width           int
	}{{lora.TextEncoder, "the text encoder", int(p.eng.text.Hidden)}}
	switch {
	case p.desc.sdxl && p.tok2 == nil: // the refiner: OpenCLIP bigG alone
		encs[0].component, encs[0].what = lora.TextEncoder2, "the refiner's text encoder (clip_g)"
	case p.desc.sdxl:
		encs = []struct {
			component, what string
			width           int
		}{{lora.TextEncoder, "SDXL's first text encoder (clip_l)", int(p.eng.text.Hidden)},
			{lora.TextEncoder2, "SDXL's second text encoder (clip_g)", int(p.eng.text2.Hidden)}}
	}
	for _, enc := range encs {
		v, ok := e.Vectors[enc.component]
		switch {
		case !ok:
			return invalid("embedding %s has no vectors for %s (an SD 1.x/2.x embedding on SDXL?)", e.Path, enc.what)
		case v.Width != enc.width:
			return invalid("embedding %s has %d-wide vectors, %s takes %d (an embedding for another model?)", e.Path, v.Width, enc.what, enc.width)
		case v.N > tokenizer.ChunkLength:
			return invalid("embedding %s has %d vectors, a prompt chunk holds %d", e.Path, v.N, tokenizer.ChunkLength)
		}
	}
	if !p.desc.sdxl && len(e.Vectors) > 1 { // an SD 1.x encoder as wide as clip_l
		return invalid("embedding %s is an SDXL embedding (clip_l and clip_g)", e.Path)
	}
	return nil
}

// fileShortHash is the first 12 hex digits of a file's SHA-256.
func fileShortHash(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil))[:12], nil
}

// tiHashes formats AUTOMATIC1111's "TI hashes" field: "name: hash, ...", with ":" and
// "," taken out of the names as the web UI does.
func tiHashes(es []AppliedEmbedding) string {
	parts := make([]string, len(es))
	for i, e := range es {
		parts[i] = strings.NewReplacer(":", "", ",", "").Replace(e.Name) + ": " + e.Hash
	}
	return strings.Join(parts, ", ")
}

// tiTable is one text encoder's textual inversions for a request: the words the
// tokenizer puts in place of their names, with ids from vocab on, and the extra token
// rows (rows, width) those ids select in the encoder (sd_clip_forward_extra).
type tiTable struct {
	words []tokenizer.Word
	rows  []float32
}

// newTITable lays out the component's vectors of embeds (checked by checkEmbedding)
// after a vocabulary of vocab tokens.
func newTITable(embeds []*lora.Embedding, component string, vocab int) tiTable {
	var t tiTable
	next := vocab
	for _, e := range embeds {
		v := e.Vectors[component]
		ids := make([]int, v.N)
		for i := range ids {
			ids[i] = next
			next++
		}
		t.words = append(t.words, tokenizer.Word{Text: e.Token, IDs: ids})
		t.rows = append(t.rows, v.Data...)
	}
	return t
}

// containsRun is whether sub occurs in s as consecutive elements.
func containsRun(s, sub []int) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if slices.Equal(s[i:i+len(sub)], sub) {
			return true
		}
	}
	return false
}

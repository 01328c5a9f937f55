package lora

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/gosd/gosd/diffusion/modelfile"
)

// Vectors are the n learned token embeddings a textual inversion puts in
// place of its token for one text encoder: N rows of Width values, row-major
// in Data (Width is the encoder's hidden size, 768 for SD 1.x).
type Vectors struct {
	N, Width int
	Data     []float32
}

// Row returns vector i.
func (v Vectors) Row(i int) []float32 { return v.Data[i*v.Width : (i+1)*v.Width] }

// Embedding is a textual inversion: the token a prompt names it by and its
// vectors for each text encoder (TextEncoder, and TextEncoder2 for SDXL
// embeddings). A tokenizer that meets Token expands it to the N vectors in
// place of one token's embedding.
type Embedding struct {
	// Token is the file's base name without extension, as AUTOMATIC1111
	// binds embeddings ("my-style.safetensors" → "my-style").
	Token   string
	Path    string
	Vectors map[string]Vectors
}

// LoadEmbedding reads a textual-inversion embedding: AUTOMATIC1111's
// "emb_params" [n, width] (its safetensors form), SDXL's "clip_l" and
// "clip_g" (first and second text encoder), or a file holding a single
// tensor of any name ([width] or [n, width]: diffusers' learned_embeds keyed
// by their token), in .safetensors or torch.save files. The data is copied,
// so the file is closed on return.
//
// AUTOMATIC1111's .pt layout, {"string_to_param": {"*": tensor}, ...}, nests
// the tensor one dict down (modelfile names it "string_to_param.*").
func LoadEmbedding(path string) (*Embedding, error) {
	f, err := modelfile.OpenFile(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	e := &Embedding{
		Token:   strings.TrimSuffix(filepath.Base(path), filepath.Ext(path)),
		Path:    path,
		Vectors: map[string]Vectors{},
	}
	var names []string
	for _, t := range f.Tensors {
		names = append(names, t.Name)
	}
	take := func(t modelfile.Tensor, component string) error {
		v, err := vectors(t)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		e.Vectors[component] = v
		return nil
	}
	if t, ok := f.Tensor("emb_params"); ok {
		return e, take(t, TextEncoder)
	}
	var params []modelfile.Tensor
	for _, t := range f.Tensors {
		if strings.HasPrefix(t.Name, "string_to_param.") {
			params = append(params, t)
		}
	}
	switch len(params) {
	case 1:
		return e, take(params[0], TextEncoder)
	case 0:
	default:
		return nil, unsupportedf("%s: %d tensors in string_to_param (AUTOMATIC1111 writes one, under \"*\")", path, len(params))
	}
	l, okL := f.Tensor("clip_l")
	g, okG := f.Tensor("clip_g")
	if okL && okG {
		if err := take(l, TextEncoder); err != nil {
			return nil, err
		}
		if err := take(g, TextEncoder2); err != nil {
			return nil, err
		}
		if e.Vectors[TextEncoder].N != e.Vectors[TextEncoder2].N {
			return nil, badf("%s: clip_l has %d vectors, clip_g %d", path, e.Vectors[TextEncoder].N, e.Vectors[TextEncoder2].N)
		}
		return e, nil
	}
	if len(f.Tensors) == 1 && !okL && !okG {
		return e, take(f.Tensors[0], TextEncoder)
	}
	return nil, unsupportedf("%s: not a textual-inversion embedding (tensors: %s)", path, list(names))
}

// vectors reads an embedding tensor, [width] or [n, width].
func vectors(t modelfile.Tensor) (Vectors, error) {
	v, err := t.Float32s()
	if err != nil {
		return Vectors{}, err
	}
	switch {
	case len(t.Shape) == 1 && t.Shape[0] > 0:
		return Vectors{1, int(t.Shape[0]), v}, nil
	case len(t.Shape) == 2 && t.Shape[0] > 0 && t.Shape[1] > 0:
		return Vectors{int(t.Shape[0]), int(t.Shape[1]), v}, nil
	}
	return Vectors{}, badf("embedding %s is %v, want [n, width]", t.Name, t.Shape)
}

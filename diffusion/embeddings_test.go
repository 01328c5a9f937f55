package diffusion

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/gosd/gosd/diffusion/lora"
	"github.com/gosd/gosd/diffusion/modelfile"
	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const tokenTable = "text_model.embeddings.token_embedding.weight"

// randomVectors is n rows of width values in [-0.5, 0.5).
func randomVectors(seed uint64, n, width int) []float32 {
	r := rand.New(rand.NewPCG(seed, 1))
	v := make([]float32, n*width)
	for i := range v {
		v[i] = r.Float32() - 0.5
	}
	return v
}

// writeEmbedding writes a textual-inversion .safetensors file of [n, width] tensors.
func writeEmbedding(t *testing.T, path string, tensors map[string][]float32, n int) {
	t.Helper()
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	var ts []modelfile.Tensor
	for _, name := range []string{"emb_params", "clip_l", "clip_g"} {
		if v, ok := tensors[name]; ok {
			ts = append(ts, modelfile.Tensor{Name: name, DType: modelfile.F32, Shape: []int64{int64(n), int64(len(v) / n)}, Data: f32Bytes(v)})
		}
	}
	require.NoError(t, modelfile.WriteSafetensors(path, ts, nil))
}

// substituted returns a copy of a text encoder's tensors whose token table has rows
// (len(ids), width) at ids: the definition of a textual inversion bound to those ids.
func substituted(t *testing.T, ts map[string]modelfile.Tensor, ids []int, rows []float32) map[string]modelfile.Tensor {
	t.Helper()
	tab, ok := ts[tokenTable]
	require.True(t, ok)
	v, err := tab.Float32s()
	require.NoError(t, err)
	width := int(tab.Shape[1])
	for i, id := range ids {
		copy(v[id*width:(id+1)*width], rows[i*width:(i+1)*width])
	}
	out := make(map[string]modelfile.Tensor, len(ts))
	for k, x := range ts {
		out[k] = x
	}
	out[tokenTable] = modelfile.Tensor{Name: tab.Name, DType: modelfile.F32, Shape: tab.Shape, Data: f32Bytes(v)}
	return out
}

// openSubstituted opens a kit model on the CPU with its text encoders' token tables
// substituted at ids (tables[k] for encoder k, nil: unchanged).
func openSubstituted(t *testing.T, model string, ids []int, tables ...[]float32) *Pipeline {
	t.Helper()
	testLibrary(t)
	o, log := applyOptions([]Option{WithDevice(DeviceCPU), WithThreads(2), WithLibrary(filepath.Join(testutil.RepoRoot(t), "build"))})
	m, err := modelfile.Load(filepath.Join(testutil.ConformanceDir(t), model, "diffusers"), o.model...)
	require.NoError(t, err)
	m.TextEncoder.Tensors = substituted(t, m.TextEncoder.Tensors, ids, tables[0])
	if len(tables) > 1 {
		m.ExtraTextEncoders[0].Tensors = substituted(t, m.ExtraTextEncoders[0].Tensors, ids, tables[1])
	}
	p, err := open(context.Background(), m, nil, o, log)
	if err != nil {
		m.Close()
	}
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	return p
}

// singleTokens are the ids of words that are one token each, the ids an embedding's
// vectors are substituted at in the reference.
func singleTokens(t *testing.T, p *Pipeline, words ...string) []int {
	t.Helper()
	ids := make([]int, len(words))
	for i, w := range words {
		toks := p.tok.Encode(w)
		require.Len(t, toks, 1, w)
		ids[i] = toks[0]
	}
	return ids
}

// The text encoders' outputs with an embedding in the prompt equal those of the same
// encoders whose token tables hold its vectors at the ids of "dog" and "house", given
// the prompt with those words in its place (SD 1.x: final-normed last layer; SDXL: both
// encoders' penultimate layers, and the second's pooled output).
func TestEmbeddingMatchesSubstitutedTokenTable(t *testing.T) {
	const n = 2
	for _, model := range []string{"sd1-tiny", "sdxl-tiny"} {
		t.Run(model, func(t *testing.T) {
			p := openTiny(t, model)
			nets := []clipNet{p.eng.clipNet()}
			components := []string{lora.TextEncoder}
			vecs := map[string][]float32{"emb_params": randomVectors(1, n, nets[0].width())}
			tables := [][]float32{vecs["emb_params"]}
			if p.desc.sdxl {
				nets = append(nets, p.eng.clipNet2())
				components = append(components, lora.TextEncoder2)
				vecs = map[string][]float32{"clip_l": randomVectors(2, n, nets[0].width()), "clip_g": randomVectors(3, n, nets[1].width())}
				tables = [][]float32{vecs["clip_l"], vecs["clip_g"]}
			}
			path := filepath.Join(t.TempDir(), "styles", "my-emb.safetensors")
			writeEmbedding(t, path, vecs, n)
			embeds, used, err := p.requestEmbeddings(Request{Prompt: "a (My-Emb:1.2) apple", EmbeddingDir: filepath.Dir(filepath.Dir(path))})
			require.NoError(t, err)
			require.Len(t, embeds, 1)
			assert.Equal(t, "my-emb", used[0].Name)

			ref := openSubstituted(t, model, singleTokens(t, p, "dog", "house"), tables...)
			refNets := []clipNet{ref.eng.clipNet(), ref.eng.clipNet2()}
			for k, net := range nets {
				ti := newTITable(embeds, components[k], int(net.cfg.VocabSize))
				got, err := p.tok.EncodeWeightedWith("a my-emb apple", p.padID, ti.words)
				require.NoError(t, err)
				plainChunk, dropped, err := p.tok.EncodePlainWith("a my-emb apple", p.padID, ti.words)
				require.NoError(t, err)
				assert.Zero(t, dropped)
				assert.Equal(t, got[0].IDs, plainChunk.IDs, "plain syntax reads the name the same way")
				want, err := ref.tok.EncodeWeighted("a dog house apple", ref.padID)
				require.NoError(t, err)
				require.Len(t, got, 1)
				skip, norm := 0, true
				if p.desc.sdxl {
					skip, norm = 1, false
				}
				h, pooled, err := net.encodeWith(got[0].IDs[:], ti.rows, 1, 77, skip, norm, true)
				require.NoError(t, err)
				rh, rpooled, err := refNets[k].encode(want[0].IDs[:], 1, 77, skip, norm, true)
				require.NoError(t, err)
				eh, ep := relErr(h, rh), relErr(pooled, rpooled)
				t.Logf("encoder %d: hidden max|diff|/max|ref| = %.2e, pooled %.2e", k+1, eh, ep)
				assert.LessOrEqual(t, eh, conformanceTol)
				assert.LessOrEqual(t, ep, conformanceTol)
				plain, _, err := net.encode(want[0].IDs[:], 1, 77, skip, norm, false)
				require.NoError(t, err)
				assert.Greater(t, relErr(h, plain), 1e-2, "the embedding changes the output")
			}
		})
	}
}

// A whole txt2img run with an embedding in the negative prompt: unlike the run without
// the embedding folder (the name read as text), and as the run of the model whose token
// tables hold the vectors at the ids of "dog" and "house", given those words instead.
func TestEmbeddingInNegativePromptTxt2Img(t *testing.T) {
	for _, model := range []string{"sd1-tiny", "sdxl-tiny"} {
		t.Run(model, func(t *testing.T) {
			p := openTiny(t, model)
			tensors := map[string][]float32{"emb_params": randomVectors(4, 2, p.eng.clipNet().width())}
			tables := [][]float32{tensors["emb_params"]}
			if p.desc.sdxl {
				tensors = map[string][]float32{"clip_l": randomVectors(5, 2, p.eng.clipNet().width()), "clip_g": randomVectors(6, 2, p.eng.clipNet2().width())}
				tables = [][]float32{tensors["clip_l"], tensors["clip_g"]}
			}
			dir := t.TempDir()
			path := filepath.Join(dir, "sub", "bad-hands.safetensors")
			writeEmbedding(t, path, tensors, 2)

			req := kitRequest(DDIM)
			req.NegativePrompt = "blurry, bad-hands"
			req.EmbeddingDir = dir
			with, err := p.Txt2Img(context.Background(), req)
			require.NoError(t, err)
			req.EmbeddingDir = ""
			without, err := p.Txt2Img(context.Background(), req)
			require.NoError(t, err)

			ref := openSubstituted(t, model, singleTokens(t, p, "dog", "house"), tables...)
			rreq := kitRequest(DDIM)
			rreq.NegativePrompt = "blurry, dog house"
			want, err := ref.Txt2Img(context.Background(), rreq)
			require.NoError(t, err)

			d, d0 := maxPixelDiff(with.Images[0], want.Images[0]), maxPixelDiff(with.Images[0], without.Images[0])
			t.Logf("with the embedding vs the substituted tables: max pixel diff %.3f levels; vs without: %.1f", d, d0)
			assert.LessOrEqual(t, d, 2.0, "2/255 per pixel")
			assert.Greater(t, d0, 2.0)

			hash, err := fileShortHash(path)
			require.NoError(t, err)
			require.Len(t, with.Params.Embeddings, 1)
			assert.Equal(t, AppliedEmbedding{Name: "bad-hands", Path: path, Hash: hash}, with.Params.Embeddings[0])
			assert.Contains(t, with.Params.A1111(0), `TI hashes: "bad-hands: `+hash+`"`)
			assert.Empty(t, without.Params.Embeddings)
			assert.NotContains(t, without.Params.A1111(0), "TI hashes")
			if p.desc.sdxl { // an SD 1.x embedding on SDXL
				sd1 := filepath.Join(t.TempDir(), "sd1.safetensors")
				writeEmbedding(t, sd1, map[string][]float32{"emb_params": tables[0]}, 2)
				_, _, err := p.requestEmbeddings(Request{Prompt: "sd1", Embeddings: []string{sd1}})
				require.ErrorIs(t, err, ErrInvalidRequest)
				assert.ErrorContains(t, err, sd1+" has no vectors for SDXL's second text encoder (clip_g)")
			}
		})
	}
}

// Embeddings that do not fit the model, or names that are ambiguous, are request errors
// naming the file.
func TestEmbeddingErrors(t *testing.T) {
	p := openTiny(t, "sd1-tiny")
	width := p.eng.clipNet().width()
	dir := t.TempDir()
	writeEmbedding(t, filepath.Join(dir, "wide.safetensors"), map[string][]float32{"emb_params": randomVectors(5, 1, width+16)}, 1)
	writeEmbedding(t, filepath.Join(dir, "xl.safetensors"), map[string][]float32{"clip_l": randomVectors(6, 1, width), "clip_g": randomVectors(7, 1, 2*width)}, 1)
	writeEmbedding(t, filepath.Join(dir, "twice.safetensors"), map[string][]float32{"emb_params": randomVectors(8, 1, width)}, 1)
	writeEmbedding(t, filepath.Join(dir, "sub", "twice.safetensors"), map[string][]float32{"emb_params": randomVectors(8, 1, width)}, 1)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "junk.pt"), []byte("not a file"), 0o644))
	for _, tt := range []struct {
		prompt, want string
	}{
		{"a wide cat", "wide.safetensors has " + "48-wide vectors, the text encoder takes 32"},
		{"a xl cat", "xl.safetensors is an SDXL embedding"},
		{"twice", `embedding "twice": several files`},
		{"junk", `embedding "junk"`},
	} {
		t.Run(tt.prompt, func(t *testing.T) {
			_, err := p.Txt2Img(context.Background(), Request{Prompt: tt.prompt, EmbeddingDir: dir, Width: 64, Height: 64, Steps: 1})
			require.ErrorIs(t, err, ErrInvalidRequest)
			assert.ErrorContains(t, err, tt.want)
		})
	}
	// Names that no prompt uses are not loaded; plain syntax uses them too; files given
	// by path are found like the folder's.
	_, used, err := p.requestEmbeddings(Request{Prompt: "a cat", EmbeddingDir: dir})
	require.NoError(t, err)
	assert.Empty(t, used)
	_, used, err = p.requestEmbeddings(Request{Prompt: "a wide cat", EmbeddingDir: dir, PromptSyntax: PromptPlain})
	require.ErrorIs(t, err, ErrInvalidRequest, "the too wide embedding is used, and refused")
	assert.Empty(t, used)
	other := filepath.Join(t.TempDir(), "other.safetensors")
	writeEmbedding(t, other, map[string][]float32{"emb_params": randomVectors(9, 3, width)}, 3)
	embeds, used, err := p.requestEmbeddings(Request{NegativePrompt: "other", Embeddings: []string{other}})
	require.NoError(t, err)
	require.Len(t, used, 1)
	assert.Equal(t, "other", used[0].Name)
	assert.Equal(t, 3, embeds[0].Vectors[lora.TextEncoder].N)
	_, _, err = p.requestEmbeddings(Request{Prompt: "a cat", EmbeddingDir: filepath.Join(dir, "missing")})
	require.ErrorIs(t, err, ErrInvalidRequest)
}

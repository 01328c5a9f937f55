package lora

import (
	"archive/zip"
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/gosd/gosd/diffusion/modelfile"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Pickle opcodes torch.save's protocol 2 uses (see Python's pickletools).
const (
	pkProto      = 0x80
	pkEmptyDict  = '}'
	pkMark       = '('
	pkBinUnicode = 'X'
	pkGlobal     = 'c'
	pkTuple      = 't'
	pkBinPersID  = 'Q'
	pkBinInt     = 'J'
	pkNewFalse   = 0x89
	pkEmptyTuple = ')'
	pkReduce     = 'R'
	pkSetItems   = 'u'
	pkStop       = '.'
)

// entry is a value of a pickled dict: a tensor, or a nested dict of them.
type entry struct {
	key    string
	tensor modelfile.Tensor
	dict   []entry
}

type pickler struct {
	b        []byte
	storages map[string][]byte
}

func (p *pickler) str(s string) {
	p.b = append(p.b, pkBinUnicode)
	p.b = binary.LittleEndian.AppendUint32(p.b, uint32(len(s)))
	p.b = append(p.b, s...)
}

func (p *pickler) int(n int64) {
	p.b = binary.LittleEndian.AppendUint32(append(p.b, pkBinInt), uint32(n))
}

func (p *pickler) global(module, name string) {
	p.b = append(append(p.b, pkGlobal), module+"\n"+name+"\n"...)
}

func (p *pickler) ints(v []int64) {
	p.b = append(p.b, pkMark)
	for _, x := range v {
		p.int(x)
	}
	p.b = append(p.b, pkTuple)
}

// tensor writes torch._utils._rebuild_tensor_v2 over a new storage.
func (p *pickler) tensor(t modelfile.Tensor) {
	key := fmt.Sprint(len(p.storages))
	p.storages[key] = t.Data
	class := map[modelfile.DType]string{modelfile.F32: "FloatStorage", modelfile.F16: "HalfStorage"}[t.DType]
	stride := make([]int64, len(t.Shape))
	n := int64(1)
	for d := len(t.Shape) - 1; d >= 0; d-- {
		stride[d] = n
		n *= t.Shape[d]
	}
	p.global("torch._utils", "_rebuild_tensor_v2")
	p.b = append(p.b, pkMark, pkMark)
	p.str("storage")
	p.global("torch", class)
	p.str(key)
	p.str("cpu")
	p.int(n)
	p.b = append(p.b, pkTuple, pkBinPersID)
	p.int(0)
	p.ints(t.Shape)
	p.ints(stride)
	p.b = append(p.b, pkNewFalse)
	p.global("collections", "OrderedDict")
	p.b = append(p.b, pkEmptyTuple, pkReduce, pkTuple, pkReduce)
}

func (p *pickler) dict(es []entry) {
	p.b = append(p.b, pkEmptyDict, pkMark)
	for _, e := range es {
		p.str(e.key)
		if e.dict != nil {
			p.dict(e.dict)
		} else {
			p.tensor(e.tensor)
		}
	}
	p.b = append(p.b, pkSetItems)
}

// torchSave writes es as torch.save's zip format does.
func torchSave(t *testing.T, name string, es []entry) string {
	p := &pickler{storages: map[string][]byte{}}
	p.b = append(p.b, pkProto, 2)
	p.dict(es)
	p.b = append(p.b, pkStop)
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	put := func(name string, data []byte) {
		w, err := zw.CreateHeader(&zip.FileHeader{Name: name, Method: zip.Store})
		require.NoError(t, err)
		_, err = w.Write(data)
		require.NoError(t, err)
	}
	put("archive/data.pkl", p.b)
	put("archive/byteorder", []byte("little"))
	for k, v := range p.storages {
		put("archive/data/"+k, v)
	}
	put("archive/version", []byte("3\n"))
	require.NoError(t, zw.Close())
	path := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(path, buf.Bytes(), 0o644))
	return path
}

func TestLoadCheckpointAdapter(t *testing.T) {
	up := f32Tensor("", []int64{8, 2}, seq(16))
	down := f32Tensor("", []int64{2, 8}, seq(16))
	path := torchSave(t, "adapter.pt", []entry{
		{key: "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight", tensor: up},
		{key: "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", tensor: down},
		{key: "lora_unet_down_blocks_0_attentions_0_proj_in.alpha", tensor: f32Tensor("", nil, []float32{1})},
	})
	f, err := Load(path)
	require.NoError(t, err)
	defer f.Close()
	require.Len(t, f.Modules, 1)
	assert.Equal(t, 1.0, f.Modules[0].Alpha)
	got, err := f.Apply(model, UNet, 1)
	require.NoError(t, err)
	v := decoded(t, got["down_blocks.0.attentions.0.proj_in.weight"])
	// W = 0, so W' = (1/2) · up @ down; element [0, 0] = up[0,:] · down[:,0] / 2.
	assert.Equal(t, float32((0*0+1*8)/2.0), v[0])
}

func TestLoadCheckpointEmbedding(t *testing.T) {
	emb := f32Tensor("", []int64{2, 16}, seq(32))
	t.Run("diffusers learned_embeds", func(t *testing.T) {
		e, err := LoadEmbedding(torchSave(t, "learned_embeds.bin", []entry{{key: "<cat-toy>", tensor: emb}}))
		require.NoError(t, err)
		assert.Equal(t, "learned_embeds", e.Token)
		assert.Equal(t, Vectors{2, 16, seq(32)}, e.Vectors[TextEncoder])
	})
	t.Run("A1111 string_to_param", func(t *testing.T) {
		e, err := LoadEmbedding(torchSave(t, "style.pt", []entry{{key: "string_to_param", dict: []entry{{key: "*", tensor: emb}}}}))
		require.NoError(t, err)
		assert.Equal(t, "style", e.Token)
		assert.Equal(t, Vectors{2, 16, seq(32)}, e.Vectors[TextEncoder])
	})
	t.Run("A1111 string_to_param with two tensors", func(t *testing.T) {
		_, err := LoadEmbedding(torchSave(t, "two.pt", []entry{{key: "string_to_param", dict: []entry{{key: "*", tensor: emb}, {key: "+", tensor: emb}}}}))
		assert.ErrorIs(t, err, modelfile.ErrUnsupported)
		assert.ErrorContains(t, err, "2 tensors in string_to_param")
	})
}

package modelfile

import (
	"archive/zip"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// within reports whether view lies inside buf's memory (a view, not a copy).
func within(buf, view []byte) bool {
	if len(view) == 0 {
		return true
	}
	b, v := uintptr(unsafe.Pointer(unsafe.SliceData(buf))), uintptr(unsafe.Pointer(unsafe.SliceData(view)))
	return v >= b && v+uintptr(len(view)) <= b+uintptr(len(buf))
}

// sampleCheckpoint has a parameter, a tensor at a storage offset, a
// transposed (non-contiguous) view and a scalar, over two storages.
func sampleCheckpoint() ([]ckptTensor, map[string][]byte) {
	tensors := []ckptTensor{
		{name: "model.w", storage: "HalfStorage", key: "0", numel: 6, shape: []int64{2, 3}, stride: []int64{3, 1}, parameter: true},
		{name: "model.tail", storage: "HalfStorage", key: "0", numel: 6, offset: 4, shape: []int64{2}, stride: []int64{1}},
		{name: "model.wT", storage: "HalfStorage", key: "0", numel: 6, shape: []int64{3, 2}, stride: []int64{1, 3}},
		{name: "model.scale", storage: "FloatStorage", key: "1", numel: 1, shape: nil, stride: nil},
	}
	storages := map[string][]byte{"0": halfBytes(1, 2, 3, 4, 5, 6), "1": floatBytes(0.5)}
	return tensors, storages
}

func wantSample() map[string][]float32 {
	return map[string][]float32{
		"model.w":     {1, 2, 3, 4, 5, 6},
		"model.tail":  {5, 6},
		"model.wT":    {1, 4, 2, 5, 3, 6},
		"model.scale": {0.5},
	}
}

func assertSample(t *testing.T, tensors []Tensor) {
	t.Helper()
	got := map[string][]float32{}
	for _, x := range tensors {
		v, err := x.Float32s()
		require.NoError(t, err, x.Name)
		got[x.Name] = v
	}
	assert.Equal(t, wantSample(), got)
}

func TestReadZipCheckpoint(t *testing.T) {
	tensors, storages := sampleCheckpoint()
	for _, c := range []struct {
		name      string
		lightning bool
		method    uint16
	}{
		{"lightning, stored", true, zip.Store},
		{"bare state dict, stored", false, zip.Store},
		{"deflated storages", true, zip.Deflate},
	} {
		t.Run(c.name, func(t *testing.T) {
			data := torchZip(t, stateDictPickle(tensors, c.lightning, false), storages, c.method)
			got, err := readCheckpoint(data)
			require.NoError(t, err)
			assertSample(t, got)
			for _, x := range got {
				viewable := c.method == zip.Store && x.Name != "model.wT"
				assert.Equal(t, viewable, within(data, x.Data), "%s: views the file iff stored and contiguous", x.Name)
			}
			assert.Equal(t, []int64{3, 2}, got[2].Shape)
			assert.Equal(t, F32, got[3].DType)
			assert.Empty(t, got[3].Shape)
		})
	}
}

func TestReadLegacyCheckpoint(t *testing.T) {
	tensors, storages := sampleCheckpoint()
	p := &pickler{}
	p.op(opProto, 2, opLong1, 10, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, opStop)
	p.op(opProto, 2).int(1001).op(opStop)
	p.op(opProto, 2, opEmptyDict).str("little_endian").op(opNewTrue, opSetItem, opStop)
	p.b = append(p.b, stateDictPickle(tensors, false, true)...)
	p.op(opProto, 2, opEmptyList, opMark).str("0").str("1").op(opAppends, opStop)
	for _, k := range []struct {
		key   string
		numel uint64
	}{{"0", 6}, {"1", 1}} {
		p.b = binary.LittleEndian.AppendUint64(p.b, k.numel)
		p.b = append(p.b, storages[k.key]...)
	}
	got, err := readCheckpoint(p.b)
	require.NoError(t, err)
	assertSample(t, got)
	assert.True(t, within(p.b, got[0].Data))

	_, err = readCheckpoint(p.b[:len(p.b)-1])
	assert.ErrorContains(t, err, `storage "1"`)
	bad := append([]byte{}, p.b...)
	bad[6] ^= 1 // corrupt the magic number
	_, err = readCheckpoint(bad)
	assert.ErrorContains(t, err, "wrong magic number")
}

func TestOpenCheckpointFile(t *testing.T) {
	tensors, storages := sampleCheckpoint()
	dir := t.TempDir()
	path := filepath.Join(dir, "model.ckpt")
	require.NoError(t, os.WriteFile(path, torchZip(t, stateDictPickle(tensors, true, false), storages, zip.Store), 0o644))
	for _, open := range []func(string) (*File, error){OpenCheckpoint, OpenFile} {
		f, err := open(path)
		require.NoError(t, err)
		assert.Equal(t, FormatPyTorch, f.Format)
		assertSample(t, f.Tensors)
		x, ok := f.Tensor("model.tail")
		require.True(t, ok)
		assert.Equal(t, []int64{2}, x.Shape)
		require.NoError(t, f.Close())
	}
	// A checkpoint under a name OpenFile does not know is recognised by content.
	odd := filepath.Join(dir, "weights.data")
	require.NoError(t, os.Rename(path, odd))
	f, err := OpenFile(odd)
	require.NoError(t, err)
	assert.Equal(t, FormatPyTorch, f.Format)
	require.NoError(t, f.Close())

	require.NoError(t, os.WriteFile(odd, []byte("nonsense"), 0o644))
	_, err = OpenCheckpoint(odd)
	assert.ErrorContains(t, err, odd)
	assert.ErrorContains(t, err, "not a PyTorch checkpoint")
}

func TestReadCheckpointRejectsMalformed(t *testing.T) {
	tensors, storages := sampleCheckpoint()
	good := stateDictPickle(tensors, true, false)
	withTensors := func(mod func([]ckptTensor)) []byte {
		ts, _ := sampleCheckpoint()
		mod(ts)
		return stateDictPickle(ts, false, false)
	}
	cases := []struct {
		name    string
		file    []byte
		wantErr string
	}{
		{"no data.pkl", zipBytes(t, []zipEntry{{"archive/other", []byte("x"), zip.Store}}), "without data.pkl"},
		{"missing storage", torchZip(t, good, map[string][]byte{"0": storages["0"]}, zip.Store), `tensor "model.scale": storage "1": no entry archive/data/1`},
		{"short storage", torchZip(t, good, map[string][]byte{"0": storages["0"][:10], "1": storages["1"]}, zip.Store), `storage "0": entry has 10 bytes, F16[6] needs 12`},
		{"view past storage", torchZip(t, withTensors(func(ts []ckptTensor) { ts[1].offset = 5 }), storages, zip.Store), `tensor "model.tail": shape [2], stride [1] at offset 5 reach past the storage of 6 elements`},
		{"overflowing stride", torchZip(t, withTensors(func(ts []ckptTensor) { ts[2].stride = []int64{1 << 62, 3} }), storages, zip.Store), "reach past the storage"},
		{"expanded beyond the storage", torchZip(t, withTensors(func(ts []ckptTensor) { ts[2].shape, ts[2].stride = []int64{100, 2}, []int64{0, 1} }), storages, zip.Store), "exceeds the copy budget"},
		{"storage named twice", torchZip(t, withTensors(func(ts []ckptTensor) { ts[3].key = "0" }), storages, zip.Store), `storage "0" is named as F16[6] and as F32[1]`},
		{"unknown storage class", torchZip(t, withTensors(func(ts []ckptTensor) { ts[0].storage = "ComplexFloatStorage" }), storages, zip.Store), "unsupported storage type global torch.ComplexFloatStorage"},
		{"big endian", zipBytes(t, []zipEntry{{"archive/data.pkl", good, zip.Store}, {"archive/byteorder", []byte("big"), zip.Store}}), `byte order "big"`},
		{"truncated pickle", torchZip(t, good[:len(good)-1], storages, zip.Store), "no STOP"},
		{"not a zip", []byte("PK\x03\x04garbage"), "zip:"},
		{"tar", append(make([]byte, 257), "ustar\x0000"...), "tar-based"},
		{"object in state dict", torchZip(t, (&pickler{}).op(opProto, 2, opEmptyDict).str("w").global("torch.nn", "Linear").op(opEmptyTuple, opReduce, opSetItem, opStop).b, nil, zip.Store), `state dict entry "w" is an instance of torch.nn.Linear, not a tensor`},
		{"list at top", torchZip(t, []byte{opProto, 2, opEmptyList, opStop}, nil, zip.Store), "holds a list, not a state dict"},
		{"non-string key", torchZip(t, []byte{opProto, 2, opEmptyDict, opNone, opNone, opSetItem, opStop}, nil, zip.Store), "state dict key of type None"},
		{"bad persistent id", torchZip(t, []byte{opProto, 2, opNone, opBinPersID, opStop}, nil, zip.Store), "persistent id None is not a storage"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := readCheckpoint(c.file)
			assert.ErrorContains(t, err, c.wantErr)
		})
	}
}

func TestReadCheckpointSkipsPlainValues(t *testing.T) {
	tensors, storages := sampleCheckpoint()
	p := &pickler{}
	p.op(opProto, 2, opEmptyDict, opMark).str("n").int(3).str("s").str("x").str("none").op(opNone)
	p.str("t").tensor(tensors[3], false).op(opSetItems, opStop)
	got, err := readCheckpoint(torchZip(t, p.b, storages, zip.Store))
	require.NoError(t, err)
	require.Len(t, got, 1)
	assert.Equal(t, "t", got[0].Name)
}

func FuzzUnpickle(f *testing.F) {
	tensors, _ := sampleCheckpoint()
	for _, lightning := range []bool{false, true} {
		valid := stateDictPickle(tensors, lightning, false)
		f.Add(valid)
		for _, cut := range []int{1, 2, len(valid) / 3, len(valid) / 2, len(valid) - 1} {
			f.Add(valid[:cut])
		}
	}
	f.Add([]byte{opProto, 4, opFrame, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, opNone, opStop})
	f.Add([]byte{opBinUnicode8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f})
	f.Add([]byte("cos\nsystem\n(Vecho\ntR."))
	f.Fuzz(func(t *testing.T, data []byte) {
		before := heapAllocated()
		r := &checkpointReader{roots: map[string]*storageRef{}}
		u := &unpickler{data: data, persistentLoad: r.zipStorage}
		if top, err := u.load(); err == nil {
			_, _ = stateDict(top)
			_ = pyTypeName(top)
		}
		if used := heapAllocated() - before; used > allocationBound(len(data)) {
			t.Fatalf("unpickling %d bytes allocated %d bytes", len(data), used)
		}
	})
}

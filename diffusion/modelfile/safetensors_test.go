package modelfile

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"runtime/metrics"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// stBytes assembles a safetensors file from a raw header and data.
func stBytes(header string, data []byte) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	return append(append(b, header...), data...)
}

func TestWriteSafetensorsRoundTrip(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "w.safetensors")
	in := []Tensor{
		{Name: "b.weight", DType: F16, Shape: []int64{2, 1}, Data: []byte{0, 0x3c, 0, 0xc0}},
		{Name: "a.empty", DType: F32, Shape: []int64{0, 3}, Data: nil},
		{Name: "scalar", DType: I64, Shape: nil, Data: []byte{7, 0, 0, 0, 0, 0, 0, 0}},
		{Name: `odd "name" <&>`, DType: U8, Shape: []int64{3}, Data: []byte{1, 2, 3}},
	}
	meta := map[string]string{"format": "pt", "note": "round trip"}
	require.NoError(t, WriteSafetensors(path, in, meta))

	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Zero(t, binary.LittleEndian.Uint64(raw)%8, "data must start 8-byte aligned")

	f, err := OpenSafetensors(path)
	require.NoError(t, err)
	defer f.Close()
	assert.Equal(t, meta, f.Metadata)
	assert.Equal(t, FormatSafetensors, f.Format)
	require.Len(t, f.Tensors, len(in))
	for i, want := range in {
		got, ok := f.Tensor(want.Name)
		require.True(t, ok, want.Name)
		assert.Equal(t, want.DType, got.DType)
		assert.Equal(t, append([]int64{}, want.Shape...), got.Shape)
		assert.Equal(t, append([]byte{}, want.Data...), append([]byte{}, got.Data...))
		assert.Equal(t, want.Name, f.Tensors[i].Name, "file order is the written order")
	}
	_, ok := f.Tensor("missing")
	assert.False(t, ok)
	require.NoError(t, f.Close())
	require.NoError(t, f.Close(), "Close twice")

	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Len(t, entries, 1, "no temporary file left behind")
}

func TestWriteSafetensorsRefusesBadInput(t *testing.T) {
	cases := []struct {
		name    string
		tensors []Tensor
		wantErr string
	}{
		{"duplicate", []Tensor{{Name: "x", DType: U8, Shape: []int64{1}, Data: []byte{1}}, {Name: "x", DType: U8, Shape: []int64{1}, Data: []byte{1}}}, `"x" appears twice`},
		{"short data", []Tensor{{Name: "x", DType: F32, Shape: []int64{2}, Data: []byte{1, 2, 3, 4}}}, "wrote 4 data bytes, its dtype and shape need 8"},
		{"no dtype", []Tensor{{Name: "x", Shape: []int64{1}, Data: []byte{1}}}, "invalid dtype"},
		{"reserved name", []Tensor{{Name: "__metadata__", DType: U8, Shape: []int64{1}, Data: []byte{1}}}, "invalid tensor name"},
		{"negative dim", []Tensor{{Name: "x", DType: U8, Shape: []int64{-1}}}, "invalid shape"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "w.safetensors")
			err := WriteSafetensors(path, c.tensors, nil)
			assert.ErrorContains(t, err, c.wantErr)
			assert.ErrorContains(t, err, path)
			entries, _ := os.ReadDir(dir)
			assert.Empty(t, entries, "a failed write leaves nothing")
		})
	}
}

func TestParseSafetensorsRejectsMalformed(t *testing.T) {
	four := make([]byte, 4)
	cases := []struct {
		name    string
		file    []byte
		wantErr string
	}{
		{"too short", []byte{1, 2, 3}, "too short"},
		{"header over limit", binary.LittleEndian.AppendUint64(nil, MaxSafetensorsHeader+1), "exceeds the 104857600 byte limit"},
		{"header past end", binary.LittleEndian.AppendUint64(nil, 100), "truncated"},
		{"huge header length", binary.LittleEndian.AppendUint64(nil, 1<<63), "limit"},
		{"not json", stBytes("{nope", nil), "header JSON"},
		{"array", stBytes("[]", nil), "not a JSON object"},
		{"trailing json", stBytes("{} {}", nil), "data after the header"},
		{"unknown dtype", stBytes(`{"x":{"dtype":"F8_E5M2","shape":[4],"data_offsets":[0,4]}}`, four), `tensor "x": unsupported dtype "F8_E5M2"`},
		{"lower-case dtype", stBytes(`{"x":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}}`, four), "unsupported dtype"},
		{"negative dim", stBytes(`{"x":{"dtype":"U8","shape":[-4],"data_offsets":[0,4]}}`, four), "dimension 0 is -4"},
		{"fractional dim", stBytes(`{"x":{"dtype":"U8","shape":[1.5],"data_offsets":[0,4]}}`, four), "dimension 0 is 1.5"},
		{"string dim", stBytes(`{"x":{"dtype":"U8","shape":["4"],"data_offsets":[0,4]}}`, four), `tensor "x"`},
		{"missing shape", stBytes(`{"x":{"dtype":"U8","data_offsets":[0,4]}}`, four), "needs dtype, shape and data_offsets"},
		{"null offsets", stBytes(`{"x":{"dtype":"U8","shape":[4],"data_offsets":null}}`, four), "needs dtype"},
		{"three offsets", stBytes(`{"x":{"dtype":"U8","shape":[4],"data_offsets":[0,2,4]}}`, four), "has 3 values"},
		{"negative offset", stBytes(`{"x":{"dtype":"U8","shape":[4],"data_offsets":[-1,4]}}`, four), "not a non-negative integer"},
		{"reversed offsets", stBytes(`{"x":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}}`, four), "outside the 4 byte data region"},
		{"offset past data", stBytes(`{"x":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}}`, four), "outside"},
		{"size mismatch", stBytes(`{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}`, four), "F32 [2] needs 8 bytes"},
		{"overflowing shape", stBytes(`{"x":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}`, four), "too large"},
		{"overflowing dim", stBytes(`{"x":{"dtype":"U8","shape":[99999999999999999999],"data_offsets":[0,4]}}`, four), "dimension 0"},
		{"overlap", stBytes(`{"a":{"dtype":"U8","shape":[3],"data_offsets":[0,3]},"b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}}`, four), `tensor "b" (bytes 2..4) overlaps`},
		{"gap", stBytes(`{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}}`, four), `bytes 1..2 before tensor "b" belong to no tensor`},
		{"trailing data", stBytes(`{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}`, four), "2 trailing data bytes"},
		{"metadata not strings", stBytes(`{"__metadata__":{"n":1}}`, nil), "__metadata__ must map strings to strings"},
		{"metadata twice", stBytes(`{"__metadata__":{},"__metadata__":{}}`, nil), "__metadata__ appears twice"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := parseSafetensors(c.file)
			assert.ErrorContains(t, err, c.wantErr)
		})
	}
}

func TestParseSafetensorsAcceptsEdgeCases(t *testing.T) {
	cases := []struct {
		name  string
		file  []byte
		names []string
	}{
		{"empty object", stBytes("{}", nil), nil},
		{"padded header", stBytes(`{"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}   `, []byte{9}), []string{"x"}},
		{"out of order offsets", stBytes(`{"b":{"dtype":"U8","shape":[1],"data_offsets":[1,2]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}`, []byte{1, 2}), []string{"a", "b"}},
		{"empty tensors share an offset", stBytes(`{"e":{"dtype":"F32","shape":[0],"data_offsets":[1,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"f":{"dtype":"BOOL","shape":[2,0],"data_offsets":[1,1]}}`, []byte{1}), []string{"a", "e", "f"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, tensors, err := parseSafetensors(c.file)
			require.NoError(t, err)
			var names []string
			for _, x := range tensors {
				names = append(names, x.Name)
			}
			assert.Equal(t, c.names, names)
		})
	}
}

func TestOpenSafetensorsErrorsNameFileAndTensor(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.safetensors")
	require.NoError(t, WriteSafetensors(good, []Tensor{
		{Name: "first", DType: F32, Shape: []int64{4}, Data: make([]byte, 16)},
		{Name: "last", DType: F32, Shape: []int64{4}, Data: make([]byte, 16)},
	}, nil))
	raw, err := os.ReadFile(good)
	require.NoError(t, err)

	truncated := filepath.Join(dir, "truncated.safetensors")
	require.NoError(t, os.WriteFile(truncated, raw[:len(raw)-1], 0o644))
	_, err = OpenSafetensors(truncated)
	assert.ErrorContains(t, err, truncated)
	assert.ErrorContains(t, err, `tensor "last"`)

	headerOnly := filepath.Join(dir, "header-cut.safetensors")
	require.NoError(t, os.WriteFile(headerOnly, raw[:20], 0o644))
	_, err = OpenSafetensors(headerOnly)
	assert.ErrorContains(t, err, headerOnly)
	assert.ErrorContains(t, err, "truncated")

	dup := filepath.Join(dir, "dup.safetensors")
	require.NoError(t, os.WriteFile(dup, stBytes(`{"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"x":{"dtype":"U8","shape":[0],"data_offsets":[1,1]}}`, []byte{1}), 0o644))
	_, err = OpenSafetensors(dup)
	assert.ErrorContains(t, err, `tensor "x" appears twice`)

	empty := filepath.Join(dir, "empty.safetensors")
	require.NoError(t, os.WriteFile(empty, nil, 0o644))
	_, err = OpenSafetensors(empty)
	assert.ErrorContains(t, err, "too short")

	_, err = OpenSafetensors(filepath.Join(dir, "absent.safetensors"))
	assert.ErrorIs(t, err, os.ErrNotExist)
}

// heapAllocated is the process's cumulative heap allocation in bytes.
func heapAllocated() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// allocationBound is what parsing n input bytes may allocate: a generous
// constant factor of the input (each byte of a pickle may create one small
// object), never something a length field inside the input controls.
func allocationBound(n int) uint64 { return 1024*uint64(n) + 4<<20 }

func FuzzSafetensorsHeader(f *testing.F) {
	valid := stBytes(`{"__metadata__":{"format":"pt"},"a":{"dtype":"F16","shape":[2,2],"data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[],"data_offsets":[8,10]}}`, make([]byte, 10))
	f.Add(valid)
	for _, cut := range []int{0, 7, 8, 20, len(valid) - 11, len(valid) - 1} {
		f.Add(valid[:cut])
	}
	f.Add(stBytes(`{"x":{"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,1]}}`, []byte{0}))
	f.Add(binary.LittleEndian.AppendUint64(nil, MaxSafetensorsHeader))
	f.Fuzz(func(t *testing.T, data []byte) {
		before := heapAllocated()
		_, tensors, err := parseSafetensors(data)
		if used := heapAllocated() - before; used > allocationBound(len(data)) {
			t.Fatalf("parsing %d bytes allocated %d bytes", len(data), used)
		}
		if err != nil {
			return
		}
		// Whatever parses must describe data inside the input.
		total := 0
		for _, x := range tensors {
			n, ok := numElements(x.Shape)
			if !ok || int64(len(x.Data)) != n*x.DType.Size() {
				t.Fatalf("tensor %q: %s %v with %d bytes", x.Name, x.DType, x.Shape, len(x.Data))
			}
			total += len(x.Data)
		}
		if total > len(data) {
			t.Fatalf("tensors hold %d bytes of a %d byte input", total, len(data))
		}
	})
}

package modelfile

import (
	"archive/zip"
	"bytes"
	"encoding/binary"
	"math"
	"math/big"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// pickler writes pickles the way torch.save does (protocol 2), for tests.
type pickler struct{ b []byte }

func (p *pickler) op(ops ...byte) *pickler { p.b = append(p.b, ops...); return p }

func (p *pickler) str(s string) *pickler {
	p.b = append(p.b, opBinUnicode)
	p.b = binary.LittleEndian.AppendUint32(p.b, uint32(len(s)))
	p.b = append(p.b, s...)
	return p
}

func (p *pickler) int(n int64) *pickler {
	switch {
	case n >= 0 && n < 256:
		return p.op(opBinInt1, byte(n))
	case n >= math.MinInt32 && n <= math.MaxInt32:
		p.b = binary.LittleEndian.AppendUint32(append(p.b, opBinInt), uint32(n))
		return p
	}
	p.b = binary.LittleEndian.AppendUint64(append(p.b, opLong1, 8), uint64(n))
	return p
}

func (p *pickler) global(module, name string) *pickler {
	p.b = append(p.b, opGlobal)
	p.b = append(p.b, module+"\n"+name+"\n"...)
	return p
}

func (p *pickler) ints(v []int64) *pickler {
	p.op(opMark)
	for _, x := range v {
		p.int(x)
	}
	return p.op(opTuple)
}

// ckptTensor describes one tensor to pickle: a view of storage key.
type ckptTensor struct {
	name          string
	storage       string // torch storage class, e.g. "HalfStorage"
	key           string
	numel         int64 // of the storage
	offset        int64
	shape, stride []int64
	parameter     bool // wrap in _rebuild_parameter like an nn.Parameter
}

// tensor emits what torch pickles for a tensor; view is the legacy
// format's sixth persistent id field (nil for the zip format).
func (p *pickler) tensor(t ckptTensor, legacy bool) *pickler {
	if t.parameter {
		p.global("torch._utils", "_rebuild_parameter").op(opMark)
	}
	p.global("torch._utils", "_rebuild_tensor_v2").op(opMark)
	p.op(opMark).str("storage").global("torch", t.storage).str(t.key).str("cpu").int(t.numel)
	if legacy {
		p.op(opNone)
	}
	p.op(opTuple, opBinPersID)
	p.int(t.offset).ints(t.shape).ints(t.stride).op(opNewFalse)
	p.global("collections", "OrderedDict").op(opEmptyTuple, opReduce)
	p.op(opTuple, opReduce)
	if t.parameter {
		p.op(opNewTrue).global("collections", "OrderedDict").op(opEmptyTuple, opReduce)
		p.op(opTuple, opReduce)
	}
	return p
}

// stateDictPickle pickles an OrderedDict of tensors; with lightning it is
// nested as a PyTorch Lightning checkpoint, beside a callback keyed by its
// class and hyper-parameters in an argparse.Namespace.
func stateDictPickle(tensors []ckptTensor, lightning, legacy bool) []byte {
	p := &pickler{}
	p.op(opProto, 2)
	if lightning {
		p.op(opEmptyDict, opBinPut, 0, opMark)
		p.str("epoch").int(6).str("global_step").int(470000)
		p.str("pytorch-lightning_version").str("1.4.2")
		p.str("callbacks").op(opEmptyDict, opMark)
		p.global("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint")
		p.op(opEmptyDict, opMark).str("best_model_score").op(opNone).str("dirpath").str("/logs").op(opSetItems)
		p.op(opSetItems)
		p.str("hyper_parameters").global("argparse", "Namespace").op(opEmptyTuple, opReduce)
		p.op(opEmptyDict).str("lr").op(opBinFloat, 0x3f, 0x1a, 0x36, 0xe2, 0xeb, 0x1c, 0x43, 0x2d).op(opSetItem, opBuild)
		p.str("state_dict")
	}
	p.global("collections", "OrderedDict").op(opEmptyTuple, opReduce, opBinPut, 1, opMark)
	for _, t := range tensors {
		p.str(t.name).tensor(t, legacy)
	}
	p.op(opSetItems)
	// state_dict() attaches _metadata as an attribute, pickled via BUILD.
	p.op(opEmptyDict).str("_metadata").global("collections", "OrderedDict").op(opEmptyTuple, opReduce).op(opSetItem, opBuild)
	if lightning {
		p.op(opSetItems)
	}
	return p.op(opStop).b
}

type zipEntry struct {
	name   string
	data   []byte
	method uint16
}

func zipBytes(t testing.TB, entries []zipEntry) []byte {
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, e := range entries {
		w, err := zw.CreateHeader(&zip.FileHeader{Name: e.name, Method: e.method})
		require.NoError(t, err)
		_, err = w.Write(e.data)
		require.NoError(t, err)
	}
	require.NoError(t, zw.Close())
	return buf.Bytes()
}

// torchZip lays a pickle and storages out as torch.save does.
func torchZip(t testing.TB, pkl []byte, storages map[string][]byte, method uint16) []byte {
	entries := []zipEntry{{"archive/data.pkl", pkl, zip.Store}, {"archive/byteorder", []byte("little"), zip.Store}}
	for k, v := range storages {
		entries = append(entries, zipEntry{"archive/data/" + k, v, method})
	}
	entries = append(entries, zipEntry{"archive/version", []byte("3\n"), zip.Store})
	return zipBytes(t, entries)
}

func halfBytes(v ...float32) []byte {
	var b []byte
	for _, x := range v {
		b = binary.LittleEndian.AppendUint16(b, float32ToHalf(x))
	}
	return b
}

func floatBytes(v ...float32) []byte {
	var b []byte
	for _, x := range v {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(x))
	}
	return b
}

func TestUnpicklerValues(t *testing.T) {
	big1 := new(big.Int).Lsh(big.NewInt(1), 70)
	cases := []struct {
		name   string
		pickle []byte
		want   any
	}{
		{"none", []byte{opProto, 2, opNone, opStop}, nil},
		{"bools", []byte{opNewTrue, opNewFalse, opTuple2, opStop}, pyTuple{true, false}},
		{"ints", []byte{opBinInt1, 7, opBinInt2, 0, 1, opBinInt, 0xff, 0xff, 0xff, 0xff, opTuple3, opStop}, pyTuple{int64(7), int64(256), int64(-1)}},
		{"long1", []byte{opLong1, 2, 0x00, 0x80, opStop}, int64(-32768)},
		{"long1 zero", []byte{opLong1, 0, opStop}, int64(0)},
		{"long4 big", append(append([]byte{opLong4, 10, 0, 0, 0}, make([]byte, 8)...), 0x40, 0, opStop), big1},
		{"text int", []byte("I42\n."), int64(42)},
		{"text bool", []byte("I01\n."), true},
		{"text long", []byte("L1180591620717411303424L\n."), big1},
		{"text float", []byte("F0.5\n."), 0.5},
		{"binfloat", []byte{opBinFloat, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0, opStop}, 1.5},
		{"strings", []byte{opShortBinUni, 2, 'h', 'i', opShortBinString, 1, 'x', opBinUnicode8, 1, 0, 0, 0, 0, 0, 0, 0, 'y', opTuple3, opStop}, pyTuple{"hi", "x", "y"}},
		{"bytes", []byte{opShortBinBytes, 2, 1, 2, opStop}, []byte{1, 2}},
		{"list", []byte{opEmptyList, opBinInt1, 1, opAppend, opMark, opBinInt1, 2, opBinInt1, 3, opAppends, opStop}, &pyList{items: []any{int64(1), int64(2), int64(3)}}},
		{"list op", []byte{opMark, opNone, opList, opStop}, &pyList{items: []any{nil}}},
		{"memo", []byte{opEmptyList, opBinPut, 5, opPop, opBinGet, 5, opLongBinGet, 5, 0, 0, 0, opTuple2, opStop}, pyTuple{&pyList{}, &pyList{}}},
		{"memoize", []byte{opNone, opMemoize, opNewTrue, opMemoize, opPop, opPop, opBinGet, 1, opStop}, true},
		{"text memo", []byte("Np7\n0g7\n."), nil},
		{"dup and pop mark", []byte{opBinInt1, 1, opDup, opMark, opNone, opPopMark, opTuple2, opStop}, pyTuple{int64(1), int64(1)}},
		{"pop removes an empty mark", []byte{opNone, opMark, opPop, opStop}, nil},
		{"frame", []byte{opProto, 4, opFrame, 3, 0, 0, 0, 0, 0, 0, 0, opNone, opStop}, nil},
		{"set", []byte{opEmptySet, opMark, opBinInt1, 1, opAddItems, opStop}, &pySet{items: []any{int64(1)}}},
		{"frozenset", []byte{opMark, opNone, opFrozenSet, opStop}, &pySet{items: []any{nil}}},
		{"stack global", []byte{opShortBinUni, 1, 'm', opShortBinUni, 1, 'n', opStackGlobal, opStop}, &pyGlobal{module: "m", name: "n"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			u := &unpickler{data: c.pickle}
			got, err := u.load()
			require.NoError(t, err)
			assert.Equal(t, c.want, got)
			assert.Equal(t, len(c.pickle), u.pos, "load stops right after STOP")
		})
	}
}

func TestUnpicklerDicts(t *testing.T) {
	p := (&pickler{}).op(opProto, 2, opEmptyDict, opMark)
	p.str("a").int(1).str("b").int(2).str("a").int(3).op(opSetItems)
	p.str("c").op(opEmptyList, opSetItem)
	p.int(9).op(opNone, opSetItem) // int keys are allowed
	p.op(opEmptyTuple, opNone, opSetItem)
	v, err := (&unpickler{data: p.op(opStop).b}).load()
	require.NoError(t, err)
	d := v.(*pyDict)
	assert.Equal(t, []any{"a", "b", "c", int64(9), pyTuple{}}, d.keys, "a repeated key keeps its place; tuples are appended")
	got, ok := d.get("a")
	assert.True(t, ok)
	assert.Equal(t, int64(3), got)

	v, err = (&unpickler{data: []byte("(S'k'\nI1\nd.")}).load()
	assert.ErrorContains(t, err, "unsupported opcode", "protocol-0 quoted strings are refused")
	assert.Nil(t, v)

	od := (&pickler{}).global("collections", "OrderedDict").op(opEmptyList).str("k").int(1).op(opTuple2, opAppend, opTuple1, opReduce, opStop)
	v, err = (&unpickler{data: od.b}).load()
	require.NoError(t, err)
	assert.Equal(t, []any{int64(1)}, v.(*pyDict).values)
}

func TestUnpicklerNeverCallsOtherGlobals(t *testing.T) {
	// os.system("echo pwned") and builtins.eval: both become inert objects.
	p := (&pickler{}).op(opProto, 2).global("os", "system").str("echo pwned").op(opTuple1, opReduce)
	p.global("builtins", "eval").str("1/0").op(opTuple1, opReduce)
	p.global("subprocess", "Popen").op(opEmptyTuple, opNewObj, opTuple3, opStop)
	v, err := (&unpickler{data: p.b}).load()
	require.NoError(t, err)
	tup := v.(pyTuple)
	assert.Equal(t, "instance of os.system", pyTypeName(tup[0]))
	assert.Equal(t, "instance of builtins.eval", pyTypeName(tup[1]))
	assert.Equal(t, "instance of subprocess.Popen", pyTypeName(tup[2]))

	_, err = stateDict(tup[0])
	assert.ErrorContains(t, err, "instance of os.system, not a state dict")
}

func TestUnpicklerRejectsMalformed(t *testing.T) {
	cases := []struct {
		name, wantErr string
		pickle        []byte
	}{
		{"empty", "truncated at byte 0", nil},
		{"no stop", "no STOP", []byte{opProto, 2, opNone}},
		{"underflow", "stack underflow", []byte{opPop}},
		{"stop on empty", "stack underflow", []byte{opStop}},
		{"mark protects", "stack underflow", []byte{opNone, opMark, opTuple1}},
		{"no mark", "no MARK", []byte{opTuple}},
		{"short string", "truncated", []byte{opBinUnicode, 0xff, 0xff, 0xff, 0x7f, 'a'}},
		{"negative long4", "exceeds", []byte{opLong4, 0xff, 0xff, 0xff, 0xff}},
		{"huge bytes8", "exceeds", []byte{opBinBytes8, 0, 0, 0, 0, 0, 0, 0, 0x80}},
		{"unknown memo", "memo index 3 was never stored", []byte{opBinGet, 3}},
		{"bad text memo", "bad memo index", []byte("Np-1\n")},
		{"bad text int", "bad integer", []byte("Ix\n")},
		{"bad float", "bad float", []byte("Fx\n")},
		{"no newline", "no end of line", []byte("cos\nsys")},
		{"append to dict", "append to dict", []byte{opEmptyDict, opNone, opAppend}},
		{"setitem on list", "set item on list", []byte{opEmptyList, opNone, opNone, opSetItem}},
		{"odd setitems", "odd number", []byte{opEmptyDict, opMark, opNone, opSetItems}},
		{"odd dict", "odd number", []byte{opMark, opNone, opDict}},
		{"additems to list", "add items to list", []byte{opEmptyList, opMark, opAddItems}},
		{"reduce non-tuple", "not a tuple", []byte{opNone, opNone, opReduce}},
		{"reduce non-callable", "REDUCE on int", []byte{opBinInt1, 1, opEmptyTuple, opReduce}},
		{"stack global ints", "two strings", []byte{opNone, opNone, opStackGlobal}},
		{"persid without loader", "without a loader", []byte{opNone, opBinPersID}},
		{"ext1", "unsupported opcode", []byte{0x82, 1}},
		{"inst", "unsupported opcode", []byte("ios\nsystem\n")},
		{"protocol 5 buffer", "unsupported opcode", []byte{0x97}},
		{"bad ordered dict", "not a pair", (&pickler{}).global("collections", "OrderedDict").op(opEmptyList, opNone, opAppend, opTuple1, opReduce, opStop).b},
		{"rebuild without storage", "not a storage", (&pickler{}).global("torch._utils", "_rebuild_tensor_v2").op(opMark, opNone, opBinInt1, 0, opEmptyTuple, opEmptyTuple, opTuple, opReduce).b},
		{"parameter of none", "not a tensor", (&pickler{}).global("torch._utils", "_rebuild_parameter").op(opNone, opTuple1, opReduce).b},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := (&unpickler{data: c.pickle}).load()
			assert.ErrorContains(t, err, c.wantErr)
		})
	}
}

func TestDecodeLong(t *testing.T) {
	assert.Equal(t, int64(255), decodeLong([]byte{0xff, 0x00}))
	assert.Equal(t, int64(-1), decodeLong([]byte{0xff}))
	assert.Equal(t, int64(math.MinInt64), decodeLong([]byte{0, 0, 0, 0, 0, 0, 0, 0x80}))
	neg := decodeLong([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0xff})
	assert.Equal(t, "-18446744073709551616", neg.(*big.Int).String(), "-2^64")
}

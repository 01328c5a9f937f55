package modelfile

import (
	"archive/zip"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/big"
	"math/bits"
	"path"
	"strings"
)

// OpenCheckpoint opens a file written by torch.save: the zip format of
// PyTorch ≥ 1.6 (every .ckpt/.pt of the Stable Diffusion era) or the legacy
// stream of consecutive pickles (the older tar format is refused). The
// pickle is read by the restricted unpickler in pickle.go, which executes
// nothing. The weights are the dict under "state_dict" when the top-level
// dict has one (PyTorch Lightning checkpoints), or under "params_ema" or
// "params" (BasicSR's, as Real-ESRGAN's .pth files), else the top-level dict
// itself; tensors in dicts nested in it are named "outer.inner", its other
// non-tensor entries are skipped, except that an object of any
// class other than a tensor is refused, naming the class. Everything else
// in the file (optimizer states, callbacks, hyper-parameters) is never
// looked at beyond parsing.
//
// Tensors view the mapped file when their storage is stored uncompressed
// and they are contiguous, which is how torch writes them. A compressed
// storage is inflated (its size bounded by deflate's maximum ratio), and
// non-contiguous tensors are copied into contiguous buffers that together
// may not exceed the file's size.
func OpenCheckpoint(path string) (*File, error) {
	return openMapped(path, FormatPyTorch, func(data []byte) (map[string]string, []Tensor, error) {
		tensors, err := readCheckpoint(data)
		return nil, tensors, err
	})
}

// storageRef is a typed storage named by a persistent id: elements
// [offset, offset+numel) of the root storage key.
type storageRef struct {
	key           string
	dtype         DType
	offset, numel int64
}

// pendingTensor is a tensor rebuilt by the unpickler whose storage bytes
// are located only after the pickle is read.
type pendingTensor struct {
	storage       *storageRef
	offset        int64 // in elements, into the storage
	shape, stride []int64
}

// storageDTypes maps torch's typed storage classes to element types.
var storageDTypes = map[string]DType{
	"FloatStorage": F32, "HalfStorage": F16, "BFloat16Storage": BF16, "DoubleStorage": F64,
	"LongStorage": I64, "IntStorage": I32, "CharStorage": I8, "ByteStorage": U8, "BoolStorage": Bool,
}

func storageDType(v any) (DType, error) {
	g, ok := v.(*pyGlobal)
	if ok && g.module == "torch" {
		if d, ok := storageDTypes[g.name]; ok {
			return d, nil
		}
	}
	return 0, unsupportedf("unsupported storage type %s", pyTypeName(v))
}

// rebuildTensor implements torch._utils._rebuild_tensor_v2(storage,
// storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
// and its older four-argument form; the arguments past stride do not
// affect the data.
func rebuildTensor(args pyTuple) (any, error) {
	if len(args) < 4 {
		return nil, fmt.Errorf("_rebuild_tensor with %d arguments", len(args))
	}
	st, ok := args[0].(*storageRef)
	if !ok {
		return nil, fmt.Errorf("_rebuild_tensor of a %s, not a storage", pyTypeName(args[0]))
	}
	offset, ok := args[1].(int64)
	if !ok || offset < 0 {
		return nil, errors.New("_rebuild_tensor: storage offset is not a non-negative int")
	}
	shape, err := intTuple(args[2])
	if err != nil {
		return nil, fmt.Errorf("_rebuild_tensor size: %w", err)
	}
	stride, err := intTuple(args[3])
	if err != nil {
		return nil, fmt.Errorf("_rebuild_tensor stride: %w", err)
	}
	if len(stride) != len(shape) {
		return nil, fmt.Errorf("_rebuild_tensor: %d sizes but %d strides", len(shape), len(stride))
	}
	return &pendingTensor{storage: st, offset: offset, shape: shape, stride: stride}, nil
}

func intTuple(v any) ([]int64, error) {
	t, ok := v.(pyTuple)
	if !ok {
		return nil, fmt.Errorf("a %s, not a tuple", pyTypeName(v))
	}
	out := make([]int64, len(t))
	for i, x := range t {
		n, ok := x.(int64)
		if !ok || n < 0 {
			return nil, fmt.Errorf("item %d is not a non-negative int", i)
		}
		out[i] = n
	}
	return out, nil
}

// stateDictEntry is one weight found in the unpickled object.
type stateDictEntry struct {
	name   string
	tensor *pendingTensor
}

// stateDict finds the weights in an unpickled checkpoint (see OpenCheckpoint).
func stateDict(top any) ([]stateDictEntry, error) {
	d, ok := top.(*pyDict)
	if !ok {
		if o, isObj := top.(*pyObject); isObj {
			return nil, unsupportedf("the checkpoint holds an instance of %s, not a state dict (a whole pickled module is not supported: save its state_dict())", o.class)
		}
		return nil, fmt.Errorf("the checkpoint holds a %s, not a state dict", pyTypeName(top))
	}
	// Lightning keeps the weights under "state_dict"; BasicSR (Real-ESRGAN) under
	// "params_ema", or "params" when it saved no EMA copy.
	for _, key := range []string{"state_dict", "params_ema", "params"} {
		if sd, ok := d.get(key); ok {
			if inner, ok := sd.(*pyDict); ok {
				d = inner
				break
			}
		}
	}
	return dictTensors(d, "", 0)
}

// dictTensors lists the tensors of d, and of the dicts nested in it under
// "outer.inner" names (AUTOMATIC1111's embeddings keep theirs in
// {"string_to_param": {"*": tensor}}); other values (numbers, strings) are skipped.
func dictTensors(d *pyDict, prefix string, depth int) ([]stateDictEntry, error) {
	if depth > 4 {
		return nil, fmt.Errorf("dicts nested more than 4 deep under %q", prefix)
	}
	var out []stateDictEntry
	for i, k := range d.keys {
		name, ok := k.(string)
		if !ok && depth > 0 {
			continue // not a dict of named tensors (an optimizer's state keyed by int)
		}
		if !ok {
			return nil, fmt.Errorf("state dict key of type %s, want str", pyTypeName(k))
		}
		name = prefix + name
		switch v := d.values[i].(type) {
		case *pendingTensor:
			out = append(out, stateDictEntry{name: name, tensor: v})
		case *pyDict:
			inner, err := dictTensors(v, name+".", depth+1)
			if err != nil {
				return nil, err
			}
			out = append(out, inner...)
		case *pyObject:
			return nil, fmt.Errorf("state dict entry %q is an instance of %s, not a tensor; refusing it", name, v.class)
		case *pyGlobal:
			return nil, fmt.Errorf("state dict entry %q is the global %s, not a tensor; refusing it", name, v)
		}
	}
	return out, nil
}

// checkpointReader turns pending tensors into Tensors once storages can be
// located. storage returns the bytes of a root storage.
type checkpointReader struct {
	storage func(key string, dtype DType, numel int64) ([]byte, error)
	budget  int64 // bytes left for contiguous copies
	roots   map[string]*storageRef
}

// zipStorage is the persistent loader of the zip format, whose ids are
// ('storage', storage_type, key, location, numel).
func (r *checkpointReader) zipStorage(pid any) (any, error) {
	t, ok := pid.(pyTuple)
	if !ok || len(t) != 5 || t[0] != "storage" {
		return nil, fmt.Errorf("persistent id %s is not a storage", pyTypeName(pid))
	}
	return r.rootStorage(t)
}

// rootStorage reads the fields both formats' storage ids start with:
// ('storage', storage_type, key, location, numel, ...).
func (r *checkpointReader) rootStorage(id pyTuple) (*storageRef, error) {
	dtype, err := storageDType(id[1])
	if err != nil {
		return nil, err
	}
	key, ok1 := id[2].(string)
	numel, ok2 := id[4].(int64)
	if !ok1 || !ok2 {
		return nil, errors.New("malformed storage persistent id")
	}
	return r.ref(key, dtype, numel)
}

// ref interns the root storage key so that every tensor viewing it agrees
// on its type and size.
func (r *checkpointReader) ref(key string, dtype DType, numel int64) (*storageRef, error) {
	if numel < 0 {
		return nil, fmt.Errorf("storage %q: negative size", key)
	}
	if old, ok := r.roots[key]; ok {
		if old.dtype != dtype || old.numel != numel {
			return nil, fmt.Errorf("storage %q is named as %s[%d] and as %s[%d]", key, old.dtype, old.numel, dtype, numel)
		}
		return old, nil
	}
	ref := &storageRef{key: key, dtype: dtype, numel: numel}
	r.roots[key] = ref
	return ref, nil
}

func (r *checkpointReader) tensors(entries []stateDictEntry) ([]Tensor, error) {
	out := make([]Tensor, 0, len(entries))
	for _, e := range entries {
		t, err := r.tensor(e.tensor)
		if err != nil {
			return nil, fmt.Errorf("tensor %q: %w", e.name, err)
		}
		t.Name = e.name
		out = append(out, t)
	}
	return out, nil
}

func (r *checkpointReader) tensor(p *pendingTensor) (Tensor, error) {
	st := p.storage
	root := r.roots[st.key]
	es := st.dtype.Size()
	data, err := r.storage(st.key, root.dtype, root.numel)
	if err != nil {
		return Tensor{}, err
	}
	data = data[st.offset*es : (st.offset+st.numel)*es]
	t := Tensor{DType: st.dtype, Shape: p.shape}
	n, ok := numElements(p.shape)
	if !ok {
		return Tensor{}, fmt.Errorf("shape %v is too large", p.shape)
	}
	if n == 0 {
		t.Data = data[:0:0]
		return t, nil
	}
	// The furthest element the view touches must lie inside the storage.
	last, ok := uint64(p.offset), true
	for i, d := range p.shape {
		hi, lo := bits.Mul64(uint64(d-1), uint64(p.stride[i]))
		var carry uint64
		last, carry = bits.Add64(last, lo, 0)
		ok = ok && hi == 0 && carry == 0
	}
	if !ok || last >= uint64(st.numel) {
		return Tensor{}, fmt.Errorf("shape %v, stride %v at offset %d reach past the storage of %d elements", p.shape, p.stride, p.offset, st.numel)
	}
	if isContiguous(p.shape, p.stride) {
		t.Data = data[p.offset*es : (p.offset+n)*es : (p.offset+n)*es]
		return t, nil
	}
	size := n * es
	if size > int64(len(data)) || size > r.budget {
		return Tensor{}, fmt.Errorf("non-contiguous tensor of %d bytes exceeds the copy budget (%d bytes left, storage %d bytes)", size, r.budget, len(data))
	}
	r.budget -= size
	t.Data = gatherStrided(data, es, p.offset, p.shape, p.stride, size)
	return t, nil
}

// isContiguous reports row-major strides, ignoring dimensions of size 1 as
// torch does.
func isContiguous(shape, stride []int64) bool {
	want := int64(1)
	for i := len(shape) - 1; i >= 0; i-- {
		if shape[i] != 1 && stride[i] != want {
			return false
		}
		want *= shape[i]
	}
	return true
}

// gatherStrided copies a strided view into a new row-major buffer of size
// bytes. The caller has checked every index against the storage.
func gatherStrided(data []byte, es, offset int64, shape, stride []int64, size int64) []byte {
	out := make([]byte, 0, size)
	idx := make([]int64, len(shape))
	for {
		pos := offset
		for i, x := range idx {
			pos += x * stride[i]
		}
		out = append(out, data[pos*es:(pos+1)*es]...)
		i := len(idx) - 1
		for ; i >= 0; i-- {
			idx[i]++
			if idx[i] < shape[i] {
				break
			}
			idx[i] = 0
		}
		if i < 0 {
			return out
		}
	}
}

// readCheckpoint dispatches on the container.
func readCheckpoint(data []byte) ([]Tensor, error) {
	switch {
	case bytes.HasPrefix(data, []byte("PK\x03\x04")):
		return readZipCheckpoint(data)
	case len(data) > 0 && data[0] == opProto:
		return readLegacyCheckpoint(data)
	case len(data) > 262 && string(data[257:262]) == "ustar":
		return nil, unsupportedf("the tar-based torch.save format of PyTorch < 0.4 is not supported")
	}
	return nil, errors.New("not a PyTorch checkpoint (neither a zip archive nor a pickle)")
}

// deflateMaxRatio bounds how much deflate can expand (its format limit is
// about 1032:1), so that an inflated storage cannot be larger than its
// compressed bytes could really hold.
const deflateMaxRatio = 1032

func readZipCheckpoint(data []byte) ([]Tensor, error) {
	zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil && !errors.Is(err, zip.ErrInsecurePath) { // names are looked up, never extracted
		return nil, fmt.Errorf("zip: %w", err)
	}
	entries := make(map[string]*zip.File, len(zr.File))
	var pickleName string
	for _, f := range zr.File {
		entries[f.Name] = f
		// torch writes <root>/data.pkl with a root folder named after the
		// file or "archive"; take the shallowest data.pkl.
		if path.Base(f.Name) == "data.pkl" && (pickleName == "" || strings.Count(f.Name, "/") < strings.Count(pickleName, "/")) {
			pickleName = f.Name
		}
	}
	if pickleName == "" {
		return nil, errors.New("zip archive without data.pkl: not a torch.save checkpoint")
	}
	prefix := strings.TrimSuffix(pickleName, "data.pkl")

	entryBytes := func(f *zip.File) ([]byte, error) {
		switch f.Method {
		case zip.Store:
			off, err := f.DataOffset()
			if err != nil {
				return nil, err
			}
			size := f.UncompressedSize64
			if f.CompressedSize64 != size || off < 0 || size > uint64(len(data)) || uint64(off) > uint64(len(data))-size {
				return nil, fmt.Errorf("zip entry %s: %d bytes at offset %d lie outside the file", f.Name, size, off)
			}
			return data[off : uint64(off)+size : uint64(off)+size], nil
		case zip.Deflate:
			size := f.UncompressedSize64
			if size/deflateMaxRatio > f.CompressedSize64+1 || size > uint64(len(data))*deflateMaxRatio {
				return nil, fmt.Errorf("zip entry %s claims %d bytes from %d compressed ones", f.Name, size, f.CompressedSize64)
			}
			rc, err := f.Open()
			if err != nil {
				return nil, err
			}
			defer rc.Close()
			buf := make([]byte, size)
			if _, err := io.ReadFull(rc, buf); err != nil {
				return nil, fmt.Errorf("zip entry %s: %w", f.Name, err)
			}
			return buf, nil
		}
		return nil, unsupportedf("zip entry %s: unsupported compression method %d", f.Name, f.Method)
	}

	if f := entries[prefix+"byteorder"]; f != nil {
		b, err := entryBytes(f)
		if err != nil {
			return nil, err
		}
		if string(b) != "little" {
			return nil, unsupportedf("byte order %q is not supported", b)
		}
	}
	pkl, err := entryBytes(entries[pickleName])
	if err != nil {
		return nil, err
	}

	r := &checkpointReader{roots: map[string]*storageRef{}}
	u := &unpickler{data: pkl, persistentLoad: r.zipStorage}
	top, err := u.load()
	if err != nil {
		return nil, err
	}
	sd, err := stateDict(top)
	if err != nil {
		return nil, err
	}

	cache := map[string][]byte{}
	r.storage = func(key string, dtype DType, numel int64) ([]byte, error) {
		if b, ok := cache[key]; ok {
			return b, nil
		}
		f := entries[prefix+"data/"+key]
		if f == nil {
			return nil, fmt.Errorf("storage %q: no entry %sdata/%s in the archive", key, prefix, key)
		}
		want, ok := storageBytes(dtype, numel)
		if !ok || f.UncompressedSize64 != want {
			return nil, fmt.Errorf("storage %q: entry has %d bytes, %s[%d] needs %d", key, f.UncompressedSize64, dtype, numel, want)
		}
		b, err := entryBytes(f)
		if err != nil {
			return nil, err
		}
		cache[key] = b
		return b, nil
	}
	r.budget = int64(len(data))
	return r.tensors(sd)
}

func storageBytes(dtype DType, numel int64) (uint64, bool) {
	n, ok := numElements([]int64{numel, dtype.Size()})
	return uint64(n), ok
}

// legacyMagic is the number that opens the legacy torch.save stream.
var legacyMagic, _ = new(big.Int).SetString("1950a86a20f9469cfc6c", 16)

// readLegacyCheckpoint reads the pre-1.6 stream: pickles of the magic
// number, the protocol version (1001), system info, the object, and the
// list of storage keys, followed by each storage as an int64 element count
// and its raw bytes, in that list's order.
func readLegacyCheckpoint(data []byte) ([]Tensor, error) {
	u := &unpickler{data: data}
	magic, err := u.load()
	if err != nil {
		return nil, err
	}
	if m, ok := magic.(*big.Int); !ok || m.Cmp(legacyMagic) != 0 {
		return nil, errors.New("a pickle, but not a torch.save checkpoint (wrong magic number)")
	}
	if v, err := u.load(); err != nil || v != int64(1001) {
		return nil, unsupportedf("legacy checkpoint protocol %v is not supported", v)
	}
	info, err := u.load()
	if err != nil {
		return nil, err
	}
	if d, ok := info.(*pyDict); ok {
		if le, ok := d.get("little_endian"); ok && le != true {
			return nil, unsupportedf("big-endian checkpoints are not supported")
		}
	}

	r := &checkpointReader{roots: map[string]*storageRef{}}
	u.persistentLoad = func(pid any) (any, error) {
		// ('storage', storage_type, root_key, location, numel, view_metadata)
		// with view_metadata None or (view_key, offset, view_numel).
		t, ok := pid.(pyTuple)
		if !ok || len(t) < 1 {
			return nil, fmt.Errorf("persistent id %s is not a storage", pyTypeName(pid))
		}
		if t[0] == "module" { // a module's source, kept for whole-model pickles
			return &pyObject{class: &pyGlobal{module: "torch.nn", name: "Module"}}, nil
		}
		if len(t) != 6 || t[0] != "storage" {
			return nil, errors.New("malformed storage persistent id")
		}
		root, err := r.rootStorage(t)
		if err != nil {
			return nil, err
		}
		if t[5] == nil {
			return root, nil
		}
		view, ok := t[5].(pyTuple)
		if !ok || len(view) != 3 {
			return nil, errors.New("malformed storage view")
		}
		off, ok1 := view[1].(int64)
		n, ok2 := view[2].(int64)
		if !ok1 || !ok2 || off < 0 || n < 0 || off > root.numel || n > root.numel-off {
			return nil, fmt.Errorf("storage view [%v, +%v) outside storage %q of %d elements", view[1], view[2], root.key, root.numel)
		}
		return &storageRef{key: root.key, dtype: root.dtype, offset: off, numel: n}, nil
	}
	top, err := u.load()
	if err != nil {
		return nil, err
	}
	sd, err := stateDict(top)
	if err != nil {
		return nil, err
	}
	u.persistentLoad = nil
	keysV, err := u.load()
	if err != nil {
		return nil, err
	}
	keys, ok := keysV.(*pyList)
	if !ok {
		return nil, errors.New("legacy checkpoint: storage key list missing")
	}

	located := map[string][]byte{}
	pos := u.pos
	for _, k := range keys.items {
		key, ok := k.(string)
		root := r.roots[key]
		if !ok || root == nil {
			return nil, fmt.Errorf("legacy checkpoint: storage key %v was never referenced", k)
		}
		if len(data)-pos < 8 {
			return nil, fmt.Errorf("storage %q: truncated", key)
		}
		n := int64(binary.LittleEndian.Uint64(data[pos:]))
		size, ok := storageBytes(root.dtype, root.numel)
		if n != root.numel || !ok || size > uint64(len(data)-pos-8) {
			return nil, fmt.Errorf("storage %q: %d elements recorded, %d expected, or the file is truncated", key, n, root.numel)
		}
		located[key] = data[pos+8 : pos+8+int(size) : pos+8+int(size)]
		pos += 8 + int(size)
	}
	r.storage = func(key string, _ DType, _ int64) ([]byte, error) {
		b, ok := located[key]
		if !ok {
			return nil, fmt.Errorf("storage %q: not among the stored data", key)
		}
		return b, nil
	}
	r.budget = int64(len(data))
	return r.tensors(sd)
}

package modelfile

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
)

// A restricted unpickler for the files torch.save writes.
//
// It implements the opcodes of protocols 0 to 5 that torch and the Python
// standard library emit for plain data (the text forms of strings, EXT*,
// INST/OBJ and out-of-band buffers are refused as unsupported), and it
// never imports or calls anything: GLOBAL only records a module and a name.
// REDUCE and NEWOBJ apply one of a fixed set of rules written here in Go:
// rebuilding a tensor (torch._utils._rebuild_tensor_v2, _rebuild_tensor,
// _rebuild_parameter, _rebuild_parameter_with_state) and making an empty
// collections.OrderedDict. Any other global applied to arguments yields an
// inert *pyObject that remembers only its class name. Such objects are
// harmless where they sit (PyTorch Lightning keeps callback states and
// hyper-parameters beside the weights), and the code that extracts the
// state dict refuses them where a tensor is expected, naming the class.
//
// Every allocation is bounded by the input: lengths are checked against the
// bytes that remain before anything is allocated, each opcode pushes at
// most one value, and the memo is a map, so a huge memo index costs one
// entry.

// Pickle opcodes (see Python's pickletools for their documentation).
const (
	opMark           = '('
	opStop           = '.'
	opPop            = '0'
	opPopMark        = '1'
	opDup            = '2'
	opFloat          = 'F'
	opInt            = 'I'
	opBinInt         = 'J'
	opBinInt1        = 'K'
	opLong           = 'L'
	opBinInt2        = 'M'
	opNone           = 'N'
	opPersID         = 'P'
	opBinPersID      = 'Q'
	opReduce         = 'R'
	opBinString      = 'T'
	opShortBinString = 'U'
	opBinUnicode     = 'X'
	opAppend         = 'a'
	opBuild          = 'b'
	opGlobal         = 'c'
	opDict           = 'd'
	opEmptyDict      = '}'
	opAppends        = 'e'
	opGet            = 'g'
	opBinGet         = 'h'
	opLongBinGet     = 'j'
	opList           = 'l'
	opEmptyList      = ']'
	opPut            = 'p'
	opBinPut         = 'q'
	opLongBinPut     = 'r'
	opSetItem        = 's'
	opTuple          = 't'
	opEmptyTuple     = ')'
	opSetItems       = 'u'
	opBinFloat       = 'G'
	opBinBytes       = 'B'
	opShortBinBytes  = 'C'
	opProto          = 0x80
	opNewObj         = 0x81
	opTuple1         = 0x85
	opTuple2         = 0x86
	opTuple3         = 0x87
	opNewTrue        = 0x88
	opNewFalse       = 0x89
	opLong1          = 0x8a
	opLong4          = 0x8b
	opShortBinUni    = 0x8c
	opBinUnicode8    = 0x8d
	opBinBytes8      = 0x8e
	opEmptySet       = 0x8f
	opAddItems       = 0x90
	opFrozenSet      = 0x91
	opNewObjEx       = 0x92
	opStackGlobal    = 0x93
	opMemoize        = 0x94
	opFrame          = 0x95
)

// Values the unpickler produces: nil (None), bool, int64, *big.Int (ints
// beyond 64 bits), float64, string, []byte, pyTuple, *pyList, *pyDict,
// *pySet, *pyGlobal, *pyObject, and whatever persistentLoad returns
// (*storageRef) or the tensor rules build (*pendingTensor).
type (
	pyTuple []any
	pyList  struct{ items []any }
	pySet   struct{ items []any }
	// pyGlobal is a reference to module.name, never resolved.
	pyGlobal struct{ module, name string }
	// pyObject is the inert result of applying a global that is not one of
	// the rebuild rules: it is never constructed.
	pyObject struct{ class *pyGlobal }
	// pyDict keeps insertion order; hashable keys are also indexed so that
	// a repeated key replaces its value as in Python.
	pyDict struct {
		keys, values []any
		index        map[any]int
	}
)

func (g *pyGlobal) String() string { return g.module + "." + g.name }

func newPyDict() *pyDict { return &pyDict{index: map[any]int{}} }

func (d *pyDict) set(k, v any) {
	if hashable(k) {
		if i, ok := d.index[k]; ok {
			d.values[i] = v
			return
		}
		d.index[k] = len(d.keys)
	}
	d.keys = append(d.keys, k)
	d.values = append(d.values, v)
}

func (d *pyDict) get(k string) (any, bool) {
	i, ok := d.index[k]
	if !ok {
		return nil, false
	}
	return d.values[i], true
}

// hashable reports the key types that can index a Go map.
func hashable(k any) bool {
	switch k.(type) {
	case nil, bool, int64, float64, string, *big.Int, *pyGlobal, *pyObject:
		return true
	}
	return false
}

// pyTypeName names a value's type for error messages without walking into
// it (values may be cyclic).
func pyTypeName(v any) string {
	switch v := v.(type) {
	case nil:
		return "None"
	case bool:
		return "bool"
	case int64, *big.Int:
		return "int"
	case float64:
		return "float"
	case string:
		return "str"
	case []byte:
		return "bytes"
	case pyTuple:
		return "tuple"
	case *pyList:
		return "list"
	case *pySet:
		return "set"
	case *pyDict:
		return "dict"
	case *pyGlobal:
		return "global " + v.String()
	case *pyObject:
		return "instance of " + v.class.String()
	case *storageRef:
		return "storage"
	case *pendingTensor:
		return "tensor"
	}
	return fmt.Sprintf("%T", v)
}

// unpickler reads consecutive pickles from data starting at pos.
type unpickler struct {
	data  []byte
	pos   int
	stack []any
	marks []int
	memo  map[uint64]any
	// persistentLoad resolves BINPERSID/PERSID ids; nil refuses them.
	persistentLoad func(pid any) (any, error)
}

var errTruncated = errors.New("truncated")

// load reads one pickle, up to and including its STOP opcode.
func (u *unpickler) load() (any, error) {
	u.stack, u.marks, u.memo = u.stack[:0], u.marks[:0], map[uint64]any{}
	for {
		at := u.pos
		if at >= len(u.data) {
			return nil, fmt.Errorf("pickle: truncated at byte %d (no STOP)", at)
		}
		op := u.data[at]
		u.pos++
		v, err := u.step(op)
		if err != nil {
			return nil, fmt.Errorf("pickle: opcode 0x%02x at byte %d: %w", op, at, err)
		}
		if op == opStop {
			return v, nil
		}
	}
}

// step executes one opcode. For STOP it returns the pickle's value.
func (u *unpickler) step(op byte) (any, error) {
	switch op {
	case opProto:
		if _, err := u.read(1); err != nil {
			return nil, err
		}
	case opFrame:
		if _, err := u.read(8); err != nil { // a framing hint only
			return nil, err
		}
	case opStop:
		return u.pop()
	case opMark:
		u.marks = append(u.marks, len(u.stack))
	case opPop:
		if len(u.marks) > 0 && u.marks[len(u.marks)-1] == len(u.stack) {
			// POP at a mark discards the mark, as CPython does.
			u.marks = u.marks[:len(u.marks)-1]
			return nil, nil
		}
		_, err := u.pop()
		return nil, err
	case opPopMark:
		_, err := u.popMark()
		return nil, err
	case opDup:
		v, err := u.top()
		if err != nil {
			return nil, err
		}
		u.push(v)

	case opNone:
		u.push(nil)
	case opNewTrue:
		u.push(true)
	case opNewFalse:
		u.push(false)
	case opBinInt:
		b, err := u.read(4)
		if err != nil {
			return nil, err
		}
		u.push(int64(int32(binary.LittleEndian.Uint32(b))))
	case opBinInt1:
		b, err := u.read(1)
		if err != nil {
			return nil, err
		}
		u.push(int64(b[0]))
	case opBinInt2:
		b, err := u.read(2)
		if err != nil {
			return nil, err
		}
		u.push(int64(binary.LittleEndian.Uint16(b)))
	case opLong1, opLong4:
		b, err := u.readSized(op)
		if err != nil {
			return nil, err
		}
		u.push(decodeLong(b))
	case opInt:
		line, err := u.readLine()
		if err != nil {
			return nil, err
		}
		switch line {
		case "00":
			u.push(false)
		case "01":
			u.push(true)
		default:
			v, err := parsePyInt(line)
			if err != nil {
				return nil, err
			}
			u.push(v)
		}
	case opLong:
		line, err := u.readLine()
		if err != nil {
			return nil, err
		}
		v, err := parsePyInt(strings.TrimSuffix(line, "L"))
		if err != nil {
			return nil, err
		}
		u.push(v)
	case opFloat:
		line, err := u.readLine()
		if err != nil {
			return nil, err
		}
		f, err := strconv.ParseFloat(line, 64)
		if err != nil {
			return nil, fmt.Errorf("bad float %q", line)
		}
		u.push(f)
	case opBinFloat:
		b, err := u.read(8)
		if err != nil {
			return nil, err
		}
		u.push(math.Float64frombits(binary.BigEndian.Uint64(b)))

	case opShortBinUni, opBinUnicode, opBinUnicode8, opShortBinString, opBinString:
		b, err := u.readSized(op)
		if err != nil {
			return nil, err
		}
		u.push(string(b))
	case opShortBinBytes, opBinBytes, opBinBytes8:
		b, err := u.readSized(op)
		if err != nil {
			return nil, err
		}
		u.push(append([]byte(nil), b...))

	case opEmptyTuple:
		u.push(pyTuple{})
	case opTuple1, opTuple2, opTuple3:
		n := int(op-opTuple1) + 1
		if len(u.stack)-u.floor() < n {
			return nil, errors.New("stack underflow")
		}
		t := append(pyTuple(nil), u.stack[len(u.stack)-n:]...)
		u.stack = u.stack[:len(u.stack)-n]
		u.push(t)
	case opTuple:
		items, err := u.popMark()
		if err != nil {
			return nil, err
		}
		u.push(pyTuple(items))
	case opEmptyList:
		u.push(&pyList{})
	case opList:
		items, err := u.popMark()
		if err != nil {
			return nil, err
		}
		u.push(&pyList{items: items})
	case opAppend, opAppends:
		var items []any
		var err error
		if op == opAppend {
			var v any
			v, err = u.pop()
			items = []any{v}
		} else {
			items, err = u.popMark()
		}
		if err != nil {
			return nil, err
		}
		target, err := u.top()
		if err != nil {
			return nil, err
		}
		l, ok := target.(*pyList)
		if !ok {
			return nil, fmt.Errorf("append to %s", pyTypeName(target))
		}
		l.items = append(l.items, items...)
	case opEmptyDict:
		u.push(newPyDict())
	case opDict:
		items, err := u.popMark()
		if err != nil {
			return nil, err
		}
		d, err := dictFromPairs(items)
		if err != nil {
			return nil, err
		}
		u.push(d)
	case opSetItem, opSetItems:
		var items []any
		var err error
		if op == opSetItem {
			items, err = u.popN(2)
		} else {
			items, err = u.popMark()
		}
		if err != nil {
			return nil, err
		}
		target, err := u.top()
		if err != nil {
			return nil, err
		}
		d, ok := target.(*pyDict)
		if !ok {
			return nil, fmt.Errorf("set item on %s", pyTypeName(target))
		}
		if len(items)%2 != 0 {
			return nil, errors.New("odd number of items for a dict")
		}
		for i := 0; i < len(items); i += 2 {
			d.set(items[i], items[i+1])
		}
	case opEmptySet:
		u.push(&pySet{})
	case opAddItems:
		items, err := u.popMark()
		if err != nil {
			return nil, err
		}
		target, err := u.top()
		if err != nil {
			return nil, err
		}
		s, ok := target.(*pySet)
		if !ok {
			return nil, fmt.Errorf("add items to %s", pyTypeName(target))
		}
		s.items = append(s.items, items...)
	case opFrozenSet:
		items, err := u.popMark()
		if err != nil {
			return nil, err
		}
		u.push(&pySet{items: items})

	case opPut, opBinPut, opLongBinPut, opMemoize:
		var idx uint64
		switch op {
		case opPut:
			line, err := u.readLine()
			if err != nil {
				return nil, err
			}
			if idx, err = strconv.ParseUint(line, 10, 64); err != nil {
				return nil, fmt.Errorf("bad memo index %q", line)
			}
		case opBinPut, opLongBinPut:
			n, err := u.readUint(sizeWidth[op])
			if err != nil {
				return nil, err
			}
			idx = n
		default:
			idx = uint64(len(u.memo))
		}
		v, err := u.top()
		if err != nil {
			return nil, err
		}
		u.memo[idx] = v
	case opGet, opBinGet, opLongBinGet:
		var idx uint64
		if op == opGet {
			line, err := u.readLine()
			if err != nil {
				return nil, err
			}
			if idx, err = strconv.ParseUint(line, 10, 64); err != nil {
				return nil, fmt.Errorf("bad memo index %q", line)
			}
		} else {
			n, err := u.readUint(sizeWidth[op])
			if err != nil {
				return nil, err
			}
			idx = n
		}
		v, ok := u.memo[idx]
		if !ok {
			return nil, fmt.Errorf("memo index %d was never stored", idx)
		}
		u.push(v)

	case opGlobal:
		module, err := u.readLine()
		if err != nil {
			return nil, err
		}
		name, err := u.readLine()
		if err != nil {
			return nil, err
		}
		u.push(&pyGlobal{module: module, name: name})
	case opStackGlobal:
		items, err := u.popN(2)
		if err != nil {
			return nil, err
		}
		module, ok1 := items[0].(string)
		name, ok2 := items[1].(string)
		if !ok1 || !ok2 {
			return nil, errors.New("STACK_GLOBAL needs two strings")
		}
		u.push(&pyGlobal{module: module, name: name})
	case opReduce:
		items, err := u.popN(2)
		if err != nil {
			return nil, err
		}
		args, ok := items[1].(pyTuple)
		if !ok {
			return nil, fmt.Errorf("REDUCE arguments are a %s, not a tuple", pyTypeName(items[1]))
		}
		v, err := reduce(items[0], args)
		if err != nil {
			return nil, err
		}
		u.push(v)
	case opNewObj, opNewObjEx:
		n := 2
		if op == opNewObjEx {
			n = 3 // cls, args, kwargs
		}
		items, err := u.popN(n)
		if err != nil {
			return nil, err
		}
		cls, ok := items[0].(*pyGlobal)
		if !ok {
			return nil, fmt.Errorf("NEWOBJ on %s", pyTypeName(items[0]))
		}
		if cls.String() == "collections.OrderedDict" {
			u.push(newPyDict())
		} else {
			u.push(&pyObject{class: cls})
		}
	case opBuild:
		// The state would be passed to __setstate__ or merged into
		// __dict__: attributes, never items or tensor data, so it is
		// dropped (an OrderedDict state dict carries _metadata this way).
		if _, err := u.pop(); err != nil {
			return nil, err
		}
		if _, err := u.top(); err != nil {
			return nil, err
		}
	case opPersID, opBinPersID:
		var pid any
		var err error
		if op == opPersID {
			pid, err = u.readLine()
		} else {
			pid, err = u.pop()
		}
		if err != nil {
			return nil, err
		}
		if u.persistentLoad == nil {
			return nil, errors.New("persistent id without a loader")
		}
		v, err := u.persistentLoad(pid)
		if err != nil {
			return nil, err
		}
		u.push(v)
	default:
		return nil, errors.New("unsupported opcode")
	}
	return nil, nil
}

// reduce applies callable to args without executing anything: the tensor
// and OrderedDict rules are implemented here, other globals give inert
// objects.
func reduce(callable any, args pyTuple) (any, error) {
	switch c := callable.(type) {
	case *pyObject:
		return &pyObject{class: c.class}, nil
	case *pyGlobal:
		switch c.String() {
		case "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor":
			return rebuildTensor(args)
		case "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state":
			if len(args) == 0 {
				return nil, fmt.Errorf("%s without arguments", c)
			}
			if _, ok := args[0].(*pendingTensor); !ok {
				return nil, fmt.Errorf("%s of a %s, not a tensor", c, pyTypeName(args[0]))
			}
			return args[0], nil
		case "collections.OrderedDict":
			if len(args) == 0 {
				return newPyDict(), nil
			}
			if l, ok := args[0].(*pyList); ok && len(args) == 1 {
				return dictFromPairList(l.items)
			}
			return nil, fmt.Errorf("OrderedDict of %d arguments", len(args))
		}
		return &pyObject{class: c}, nil
	}
	return nil, fmt.Errorf("REDUCE on %s, which is not callable", pyTypeName(callable))
}

func dictFromPairs(items []any) (*pyDict, error) {
	if len(items)%2 != 0 {
		return nil, errors.New("odd number of items for a dict")
	}
	d := newPyDict()
	for i := 0; i < len(items); i += 2 {
		d.set(items[i], items[i+1])
	}
	return d, nil
}

func dictFromPairList(pairs []any) (*pyDict, error) {
	d := newPyDict()
	for _, p := range pairs {
		kv, ok := p.(pyTuple)
		if !ok || len(kv) != 2 {
			return nil, fmt.Errorf("OrderedDict item is a %s, not a pair", pyTypeName(p))
		}
		d.set(kv[0], kv[1])
	}
	return d, nil
}

func (u *unpickler) push(v any) { u.stack = append(u.stack, v) }

// floor is the stack height below which the current mark protects values.
func (u *unpickler) floor() int {
	if len(u.marks) == 0 {
		return 0
	}
	return u.marks[len(u.marks)-1]
}

func (u *unpickler) top() (any, error) {
	if len(u.stack) <= u.floor() {
		return nil, errors.New("stack underflow")
	}
	return u.stack[len(u.stack)-1], nil
}

func (u *unpickler) pop() (any, error) {
	v, err := u.top()
	if err == nil {
		u.stack = u.stack[:len(u.stack)-1]
	}
	return v, err
}

func (u *unpickler) popN(n int) ([]any, error) {
	if len(u.stack)-u.floor() < n {
		return nil, errors.New("stack underflow")
	}
	items := append([]any(nil), u.stack[len(u.stack)-n:]...)
	u.stack = u.stack[:len(u.stack)-n]
	return items, nil
}

// popMark pops everything above the newest mark, and the mark.
func (u *unpickler) popMark() ([]any, error) {
	if len(u.marks) == 0 {
		return nil, errors.New("no MARK on the stack")
	}
	m := u.marks[len(u.marks)-1]
	u.marks = u.marks[:len(u.marks)-1]
	items := append([]any(nil), u.stack[m:]...)
	u.stack = u.stack[:m]
	return items, nil
}

func (u *unpickler) read(n int) ([]byte, error) {
	if n < 0 || n > len(u.data)-u.pos {
		return nil, fmt.Errorf("%w: %d bytes wanted, %d left", errTruncated, n, len(u.data)-u.pos)
	}
	b := u.data[u.pos : u.pos+n]
	u.pos += n
	return b, nil
}

// sizeWidth is, for the opcodes followed by a little-endian length or
// memo index, the width of that number in bytes.
var sizeWidth = [256]int{
	opLong1: 1, opLong4: 4,
	opShortBinUni: 1, opBinUnicode: 4, opBinUnicode8: 8,
	opShortBinString: 1, opBinString: 4,
	opShortBinBytes: 1, opBinBytes: 4, opBinBytes8: 8,
	opBinPut: 1, opLongBinPut: 4, opBinGet: 1, opLongBinGet: 4,
}

func (u *unpickler) readUint(width int) (uint64, error) {
	b, err := u.read(width)
	if err != nil {
		return 0, err
	}
	var v uint64
	for i := width - 1; i >= 0; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v, nil
}

// readSized reads the length that follows op and then that many bytes. The
// signed 4-byte lengths of LONG4 and BINSTRING are read unsigned: a
// negative one becomes a length beyond the input and is refused as such.
func (u *unpickler) readSized(op byte) ([]byte, error) {
	n, err := u.readUint(sizeWidth[op])
	if err != nil {
		return nil, err
	}
	if n > uint64(len(u.data)-u.pos) {
		return nil, fmt.Errorf("%w: length %d exceeds the %d bytes left", errTruncated, n, len(u.data)-u.pos)
	}
	return u.read(int(n))
}

func (u *unpickler) readLine() (string, error) {
	i := bytes.IndexByte(u.data[u.pos:], '\n')
	if i < 0 {
		return "", fmt.Errorf("%w: no end of line", errTruncated)
	}
	line := string(u.data[u.pos : u.pos+i])
	u.pos += i + 1
	return line, nil
}

// decodeLong decodes a little-endian two's complement integer.
func decodeLong(b []byte) any {
	if len(b) == 0 {
		return int64(0)
	}
	if len(b) <= 8 {
		var v uint64
		for i := len(b) - 1; i >= 0; i-- {
			v = v<<8 | uint64(b[i])
		}
		shift := 64 - 8*uint(len(b))
		return int64(v<<shift) >> shift // sign-extend
	}
	be := make([]byte, len(b))
	for i, c := range b {
		be[len(b)-1-i] = c
	}
	v := new(big.Int).SetBytes(be)
	if b[len(b)-1]&0x80 != 0 {
		v.Sub(v, new(big.Int).Lsh(big.NewInt(1), uint(8*len(b))))
	}
	return v
}

func parsePyInt(s string) (any, error) {
	if v, err := strconv.ParseInt(s, 10, 64); err == nil {
		return v, nil
	}
	v, ok := new(big.Int).SetString(s, 10)
	if !ok {
		return nil, fmt.Errorf("bad integer %q", s)
	}
	return v, nil
}

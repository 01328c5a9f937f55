package modelfile

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
)

// MaxSafetensorsHeader bounds the JSON header of a safetensors file; the
// reference implementation uses the same 100 MiB limit.
const MaxSafetensorsHeader = 100 << 20

// OpenSafetensors maps a safetensors file and validates it completely: the
// header length, the JSON, every dtype, shape and offset pair, and that the
// tensors tile the data region exactly (no overlap, no gap). Tensor data
// are views of the mapping.
func OpenSafetensors(path string) (*File, error) {
	return openMapped(path, FormatSafetensors, parseSafetensors)
}

// safetensorsEntry is one header entry as written in the file.
type safetensorsEntry struct {
	DType   *string            `json:"dtype"`
	Shape   *[]json.RawMessage `json:"shape"`
	Offsets *[]json.RawMessage `json:"data_offsets"`
}

// parseSafetensors validates a whole safetensors file held in memory and
// returns its metadata and tensors (viewing buf) in data order. Duplicate
// names are left to openMapped.
func parseSafetensors(buf []byte) (map[string]string, []Tensor, error) {
	if len(buf) < 8 {
		return nil, nil, fmt.Errorf("safetensors: %d bytes, too short for the header length", len(buf))
	}
	n := binary.LittleEndian.Uint64(buf)
	if n > MaxSafetensorsHeader {
		return nil, nil, fmt.Errorf("safetensors: header length %d exceeds the %d byte limit", n, MaxSafetensorsHeader)
	}
	if n > uint64(len(buf)-8) {
		return nil, nil, fmt.Errorf("safetensors: header length %d exceeds the %d bytes after it (truncated file?)", n, len(buf)-8)
	}
	header, region := buf[8:8+n], buf[8+n:]

	dec := json.NewDecoder(bytes.NewReader(header))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, nil, errors.New("safetensors: header is not a JSON object")
	}
	var meta map[string]string
	var tensors []Tensor
	var ranges [][2]uint64
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, nil, fmt.Errorf("safetensors: header JSON: %w", err)
		}
		name := tok.(string) // object keys are always strings
		if name == "__metadata__" {
			if meta != nil {
				return nil, nil, errors.New("safetensors: __metadata__ appears twice")
			}
			if err := dec.Decode(&meta); err != nil {
				return nil, nil, fmt.Errorf("safetensors: __metadata__ must map strings to strings: %w", err)
			}
			if meta == nil {
				meta = map[string]string{}
			}
			continue
		}
		var e safetensorsEntry
		if err := dec.Decode(&e); err != nil {
			return nil, nil, fmt.Errorf("safetensors: tensor %q: %w", name, err)
		}
		t, begin, end, err := e.check(uint64(len(region)))
		if err != nil {
			return nil, nil, fmt.Errorf("safetensors: tensor %q: %w", name, err)
		}
		t.Name = name
		t.Data = region[begin:end:end]
		tensors = append(tensors, t)
		ranges = append(ranges, [2]uint64{begin, end})
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return nil, nil, fmt.Errorf("safetensors: header JSON: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, nil, errors.New("safetensors: data after the header's JSON object")
	}

	// The tensors must tile the data region: sorted by offset, each starts
	// where the previous ended and the last ends at the end of the file.
	order := make([]int, len(tensors))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int {
		if c := cmpUint64(ranges[a][0], ranges[b][0]); c != 0 {
			return c
		}
		return cmpUint64(ranges[a][1], ranges[b][1])
	})
	sorted := make([]Tensor, len(tensors))
	var pos uint64
	for k, i := range order {
		if ranges[i][0] != pos {
			if ranges[i][0] < pos {
				return nil, nil, fmt.Errorf("safetensors: tensor %q (bytes %d..%d) overlaps the tensor before it", tensors[i].Name, ranges[i][0], ranges[i][1])
			}
			return nil, nil, fmt.Errorf("safetensors: bytes %d..%d before tensor %q belong to no tensor", pos, ranges[i][0], tensors[i].Name)
		}
		pos = ranges[i][1]
		sorted[k] = tensors[i]
	}
	if pos != uint64(len(region)) {
		return nil, nil, fmt.Errorf("safetensors: %d trailing data bytes belong to no tensor", uint64(len(region))-pos)
	}
	return meta, sorted, nil
}

func cmpUint64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// check validates one entry against a data region of regionLen bytes and
// returns the tensor (without name and data) and its byte range.
func (e safetensorsEntry) check(regionLen uint64) (t Tensor, begin, end uint64, err error) {
	if e.DType == nil || e.Shape == nil || e.Offsets == nil {
		return t, 0, 0, errors.New("needs dtype, shape and data_offsets")
	}
	t.DType = dtypeFromSafetensors(*e.DType)
	if t.DType == 0 {
		return t, 0, 0, unsupportedf("unsupported dtype %q", *e.DType)
	}
	t.Shape = make([]int64, len(*e.Shape))
	for i, d := range *e.Shape {
		v, err := strconv.ParseInt(string(d), 10, 64)
		if err != nil || v < 0 {
			return t, 0, 0, fmt.Errorf("dimension %d is %s, want a non-negative integer", i, d)
		}
		t.Shape[i] = v
	}
	if len(*e.Offsets) != 2 {
		return t, 0, 0, fmt.Errorf("data_offsets has %d values, want 2", len(*e.Offsets))
	}
	var off [2]uint64
	for i, o := range *e.Offsets {
		v, err := strconv.ParseUint(string(o), 10, 64)
		if err != nil {
			return t, 0, 0, fmt.Errorf("data offset %s is not a non-negative integer", o)
		}
		off[i] = v
	}
	begin, end = off[0], off[1]
	if begin > end || end > regionLen {
		return t, 0, 0, fmt.Errorf("data_offsets [%d, %d] outside the %d byte data region", begin, end, regionLen)
	}
	n, ok := numElements(t.Shape)
	if !ok {
		return t, 0, 0, fmt.Errorf("shape %v is too large", t.Shape)
	}
	if want := uint64(n) * uint64(t.DType.Size()); want != end-begin {
		return t, 0, 0, fmt.Errorf("%s %v needs %d bytes, data_offsets [%d, %d] hold %d", t.DType, t.Shape, want, begin, end, end-begin)
	}
	return t, begin, end, nil
}

// dtypeFromSafetensors matches the exact, upper-case names of the format.
func dtypeFromSafetensors(s string) DType {
	for d := F32; d <= Bool; d++ {
		if s == dtypeNames[d] {
			return d
		}
	}
	return 0
}

// WriteSafetensors writes tensors, in the given order, and metadata to path
// atomically: into a temporary file beside it that is renamed over path
// once complete and synced.
func WriteSafetensors(path string, tensors []Tensor, metadata map[string]string) error {
	heads := make([]Tensor, len(tensors))
	for i, t := range tensors {
		heads[i] = Tensor{Name: t.Name, DType: t.DType, Shape: t.Shape}
	}
	return writeSafetensors(path, heads, metadata, func(w io.Writer, i int) error {
		_, err := w.Write(tensors[i].Data)
		return err
	})
}

// writeSafetensors streams a safetensors file: heads give names, dtypes and
// shapes (their Data is ignored), and writeData(w, i) must write exactly
// the bytes of tensor i. Only the header and a write buffer are in memory.
func writeSafetensors(path string, heads []Tensor, metadata map[string]string, writeData func(w io.Writer, i int) error) (err error) {
	header, sizes, err := safetensorsHeader(heads, metadata)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	w := bufio.NewWriterSize(tmp, 1<<20)
	var lenBytes [8]byte
	binary.LittleEndian.PutUint64(lenBytes[:], uint64(len(header)))
	w.Write(lenBytes[:])
	w.Write(header)
	for i := range heads {
		cw := &countingWriter{w: w}
		if err := writeData(cw, i); err != nil {
			return fmt.Errorf("%s: tensor %q: %w", path, heads[i].Name, err)
		}
		if cw.n != sizes[i] {
			return fmt.Errorf("%s: tensor %q: wrote %d data bytes, its dtype and shape need %d", path, heads[i].Name, cw.n, sizes[i])
		}
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// safetensorsHeader builds the JSON header, padded with spaces to a
// multiple of 8 bytes so the data start aligned, and each tensor's size.
func safetensorsHeader(heads []Tensor, metadata map[string]string) ([]byte, []int64, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	if len(metadata) > 0 {
		m, err := json.Marshal(metadata)
		if err != nil {
			return nil, nil, err
		}
		b.WriteString(`"__metadata__":`)
		b.Write(m)
	}
	seen := make(map[string]bool, len(heads))
	sizes := make([]int64, len(heads))
	var offset int64
	for i, t := range heads {
		switch {
		case t.Name == "" || t.Name == "__metadata__":
			return nil, nil, fmt.Errorf("invalid tensor name %q", t.Name)
		case seen[t.Name]:
			return nil, nil, fmt.Errorf("tensor %q appears twice", t.Name)
		case !t.DType.valid():
			return nil, nil, fmt.Errorf("tensor %q: invalid dtype %v", t.Name, t.DType)
		}
		seen[t.Name] = true
		n, ok := numElements(t.Shape)
		if !ok {
			return nil, nil, fmt.Errorf("tensor %q: invalid shape %v", t.Name, t.Shape)
		}
		sizes[i] = n * t.DType.Size()
		if sizes[i] > math.MaxInt64-offset {
			return nil, nil, fmt.Errorf("tensor %q: data exceed 2^63 bytes", t.Name)
		}
		name, _ := json.Marshal(t.Name) // marshalling a string cannot fail
		shape := []byte("[]")
		if len(t.Shape) > 0 {
			shape, _ = json.Marshal(t.Shape)
		}
		if b.Len() > 1 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `%s:{"dtype":"%s","shape":%s,"data_offsets":[%d,%d]}`, name, t.DType, shape, offset, offset+sizes[i])
		offset += sizes[i]
	}
	b.WriteByte('}')
	for b.Len()%8 != 0 {
		b.WriteByte(' ')
	}
	if b.Len() > MaxSafetensorsHeader {
		return nil, nil, fmt.Errorf("header of %d bytes exceeds the %d byte limit", b.Len(), MaxSafetensorsHeader)
	}
	return b.Bytes(), sizes, nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

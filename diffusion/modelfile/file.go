package modelfile

import "fmt"

// Format is the container format of a weights file.
type Format uint8

// Container formats.
const (
	FormatSafetensors Format = iota + 1 // safetensors: JSON header + raw data
)

// String returns the format's name.
func (f Format) String() string {
	switch f {
	case FormatSafetensors:
		return "safetensors"
	}
	return fmt.Sprintf("Format(%d)", uint8(f))
}

// File is one opened weights file. Its tensors view a read-only mapping of
// the file and are valid until Close.
type File struct {
	Path     string
	Format   Format
	Metadata map[string]string // safetensors "__metadata__"; nil when absent
	Tensors  []Tensor          // in file order

	index   map[string]int
	release func() error
}

// Tensor returns the tensor with the given name.
func (f *File) Tensor(name string) (Tensor, bool) {
	i, ok := f.index[name]
	if !ok {
		return Tensor{}, false
	}
	return f.Tensors[i], true
}

// Close unmaps the file. Every Tensor.Data taken from it becomes invalid.
// Closing twice is harmless.
func (f *File) Close() error {
	release := f.release
	f.release = nil
	f.Tensors, f.index = nil, nil
	if release == nil {
		return nil
	}
	return release()
}

// newFile indexes tensors by name, refusing duplicates.
func newFile(path string, format Format, meta map[string]string, tensors []Tensor, release func() error) (*File, error) {
	index := make(map[string]int, len(tensors))
	for i, t := range tensors {
		if _, dup := index[t.Name]; dup {
			return nil, fmt.Errorf("%s: tensor %q appears twice", path, t.Name)
		}
		index[t.Name] = i
	}
	return &File{Path: path, Format: format, Metadata: meta, Tensors: tensors, index: index, release: release}, nil
}

package modelfile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Format is how weights are stored.
type Format uint8

// Container formats.
const (
	FormatSafetensors Format = iota + 1 // safetensors: JSON header + raw data
	FormatPyTorch                       // torch.save: zip of a pickle + storages, or the legacy stream
	FormatDiffusers                     // a diffusers folder (of safetensors or pickle files)
)

// String returns "safetensors", "pytorch" or "diffusers".
func (f Format) String() string {
	switch f {
	case FormatSafetensors:
		return "safetensors"
	case FormatPyTorch:
		return "pytorch"
	case FormatDiffusers:
		return "diffusers"
	}
	return fmt.Sprintf("Format(%d)", uint8(f))
}

// File is one opened weights file. Its tensors view a read-only mapping of
// the file (except the rare pickled tensors that had to be made contiguous
// or were compressed) and are valid until Close.
type File struct {
	Path     string
	Format   Format
	Metadata map[string]string // safetensors "__metadata__"; nil when absent
	Tensors  []Tensor          // in file order

	index   map[string]int
	mapping []byte
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

// ReleaseMemory tells the operating system that the mapped file need not stay in this
// process's memory: tensors stay valid and are read back from the file when touched
// again. Useful once their contents have been copied elsewhere (packed or uploaded to a
// GPU). Tensors copied out of compressed or non-contiguous checkpoint storage are not
// affected.
func (f *File) ReleaseMemory() error { return releaseMapping(f.mapping) }

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

// openMapped maps path and makes a File of what parse finds in the
// mapping, indexing tensors by name and refusing duplicates.
func openMapped(path string, format Format, parse func([]byte) (map[string]string, []Tensor, error)) (*File, error) {
	data, release, err := mapFile(path)
	if err != nil {
		return nil, err
	}
	meta, tensors, err := parse(data)
	if err != nil {
		release()
		return nil, badModel(fmt.Errorf("%s: %w", path, err))
	}
	index := make(map[string]int, len(tensors))
	for i, t := range tensors {
		if _, dup := index[t.Name]; dup {
			release()
			return nil, badModelf("%s: tensor %q appears twice", path, t.Name)
		}
		index[t.Name] = i
	}
	return &File{Path: path, Format: format, Metadata: meta, Tensors: tensors, index: index, mapping: data, release: release}, nil
}

// OpenFile opens a safetensors file or a PyTorch checkpoint (.ckpt, .pt,
// .pth, .bin), choosing by extension and, for other names, by content. A
// file that does not parse is an ErrBadModel, or ErrUnsupported where it is
// well formed but holds what this package does not read (an F8 dtype).
func OpenFile(path string) (*File, error) {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".safetensors":
		return OpenSafetensors(path)
	case ".ckpt", ".pt", ".pth", ".bin":
		return OpenCheckpoint(path)
	}
	head := make([]byte, 8)
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	n, err := io.ReadFull(f, head)
	f.Close()
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if looksLikeCheckpoint(head[:n]) {
		return OpenCheckpoint(path)
	}
	return OpenSafetensors(path)
}

// looksLikeCheckpoint reports a zip local header or a pickle PROTO opcode:
// torch.save's two formats.
func looksLikeCheckpoint(head []byte) bool {
	return bytes.HasPrefix(head, []byte("PK\x03\x04")) || (len(head) > 0 && head[0] == opProto)
}

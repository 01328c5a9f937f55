package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"image"
	"image/color"
	"image/png"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// pngSignature and the IHDR chunk (4 length + 4 type + 13 data + 4 CRC bytes) open
// every PNG.
var pngSignature = []byte("\x89PNG\r\n\x1a\n")

const ihdrEnd = 8 + 4 + 4 + 13 + 4

type pngChunkData struct {
	typ  string
	data []byte
}

// readChunks splits a PNG into its chunks, checking the signature and every CRC.
func readChunks(t *testing.T, b []byte) []pngChunkData {
	t.Helper()
	require.True(t, bytes.HasPrefix(b, pngSignature), "PNG signature")
	b = b[len(pngSignature):]
	var chunks []pngChunkData
	for len(b) > 0 {
		require.GreaterOrEqual(t, len(b), 12, "truncated chunk")
		n := int(binary.BigEndian.Uint32(b))
		require.GreaterOrEqual(t, len(b), 12+n, "truncated chunk")
		typ, data := string(b[4:8]), b[8:8+n]
		assert.Equal(t, crc32.ChecksumIEEE(b[4:8+n]), binary.BigEndian.Uint32(b[8+n:]), "CRC of %s", typ)
		chunks = append(chunks, pngChunkData{typ, data})
		b = b[12+n:]
	}
	return chunks
}

func TestEncodePNG(t *testing.T) {
	img := image.NewRGBA(image.Rect(0, 0, 5, 3))
	for i := range img.Pix {
		img.Pix[i] = uint8(17 * i)
	}
	tests := []struct {
		name, params, chunk string
		data                []byte
	}{
		{"ASCII", "a cat\nSteps: 20, Seed: 1", "tEXt", []byte("parameters\x00a cat\nSteps: 20, Seed: 1")},
		{"Latin-1", "café crème", "tEXt", []byte("parameters\x00caf\xe9 cr\xe8me")},
		{"beyond Latin-1", "a 猫 🐱", "iTXt", []byte("parameters\x00\x00\x00\x00\x00a 猫 🐱")},
		{"empty", "", "tEXt", []byte("parameters\x00")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			require.NoError(t, encodePNG(&buf, img, tt.params))
			chunks := readChunks(t, buf.Bytes())
			require.GreaterOrEqual(t, len(chunks), 4)
			assert.Equal(t, "IHDR", chunks[0].typ)
			assert.Equal(t, pngChunkData{tt.chunk, tt.data}, chunks[1], "the text chunk follows IHDR")
			assert.Equal(t, "IEND", chunks[len(chunks)-1].typ)

			back, err := png.Decode(&buf)
			require.NoError(t, err)
			assert.Equal(t, img.Bounds(), back.Bounds())
			for y := 0; y < 3; y++ {
				for x := 0; x < 5; x++ {
					assert.Equal(t, color.NRGBAModel.Convert(img.At(x, y)), color.NRGBAModel.Convert(back.At(x, y)))
				}
			}
		})
	}
}

type failingWriter struct{ after int }

func (w *failingWriter) Write(p []byte) (int, error) {
	if w.after < len(p) {
		return 0, errors.New("disk full")
	}
	w.after -= len(p)
	return len(p), nil
}

func TestEncodePNGWriteError(t *testing.T) {
	img := image.NewGray(image.Rect(0, 0, 2, 2))
	for _, after := range []int{0, ihdrEnd, ihdrEnd + 20} {
		assert.EqualError(t, encodePNG(&failingWriter{after: after}, img, "p"), "disk full", "failing after %d bytes", after)
	}
}

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "out.png")
	require.NoError(t, os.WriteFile(path, []byte("old"), 0o600))

	err := writeFileAtomic(path, func(w io.Writer) error {
		_, err := io.WriteString(w, "partial")
		require.NoError(t, err)
		return errors.New("encoder failed")
	})
	assert.EqualError(t, err, path+": encoder failed")
	got, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, "old", string(got), "a failed write leaves the old file")
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Len(t, entries, 1, "no temporary file left")

	require.NoError(t, writeFileAtomic(path, func(w io.Writer) error {
		_, err := io.WriteString(w, "new")
		return err
	}))
	got, err = os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, "new", string(got), "an existing file is replaced")
	st, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o644), st.Mode().Perm())
	entries, err = os.ReadDir(dir)
	require.NoError(t, err)
	assert.Len(t, entries, 1, "no temporary file left")

	assert.Error(t, writeFileAtomic(filepath.Join(dir, "missing", "out.png"), func(io.Writer) error { return nil }))
}

package main

import (
	"bytes"
	"encoding/binary"
	"image"
	"image/png"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// pngBytes encodes a w×h gray image.
func pngBytes(t *testing.T, w, h int) []byte {
	t.Helper()
	var buf bytes.Buffer
	require.NoError(t, png.Encode(&buf, image.NewGray(image.Rect(0, 0, w, h))))
	return buf.Bytes()
}

func writeTemp(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(p, data, 0o644))
	return p
}

// An image's declared size is checked before it is decoded: a tiny file declaring
// 20000×20000 pixels is refused at once, without allocating for it.
func TestReadImageDeclaredSize(t *testing.T) {
	tests := []struct {
		name string
		data func(t *testing.T) []byte
		msg  string // "" when the image is accepted
	}{
		{"20000×20000 declared", func(t *testing.T) []byte { return testutil.DeclaringPNG(t, 20000, 20000) }, "declares 20000×20000 pixels: at most 16384 a side and 64 Mpixels in all"},
		{"one side too wide", func(t *testing.T) []byte { return testutil.DeclaringPNG(t, 16385, 8) }, "declares 16385×8 pixels"},
		{"one side too tall", func(t *testing.T) []byte { return testutil.DeclaringPNG(t, 8, 16385) }, "declares 8×16385 pixels"},
		{"too many pixels", func(t *testing.T) []byte { return testutil.DeclaringPNG(t, 16000, 16000) }, "declares 16000×16000 pixels"},
		{"4096 wide", func(t *testing.T) []byte { return pngBytes(t, 4096, 8) }, ""},
		{"small", func(t *testing.T) []byte { return pngBytes(t, 8, 8) }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeTemp(t, "in.png", tt.data(t))
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			img, err := readImage(path)
			runtime.ReadMemStats(&after)
			assert.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(16<<20), "bytes allocated")
			if tt.msg == "" {
				require.NoError(t, err)
				assert.NotNil(t, img)
				return
			}
			require.Error(t, err)
			assert.Nil(t, img)
			assert.Contains(t, err.Error(), path+" "+tt.msg)
		})
	}
}

// The command fails on an oversized init image or mask before any model is opened.
func TestGenerateRefusesHugeImages(t *testing.T) {
	huge := writeTemp(t, "huge.png", testutil.DeclaringPNG(t, 20000, 20000))
	small := writeTemp(t, "small.png", pngBytes(t, 64, 64))
	model := t.TempDir() // exists; never opened
	out := filepath.Join(t.TempDir(), "out.png")
	tests := []struct {
		name string
		args []string
	}{
		{"img2img init image", []string{"img2img", "-i", huge}},
		{"inpaint init image", []string{"inpaint", "-i", huge, "--mask", small}},
		{"inpaint mask", []string{"inpaint", "-i", small, "--mask", huge}},
		{"outpaint init image", []string{"inpaint", "-i", huge, "--outpaint", "8,0,0,0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runArgs(t, append(tt.args, "-m", model, "-o", out)...)
			assert.Equal(t, exitError, r.code, "stderr: %s", r.stderr)
			assert.Contains(t, r.stderr, "sdcli "+tt.args[0]+": "+huge+" declares 20000×20000 pixels")
			assert.NotContains(t, r.stderr, "loading ")
			assert.Empty(t, r.stdout)
			assert.NoFileExists(t, out)
		})
	}
}

// Decoding errors carry the decoder's own prefix once ("png: png:" was printed).
func TestReadImageErrors(t *testing.T) {
	corrupt := pngBytes(t, 8, 8)
	idat := bytes.Index(corrupt, []byte("IDAT"))
	require.Positive(t, idat)
	n := binary.BigEndian.Uint32(corrupt[idat-4:])
	corrupt[idat+4+int(n)] ^= 0xff // the chunk's CRC, after its intact data
	truncated := pngBytes(t, 8, 8)[:ihdrEnd]

	tests := []struct {
		name string
		data []byte
		want string // the error after "PATH: "
	}{
		{"bad checksum", corrupt, "png: invalid format: invalid checksum"},
		{"header only", truncated, "png: unexpected EOF"},
		{"not an image", []byte("hello"), "not a PNG or JPEG image"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeTemp(t, "image", tt.data)
			_, err := readImage(path)
			require.Error(t, err)
			assert.Equal(t, path+": "+tt.want, err.Error())
		})
	}
}

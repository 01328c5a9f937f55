package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"image"
	"image/png"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// pngSignature and the IHDR chunk (4 length + 4 type + 13 data + 4 CRC bytes) open
// every PNG; text chunks go right after them.
var pngSignature = []byte("\x89PNG\r\n\x1a\n")

const ihdrEnd = 8 + 4 + 4 + 13 + 4

// encodePNG writes img as a PNG carrying the generation parameters in a "parameters"
// text chunk, which AUTOMATIC1111's web UI and image viewers read back.
func encodePNG(w io.Writer, img image.Image, parameters string) error {
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		return err
	}
	b := buf.Bytes()
	if len(b) < ihdrEnd || !bytes.Equal(b[:8], pngSignature) || string(b[12:16]) != "IHDR" {
		return errors.New("png encoder output does not start with IHDR")
	}
	for _, part := range [][]byte{b[:ihdrEnd], textChunk("parameters", parameters), b[ihdrEnd:]} {
		if _, err := w.Write(part); err != nil {
			return err
		}
	}
	return nil
}

// textChunk is a tEXt chunk when text is Latin-1 (the only encoding tEXt allows), else
// an uncompressed iTXt chunk holding UTF-8, as PIL's PngInfo.add_text (which
// AUTOMATIC1111 uses) chooses. keyword is ASCII.
func textChunk(keyword, text string) []byte {
	latin1, ok := toLatin1(text)
	if ok {
		return pngChunk("tEXt", append(append([]byte(keyword), 0), latin1...))
	}
	// keyword NUL, compression flag 0, method 0, empty language tag NUL, empty
	// translated keyword NUL, text.
	data := append([]byte(keyword), 0, 0, 0, 0, 0)
	return pngChunk("iTXt", append(data, text...))
}

func toLatin1(s string) ([]byte, bool) {
	out := make([]byte, 0, len(s))
	for _, r := range s {
		if r == 0 || r > 0xff {
			return nil, false
		}
		out = append(out, byte(r))
	}
	return out, true
}

// pngChunk frames data: big-endian length, type, data, CRC-32 of type and data.
func pngChunk(typ string, data []byte) []byte {
	out := binary.BigEndian.AppendUint32(nil, uint32(len(data)))
	out = append(out, typ...)
	out = append(out, data...)
	return binary.BigEndian.AppendUint32(out, crc32.ChecksumIEEE(out[4:]))
}

// checkOutput fails unless the images of -o output (n of them, see outputPaths) can be
// written: their folder exists, is a folder and lets a file be created, and no image path
// is a folder. It runs before the model is even loaded, as the images are written only
// once a run of minutes has ended.
func checkOutput(output string, n int) error {
	dir := filepath.Dir(output)
	st, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("-o %s: the folder %s does not exist", output, dir)
	case err != nil:
		return fmt.Errorf("-o %s: %w", output, err)
	case !st.IsDir():
		return fmt.Errorf("-o %s: %s is not a folder", output, dir)
	}
	for _, p := range outputPaths(output, n) {
		if st, err := os.Stat(p); err == nil && st.IsDir() {
			return fmt.Errorf("-o %s: %s is a folder, not a file", output, p)
		}
	}
	// Permissions, a read-only mount or a full quota only show when trying, and in the
	// way writeFileAtomic will: a temporary file in the folder.
	f, err := os.CreateTemp(dir, ".sdcli-write-check-*.tmp")
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err // the probe's own name says nothing to the user
		}
		return fmt.Errorf("-o %s: cannot write in the folder %s: %w", output, dir, err)
	}
	f.Close()
	return os.Remove(f.Name())
}

// writeFileAtomic writes a file through write into a temporary file in the same folder,
// renamed over path once complete, so that path never holds a partial file.
func writeFileAtomic(path string, write func(io.Writer) error) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	bw := bufio.NewWriter(f)
	if err = write(bw); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if err = bw.Flush(); err != nil {
		return err
	}
	if err = f.Chmod(0o644); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

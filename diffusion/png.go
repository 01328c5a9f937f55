package diffusion

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"image"
	"image/png"
)

// pngSignature and the IHDR chunk (4 length + 4 type + 13 data + 4 CRC bytes) open every
// PNG; the text chunk goes right after them.
var pngSignature = []byte("\x89PNG\r\n\x1a\n")

const ihdrEnd = 8 + 4 + 4 + 13 + 4

// EncodePNG encodes img as a PNG carrying parameters (Params.A1111's text) in a
// "parameters" text chunk, which AUTOMATIC1111's web UI and image viewers read back.
func EncodePNG(img image.Image, parameters string) ([]byte, error) {
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	if len(b) < ihdrEnd || !bytes.Equal(b[:8], pngSignature) || string(b[12:16]) != "IHDR" {
		return nil, errors.New("png encoder output does not start with IHDR")
	}
	out := make([]byte, 0, len(b)+len(parameters)+64)
	out = append(out, b[:ihdrEnd]...)
	out = append(out, textChunk("parameters", parameters)...)
	return append(out, b[ihdrEnd:]...), nil
}

// textChunk is tEXt for Latin-1 text (all tEXt allows), else uncompressed iTXt holding
// UTF-8, as PIL's PngInfo.add_text, which AUTOMATIC1111 uses, chooses. keyword is ASCII.
func textChunk(keyword, text string) []byte {
	latin1 := make([]byte, 0, len(text))
	for _, r := range text {
		if r == 0 || r > 0xff {
			// keyword NUL, compression flag and method 0, empty language tag and
			// translated keyword (each NUL-terminated), the text.
			return pngChunk("iTXt", append(append([]byte(keyword), 0, 0, 0, 0, 0), text...))
		}
		latin1 = append(latin1, byte(r))
	}
	return pngChunk("tEXt", append(append([]byte(keyword), 0), latin1...))
}

// pngChunk frames data: big-endian length, type, data, CRC-32 of type and data.
func pngChunk(typ string, data []byte) []byte {
	out := binary.BigEndian.AppendUint32(nil, uint32(len(data)))
	out = append(out, typ...)
	out = append(out, data...)
	return binary.BigEndian.AppendUint32(out, crc32.ChecksumIEEE(out[4:]))
}

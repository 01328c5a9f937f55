package server

import (
	"bytes"
	"compress/zlib"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"image"
	"image/jpeg"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/gosd/gosd/diffusion"
)

var pngSignature = []byte("\x89PNG\r\n\x1a\n")

// maxTextChunk bounds what a zTXt or compressed iTXt chunk may inflate to.
const maxTextChunk = 1 << 20

// pngText reads the text chunks of a PNG (tEXt, zTXt, iTXt) up to its image data.
func pngText(b []byte) (map[string]string, error) {
	if len(b) < 8 || !bytes.Equal(b[:8], pngSignature) {
		return nil, errors.New("not a PNG image")
	}
	out := map[string]string{}
	for p := 8; p+12 <= len(b); {
		n := int(binary.BigEndian.Uint32(b[p:]))
		typ := string(b[p+4 : p+8])
		if n < 0 || n > len(b)-p-12 {
			return nil, errors.New("truncated PNG chunk")
		}
		data := b[p+8 : p+8+n]
		p += 12 + n
		if typ == "IDAT" || typ == "IEND" {
			break
		}
		key, rest, ok := bytes.Cut(data, []byte{0})
		if !ok {
			continue
		}
		switch typ {
		case "tEXt":
			out[string(key)] = latin1String(rest)
		case "zTXt":
			if len(rest) > 0 {
				if t, err := inflate(rest[1:]); err == nil {
					out[string(key)] = latin1String(t)
				}
			}
		case "iTXt":
			if len(rest) < 2 {
				continue
			}
			compressed := rest[0] == 1
			parts := bytes.SplitN(rest[2:], []byte{0}, 3) // language, translated keyword, text
			if len(parts) != 3 {
				continue
			}
			t := parts[2]
			if compressed {
				var err error
				if t, err = inflate(t); err != nil {
					continue
				}
			}
			out[string(key)] = strings.ToValidUTF8(string(t), "\uFFFD")
		}
	}
	return out, nil
}

func latin1String(b []byte) string {
	r := make([]rune, len(b))
	for i, c := range b {
		r[i] = rune(c)
	}
	return string(r)
}

func inflate(b []byte) ([]byte, error) {
	zr, err := zlib.NewReader(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	defer zr.Close()
	out, err := io.ReadAll(io.LimitReader(zr, maxTextChunk+1))
	if err == nil && len(out) > maxTextChunk {
		err = errors.New("text chunk too large")
	}
	return out, err
}

// encodeImage encodes in the output format a client asked for: png (with the
// parameters) or jpeg at quality q (1-100).
func encodeImage(img image.Image, format, parameters string, q int) ([]byte, error) {
	if format == "jpeg" {
		var buf bytes.Buffer
		if err := jpeg.Encode(&buf, img, &jpeg.Options{Quality: q}); err != nil {
			return nil, err
		}
		return buf.Bytes(), nil
	}
	return diffusion.EncodePNG(img, parameters)
}

// decodeBase64Image decodes a base64 image as the web UIs send them, a bare base64
// string or a data URL ("data:image/png;base64,..."), checking the size it declares
// before decoding (diffusion.DecodeImage).
func decodeBase64Image(s, field string) (image.Image, []byte, error) {
	if strings.HasPrefix(s, "data:") {
		_, after, ok := strings.Cut(s, ",")
		if !ok {
			return nil, nil, badRequest(field, "%s: a data URL without data", field)
		}
		s = after
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil {
		// Some clients send URL-safe or unpadded base64.
		if raw, err = base64.RawStdEncoding.DecodeString(strings.TrimRight(strings.TrimSpace(s), "=")); err != nil {
			return nil, nil, badRequest(field, "%s: not base64: %v", field, err)
		}
	}
	img, err := diffusion.DecodeImage(bytes.NewReader(raw), field)
	if err != nil {
		return nil, nil, badRequest(field, "%v", err)
	}
	return img, raw, nil
}

// fileStore keeps the images of OpenAI's response_format "url" for a bounded time and
// count (the oldest goes first when full).
type fileStore struct {
	ttl   time.Duration
	limit int
	mu    sync.Mutex
	files map[string]storedFile
	order []string
}

type storedFile struct {
	data        []byte
	contentType string
	expires     time.Time
}

func newFileStore(ttl time.Duration, limit int) *fileStore {
	return &fileStore{ttl: ttl, limit: limit, files: map[string]storedFile{}}
}

func (f *fileStore) put(data []byte, contentType, ext string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	for len(f.order) > 0 {
		old, ok := f.files[f.order[0]]
		if ok && len(f.order) < f.limit && now.Before(old.expires) {
			break
		}
		delete(f.files, f.order[0])
		f.order = f.order[1:]
	}
	id := newID("img") + "." + ext
	f.files[id] = storedFile{data: data, contentType: contentType, expires: now.Add(f.ttl)}
	f.order = append(f.order, id)
	return id
}

func (f *fileStore) get(id string) (storedFile, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	sf, ok := f.files[id]
	if !ok || time.Now().After(sf.expires) {
		return storedFile{}, false
	}
	return sf, true
}

func (s *Server) handleFile(w http.ResponseWriter, r *http.Request) {
	sf, ok := s.files.get(r.PathValue("id"))
	if !ok {
		writeError(w, r, &apiError{status: http.StatusNotFound, kind: "not_found", msg: "no such image (images are kept for " + s.cfg.ResultTTL.String() + ")"})
		return
	}
	w.Header().Set("Content-Type", sf.contentType)
	w.Header().Set("Cache-Control", "private, max-age="+itoa(int(time.Until(sf.expires).Seconds())))
	_, _ = w.Write(sf.data)
}

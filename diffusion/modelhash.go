package diffusion

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
)

// modelHash is AUTOMATIC1111's short hash of a single-file model (the first 10 hex digits
// of the file's SHA-256), computed in the background from Open on, since hashing a
// multi-gigabyte file takes seconds; "" for a folder or a file that cannot be read.
type modelHash struct {
	done chan struct{}
	sum  string
}

func hashModelFile(path string) *modelHash {
	h := &modelHash{done: make(chan struct{})}
	go func() {
		defer close(h.done)
		f, err := os.Open(path)
		if err != nil {
			return
		}
		defer f.Close()
		if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
			return
		}
		d := sha256.New()
		if _, err := io.Copy(d, f); err != nil {
			return
		}
		h.sum = hex.EncodeToString(d.Sum(nil))[:10]
	}()
	return h
}

// get waits for the hash.
func (h *modelHash) get() string {
	<-h.done
	return h.sum
}

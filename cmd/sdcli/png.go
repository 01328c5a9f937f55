package main

import (
	"bufio"
	"errors"
	"fmt"
	"image"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/gosd/gosd/diffusion"
)

// encodePNG writes img as a PNG carrying the generation parameters (diffusion.EncodePNG).
func encodePNG(w io.Writer, img image.Image, parameters string) error {
	b, err := diffusion.EncodePNG(img, parameters)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
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

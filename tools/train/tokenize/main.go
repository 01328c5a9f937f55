// Command tokenize turns captions into CLIP token ids with the runtime's own tokenizer, so the
// demo model is trained on exactly the ids sdcli will feed it.
//
// It reads one caption per line on stdin and writes, per line, a JSON array of 77 ids
// (BOS 49406, the caption's tokens, EOS 49407, padded with 49407, truncated keeping EOS last).
// An empty line is the empty prompt used for classifier-free guidance.
//
// prepare_data.py runs it as: go run ./tools/train/tokenize
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/gosd/gosd/diffusion/tokenizer"
)

// padID is what SD 1.x pads with (the EOS id); SD 2.x folders pad with 0 instead.
const padID = 49407

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "tokenize:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) error {
	tok, err := tokenizer.Default()
	if err != nil {
		return fmt.Errorf("load tokenizer: %w", err)
	}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	w := bufio.NewWriter(out)
	enc := json.NewEncoder(w)
	for sc.Scan() {
		if err := enc.Encode(tok.EncodePadded(sc.Text(), padID)); err != nil {
			return fmt.Errorf("write ids: %w", err)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read captions: %w", err)
	}
	return w.Flush()
}

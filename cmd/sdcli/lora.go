package main

import (
	"errors"
	"math"
	"strconv"
	"strings"

	"github.com/gosd/gosd/diffusion"
)

// loraOptions are the adapter flags of the generation subcommands, and the
// textual-inversion folder (AUTOMATIC1111's other per-prompt extra network).
type loraOptions struct {
	loras        []diffusion.LoRA
	dir          string
	embeddingDir string
}

func (o *loraOptions) define(fs *flagSet) {
	fs.funcVar("lora", "PATH[:SCALE]", "merge a LoRA / LyCORIS adapter file at SCALE for the UNet and text encoder; repeatable\n(default: none; SCALE default 1)",
		func(s string) error {
			l, err := parseLoRAFlag(s)
			if err != nil {
				return err
			}
			o.loras = append(o.loras, l)
			return nil
		})
	fs.stringVar(&o.dir, "lora-dir", "DIR", "", "folder (searched with its subfolders) that prompt tags <lora:NAME:SCALE> name files in\n(default: none; a tag is then an error)")
	fs.stringVar(&o.embeddingDir, "embedding-dir", "DIR", "", "folder (searched with its subfolders) of textual-inversion embeddings: a file's name in the\nprompt or negative prompt stands for its vectors (default: none)")
}

// parseLoRAFlag reads PATH[:SCALE]: a suffix after the last ":" that parses as a number
// is the scale; otherwise the whole value is the path.
func parseLoRAFlag(s string) (diffusion.LoRA, error) {
	path, scale := s, 1.0
	if i := strings.LastIndexByte(s, ':'); i >= 0 {
		if v, err := strconv.ParseFloat(s[i+1:], 64); err == nil {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return diffusion.LoRA{}, errors.New("the scale must be a finite number")
			}
			path, scale = s[:i], v
		}
	}
	if path == "" {
		return diffusion.LoRA{}, errors.New("want PATH[:SCALE]")
	}
	// An explicit 0 leaves the adapter out; Scale 0 would mean the default 1.
	return diffusion.LoRA{Path: path, Scale: scale, UNetScale: &scale, TextScale: &scale}, nil
}

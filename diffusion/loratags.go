package diffusion

import (
	"fmt"
	"io/fs"
	"math"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// extraNetwork is an AUTOMATIC1111 extra-network tag, <type:arg1:arg2:...>, as the web
// UI's extra_networks.py matches it: a word, a colon, then anything up to ">".
var extraNetwork = regexp.MustCompile(`<(\w+):([^>]+)>`)

// loraExtensions are the adapter files a LoRA folder is searched for.
var loraExtensions = []string{".safetensors", ".pt", ".ckpt"}

// ParseLoRATags removes AUTOMATIC1111's LoRA tags from a prompt and returns the prompt
// without them and the adapters they name, in order, looked up by file name (without
// extension) in dir and its subfolders. The tag forms are the web UI's:
//
//	<lora:NAME>            multiplier 1 for both networks
//	<lora:NAME:w>          w for both
//	<lora:NAME:te:unet>    text encoder te, UNet unet (AUTOMATIC1111's order)
//	<lora:NAME:unet=u:te=t> named multipliers, in any order and mixed with positional ones
//
// "lyco" tags (the LyCORIS extension's) are read the same way; other tags (hypernet, ...)
// stay in the prompt. A tag naming no file in dir, or one that several files match, an
// unreadable multiplier or an unknown named argument is ErrInvalidRequest.
func ParseLoRATags(prompt, dir string) (string, []LoRA, error) {
	var ls []LoRA
	var err error
	var index map[string][]string
	out := extraNetwork.ReplaceAllStringFunc(prompt, func(tag string) string {
		m := extraNetwork.FindStringSubmatch(tag)
		if (m[1] != "lora" && m[1] != "lyco") || err != nil {
			return tag
		}
		var l LoRA
		var name string
		if name, l, err = parseLoRATag(m[2]); err != nil {
			return ""
		}
		if dir == "" {
			err = invalid("the prompt names LoRA %q but no LoRA folder is set", name)
			return ""
		}
		if index == nil {
			if index, err = IndexLoRAs(dir); err != nil {
				err = invalid("%v", err) // the request's folder
				return ""
			}
		}
		switch paths := index[name]; len(paths) {
		case 0:
			err = invalid("LoRA %q: no %s file of that name in %s", name, strings.Join(loraExtensions, ", "), dir)
		case 1:
			l.Path = paths[0]
			ls = append(ls, l)
		default:
			err = invalid("LoRA %q: several files have that name: %s", name, strings.Join(paths, ", "))
		}
		return ""
	})
	if err != nil {
		return "", nil, err
	}
	return out, ls, nil
}

// parseLoRATag reads the arguments of one tag: NAME, then positional te and unet
// multipliers (unet defaults to te, te to 1) or named te=, unet= (dyn=, the web UI's
// dynamic rank, is refused: it would need another rank than the file's).
func parseLoRATag(args string) (string, LoRA, error) {
	parts := strings.Split(args, ":")
	name := strings.TrimSpace(parts[0])
	if name == "" {
		return "", LoRA{}, invalid("LoRA tag <lora:%s> has no name", args)
	}
	te, unet := 1.0, math.NaN() // NaN: unet follows te
	var positional []string
	named := map[string]string{}
	for _, p := range parts[1:] {
		if k, v, ok := strings.Cut(p, "="); ok {
			named[strings.TrimSpace(k)] = strings.TrimSpace(v)
		} else {
			positional = append(positional, strings.TrimSpace(p))
		}
	}
	num := func(what, s string) (float64, error) {
		v, err := strconv.ParseFloat(s, 64)
		if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
			return 0, invalid("LoRA tag <lora:%s>: %s multiplier %q is not a number", args, what, s)
		}
		return v, nil
	}
	var err error
	if len(positional) > 2 {
		return "", LoRA{}, invalid("LoRA tag <lora:%s>: at most two multipliers (text encoder, UNet)", args)
	}
	if len(positional) > 0 {
		if te, err = num("text encoder", positional[0]); err != nil {
			return "", LoRA{}, err
		}
	}
	if len(positional) > 1 {
		if unet, err = num("UNet", positional[1]); err != nil {
			return "", LoRA{}, err
		}
	}
	for k, v := range named {
		switch k {
		case "te":
			te, err = num("text encoder", v)
		case "unet":
			unet, err = num("UNet", v)
		default:
			err = invalid("LoRA tag <lora:%s>: unknown argument %q (te=, unet=)", args, k)
		}
		if err != nil {
			return "", LoRA{}, err
		}
	}
	if math.IsNaN(unet) {
		unet = te
	}
	return name, LoRA{UNetScale: &unet, TextScale: &te}, nil
}

// IndexLoRAs maps the base names of the adapter files (.safetensors, .pt, .ckpt) under
// dir and its subfolders, the names prompt tags call them by, to their paths (several
// for a name make a tag naming it an error).
func IndexLoRAs(dir string) (map[string][]string, error) {
	index, err := indexFiles(dir, loraExtensions)
	if err != nil {
		return nil, fmt.Errorf("LoRA folder: %w", err)
	}
	return index, nil
}

// indexFiles maps the base names (without extension) of the files under dir and its
// subfolders whose extension is one of exts, in any case, to their paths.
func indexFiles(dir string, exts []string) (map[string][]string, error) {
	index := map[string][]string{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		ext := filepath.Ext(path)
		if d.IsDir() || !slices.ContainsFunc(exts, func(e string) bool { return strings.EqualFold(e, ext) }) {
			return nil
		}
		name := strings.TrimSuffix(d.Name(), ext)
		index[name] = append(index[name], path)
		return nil
	})
	return index, err
}

// promptLoRAs takes the LoRA tags out of an AUTOMATIC1111-syntax prompt when the
// request has a LoRA folder, appending them to its LoRAs.
func promptLoRAs(req Request) (Request, error) {
	if req.PromptSyntax != PromptA1111 || (req.LoRADir == "" && !extraNetwork.MatchString(req.Prompt)) {
		return req, nil
	}
	prompt, ls, err := ParseLoRATags(req.Prompt, req.LoRADir)
	if err != nil {
		return req, fmt.Errorf("prompt: %w", err)
	}
	req.Prompt = prompt
	req.LoRAs = append(slices.Clip(req.LoRAs), ls...)
	return req, nil
}

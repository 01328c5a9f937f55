package modelfile

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// loadDiffusers loads a diffusers pipeline folder: model_index.json, and
// unet/, vae/, text_encoder/ each with a config.json and weights, plus
// scheduler/ and tokenizer/ when present.
func loadDiffusers(dir string, o *options) (*Model, error) {
	m := &Model{Path: dir, Format: FormatDiffusers}
	if err := m.fromDiffusers(dir, o); err != nil {
		m.Close()
		return nil, badModel(fmt.Errorf("%s: %w", dir, err))
	}
	return m, nil
}

func (m *Model) fromDiffusers(dir string, o *options) error {
	index, err := readModelIndex(dir)
	if err != nil {
		return err
	}
	up, err := readUpscaler(dir)
	if err != nil {
		return err
	}
	m.Upscaler = up
	var unet UNetConfig
	var vae VAEConfig
	var text CLIPConfig
	// The refiner's one text encoder is SDXL's second: it is read as the model's text
	// encoder, with tokenizer_2.
	textDir, tokDir := "text_encoder", "tokenizer"
	if index.refiner {
		textDir, tokDir = "text_encoder_2", "tokenizer_2"
	}
	for _, c := range []struct {
		dir   string
		parse func([]byte) error
	}{
		{"unet", func(b []byte) (err error) { unet, err = ParseUNetConfig(b); return }},
		{"vae", func(b []byte) (err error) { vae, err = ParseVAEConfig(b); return }},
		{textDir, func(b []byte) (err error) { text, err = ParseCLIPConfig(b); return }},
	} {
		b, err := os.ReadFile(filepath.Join(dir, c.dir, "config.json"))
		if err != nil {
			return err
		}
		if err := c.parse(b); err != nil {
			return fmt.Errorf("%s/config.json: %w", c.dir, err)
		}
	}
	if o.unetHeads != nil {
		unet.AttentionHeads = slices.Clone(o.unetHeads)
	}
	if o.textHeads > 0 {
		text.NumAttentionHeads = o.textHeads
	}
	if index.refiner && !text.WithProjection {
		return fmt.Errorf("text_encoder_2/config.json: the refiner's text encoder must be a CLIPTextModelWithProjection (its pooled text_embeds condition the UNet)")
	}
	// Of the SD 1.x/2.x families only SD 2.x projects into its transformers linearly;
	// SDXL is the pipeline with a second text encoder.
	m.Family = cond(unet.UseLinearProjection, FamilySD2, FamilySD1)
	if index.sdxl || index.refiner {
		m.Family = FamilySDXL
		m.ForceZerosForEmptyPrompt = index.forceZeros
		m.RequiresAestheticsScore = index.aestheticScore
	}
	if o.family != 0 {
		m.Family = o.family
	}

	sched, err := os.ReadFile(filepath.Join(dir, "scheduler", "scheduler_config.json"))
	switch {
	case err == nil:
		if m.Scheduler, err = ParseSchedulerConfig(sched); err != nil {
			return err
		}
		if o.prediction != nil {
			m.Scheduler.Raw, err = setJSONField(m.Scheduler.Raw, "prediction_type", o.prediction.String())
			if err != nil {
				return fmt.Errorf("scheduler config: %w", err)
			}
			m.Scheduler.PredictionType = *o.prediction
		}
	case errors.Is(err, os.ErrNotExist):
		m.Scheduler = defaultScheduler(m.Family, o.predictionFor(m.Family))
	default:
		return err
	}

	if err := bindFolder(m, dir, "unet", unet, []string{"diffusion_pytorch_model"}, o.variant, func(n string) []string { return []string{n} }, &m.UNet); err != nil {
		return err
	}
	if err := bindFolder(m, dir, "vae", vae, []string{"diffusion_pytorch_model"}, o.variant, vaeNames, &m.VAE); err != nil {
		return err
	}
	// transformers saves the text encoder with or without the "text_model."
	// level depending on its version; the prefixed form is the one kept.
	textNames := func(n string) []string { return []string{n, strings.TrimPrefix(n, "text_model.")} }
	if err := bindFolder(m, dir, textDir, text, []string{"model", "pytorch_model"}, o.variant, textNames, &m.TextEncoder); err != nil {
		return err
	}
	if index.sdxl {
		b, err := os.ReadFile(filepath.Join(dir, "text_encoder_2", "config.json"))
		if err != nil {
			return err
		}
		text2, err := ParseCLIPConfig(b)
		if err != nil {
			return fmt.Errorf("text_encoder_2/config.json: %w", err)
		}
		if !text2.WithProjection {
			return fmt.Errorf("text_encoder_2/config.json: SDXL's second text encoder must be a CLIPTextModelWithProjection (its pooled text_embeds condition the UNet)")
		}
		if o.textHeads2 > 0 {
			text2.NumAttentionHeads = o.textHeads2
		}
		te2 := NamedTextEncoder{Name: "text_encoder_2"}
		if err := bindFolder(m, dir, "text_encoder_2", text2, []string{"model", "pytorch_model"}, o.variant, textNames, &te2.Component); err != nil {
			return err
		}
		if te2.TokenizerDir, err = tokenizerDir(dir, "tokenizer_2"); err != nil {
			return err
		}
		m.ExtraTextEncoders = append(m.ExtraTextEncoders, te2)
	}
	slices.Sort(m.Unused)
	m.TokenizerDir, err = tokenizerDir(dir, tokDir)
	return err
}

// tokenizerDir returns the tokenizer folder name of dir, or "" when there is none (the
// family's built-in vocabulary serves); a folder lacking a file is broken, not absent.
func tokenizerDir(dir, name string) (string, error) {
	tok := filepath.Join(dir, name)
	st, err := os.Stat(tok)
	if err != nil || !st.IsDir() {
		return "", nil
	}
	for _, f := range []string{"vocab.json", "merges.txt"} {
		if !fileExists(filepath.Join(tok, f)) {
			return "", fmt.Errorf("%s: no %s in the tokenizer folder", name, f)
		}
	}
	return tok, nil
}

// modelIndex is what model_index.json tells about the pipeline.
type modelIndex struct {
	// sdxl: a StableDiffusionXL pipeline with both text encoders; refiner: one with only
	// the second (SDXL's refiner).
	sdxl, refiner bool
	// forceZeros is SDXL's force_zeros_for_empty_prompt (diffusers' default true),
	// aestheticScore its requires_aesthetics_score (default false; the refiner's true).
	forceZeros, aestheticScore bool
}

// readModelIndex reads model_index.json, refusing pipelines other than SD 1.x/2.x and
// SDXL base ones.
func readModelIndex(dir string) (modelIndex, error) {
	b, err := os.ReadFile(filepath.Join(dir, "model_index.json"))
	if err != nil {
		return modelIndex{}, fmt.Errorf("not a diffusers folder: %w", err)
	}
	var index map[string]json.RawMessage
	if err := json.Unmarshal(b, &index); err != nil {
		return modelIndex{}, fmt.Errorf("model_index.json: %w", err)
	}
	var class string
	_ = json.Unmarshal(index["_class_name"], &class) // absent or not a string: no class to check
	present := func(k string) bool { v, ok := index[k]; return ok && !isNullPair(v) }
	for _, other := range []string{"transformer", "prior", "image_encoder_2"} {
		if present(other) {
			return modelIndex{}, unsupportedf("model_index.json: %s pipelines (with a %s) are not supported", cond(class != "", class, "such"), other)
		}
	}
	if !strings.Contains(class, "XL") && !present("text_encoder_2") {
		return modelIndex{}, nil
	}
	if !strings.HasPrefix(class, "StableDiffusionXL") || !present("text_encoder_2") {
		return modelIndex{}, unsupportedf("model_index.json: %s is not supported (SDXL pipelines need text_encoder_2, and text_encoder unless a refiner)", cond(class != "", class, "this pipeline"))
	}
	mi := modelIndex{sdxl: present("text_encoder"), forceZeros: true}
	mi.refiner = !mi.sdxl
	for key, into := range map[string]*bool{"force_zeros_for_empty_prompt": &mi.forceZeros, "requires_aesthetics_score": &mi.aestheticScore} {
		if v, ok := index[key]; ok {
			if err := json.Unmarshal(v, into); err != nil {
				return modelIndex{}, fmt.Errorf("model_index.json: %s: %w", key, err)
			}
		}
	}
	return mi, nil
}

// isNullPair reports a model_index.json entry of [null, null] or null.
func isNullPair(raw json.RawMessage) bool {
	var pair []*string
	if json.Unmarshal(raw, &pair) != nil {
		return false
	}
	for _, p := range pair {
		if p != nil {
			return false
		}
	}
	return true
}

// vaeNames also accepts the attention names diffusers used before 0.14
// (query/key/value/proj_attn, whose weights may be 1×1 convs), which
// older Hub repositories still ship.
func vaeNames(n string) []string {
	for from, to := range map[string]string{".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."} {
		if strings.Contains(n, ".mid_block.attentions.0"+from) {
			return []string{n, strings.Replace(n, from, to, 1)}
		}
	}
	return []string{n}
}

// bindFolder opens a component's weights, binds them to its config's specs
// (each spec taking the first of names(spec) the files hold) and records
// the files and the tensors left unused.
func bindFolder[C specLister](m *Model, dir, name string, cfg C, bases []string, variant string, names func(string) []string, out *Component[C]) error {
	files, err := openWeights(filepath.Join(dir, name), bases, variant)
	m.files = append(m.files, files...)
	if err != nil {
		return err
	}
	all := map[string]Tensor{}
	for _, f := range files {
		for _, t := range f.Tensors {
			if _, dup := all[t.Name]; dup {
				return fmt.Errorf("%s: tensor %s is in more than one shard", name, t.Name)
			}
			all[t.Name] = t
		}
	}
	find := func(n string) (Tensor, bool) { t, ok := all[n]; return t, ok }
	resolve := func(n string) source {
		cands := names(n)
		for _, c := range cands {
			if _, ok := all[c]; ok {
				return source{name: c}
			}
		}
		return source{name: cands[0]}
	}
	used := map[string]bool{}
	if *out, err = bindComponent(name, cfg, len(all), resolve, find, used); err != nil {
		return err
	}
	for n := range all {
		if !used[n] {
			m.Unused = append(m.Unused, name+"/"+n)
		}
	}
	return nil
}

// openWeights opens a component's weights, trying for each base name (in
// order): the variant's safetensors (plain, then sharded), the plain
// safetensors (plain, then sharded), the only variant present when no
// variant was asked for, then the same as .bin pickles.
func openWeights(dir string, bases []string, variant string) ([]*File, error) {
	for _, ext := range []string{"safetensors", "bin"} {
		for _, base := range bases {
			var names []string
			if variant != "" {
				names = append(names, base+"."+variant+"."+ext, base+"."+ext+".index."+variant+".json")
			}
			names = append(names, base+"."+ext, base+"."+ext+".index.json")
			for _, n := range names {
				p := filepath.Join(dir, n)
				if !fileExists(p) {
					continue
				}
				if strings.HasSuffix(n, ".json") {
					return openShards(p)
				}
				f, err := OpenFile(p)
				if err != nil {
					return nil, err
				}
				return []*File{f}, nil
			}
			if variant == "" {
				variants, _ := filepath.Glob(filepath.Join(dir, base+".*."+ext))
				switch len(variants) {
				case 0:
				case 1:
					f, err := OpenFile(variants[0])
					if err != nil {
						return nil, err
					}
					return []*File{f}, nil
				default:
					return nil, fmt.Errorf("%s: several weight variants (%s): choose one with WithVariant", dir, strings.Join(baseNames(variants), ", "))
				}
			}
		}
	}
	return nil, fmt.Errorf("%s: no weights (%s.safetensors or .bin)", dir, strings.Join(bases, ".safetensors, "))
}

func baseNames(paths []string) []string {
	out := make([]string, len(paths))
	for i, p := range paths {
		out[i] = filepath.Base(p)
	}
	return out
}

// openShards opens the files a sharded-weights index names and checks that
// each tensor is where the index says.
func openShards(indexPath string) ([]*File, error) {
	b, err := os.ReadFile(indexPath)
	if err != nil {
		return nil, err
	}
	var index struct {
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(b, &index); err != nil {
		return nil, fmt.Errorf("%s: %w", indexPath, err)
	}
	var shards []string
	for _, shard := range index.WeightMap {
		if !slices.Contains(shards, shard) {
			shards = append(shards, shard)
		}
	}
	slices.Sort(shards)
	var files []*File
	byShard := map[string]*File{}
	for _, shard := range shards {
		if shard != filepath.Base(shard) || shard == "." || shard == ".." {
			closeAll(files)
			return nil, fmt.Errorf("%s: shard %q is not a file beside the index", indexPath, shard)
		}
		f, err := OpenFile(filepath.Join(filepath.Dir(indexPath), shard))
		if err != nil {
			closeAll(files)
			return nil, err
		}
		files = append(files, f)
		byShard[shard] = f
	}
	for name, shard := range index.WeightMap {
		if _, ok := byShard[shard].Tensor(name); !ok {
			closeAll(files)
			return nil, fmt.Errorf("%s: tensor %s is not in %s as the index says", indexPath, name, shard)
		}
	}
	return files, nil
}

func closeAll(files []*File) {
	for _, f := range files {
		f.Close()
	}
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

// setJSONField replaces one top-level field of a JSON object.
func setJSONField(raw []byte, key string, value any) ([]byte, error) {
	var obj map[string]any
	if err := json.Unmarshal(raw, &obj); err != nil {
		return nil, err
	}
	obj[key] = value
	return json.MarshalIndent(obj, "", "  ")
}

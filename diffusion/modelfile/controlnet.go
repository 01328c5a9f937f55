package modelfile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// ControlNetConfig is diffusers' ControlNetModel config: the encoder of the UNet it was
// copied from (UpBlockTypes mirror the down blocks, so that the UNet checks apply; the
// ControlNet has no up blocks) and the control image's embedding.
type ControlNetConfig struct {
	UNetConfig
	ConditioningChannels int // channels of the control image, 3
	// ConditioningEmbeddingOutChannels are the widths of controlnet_cond_embedding's
	// levels; each level after the first halves the control image (SD 1.5: 16, 32, 96,
	// 256, so the image is 8 times the latents).
	ConditioningEmbeddingOutChannels []int
	ChannelOrder                     string // "rgb" or "bgr": the order the model takes the image's channels in
}

// controlNetJSON is a ControlNetModel config.json: a UNet's keys and its own.
type controlNetJSON struct {
	unetJSON
	ConditioningChannels             int    `json:"conditioning_channels"`
	ConditioningEmbeddingOutChannels []int  `json:"conditioning_embedding_out_channels"`
	ChannelOrder                     string `json:"controlnet_conditioning_channel_order"`
	GlobalPoolConditions             bool   `json:"global_pool_conditions"`
}

// ParseControlNetConfig reads a diffusers ControlNetModel config.json and validates it.
func ParseControlNetConfig(data []byte) (ControlNetConfig, error) {
	j := controlNetJSON{unetJSON: defaultUNetJSON(), ConditioningChannels: 3,
		ConditioningEmbeddingOutChannels: []int{16, 32, 96, 256}, ChannelOrder: "rgb"}
	if err := json.Unmarshal(data, &j); err != nil {
		return ControlNetConfig{}, fmt.Errorf("controlnet config: %w", err)
	}
	if j.ClassName != "" && j.ClassName != "ControlNetModel" {
		return ControlNetConfig{}, unsupportedf("controlnet config: class %s is not supported (want ControlNetModel)", j.ClassName)
	}
	if j.GlobalPoolConditions {
		return ControlNetConfig{}, unsupportedf("controlnet config: global_pool_conditions is not supported")
	}
	j.ClassName = ""
	j.UpBlockTypes = mirrorUpBlocks(j.DownBlockTypes)
	u, err := j.resolve()
	if err != nil {
		return ControlNetConfig{}, fmt.Errorf("controlnet config: %w", err)
	}
	c := ControlNetConfig{UNetConfig: u, ConditioningChannels: j.ConditioningChannels,
		ConditioningEmbeddingOutChannels: j.ConditioningEmbeddingOutChannels, ChannelOrder: j.ChannelOrder}
	return c, c.Validate()
}

// mirrorUpBlocks gives the up blocks a UNet with these down blocks has.
func mirrorUpBlocks(down []string) []string {
	up := make([]string, len(down))
	for i, t := range down {
		up[len(down)-1-i] = cond(t == crossAttnDown, crossAttnUp, plainUp)
	}
	return up
}

// Validate checks that the config describes a ControlNet this package can list the
// tensors of.
func (c ControlNetConfig) Validate() error {
	if err := c.UNetConfig.Validate(); err != nil {
		return err
	}
	n := len(c.ConditioningEmbeddingOutChannels)
	if n < 1 || n > 8 || c.ConditioningChannels < 1 || c.ConditioningChannels > 16 {
		return fmt.Errorf("controlnet config: %d conditioning channels, %d embedding levels", c.ConditioningChannels, n)
	}
	for _, ch := range c.ConditioningEmbeddingOutChannels {
		if ch < 1 || ch > maxWidth {
			return fmt.Errorf("controlnet config: conditioning embedding width %d", ch)
		}
	}
	if c.ChannelOrder != "rgb" && c.ChannelOrder != "bgr" {
		return unsupportedf("controlnet config: channel order %q (want rgb or bgr)", c.ChannelOrder)
	}
	return nil
}

func (c ControlNetConfig) fitsIn(tensors int) error { return c.UNetConfig.fitsIn(tensors) }

// TensorSpecs lists every tensor of the ControlNet in diffusers' ControlNetModel naming.
func (c ControlNetConfig) TensorSpecs() ([]TensorSpec, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	unet, err := c.UNetConfig.TensorSpecs()
	if err != nil {
		return nil, err
	}
	var s specList
	for _, t := range unet {
		if !strings.HasPrefix(t.Name, "up_blocks.") && !strings.HasPrefix(t.Name, "conv_norm_out.") && !strings.HasPrefix(t.Name, "conv_out.") {
			s = append(s, t)
		}
	}
	hc := c.ConditioningEmbeddingOutChannels
	s.conv("controlnet_cond_embedding.conv_in", hc[0], c.ConditioningChannels, 3)
	for i := range len(hc) - 1 {
		s.conv(fmt.Sprintf("controlnet_cond_embedding.blocks.%d", 2*i), hc[i], hc[i], 3)
		s.conv(fmt.Sprintf("controlnet_cond_embedding.blocks.%d", 2*i+1), hc[i+1], hc[i], 3)
	}
	s.conv("controlnet_cond_embedding.conv_out", c.BlockOutChannels[0], hc[len(hc)-1], 3)
	for i, ch := range c.skipChannels() {
		s.conv(fmt.Sprintf("controlnet_down_blocks.%d", i), ch, ch, 1)
	}
	last := c.BlockOutChannels[len(c.BlockOutChannels)-1]
	s.conv("controlnet_mid_block", last, last, 1)
	return s, nil
}

// skipChannels are the channels of the encoder's skips (conv_in's output, every ResNet
// or attention output, every downsampler output), in order: one zero conv each.
func (c ControlNetConfig) skipChannels() []int {
	out := []int{c.BlockOutChannels[0]}
	for l, ch := range c.BlockOutChannels {
		for range c.LayersPerBlock[l] {
			out = append(out, ch)
		}
		if l < len(c.BlockOutChannels)-1 {
			out = append(out, ch)
		}
	}
	return out
}

// ControlNet is a loaded ControlNet: its config and its tensors by diffusers name. Tensor
// data view memory-mapped files, valid until Close.
type ControlNet struct {
	Path    string
	Format  Format
	Config  ControlNetConfig
	Tensors map[string]Tensor
	Unused  []string // file tensors the network does not use
	files   []*File
}

// Close unmaps the ControlNet's files.
func (c *ControlNet) Close() error {
	var errs []error
	for _, f := range c.files {
		errs = append(errs, f.Close())
	}
	c.files = nil
	return errors.Join(errs...)
}

// ReleaseMemory drops the mapped pages of the files (see Model.ReleaseMemory).
func (c *ControlNet) ReleaseMemory() error {
	var errs []error
	for _, f := range c.files {
		errs = append(errs, f.ReleaseMemory())
	}
	return errors.Join(errs...)
}

// LoadControlNet loads a ControlNet: a diffusers ControlNetModel folder (config.json and
// diffusion_pytorch_model weights) or a single file whose config is read off the shapes:
// the original layout (lllyasviel's cldm, keys with or without the "control_model."
// prefix: input_hint_block, input_blocks, zero_convs, middle_block, middle_block_out; SDXL's
// with label_emb) or diffusers' names without config.json (lllyasviel's diffusers_xl_*
// files, a folder's weights file on its own). What shapes do not tell is SD's: 8 heads per
// level with 1x1-conv projections (SD 1.x), 64-wide heads with linear ones (SD 2.x, SDXL),
// SDXL's 256-wide time-id embedding, 32 norm groups; see LoadControlNetFor.
func LoadControlNet(path string) (*ControlNet, error) { return LoadControlNetFor(path, nil) }

// LoadControlNetFor is LoadControlNet for a ControlNet that runs beside a UNet of config
// base: a single file takes its attention heads and time-id embedding width from base
// when its levels have base's widths (a ControlNet copies its UNet's architecture), which
// also loads ControlNets of models whose heads are not SD's.
func LoadControlNetFor(path string, base *UNetConfig) (*ControlNet, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	cn := &ControlNet{Path: path}
	if st.IsDir() {
		err = cn.fromFolder(path)
	} else {
		err = cn.fromSingleFile(path, base)
	}
	if err != nil {
		cn.Close()
		return nil, badModelUnlessMarked(fmt.Errorf("controlnet %s: %w", path, err))
	}
	slices.Sort(cn.Unused)
	return cn, nil
}

// badModelUnlessMarked marks err as a bad model unless it already says what it is
// (unsupported, missing file).
func badModelUnlessMarked(err error) error {
	if errors.Is(err, ErrUnsupported) || errors.Is(err, ErrBadModel) || errors.Is(err, os.ErrNotExist) {
		return err
	}
	return badModel(err)
}

func (cn *ControlNet) fromFolder(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return err
	}
	cfg, err := ParseControlNetConfig(b)
	if err != nil {
		return err
	}
	files, err := openWeights(dir, []string{"diffusion_pytorch_model"}, "")
	cn.files = files
	if err != nil {
		return err
	}
	cn.Format = FormatDiffusers
	all := map[string]Tensor{}
	for _, f := range files {
		for _, t := range f.Tensors {
			all[t.Name] = t
		}
	}
	find := func(n string) (Tensor, bool) { t, ok := all[n]; return t, ok }
	return cn.bind(cfg, len(all), func(n string) source { return source{name: n} }, find, all)
}

func (cn *ControlNet) bind(cfg ControlNetConfig, n int, resolve func(string) source, find func(string) (Tensor, bool), all map[string]Tensor) error {
	used := map[string]bool{}
	comp, err := bindComponent("controlnet", cfg, n, resolve, find, used)
	if err != nil {
		return err
	}
	cn.Config, cn.Tensors = cfg, comp.Tensors
	for name := range all {
		if !used[name] {
			cn.Unused = append(cn.Unused, name)
		}
	}
	return nil
}

// The prefix of the original ControlNet checkpoints' keys (some files drop it).
const cldmPrefix = "control_model."

func (cn *ControlNet) fromSingleFile(path string, base *UNetConfig) error {
	f, err := OpenFile(path)
	if err != nil {
		return err
	}
	cn.files, cn.Format = []*File{f}, f.Format
	if _, ok := f.Tensor(diffusersHintConv + ".weight"); ok {
		all := ldmTensors{}
		for _, t := range f.Tensors {
			all[t.Name] = t
		}
		cfg, err := all.inferDiffusersControlNet(base)
		if err != nil {
			return err
		}
		return cn.bind(cfg, len(all), func(n string) source { return source{name: n} }, all.find, all)
	}
	hasPrefix := false
	for _, t := range f.Tensors {
		hasPrefix = hasPrefix || strings.HasPrefix(t.Name, cldmPrefix+"input_hint_block.")
	}
	// The UNet inference below reads LDM UNet names: the ControlNet's tensors go under
	// that prefix, the others (a file of another kind) keep their names.
	ts := ldmTensors{}
	all := map[string]Tensor{}
	for _, t := range f.Tensors {
		name := t.Name
		if hasPrefix {
			rest, ok := strings.CutPrefix(name, cldmPrefix)
			if !ok {
				all[name] = t
				continue
			}
			name = rest
		}
		ts[ldmUNet+name] = t
		all[ldmUNet+name] = t
	}
	cfg, err := ts.inferControlNet(base)
	if err != nil {
		return err
	}
	if err := cn.bind(cfg, len(ts), cldmModules(cfg).resolver(ldmUNet), ts.find, all); err != nil {
		return err
	}
	for i, name := range cn.Unused {
		if rest, ok := strings.CutPrefix(name, ldmUNet); ok {
			cn.Unused[i] = cond(hasPrefix, cldmPrefix, "") + rest
		}
	}
	return nil
}

// cldmModules maps a ControlNet of config c to the original (cldm) names, as diffusers'
// converter reads them: the UNet encoder's LDM names, input_hint_block (convs at the even
// indices), zero_convs.i.0 and middle_block_out.0.
func cldmModules(c ControlNetConfig) moduleMap {
	m := unetModules(c.UNetConfig)
	m.add("controlnet_cond_embedding.conv_in", "input_hint_block.0", nil)
	hc := c.ConditioningEmbeddingOutChannels
	for j := range 2 * (len(hc) - 1) {
		m.add(fmt.Sprintf("controlnet_cond_embedding.blocks.%d", j), fmt.Sprintf("input_hint_block.%d", 2*j+2), nil)
	}
	m.add("controlnet_cond_embedding.conv_out", fmt.Sprintf("input_hint_block.%d", 4*len(hc)-2), nil)
	for i := range c.skipChannels() {
		m.add(fmt.Sprintf("controlnet_down_blocks.%d", i), fmt.Sprintf("zero_convs.%d.0", i), nil)
	}
	m.add("controlnet_mid_block", "middle_block_out.0", nil)
	return m
}

// SD15ControlNetConfig is lllyasviel's SD 1.5 ControlNets' (control_v11p_sd15_*, as
// diffusers' config.json of them): SD 1.5's UNet encoder and a hint embedding of 16, 32,
// 96 and 256 channels.
func SD15ControlNetConfig() ControlNetConfig {
	u := SD15UNetConfig()
	return ControlNetConfig{UNetConfig: u, ConditioningChannels: 3,
		ConditioningEmbeddingOutChannels: []int{16, 32, 96, 256}, ChannelOrder: "rgb"}
}

// WriteRandomControlNet writes a ControlNet of config c with random weights (as
// WriteRandom's) to path as an original single file: cldm names with the
// "control_model." prefix, the shapes diffusers' converter expects.
func WriteRandomControlNet(ctx context.Context, path string, c ControlNetConfig, dtype DType, seed uint64) error {
	if err := checkRandomDType(dtype); err != nil {
		return err
	}
	specs, err := c.TensorSpecs()
	if err != nil {
		return err
	}
	resolve := cldmModules(c).resolver(cldmPrefix)
	heads := randomHeads(specs, dtype)
	for i := range heads {
		heads[i].Name = resolve(heads[i].Name).name
	}
	return writeRandomTensors(ctx, path, heads, "controlnet", seed)
}

// inferControlNet reads a cldm ControlNet's config off its shapes (names under ldmUNet);
// what they do not tell comes from base or SD (see shapeless).
func (ts ldmTensors) inferControlNet(base *UNetConfig) (ControlNetConfig, error) {
	p := ldmUNet
	if !ts.hasPrefix(p + "input_hint_block.") {
		return ControlNetConfig{}, errors.New("no input_hint_block: not a ControlNet")
	}
	convIn, err := ts.shape(p+"input_blocks.0.0.weight", 4)
	if err != nil {
		return ControlNetConfig{}, err
	}
	temb, err := ts.shape(p+"time_embed.0.weight", 2)
	if err != nil {
		return ControlNetConfig{}, err
	}
	layout, err := ts.unetLayout()
	if err != nil {
		return ControlNetConfig{}, err
	}
	n := layout.layersPerBlock
	u := controlNetUNet(convIn, temb, ts.hasPrefix(p+"middle_block.1."))
	for l := range layout.levels {
		first := fmt.Sprintf("%sinput_blocks.%d.", p, 1+l*(n+1))
		out, err := ts.shape(first+"0.out_layers.3.weight", 4)
		if err != nil {
			return ControlNetConfig{}, err
		}
		u.BlockOutChannels = append(u.BlockOutChannels, int(out[0]))
		u.LayersPerBlock = append(u.LayersPerBlock, n)
		u.DownBlockTypes = append(u.DownBlockTypes, cond(ts.hasPrefix(first+"1.proj_in."), crossAttnDown, plainDown))
		u.TransformerLayersPerBlock = append(u.TransformerLayersPerBlock, max(len(ts.indices(first+"1.transformer_blocks.")), 1))
	}
	u.UpBlockTypes = mirrorUpBlocks(u.DownBlockTypes)
	if err := ts.attentionShapes(&u, p+"label_emb.0.0.weight"); err != nil {
		return ControlNetConfig{}, err
	}
	if err := u.shapeless(base); err != nil {
		return ControlNetConfig{}, err
	}

	// input_hint_block: convs at the even indices (SiLU between): conv_in, then pairs
	// (same width; stride 2 to the next width), conv_out.
	hint := ts.indices(p + "input_hint_block.")
	convs := 0
	for _, i := range hint {
		if ts.hasPrefix(fmt.Sprintf("%sinput_hint_block.%d.weight", p, i)) {
			convs++
		}
	}
	if convs < 2 || convs%2 != 0 {
		return ControlNetConfig{}, fmt.Errorf("input_hint_block has %d convolutions (want conv_in, pairs, conv_out)", convs)
	}
	hint0, err := ts.shape(p+"input_hint_block.0.weight", 4)
	if err != nil {
		return ControlNetConfig{}, err
	}
	c := ControlNetConfig{UNetConfig: u, ConditioningChannels: int(hint0[1]), ChannelOrder: "rgb",
		ConditioningEmbeddingOutChannels: []int{int(hint0[0])}}
	for i := range (convs - 2) / 2 {
		w, err := ts.shape(fmt.Sprintf("%sinput_hint_block.%d.weight", p, 4*i+4), 4)
		if err != nil {
			return ControlNetConfig{}, err
		}
		c.ConditioningEmbeddingOutChannels = append(c.ConditioningEmbeddingOutChannels, int(w[0]))
	}
	return c, nil
}

// controlNetUNet is the part of a ControlNet's UNet config that its conv_in and first time
// embedding layer tell (in and out channels, conv_in's kernel, the embedding width) and
// whether the mid block attends, with SD's norms and timestep embedding; the levels are
// the caller's to add.
func controlNetUNet(convIn, temb []int64, midAttention bool) UNetConfig {
	return UNetConfig{
		InChannels: int(convIn[1]), OutChannels: int(convIn[1]),
		ConvInKernel: int(convIn[2]), ConvOutKernel: 3,
		TimeEmbeddingDim: int(temb[0]),
		MidBlockType:     cond(midAttention, crossAttnMid, plainMid),
		NormNumGroups:    32, NormEps: 1e-5, FlipSinToCos: true, SampleSize: 64,
	}
}

// The hint embedding's first conv in diffusers' names, which marks a ControlNet file of them.
const diffusersHintConv = "controlnet_cond_embedding.conv_in"

// attentionShapes reads what any attention tells (the cross-attention width, linear or
// convolutional projections; the mid block may have none) and SDXL's added embedding from
// its first linear layer, addEmb, when present.
func (ts ldmTensors) attentionShapes(u *UNetConfig, addEmb string) error {
	for name, t := range ts {
		if strings.HasSuffix(name, ".transformer_blocks.0.attn2.to_k.weight") && len(t.Shape) == 2 {
			u.CrossAttentionDim = int(t.Shape[1])
		}
		if strings.HasSuffix(name, ".proj_in.weight") && len(t.Shape) == 2 {
			u.UseLinearProjection = true
		}
	}
	if _, ok := ts[addEmb]; ok {
		w, err := ts.shape(addEmb, 2)
		if err != nil {
			return err
		}
		u.AdditionEmbedType, u.ProjectionClassEmbeddingsInputDim = AdditionTextTime, int(w[1])
	}
	return nil
}

// shapeless sets what a ControlNet's shapes do not tell: the attention heads and, with
// SDXL's added embedding, the width each time id is embedded at. They are base's when
// the levels have base's widths (and the added embedding its inputs); else SD's: 8 heads
// per level with 1x1-conv projections (SD 1.x), 64-wide heads with linear ones (SD 2.x,
// SDXL), 256-wide time ids (SDXL).
func (u *UNetConfig) shapeless(base *UNetConfig) error {
	if base != nil && slices.Equal(base.BlockOutChannels, u.BlockOutChannels) && len(base.AttentionHeads) == len(u.BlockOutChannels) {
		u.AttentionHeads = slices.Clone(base.AttentionHeads)
		if u.AdditionEmbedType == base.AdditionEmbedType && u.ProjectionClassEmbeddingsInputDim == base.ProjectionClassEmbeddingsInputDim {
			u.AdditionTimeEmbedDim = base.AdditionTimeEmbedDim
		}
	}
	if u.AdditionEmbedType == AdditionTextTime && u.AdditionTimeEmbedDim == 0 {
		u.AdditionTimeEmbedDim = 256
	}
	if u.AttentionHeads != nil {
		return nil
	}
	for _, ch := range u.BlockOutChannels {
		switch {
		case !u.UseLinearProjection:
			u.AttentionHeads = append(u.AttentionHeads, 8)
		case ch%64 == 0:
			u.AttentionHeads = append(u.AttentionHeads, ch/64)
		default:
			return unsupportedf("%d channels are not a multiple of SD 2.x's 64-wide heads", ch)
		}
	}
	return nil
}

// inferDiffusersControlNet reads the config of a ControlNet stored with diffusers' names
// in one file off its shapes; what they do not tell comes from base or SD (see shapeless).
func (ts ldmTensors) inferDiffusersControlNet(base *UNetConfig) (ControlNetConfig, error) {
	convIn, err := ts.shape("conv_in.weight", 4)
	if err != nil {
		return ControlNetConfig{}, err
	}
	temb, err := ts.shape("time_embedding.linear_1.weight", 2)
	if err != nil {
		return ControlNetConfig{}, err
	}
	levels := ts.indices("down_blocks.")
	if len(levels) == 0 || levels[len(levels)-1] != len(levels)-1 {
		return ControlNetConfig{}, fmt.Errorf("down_blocks %v are not numbered 0..n-1", levels)
	}
	u := controlNetUNet(convIn, temb, ts.hasPrefix("mid_block.attentions.0."))
	for l := range levels {
		b := fmt.Sprintf("down_blocks.%d.", l)
		conv1, err := ts.shape(b+"resnets.0.conv1.weight", 4)
		if err != nil {
			return ControlNetConfig{}, err
		}
		attn := ts.hasPrefix(b + "attentions.0.")
		u.BlockOutChannels = append(u.BlockOutChannels, int(conv1[0]))
		u.LayersPerBlock = append(u.LayersPerBlock, len(ts.indices(b+"resnets.")))
		u.DownBlockTypes = append(u.DownBlockTypes, cond(attn, crossAttnDown, plainDown))
		u.TransformerLayersPerBlock = append(u.TransformerLayersPerBlock, max(len(ts.indices(b+"attentions.0.transformer_blocks.")), 1))
	}
	u.UpBlockTypes = mirrorUpBlocks(u.DownBlockTypes)
	if err := ts.attentionShapes(&u, "add_embedding.linear_1.weight"); err != nil {
		return ControlNetConfig{}, err
	}
	if err := u.shapeless(base); err != nil {
		return ControlNetConfig{}, err
	}
	// The hint embedding: conv_in, pairs of convs (the second of each to the next
	// width, stride 2), conv_out.
	hint0, err := ts.shape(diffusersHintConv+".weight", 4)
	if err != nil {
		return ControlNetConfig{}, err
	}
	c := ControlNetConfig{UNetConfig: u, ConditioningChannels: int(hint0[1]), ChannelOrder: "rgb",
		ConditioningEmbeddingOutChannels: []int{int(hint0[0])}}
	blocks := ts.indices("controlnet_cond_embedding.blocks.")
	if len(blocks)%2 != 0 || (len(blocks) > 0 && blocks[len(blocks)-1] != len(blocks)-1) {
		return ControlNetConfig{}, fmt.Errorf("controlnet_cond_embedding.blocks %v are not pairs numbered 0..n-1", blocks)
	}
	for i := 1; i < len(blocks); i += 2 {
		w, err := ts.shape(fmt.Sprintf("controlnet_cond_embedding.blocks.%d.weight", i), 4)
		if err != nil {
			return ControlNetConfig{}, err
		}
		c.ConditioningEmbeddingOutChannels = append(c.ConditioningEmbeddingOutChannels, int(w[0]))
	}
	return c, nil
}

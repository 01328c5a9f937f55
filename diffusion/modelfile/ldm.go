package modelfile

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/gosd/gosd/diffusion/schedule"
)

// Original (CompVis/LDM) single-file checkpoints keep all three networks in
// one state dict under these prefixes. The UNet and VAE use LDM's module
// names; the text encoder is either Hugging Face's CLIPTextModel (SD 1.x,
// and SD 2.x files re-saved by diffusers' conversion) or OpenCLIP's text
// tower (original SD 2.x files).
const (
	ldmUNet     = "model.diffusion_model."
	ldmVAE      = "first_stage_model."
	ldmHFCLIP   = "cond_stage_model.transformer."
	ldmOpenCLIP = "cond_stage_model.model."
)

// ldmTensors is the state dict of a single-file checkpoint.
type ldmTensors map[string]Tensor

func (ts ldmTensors) find(name string) (Tensor, bool) {
	t, ok := ts[name]
	return t, ok
}

// shape returns the shape of a tensor needed for inference, which must
// have the given rank.
func (ts ldmTensors) shape(name string, rank int) ([]int64, error) {
	t, ok := ts[name]
	if !ok {
		return nil, fmt.Errorf("tensor %s is missing", name)
	}
	if len(t.Shape) != rank {
		return nil, fmt.Errorf("tensor %s has shape %v, want rank %d", name, t.Shape, rank)
	}
	return t.Shape, nil
}

// indices returns, sorted, the numbers N of tensors named prefix+"N."+...
func (ts ldmTensors) indices(prefix string) []int {
	seen := map[int]bool{}
	for name := range ts {
		rest, ok := strings.CutPrefix(name, prefix)
		if !ok {
			continue
		}
		num, _, ok := strings.Cut(rest, ".")
		if n, err := strconv.Atoi(num); ok && err == nil && n >= 0 {
			seen[n] = true
		}
	}
	out := make([]int, 0, len(seen))
	for n := range seen {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// layerCount returns the number of layers numbered under prefix, which must
// be 0..n-1: a gap is a layer missing from the file, which a count of the
// indices would silently skip.
func (ts ldmTensors) layerCount(prefix string) (int, error) {
	idx := ts.indices(prefix)
	for i, n := range idx {
		if n != i {
			return 0, fmt.Errorf("layer %s%d.* is missing (the file has layers up to %d)", prefix, i, idx[len(idx)-1])
		}
	}
	return len(idx), nil
}

func (ts ldmTensors) hasPrefix(prefix string) bool {
	for name := range ts {
		if strings.HasPrefix(name, prefix) {
			return true
		}
	}
	return false
}

// detectLDMFamily tells SD 1.x from SD 2.x by structure, not width (the
// conformance models are tiny): an OpenCLIP text tower or linear
// transformer projections mean SD 2.x.
func (ts ldmTensors) detectFamily() (Family, error) {
	switch {
	case ts.hasPrefix(sgmEmbedders):
		return ts.detectSGMFamily()
	case ts.hasPrefix(ldmUNet+"label_emb.") && !ts.isX4Upscaler():
		return 0, unsupportedf("a class-conditioned UNet (label_emb: SDXL or unCLIP) is not supported")
	case !ts.hasPrefix(ldmUNet + "input_blocks.0.0."):
		return 0, unsupportedf("no %sinput_blocks.*: not a Stable Diffusion 1.x/2.x single-file checkpoint", ldmUNet)
	case ts.hasPrefix(ldmOpenCLIP):
		return FamilySD2, nil
	}
	if t, ok := ts[ldmUNet+"middle_block.1.proj_in.weight"]; ok && len(t.Shape) == 2 {
		return FamilySD2, nil
	}
	return FamilySD1, nil
}

// ldmUNetLayout is the LDM UNet's block numbering: input_blocks and
// output_blocks are flat sequences that diffusers groups into levels.
type ldmUNetLayout struct {
	levels         int
	layersPerBlock int
}

// inferUNet reads the UNet config off the tensor shapes. What shapes do
// not tell comes from the family: SD 1.x has 8 heads per level, SD 2.x
// 64-wide heads; norm groups 32, eps 1e-5, cos-first timestep embedding.
func (ts ldmTensors) inferUNet(family Family, pred schedule.PredictionType, heads []int) (UNetConfig, error) {
	p := ldmUNet
	convIn, err := ts.shape(p+"input_blocks.0.0.weight", 4)
	if err != nil {
		return UNetConfig{}, err
	}
	convOut, err := ts.shape(p+"out.2.weight", 4)
	if err != nil {
		return UNetConfig{}, err
	}
	temb, err := ts.shape(p+"time_embed.0.weight", 2)
	if err != nil {
		return UNetConfig{}, err
	}
	layout, err := ts.unetLayout()
	if err != nil {
		return UNetConfig{}, err
	}
	n := layout.layersPerBlock
	c := UNetConfig{
		InChannels: int(convIn[1]), OutChannels: int(convOut[0]),
		ConvInKernel: int(convIn[2]), ConvOutKernel: int(convOut[2]),
		TimeEmbeddingDim: int(temb[0]),
		MidBlockType:     crossAttnMid,
		NormNumGroups:    32, NormEps: 1e-5, FlipSinToCos: true,
		SampleSize: 64,
	}
	for l := range layout.levels {
		first := fmt.Sprintf("%sinput_blocks.%d.", p, 1+l*(n+1))
		out, err := ts.shape(first+"0.out_layers.3.weight", 4)
		if err != nil {
			return UNetConfig{}, err
		}
		c.BlockOutChannels = append(c.BlockOutChannels, int(out[0]))
		c.LayersPerBlock = append(c.LayersPerBlock, n)
		c.DownBlockTypes = append(c.DownBlockTypes, cond(ts.hasPrefix(first+"1.proj_in."), crossAttnDown, plainDown))
		c.TransformerLayersPerBlock = append(c.TransformerLayersPerBlock, max(len(ts.indices(first+"1.transformer_blocks.")), 1))
		up := fmt.Sprintf("%soutput_blocks.%d.1.proj_in.", p, l*(n+1))
		c.UpBlockTypes = append(c.UpBlockTypes, cond(ts.hasPrefix(up), crossAttnUp, plainUp))
	}
	if convIn[0] != int64(c.BlockOutChannels[0]) {
		// conv_in is mis-shaped (transposed, say), so its second dimension is
		// no channel count: expect the latent width the UNet puts out, for
		// bind to report the tensor against the shape it should have.
		c.InChannels = c.OutChannels
	}
	toK, err := ts.shape(p+"middle_block.1.transformer_blocks.0.attn2.to_k.weight", 2)
	if err != nil {
		return UNetConfig{}, fmt.Errorf("mid block attention: %w", err)
	}
	c.CrossAttentionDim = int(toK[1])
	c.UseLinearProjection = len(ts[p+"middle_block.1.proj_in.weight"].Shape) == 2

	if family == FamilySD2 && pred == schedule.PredictV {
		c.SampleSize = 96 // the 768 px v-prediction models
	}
	switch {
	case heads != nil:
		c.AttentionHeads = slices.Clone(heads)
	case family == FamilySD1:
		c.AttentionHeads = slices.Repeat([]int{8}, layout.levels)
	default:
		for _, ch := range c.BlockOutChannels {
			if ch%64 != 0 {
				return UNetConfig{}, unsupportedf("%d channels are not a multiple of SD 2.x's 64-wide heads: give the head counts with WithUNetHeads", ch)
			}
			c.AttentionHeads = append(c.AttentionHeads, ch/64)
		}
	}
	return c, nil
}

// unetLayout finds the levels and ResNets per level from the positions of
// the downsamplers among input_blocks: with L levels of n ResNets, block 0
// is conv_in, level l holds blocks 1+l(n+1) … l(n+1)+n and (except the
// last level) a downsampler at (l+1)(n+1).
func (ts ldmTensors) unetLayout() (ldmUNetLayout, error) {
	blocks := ts.indices(ldmUNet + "input_blocks.")
	if len(blocks) == 0 {
		return ldmUNetLayout{}, errors.New("no input_blocks")
	}
	var downs []int
	for _, b := range blocks {
		if ts.hasPrefix(fmt.Sprintf("%sinput_blocks.%d.0.op.", ldmUNet, b)) {
			downs = append(downs, b)
		}
	}
	last := blocks[len(blocks)-1]
	l := ldmUNetLayout{levels: len(downs) + 1, layersPerBlock: last}
	if len(downs) > 0 {
		l.layersPerBlock = downs[0] - 1
	}
	ok := l.layersPerBlock > 0 && last == l.levels*(l.layersPerBlock+1)-1 && len(blocks) == last+1
	for k, d := range downs {
		ok = ok && d == (k+1)*(l.layersPerBlock+1)
	}
	if !ok {
		return l, fmt.Errorf("input_blocks 0..%d with downsamplers at %v do not form levels of equal depth", last, downs)
	}
	return l, nil
}

// moduleMap renames diffusers module paths to checkpoint ones.
type moduleMap map[string]moduleRename

// moduleRename is a module's checkpoint path; inner renames the leading
// part of what follows it.
type moduleRename struct {
	to    string
	inner map[string]string
}

func (m moduleMap) add(from, to string, inner map[string]string) {
	m[from] = moduleRename{to, inner}
}

// resolver returns the source of a diffusers tensor name: the longest
// module prefix found in the map is renamed, then its inner renames apply;
// names under no module get prefix added only.
func (m moduleMap) resolver(prefix string) func(string) source {
	return func(name string) source {
		for i := len(name) - 1; i > 0; i-- {
			if name[i] != '.' {
				continue
			}
			mod, ok := m[name[:i]]
			if !ok {
				continue
			}
			rest := name[i+1:]
			for from, to := range mod.inner {
				if r, ok := strings.CutPrefix(rest, from); ok {
					rest = to + r
					break
				}
			}
			return source{name: prefix + mod.to + "." + rest}
		}
		return source{name: prefix + name}
	}
}

// ResNet sublayers: diffusers ResnetBlock2D → LDM ResBlock (UNet).
var unetResnetInner = map[string]string{
	"norm1.": "in_layers.0.", "conv1.": "in_layers.2.", "time_emb_proj.": "emb_layers.1.",
	"norm2.": "out_layers.0.", "conv2.": "out_layers.3.", "conv_shortcut.": "skip_connection.",
}

// unetModules maps the UNet of config c (whose layout inferUNet or a
// diffusers config fixed) to LDM names.
func unetModules(c UNetConfig) moduleMap {
	m := moduleMap{}
	add := m.add
	add("conv_in", "input_blocks.0.0", nil)
	add("time_embedding.linear_1", "time_embed.0", nil)
	add("time_embedding.linear_2", "time_embed.2", nil)
	add("add_embedding.linear_1", "label_emb.0.0", nil) // SDXL's text_time embedding
	add("add_embedding.linear_2", "label_emb.0.2", nil)
	add("conv_norm_out", "out.0", nil)
	add("conv_out", "out.2", nil)
	if c.ClassEmbedType == ClassTable {
		add("class_embedding", "label_emb", nil) // the x4 upscaler's noise-level table
	}
	add("mid_block.resnets.0", "middle_block.0", unetResnetInner)
	add("mid_block.attentions.0", "middle_block.1", nil)
	add("mid_block.resnets.1", "middle_block.2", unetResnetInner)
	levels := len(c.BlockOutChannels)
	idx := 1
	for l := range levels {
		for j := range c.LayersPerBlock[l] {
			add(fmt.Sprintf("down_blocks.%d.resnets.%d", l, j), fmt.Sprintf("input_blocks.%d.0", idx), unetResnetInner)
			add(fmt.Sprintf("down_blocks.%d.attentions.%d", l, j), fmt.Sprintf("input_blocks.%d.1", idx), nil)
			idx++
		}
		if l < levels-1 {
			add(fmt.Sprintf("down_blocks.%d.downsamplers.0.conv", l), fmt.Sprintf("input_blocks.%d.0.op", idx), nil)
			idx++
		}
	}
	idx = 0
	for i := range levels {
		n := c.LayersPerBlock[levels-1-i] + 1
		for j := range n {
			add(fmt.Sprintf("up_blocks.%d.resnets.%d", i, j), fmt.Sprintf("output_blocks.%d.0", idx), unetResnetInner)
			add(fmt.Sprintf("up_blocks.%d.attentions.%d", i, j), fmt.Sprintf("output_blocks.%d.1", idx), nil)
			if j == n-1 && i < levels-1 {
				add(fmt.Sprintf("up_blocks.%d.upsamplers.0.conv", i), fmt.Sprintf("output_blocks.%d.%d.conv", idx, cond(c.UpBlockTypes[i] == crossAttnUp, 2, 1)), nil)
			}
			idx++
		}
	}
	return m
}

// inferVAE reads the autoencoder config off the tensor shapes; the rest
// is SD's: 32 norm groups, latents scaled by 0.18215.
func (ts ldmTensors) inferVAE() (VAEConfig, error) {
	p := ldmVAE
	convIn, err := ts.shape(p+"encoder.conv_in.weight", 4)
	if err != nil {
		return VAEConfig{}, err
	}
	postIn, err := ts.shape(p+"decoder.conv_in.weight", 4)
	if err != nil {
		return VAEConfig{}, err
	}
	convOut, err := ts.shape(p+"decoder.conv_out.weight", 4)
	if err != nil {
		return VAEConfig{}, err
	}
	c := SD15VAEConfig()
	c.InChannels, c.OutChannels, c.LatentChannels = int(convIn[1]), int(convOut[0]), int(postIn[1])
	c.LayersPerBlock = len(ts.indices(p + "encoder.down.0.block."))
	levels := len(ts.indices(p + "encoder.down."))
	c.BlockOutChannels, c.DownBlockTypes, c.UpBlockTypes = nil, nil, nil
	for i := range levels {
		out, err := ts.shape(fmt.Sprintf("%sencoder.down.%d.block.0.conv1.weight", p, i), 4)
		if err != nil {
			return VAEConfig{}, err
		}
		c.BlockOutChannels = append(c.BlockOutChannels, int(out[0]))
		c.DownBlockTypes = append(c.DownBlockTypes, vaeDown)
		c.UpBlockTypes = append(c.UpBlockTypes, vaeUp)
	}
	_, c.UseQuantConv = ts[p+"quant_conv.weight"]
	_, c.UsePostQuantConv = ts[p+"post_quant_conv.weight"]
	c.MidBlockAddAttention = ts.hasPrefix(p + "encoder.mid.attn_1.")
	return c, nil
}

var vaeResnetInner = map[string]string{"conv_shortcut.": "nin_shortcut."}

// vaeModules maps the AutoencoderKL of config c to LDM names; the LDM
// decoder numbers its levels from the bottom, diffusers from the top.
func vaeModules(c VAEConfig) moduleMap {
	m := moduleMap{}
	add := m.add
	attnInner := map[string]string{"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}
	levels := len(c.BlockOutChannels)
	for _, part := range []string{"encoder", "decoder"} {
		add(part+".conv_norm_out", part+".norm_out", nil)
		add(part+".mid_block.resnets.0", part+".mid.block_1", vaeResnetInner)
		add(part+".mid_block.resnets.1", part+".mid.block_2", vaeResnetInner)
		add(part+".mid_block.attentions.0", part+".mid.attn_1", attnInner)
	}
	for i := range levels {
		for j := range c.LayersPerBlock {
			add(fmt.Sprintf("encoder.down_blocks.%d.resnets.%d", i, j), fmt.Sprintf("encoder.down.%d.block.%d", i, j), vaeResnetInner)
		}
		for j := range c.LayersPerBlock + 1 {
			add(fmt.Sprintf("decoder.up_blocks.%d.resnets.%d", i, j), fmt.Sprintf("decoder.up.%d.block.%d", levels-1-i, j), vaeResnetInner)
		}
		if i < levels-1 {
			add(fmt.Sprintf("encoder.down_blocks.%d.downsamplers.0.conv", i), fmt.Sprintf("encoder.down.%d.downsample.conv", i), nil)
			add(fmt.Sprintf("decoder.up_blocks.%d.upsamplers.0.conv", i), fmt.Sprintf("decoder.up.%d.upsample.conv", levels-1-i), nil)
		}
	}
	return m
}

// inferText reads the text encoder config and returns how to find its
// tensors. For the OpenCLIP layout the last residual block is dropped:
// SD 2.x conditions on the penultimate layer followed by ln_final, which
// is exactly a CLIPTextModel of one layer fewer.
func (ts ldmTensors) inferText(family Family, heads int) (CLIPConfig, func(string) source, error) {
	c := SD15TextEncoderConfig()
	if family == FamilySD2 {
		c = SD21TextEncoderConfig()
	}
	if ts.hasPrefix(ldmOpenCLIP) {
		c, resolve, err := ts.inferOpenCLIP(c, ldmOpenCLIP, heads)
		c.NumHiddenLayers--
		return c, resolve, err
	}
	return ts.inferHFCLIP(c, ldmHFCLIP, heads)
}

// inferHFCLIP reads the sizes of a Hugging Face CLIPTextModel saved under prefix
// into c (which supplies what shapes do not tell).
func (ts ldmTensors) inferHFCLIP(c CLIPConfig, prefix string, heads int) (CLIPConfig, func(string) source, error) {
	p := prefix + "text_model."
	if !ts.hasPrefix(p) {
		p = prefix // saved by transformers releases without the text_model level
	}
	tok, err := ts.shape(p+"embeddings.token_embedding.weight", 2)
	if err != nil {
		return c, nil, err
	}
	pos, err := ts.shape(p+"embeddings.position_embedding.weight", 2)
	if err != nil {
		return c, nil, err
	}
	fc1, err := ts.shape(p+"encoder.layers.0.mlp.fc1.weight", 2)
	if err != nil {
		return c, nil, err
	}
	if c.NumHiddenLayers, err = ts.layerCount(p + "encoder.layers."); err != nil {
		return c, nil, err
	}
	resolve := func(name string) source { return source{name: p + strings.TrimPrefix(name, "text_model.")} }
	c, err = withTextSizes(c, tok, pos, fc1, heads)
	return c, resolve, err
}

// inferOpenCLIP reads the sizes of an OpenCLIP text tower saved under prefix into c,
// with every residual block as a layer; its text_projection, when the file has one,
// sets ProjectionDim.
func (ts ldmTensors) inferOpenCLIP(c CLIPConfig, prefix string, heads int) (CLIPConfig, func(string) source, error) {
	tok, err := ts.shape(prefix+"token_embedding.weight", 2)
	if err != nil {
		return c, nil, err
	}
	pos, err := ts.shape(prefix+"positional_embedding", 2)
	if err != nil {
		return c, nil, err
	}
	fc1, err := ts.shape(prefix+"transformer.resblocks.0.mlp.c_fc.weight", 2)
	if err != nil {
		return c, nil, err
	}
	if c.NumHiddenLayers, err = ts.layerCount(prefix + "transformer.resblocks."); err != nil {
		return c, nil, err
	}
	if proj, err := ts.shape(prefix+"text_projection", 2); err == nil {
		c.ProjectionDim = int(proj[1])
	}
	c, err = withTextSizes(c, tok, pos, fc1, heads)
	return c, openCLIPSource(prefix), err
}

// withTextSizes sets the sizes read off the token and position embeddings and the first
// MLP, and the head count: given, or CLIP's 64-wide heads.
func withTextSizes(c CLIPConfig, tok, pos, fc1 []int64, heads int) (CLIPConfig, error) {
	c.VocabSize, c.HiddenSize, c.MaxPositionEmbeddings, c.IntermediateSize = int(tok[0]), int(tok[1]), int(pos[0]), int(fc1[0])
	switch {
	case heads > 0:
		c.NumAttentionHeads = heads
	case c.HiddenSize%64 == 0:
		c.NumAttentionHeads = c.HiddenSize / 64 // CLIP ViT-L, OpenCLIP ViT-H and ViT-bigG text towers
	default:
		return c, unsupportedf("text width %d is not a multiple of CLIP's 64-wide heads: give the head count with WithTextHeads (sdcli: --text-heads N)", c.HiddenSize)
	}
	return c, nil
}

// textDepth is the depth of the text encoders real SD single files hold, by
// layout and width: CLIP ViT-L/14 (SD 1.x); OpenCLIP ViT-H/14 (SD 2.x) with
// all 24 residual blocks, or as diffusers' conversion saves it, in 23
// CLIPTextModel layers without the last one SD 2.x skips.
// SDXL's second encoder is OpenCLIP ViT-bigG/14's 32 residual blocks.
var textDepth = map[textLayout]int{{openCLIP: false, width: 768}: 12, {openCLIP: false, width: 1024}: 23, {openCLIP: true, width: 1024}: 24, {openCLIP: true, width: 1280}: 32}

type textLayout struct {
	openCLIP bool
	width    int
}

// checkTextDepth compares the text encoder c found in the file with the
// standard one of its width. A standard-width encoder of another depth lost
// (or gained) layers and is refused: loading it would condition on the
// wrong layer without a word. Other widths are not SD's own encoders (the
// tiny test models), which load with the warning returned.
func (ts ldmTensors) checkTextDepth(c CLIPConfig) (warning string, err error) {
	layout := textLayout{openCLIP: ts.hasPrefix(ldmOpenCLIP), width: c.HiddenSize}
	depth := c.NumHiddenLayers
	if layout.openCLIP {
		depth++ // with the one SD 2.x skips
	}
	return checkDepth("text_encoder", layout, depth)
}

// checkDepth compares a text encoder's depth (layers, or OpenCLIP's residual blocks) with
// the standard one of its layout and width.
func checkDepth(name string, layout textLayout, depth int) (warning string, err error) {
	unit := cond(layout.openCLIP, "residual blocks", "layers")
	want, standard := textDepth[layout]
	switch {
	case !standard:
		return fmt.Sprintf("%s: %d %s of width %d are not a text encoder of SD 1.x, 2.x or SDXL (a test model?); loaded as found", name, depth, unit, layout.width), nil
	case depth != want:
		return "", fmt.Errorf("%d %s of width %d, but the SD text encoder of that width has %d: the checkpoint is truncated or altered", depth, unit, layout.width, want)
	}
	return "", nil
}

// openCLIPSource maps CLIPTextModel names to OpenCLIP's under prefix p, splitting the
// fused q/k/v projection of each residual block into row thirds; text_projection is
// stored as the matrix the pooled output is multiplied by, the Linear weight transposed.
func openCLIPSource(p string) func(string) source {
	return func(name string) source {
		switch name {
		case "text_model.embeddings.token_embedding.weight":
			return source{name: p + "token_embedding.weight"}
		case "text_model.embeddings.position_embedding.weight":
			return source{name: p + "positional_embedding"}
		case "text_projection.weight":
			return source{name: p + "text_projection", transpose: true}
		}
		if rest, ok := strings.CutPrefix(name, "text_model.final_layer_norm."); ok {
			return source{name: p + "ln_final." + rest}
		}
		rest, ok := strings.CutPrefix(name, "text_model.encoder.layers.")
		if !ok {
			return source{name: p + name}
		}
		layer, rest, _ := strings.Cut(rest, ".")
		block := p + "transformer.resblocks." + layer + "."
		for i, qkv := range []string{"self_attn.q_proj.", "self_attn.k_proj.", "self_attn.v_proj."} {
			if param, ok := strings.CutPrefix(rest, qkv); ok {
				return source{name: block + "attn.in_proj_" + param, part: i, parts: 3}
			}
		}
		for from, to := range map[string]string{
			"layer_norm1.": "ln_1.", "layer_norm2.": "ln_2.", "self_attn.out_proj.": "attn.out_proj.",
			"mlp.fc1.": "mlp.c_fc.", "mlp.fc2.": "mlp.c_proj.",
		} {
			if param, ok := strings.CutPrefix(rest, from); ok {
				return source{name: block + to + param}
			}
		}
		return source{name: block + rest}
	}
}

// LDMNames returns the original (LDM / SGM) checkpoint name, without the
// "model.diffusion_model." prefix, of a diffusers UNet tensor or module path
// for a UNet of config c: "down_blocks.1.attentions.0.proj_in" reads
// "input_blocks.4.1.proj_in". Adapters trained on single files (kohya's SDXL
// LoRAs) name their modules this way. The module map is built once, for all
// the names asked of the function.
func (c UNetConfig) LDMNames() func(name string) string {
	resolve := unetModules(c).resolver("")
	return func(name string) string { return strings.TrimSuffix(resolve(name+".").name, ".") }
}

package modelfile

import (
	"fmt"
	"slices"
	"strings"

	"github.com/gosd/gosd/internal/sderr"
)

// TensorSpec is one tensor a network needs: its diffusers name and shape.
type TensorSpec struct {
	Name  string
	Shape []int64
}

// specList accumulates specs in module order.
type specList []TensorSpec

func (s *specList) add(name string, shape ...int) {
	dims := make([]int64, len(shape))
	for i, d := range shape {
		dims[i] = int64(d)
	}
	*s = append(*s, TensorSpec{Name: name, Shape: dims})
}

// linear adds a Linear layer's weight [out, in] and optionally its bias.
func (s *specList) linear(name string, out, in int, bias bool) {
	s.add(name+".weight", out, in)
	if bias {
		s.add(name+".bias", out)
	}
}

// conv adds a Conv2d's weight [out, in, k, k] and bias.
func (s *specList) conv(name string, out, in, k int) {
	s.add(name+".weight", out, in, k, k)
	s.add(name+".bias", out)
}

// norm adds a GroupNorm's or LayerNorm's affine weight and bias.
func (s *specList) norm(name string, ch int) {
	s.add(name+".weight", ch)
	s.add(name+".bias", ch)
}

// resnet adds a diffusers ResnetBlock2D; temb 0 means no time embedding
// (the VAE's).
func (s *specList) resnet(name string, in, out, temb int) {
	s.norm(name+".norm1", in)
	s.conv(name+".conv1", out, in, 3)
	if temb > 0 {
		s.linear(name+".time_emb_proj", out, temb, true)
	}
	s.norm(name+".norm2", out)
	s.conv(name+".conv2", out, out, 3)
	if in != out {
		s.conv(name+".conv_shortcut", out, in, 1)
	}
}

// transformer adds a Transformer2DModel over ch channels: GroupNorm,
// proj_in, layers BasicTransformerBlocks (self attention, cross attention
// to context-wide embeddings, GEGLU feed-forward of 4ch), proj_out.
// onlyCross: attn1 attends to the context too, so its to_k / to_v take it.
func (s *specList) transformer(name string, ch, layers, context int, linearProj, onlyCross bool) {
	proj := func(p string) {
		if linearProj {
			s.linear(p, ch, ch, true)
		} else {
			s.conv(p, ch, ch, 1)
		}
	}
	s.norm(name+".norm", ch)
	proj(name + ".proj_in")
	for k := range layers {
		b := fmt.Sprintf("%s.transformer_blocks.%d", name, k)
		for _, attn := range []struct {
			name    string
			context int
		}{{"attn1", cond(onlyCross, context, ch)}, {"attn2", context}} {
			s.linear(b+"."+attn.name+".to_q", ch, ch, false)
			s.linear(b+"."+attn.name+".to_k", ch, attn.context, false)
			s.linear(b+"."+attn.name+".to_v", ch, attn.context, false)
			s.linear(b+"."+attn.name+".to_out.0", ch, ch, true)
		}
		s.norm(b+".norm1", ch)
		s.norm(b+".norm2", ch)
		s.norm(b+".norm3", ch)
		s.linear(b+".ff.net.0.proj", 8*ch, ch, true) // GEGLU: value and gate
		s.linear(b+".ff.net.2", ch, 4*ch, true)
	}
	proj(name + ".proj_out")
}

// TensorSpecs lists every tensor of the UNet in diffusers'
// UNet2DConditionModel naming.
func (c UNetConfig) TensorSpecs() ([]TensorSpec, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	var s specList
	levels := len(c.BlockOutChannels)
	ch0, temb := c.BlockOutChannels[0], c.TimeEmbeddingDim
	s.conv("conv_in", ch0, c.InChannels, c.ConvInKernel)
	s.linear("time_embedding.linear_1", temb, ch0, true)
	s.linear("time_embedding.linear_2", temb, temb, true)
	switch c.ClassEmbedType {
	case ClassTable:
		s.add("class_embedding.weight", c.NumClassEmbeds, temb)
	case ClassTimestep:
		s.linear("class_embedding.linear_1", temb, ch0, true)
		s.linear("class_embedding.linear_2", temb, temb, true)
	}
	if c.AdditionEmbedType == AdditionTextTime {
		s.linear("add_embedding.linear_1", temb, c.ProjectionClassEmbeddingsInputDim, true)
		s.linear("add_embedding.linear_2", temb, temb, true)
	}
	onlyCross := func(level int) bool { return c.OnlyCrossAttention != nil && c.OnlyCrossAttention[level] }

	out := ch0
	for i := range levels {
		in := out
		out = c.BlockOutChannels[i]
		for j := range c.LayersPerBlock[i] {
			p := fmt.Sprintf("down_blocks.%d", i)
			s.resnet(fmt.Sprintf("%s.resnets.%d", p, j), cond(j == 0, in, out), out, temb)
			if c.DownBlockTypes[i] == crossAttnDown {
				s.transformer(fmt.Sprintf("%s.attentions.%d", p, j), out, c.TransformerLayersPerBlock[i], c.CrossAttentionDim, c.UseLinearProjection, onlyCross(i))
			}
		}
		if i < levels-1 {
			s.conv(fmt.Sprintf("down_blocks.%d.downsamplers.0.conv", i), out, out, 3)
		}
	}

	last := c.BlockOutChannels[levels-1]
	s.resnet("mid_block.resnets.0", last, last, temb)
	if c.MidBlockType == crossAttnMid { // UNetMidBlock2D: the one ResNet
		s.transformer("mid_block.attentions.0", last, c.TransformerLayersPerBlock[levels-1], c.CrossAttentionDim, c.UseLinearProjection, false)
		s.resnet("mid_block.resnets.1", last, last, temb)
	}

	// Up level i mirrors down level lvl; its ResNets take the previous
	// level's output (first) or their own (others) plus a skip connection
	// from the down path, the last one from the level below.
	prev := last
	for i := range levels {
		lvl := levels - 1 - i
		out, skipIn := c.BlockOutChannels[lvl], c.BlockOutChannels[max(lvl-1, 0)]
		n := c.LayersPerBlock[lvl] + 1
		for j := range n {
			p := fmt.Sprintf("up_blocks.%d", i)
			s.resnet(fmt.Sprintf("%s.resnets.%d", p, j), cond(j == 0, prev, out)+cond(j == n-1, skipIn, out), out, temb)
			if c.UpBlockTypes[i] == crossAttnUp {
				s.transformer(fmt.Sprintf("%s.attentions.%d", p, j), out, c.TransformerLayersPerBlock[lvl], c.CrossAttentionDim, c.UseLinearProjection, onlyCross(lvl))
			}
		}
		if i < levels-1 {
			s.conv(fmt.Sprintf("up_blocks.%d.upsamplers.0.conv", i), out, out, 3)
		}
		prev = out
	}
	s.norm("conv_norm_out", ch0)
	s.conv("conv_out", c.OutChannels, ch0, c.ConvOutKernel)
	return s, nil
}

// blockBudget counts the blocks a config implies against the tensors of the
// weights. Every ResNet, transformer block and text layer has tensors of its
// own, so a config counting more blocks than the weights hold tensors cannot
// match them; fitsIn refuses it before TensorSpecs lists every block, which
// for a config.json giving 10⁹ layers would exhaust memory first.
type blockBudget struct{ left int }

// take spends n blocks of k each (n, k >= 0) and reports whether the
// tensors still suffice; once they do not, it stays false.
func (b *blockBudget) take(n, k int) bool {
	if b.left < 0 || (k > 0 && n > b.left/k) {
		b.left = -1
		return false
	}
	b.left -= n * k
	return true
}

// fitsIn checks the UNet's block counts against the weights' tensor count;
// the config must be valid.
func (c UNetConfig) fitsIn(tensors int) error {
	b := blockBudget{left: tensors}
	levels := len(c.BlockOutChannels)
	ok := b.take(2, 1) && b.take(c.TransformerLayersPerBlock[levels-1], 1) // the mid block
	for i := range levels {
		// Down level i and the up level mirroring it, which has one ResNet more.
		n, blocks := c.LayersPerBlock[i], c.TransformerLayersPerBlock[i]
		ok = ok && b.take(n, 1) && b.take(n+1, 1)
		if c.DownBlockTypes[i] == crossAttnDown {
			ok = ok && b.take(n, blocks)
		}
		if c.UpBlockTypes[levels-1-i] == crossAttnUp {
			ok = ok && b.take(n+1, blocks)
		}
	}
	if !ok {
		return badModelf("unet config: layers_per_block %v and transformer_layers_per_block %v count more ResNets and transformer blocks than the weights hold tensors (%d)",
			c.LayersPerBlock, c.TransformerLayersPerBlock, tensors)
	}
	return nil
}

// fitsIn checks the autoencoder's ResNet count against the weights' tensor
// count; the config must be valid.
func (c VAEConfig) fitsIn(tensors int) error {
	b := blockBudget{left: tensors}
	// Per level, the encoder's ResNets and the decoder's one more; two
	// mid-block ResNets in each.
	if !b.take(c.LayersPerBlock, 1) || !b.take(len(c.BlockOutChannels), 2*c.LayersPerBlock+1) || !b.take(4, 1) {
		return badModelf("vae config: %d levels of layers_per_block %d count more ResNets than the weights hold tensors (%d)", len(c.BlockOutChannels), c.LayersPerBlock, tensors)
	}
	return nil
}

// fitsIn checks the text encoder's layer count against the weights' tensor
// count; the config must be valid.
func (c CLIPConfig) fitsIn(tensors int) error {
	if b := (blockBudget{left: tensors}); !b.take(c.NumHiddenLayers, 1) {
		return badModelf("text encoder config: num_hidden_layers %d exceeds the tensors the weights hold (%d)", c.NumHiddenLayers, tensors)
	}
	return nil
}

// cond is c ? a : b.
func cond[T any](c bool, a, b T) T {
	if c {
		return a
	}
	return b
}

// TensorSpecs lists every tensor of the autoencoder in diffusers'
// AutoencoderKL naming.
func (c VAEConfig) TensorSpecs() ([]TensorSpec, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	var s specList
	levels := len(c.BlockOutChannels)
	first, last := c.BlockOutChannels[0], c.BlockOutChannels[levels-1]
	mid := func(p string) {
		s.resnet(p+".resnets.0", last, last, 0)
		if c.MidBlockAddAttention {
			a := p + ".attentions.0"
			s.norm(a+".group_norm", last)
			for _, proj := range []string{"to_q", "to_k", "to_v", "to_out.0"} {
				s.linear(a+"."+proj, last, last, true)
			}
		}
		s.resnet(p+".resnets.1", last, last, 0)
	}

	s.conv("encoder.conv_in", first, c.InChannels, 3)
	out := first
	for i := range levels {
		in := out
		out = c.BlockOutChannels[i]
		for j := range c.LayersPerBlock {
			s.resnet(fmt.Sprintf("encoder.down_blocks.%d.resnets.%d", i, j), cond(j == 0, in, out), out, 0)
		}
		if i < levels-1 {
			s.conv(fmt.Sprintf("encoder.down_blocks.%d.downsamplers.0.conv", i), out, out, 3)
		}
	}
	mid("encoder.mid_block")
	s.norm("encoder.conv_norm_out", last)
	s.conv("encoder.conv_out", 2*c.LatentChannels, last, 3) // mean and log-variance
	if c.UseQuantConv {
		s.conv("quant_conv", 2*c.LatentChannels, 2*c.LatentChannels, 1)
	}
	if c.UsePostQuantConv {
		s.conv("post_quant_conv", c.LatentChannels, c.LatentChannels, 1)
	}

	s.conv("decoder.conv_in", last, c.LatentChannels, 3)
	mid("decoder.mid_block")
	out = last
	for i := range levels {
		in := out
		out = c.BlockOutChannels[levels-1-i]
		for j := range c.LayersPerBlock + 1 {
			s.resnet(fmt.Sprintf("decoder.up_blocks.%d.resnets.%d", i, j), cond(j == 0, in, out), out, 0)
		}
		if i < levels-1 {
			s.conv(fmt.Sprintf("decoder.up_blocks.%d.upsamplers.0.conv", i), out, out, 3)
		}
	}
	s.norm("decoder.conv_norm_out", first)
	s.conv("decoder.conv_out", c.OutChannels, first, 3)
	return s, nil
}

// TensorSpecs lists every tensor of the text encoder in transformers'
// CLIPTextModel naming, with the "text_model." prefix.
func (c CLIPConfig) TensorSpecs() ([]TensorSpec, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	var s specList
	h := c.HiddenSize
	s.add("text_model.embeddings.token_embedding.weight", c.VocabSize, h)
	s.add("text_model.embeddings.position_embedding.weight", c.MaxPositionEmbeddings, h)
	for i := range c.NumHiddenLayers {
		p := fmt.Sprintf("text_model.encoder.layers.%d", i)
		s.norm(p+".layer_norm1", h)
		for _, proj := range []string{"q_proj", "k_proj", "v_proj", "out_proj"} {
			s.linear(p+".self_attn."+proj, h, h, true)
		}
		s.norm(p+".layer_norm2", h)
		s.linear(p+".mlp.fc1", c.IntermediateSize, h, true)
		s.linear(p+".mlp.fc2", h, c.IntermediateSize, true)
	}
	s.norm("text_model.final_layer_norm", h)
	if c.WithProjection {
		s.linear("text_projection", c.ProjectionDim, h, false)
	}
	return s, nil
}

// sameLayout reports whether a tensor of shape got can stand for want:
// equal, or equal once trailing 1s are dropped from both (a 1×1 conv
// weight [C, C, 1, 1] is the linear weight [C, C]).
func sameLayout(got, want []int64) bool {
	trim := func(s []int64) []int64 {
		for len(s) > 0 && s[len(s)-1] == 1 {
			s = s[:len(s)-1]
		}
		return s
	}
	return slices.Equal(got, want) || slices.Equal(trim(got), trim(want))
}

// source is where a spec's tensor comes from: a tensor of the file, or
// the part-th of parts equal slices of it along the first dimension (the
// q, k, v thirds of a fused projection), or the transpose of a matrix
// (OpenCLIP's text_projection; the one weight bind copies).
type source struct {
	name        string
	part, parts int
	transpose   bool
}

// bind builds a component's tensors from specs: resolve names each spec's
// source, find looks a source tensor up. Every tensor takes its spec's name
// and shape (a reshape or a slice of the file's data, never a copy), must
// hold floating-point weights and match the spec's layout. It returns the
// file tensors it used, so callers can count the rest.
func bind(component string, specs []TensorSpec, resolve func(string) source, find func(string) (Tensor, bool)) (map[string]Tensor, map[string]bool, error) {
	tensors := make(map[string]Tensor, len(specs))
	used := map[string]bool{}
	var missing []string
	for _, spec := range specs {
		src := resolve(spec.Name)
		t, ok := find(src.name)
		if !ok {
			missing = append(missing, describeSource(spec.Name, src.name))
			continue
		}
		if !t.DType.IsFloat() {
			kind := ErrBadModel
			if t.DType == F64 {
				kind = ErrUnsupported // a weight all the same, of a precision the runtime does not compute in
			}
			return nil, nil, sderr.Mark(kind, fmt.Errorf("%s: tensor %s has dtype %s, want F32, F16 or BF16", component, describeSource(spec.Name, src.name), t.DType))
		}
		if src.parts > 1 {
			var err error
			if t, err = slicePart(t, src.part, src.parts); err != nil {
				return nil, nil, fmt.Errorf("%s: tensor %s: %w", component, describeSource(spec.Name, src.name), err)
			}
		}
		if src.transpose {
			var err error
			if t, err = transposed(t); err != nil {
				return nil, nil, fmt.Errorf("%s: tensor %s: %w", component, describeSource(spec.Name, src.name), err)
			}
		}
		if !sameLayout(t.Shape, spec.Shape) {
			return nil, nil, fmt.Errorf("%s: tensor %s has shape %v, want %v", component, describeSource(spec.Name, src.name), t.Shape, spec.Shape)
		}
		used[src.name] = true
		tensors[spec.Name] = Tensor{Name: spec.Name, DType: t.DType, Shape: spec.Shape, Data: t.Data}
	}
	if n := len(missing); n > 0 {
		const shown = 5
		more := ""
		if n > shown {
			more = fmt.Sprintf(" and %d more", n-shown)
			missing = missing[:shown]
		}
		return nil, nil, fmt.Errorf("%s: %d of %d tensors missing: %s%s", component, n, len(specs), strings.Join(missing, ", "), more)
	}
	return tensors, used, nil
}

func describeSource(name, file string) string {
	if name == file {
		return name
	}
	return fmt.Sprintf("%s (%s in the file)", name, file)
}

// transposed copies a matrix transposed.
func transposed(t Tensor) (Tensor, error) {
	if len(t.Shape) != 2 {
		return Tensor{}, fmt.Errorf("shape %v is not a matrix", t.Shape)
	}
	rows, cols, size := t.Shape[0], t.Shape[1], t.DType.Size()
	out := make([]byte, len(t.Data))
	for r := int64(0); r < rows; r++ {
		for c := int64(0); c < cols; c++ {
			copy(out[(c*rows+r)*size:(c*rows+r+1)*size], t.Data[(r*cols+c)*size:])
		}
	}
	return Tensor{Name: t.Name, DType: t.DType, Shape: []int64{cols, rows}, Data: out}, nil
}

// slicePart views the part-th of parts equal row blocks of t.
func slicePart(t Tensor, part, parts int) (Tensor, error) {
	if len(t.Shape) == 0 || t.Shape[0]%int64(parts) != 0 {
		return Tensor{}, fmt.Errorf("shape %v does not split into %d along its first dimension", t.Shape, parts)
	}
	size := int64(len(t.Data)) / int64(parts)
	shape := slices.Clone(t.Shape)
	shape[0] /= int64(parts)
	lo, hi := int64(part)*size, int64(part+1)*size
	return Tensor{Name: t.Name, DType: t.DType, Shape: shape, Data: t.Data[lo:hi:hi]}, nil
}

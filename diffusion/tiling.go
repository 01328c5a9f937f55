package diffusion

import (
	"fmt"
	"strings"
)

// Tiling chooses whether the VAE decodes (and for img2img encodes) the image in
// overlapping tiles, blended as diffusers' AutoencoderKL.enable_tiling does: memory bounded
// by one tile's however large the image, at the cost of faint seams.
type Tiling int

const (
	// TilingAuto tiles when the untiled pass would need more than about 4 GiB of
	// activations (SD 1.x and 2.x: above about 2.8 megapixels, so 2048x2048 tiles and
	// 1536x1536 does not).
	TilingAuto Tiling = iota
	// TilingOn tiles whenever the image is larger than one tile.
	TilingOn
	// TilingOff never tiles.
	TilingOff
)

var tilingNames = []string{"auto", "on", "off"}

func (t Tiling) String() string {
	if t >= 0 && int(t) < len(tilingNames) {
		return tilingNames[t]
	}
	return fmt.Sprintf("Tiling(%d)", int(t))
}

// ParseTiling parses "auto", "on" or "off" (also "true" and "false").
func ParseTiling(s string) (Tiling, error) {
	switch strings.ToLower(s) {
	case "true":
		return TilingOn, nil
	case "false":
		return TilingOff, nil
	}
	for i, n := range tilingNames {
		if strings.EqualFold(s, n) {
			return Tiling(i), nil
		}
	}
	return 0, fmt.Errorf("unknown tiling %q (want auto, on or off)", s)
}

// autoTileBytes is TilingAuto's limit on a VAE pass's activations, estimated as three
// live tensors of the widest level at full resolution (the decoder's last level: 128
// channels at the image's size for SD).
const autoTileBytes = 4 << 30

// tileGrid is one direction of diffusers' tiling (tiled_decode or tiled_encode): input
// tiles of side in every stride input pixels (the last ones cut at the border); each
// output tile is blended with the one above and the one to the left over blend output
// pixels, then cut to its first keep rows and columns.
type tileGrid struct {
	in, stride  int // input units
	blend, keep int // output units
}

// vaeTiles are diffusers' tile sizes for a VAE of the given sample_size (the image tile
// side) and downsampling factor, with its overlap factor 0.25. decode tiles latents,
// encode images.
func vaeTiles(sampleSize, factor int) (decode, encode tileGrid) {
	const overlap = 0.25
	s, l := sampleSize, sampleSize/factor
	decode = tileGrid{in: l, stride: int(float64(l) * (1 - overlap)), blend: int(float64(s) * overlap)}
	decode.keep = s - decode.blend
	encode = tileGrid{in: s, stride: int(float64(s) * (1 - overlap)), blend: int(float64(l) * overlap)}
	encode.keep = l - encode.blend
	return decode, encode
}

// usable reports whether the grid covers an image without gaps (each kept part at least
// a stride's worth of output).
func (g tileGrid) usable() bool { return g.in > 0 && g.stride > 0 && g.keep > 0 }

// tile is one network output: (b, c, h, w).
type tile struct {
	data       []float32
	b, c, h, w int
}

func (t *tile) at(n, ch, y, x int) *float32 { return &t.data[((n*t.c+ch)*t.h+y)*t.w+x] }

// blendV blends the bottom rows of a (the tile above) into the top rows of b, in place:
// row y of b becomes a's row (h - e + y) * (1 - y/e) + b's row y * (y/e).
func blendV(a, b *tile, extent int) {
	e := min(a.h, b.h, extent)
	for y := range e {
		wa, wb := float32(1-float64(y)/float64(e)), float32(float64(y)/float64(e))
		for n := range b.b {
			for ch := range b.c {
				for x := range b.w {
					p := b.at(n, ch, y, x)
					*p = *a.at(n, ch, a.h-e+y, x)*wa + *p*wb
				}
			}
		}
	}
}

// blendH is blendV along columns (a is the tile to the left).
func blendH(a, b *tile, extent int) {
	e := min(a.w, b.w, extent)
	for x := range e {
		wa, wb := float32(1-float64(x)/float64(e)), float32(float64(x)/float64(e))
		for n := range b.b {
			for ch := range b.c {
				for y := range b.h {
					p := b.at(n, ch, y, x)
					*p = *a.at(n, ch, y, a.w-e+x)*wa + *p*wb
				}
			}
		}
	}
}

// run applies fn to the tiles of x (b, c, h, w) and returns the blended output (b, oc,
// oh, ow). fn maps a tile (b, c, th, tw) to its output; tiles are processed row by row,
// each blended in place with its already blended neighbours above and to the left, as
// diffusers does, and only the previous row is kept.
func (g tileGrid) run(x []float32, b, c, h, w int, fn func(t []float32, th, tw int) (tile, error)) (tile, error) {
	var prev []*tile
	var rows []tile // each cut row, (b, oc, rowh, ow)
	for i := 0; i < h; i += g.stride {
		var cur []*tile
		for j := 0; j < w; j += g.stride {
			th, tw := min(g.in, h-i), min(g.in, w-j)
			in := make([]float32, b*c*th*tw)
			for n := range b {
				for ch := range c {
					for y := range th {
						src := ((n*c+ch)*h+i+y)*w + j
						copy(in[((n*c+ch)*th+y)*tw:][:tw], x[src:src+tw])
					}
				}
			}
			t, err := fn(in, th, tw)
			if err != nil {
				return tile{}, err
			}
			cur = append(cur, &t)
		}
		for j, t := range cur {
			if i > 0 {
				blendV(prev[j], t, g.blend)
			}
			if j > 0 {
				blendH(cur[j-1], t, g.blend)
			}
		}
		rows = append(rows, g.cutRow(cur))
		prev = cur
	}
	return concatRows(rows), nil
}

// cutRow keeps the first keep rows and columns of each tile and joins them side by side.
func (g tileGrid) cutRow(ts []*tile) tile {
	first := ts[0]
	rh := min(g.keep, first.h)
	ow := 0
	for _, t := range ts {
		ow += min(g.keep, t.w)
	}
	out := tile{data: make([]float32, first.b*first.c*rh*ow), b: first.b, c: first.c, h: rh, w: ow}
	x0 := 0
	for _, t := range ts {
		kw := min(g.keep, t.w)
		for n := range t.b {
			for ch := range t.c {
				for y := range rh {
					copy(out.data[((n*out.c+ch)*rh+y)*ow+x0:][:kw], t.data[((n*t.c+ch)*t.h+y)*t.w:][:kw])
				}
			}
		}
		x0 += kw
	}
	return out
}

// concatRows stacks rows of one width along the height.
func concatRows(rows []tile) tile {
	out := tile{b: rows[0].b, c: rows[0].c, w: rows[0].w}
	for _, r := range rows {
		out.h += r.h
	}
	out.data = make([]float32, out.b*out.c*out.h*out.w)
	y0 := 0
	for _, r := range rows {
		for n := range r.b {
			for ch := range r.c {
				copy(out.data[((n*out.c+ch)*out.h+y0)*out.w:][:r.h*r.w], r.data[(n*r.c+ch)*r.h*r.w:][:r.h*r.w])
			}
		}
		y0 += r.h
	}
	return out
}

// vaeTiling is when and how a vaeCodec tiles.
type vaeTiling struct {
	mode     Tiling
	dec, enc tileGrid
	width    int // channels of the VAE's full-resolution level (block_out_channels[0])
}

// use reports whether a pass over a batch of images (imgH, imgW) whose input is h x w is
// tiled with grid g: when the input exceeds one tile (diffusers' condition) and tiling is
// on, or auto and the untiled pass's activations would pass autoTileBytes.
func (t vaeTiling) use(g tileGrid, batch, h, w, imgH, imgW int) bool {
	if t.mode == TilingOff || !g.usable() || (h <= g.in && w <= g.in) {
		return false
	}
	return t.mode == TilingOn || 3*int64(t.width)*int64(batch)*int64(imgH)*int64(imgW)*4 > autoTileBytes
}

// vaeCodec is the model's VAE as a codec, tiled as mode says. The tile side is the VAE
// config's sample_size, as diffusers' enable_tiling, or the model's native image size
// where that is larger (single files carry no VAE config; the synthesized one's 32 px
// would make tiles of 4 latents).
func (p *Pipeline) vaeCodec(mode Tiling) (vaeCodec, error) {
	if mode < TilingAuto || mode > TilingOff {
		return vaeCodec{}, invalid("unknown VAE tiling %d", int(mode))
	}
	cfg := p.model.VAE.Config
	c := newVAECodec(p.eng.vaeNet(), cfg)
	side := max(cfg.SampleSize, p.desc.info.Width, p.desc.info.Height)
	dec, enc := vaeTiles(side, c.factor())
	c.tiling = vaeTiling{mode: mode, dec: dec, enc: enc, width: cfg.BlockOutChannels[0]}
	return c, nil
}

// decodeTiled decodes scaled-back latents z (batch, lat, h, w) tile by tile.
func (c vaeCodec) decodeTiled(z []float32, batch, h, w int) ([]float32, error) {
	f, oc := c.factor(), int(c.vae.cfg.OutChannels)
	out, err := c.tiling.dec.run(z, batch, c.channels(), h, w, func(t []float32, th, tw int) (tile, error) {
		y, err := c.vae.decode(t, batch, th, tw)
		return tile{data: y, b: batch, c: oc, h: th * f, w: tw * f}, err
	})
	if err != nil {
		return nil, err
	}
	if out.h != h*f || out.w != w*f {
		return nil, fmt.Errorf("%w: VAE tiles of %d latents every %d give %dx%d pixels for %dx%d latents", ErrUnsupported, c.tiling.dec.in, c.tiling.dec.stride, out.w, out.h, w, h)
	}
	return out.data, nil
}

// encodeTiled encodes images x (batch, 3, h, w) tile by tile, blending mean and logvar
// alike as diffusers blends the moments. (diffusers clamps logvar to [-30, 20] after
// blending, the runtime before: the two differ only where a tile's logvar passes a
// bound.)
func (c vaeCodec) encodeTiled(x []float32, batch, h, w int) (mean, logvar []float32, err error) {
	f, lat := c.factor(), c.channels()
	out, err := c.tiling.enc.run(x, batch, int(c.vae.cfg.InChannels), h, w, func(t []float32, th, tw int) (tile, error) {
		m, l, err := c.vae.encode(t, batch, th, tw)
		if err != nil {
			return tile{}, err
		}
		// The moments as diffusers holds them: (batch, 2 lat, th/f, tw/f).
		n := lat * (th / f) * (tw / f)
		mom := make([]float32, 0, 2*batch*n)
		for k := range batch {
			mom = append(append(mom, m[k*n:(k+1)*n]...), l[k*n:(k+1)*n]...)
		}
		return tile{data: mom, b: batch, c: 2 * lat, h: th / f, w: tw / f}, nil
	})
	if err != nil {
		return nil, nil, err
	}
	if out.h != h/f || out.w != w/f {
		return nil, nil, fmt.Errorf("%w: VAE tiles of %d pixels every %d give %dx%d latents for a %dx%d image", ErrUnsupported, c.tiling.enc.in, c.tiling.enc.stride, out.w, out.h, w, h)
	}
	n := lat * out.h * out.w
	mean, logvar = make([]float32, 0, batch*n), make([]float32, 0, batch*n)
	for k := range batch {
		mean = append(mean, out.data[2*k*n:(2*k+1)*n]...)
		logvar = append(logvar, out.data[(2*k+1)*n:(2*k+2)*n]...)
	}
	return mean, logvar, nil
}

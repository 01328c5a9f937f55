package diffusion

import (
	"context"
	"image"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// t4 is a float64 (b, c, h, w) tensor for the reference below.
type t4 struct {
	b, c, h, w int
	v          []float64
}

func (t t4) i(n, ch, y, x int) int { return ((n*t.c+ch)*t.h+y)*t.w + x }

func t4From(v []float32, b, c, h, w int) t4 {
	t := t4{b, c, h, w, make([]float64, len(v))}
	for k, x := range v {
		t.v[k] = float64(x)
	}
	return t
}

// window is t[:, :, y0:y0+h, x0:x0+w] with torch's clipping at the border.
func (t t4) window(y0, x0, h, w int) t4 {
	h, w = min(h, t.h-y0), min(w, t.w-x0)
	out := t4{t.b, t.c, h, w, make([]float64, t.b*t.c*h*w)}
	for n := range t.b {
		for ch := range t.c {
			for y := range h {
				for x := range w {
					out.v[out.i(n, ch, y, x)] = t.v[t.i(n, ch, y0+y, x0+x)]
				}
			}
		}
	}
	return out
}

func (t t4) f32() []float32 {
	out := make([]float32, len(t.v))
	for k, x := range t.v {
		out[k] = float32(x)
	}
	return out
}

// refTiled transcribes diffusers' AutoencoderKL.tiled_decode / tiled_encode (0.31): all
// tiles first, then row by row each tile blended in place with rows[i-1][j]
// (blend_v) and row[j-1] (blend_h), cut to [:keep, :keep], concatenated, in float64.
func refTiled(x t4, in, stride, blend, keep int, net func(tile t4) t4) t4 {
	var rows [][]t4
	for i := 0; i < x.h; i += stride {
		var row []t4
		for j := 0; j < x.w; j += stride {
			row = append(row, net(x.window(i, j, in, in)))
		}
		rows = append(rows, row)
	}
	var resultRows []t4
	for i, row := range rows {
		var result []t4
		for j := range row {
			b := rows[i][j] // shares its data with rows[i][j]: blends are in place
			if i > 0 {
				a := rows[i-1][j]
				e := min(a.h, b.h, blend)
				for y := range e {
					for n := range b.b {
						for ch := range b.c {
							for xx := range b.w {
								b.v[b.i(n, ch, y, xx)] = a.v[a.i(n, ch, a.h-e+y, xx)]*(1-float64(y)/float64(e)) + b.v[b.i(n, ch, y, xx)]*(float64(y)/float64(e))
							}
						}
					}
				}
			}
			if j > 0 {
				a := rows[i][j-1]
				e := min(a.w, b.w, blend)
				for xx := range e {
					for n := range b.b {
						for ch := range b.c {
							for y := range b.h {
								b.v[b.i(n, ch, y, xx)] = a.v[a.i(n, ch, y, a.w-e+xx)]*(1-float64(xx)/float64(e)) + b.v[b.i(n, ch, y, xx)]*(float64(xx)/float64(e))
							}
						}
					}
				}
			}
			result = append(result, b.window(0, 0, keep, keep))
		}
		// torch.cat(result_row, dim=3)
		w := 0
		for _, r := range result {
			w += r.w
		}
		cat := t4{x.b, result[0].c, result[0].h, w, make([]float64, x.b*result[0].c*result[0].h*w)}
		x0 := 0
		for _, r := range result {
			for n := range r.b {
				for ch := range r.c {
					for y := range r.h {
						for xx := range r.w {
							cat.v[cat.i(n, ch, y, x0+xx)] = r.v[r.i(n, ch, y, xx)]
						}
					}
				}
			}
			x0 += r.w
		}
		resultRows = append(resultRows, cat)
	}
	// torch.cat(result_rows, dim=2)
	h := 0
	for _, r := range resultRows {
		h += r.h
	}
	out := t4{x.b, resultRows[0].c, h, resultRows[0].w, make([]float64, x.b*resultRows[0].c*h*resultRows[0].w)}
	y0 := 0
	for _, r := range resultRows {
		for n := range r.b {
			for ch := range r.c {
				for y := range r.h {
					for xx := range r.w {
						out.v[out.i(n, ch, y0+y, xx)] = r.v[r.i(n, ch, y, xx)]
					}
				}
			}
		}
		y0 += r.h
	}
	return out
}

func randomFloats(n int, lo, hi float64, seed uint64) []float32 {
	r := rand.New(rand.NewPCG(seed, 1))
	v := make([]float32, n)
	for k := range v {
		v[k] = float32(lo + (hi-lo)*r.Float64())
	}
	return v
}

// Tiled decode and encode of sd1-tiny's VAE (sample_size 64: latent tiles of 8 every 6,
// blended over 16 pixels and cut to 48; image tiles of 64 every 48, blended over 2
// latents and cut to 6) against the transcription of diffusers' loops, on sizes that are
// no multiple of the stride, batch 2. Each tile goes through the untiled network in both.
func TestVAETilingMatchesDiffusersLoops(t *testing.T) {
	p := openTiny(t, "sd1-tiny")
	c, err := p.vaeCodec(TilingOn)
	require.NoError(t, err)
	require.Equal(t, tileGrid{in: 8, stride: 6, blend: 16, keep: 48}, c.tiling.dec)
	require.Equal(t, tileGrid{in: 64, stride: 48, blend: 2, keep: 6}, c.tiling.enc)
	untiled, err := p.vaeCodec(TilingOff)
	require.NoError(t, err)
	net := p.eng.vaeNet()

	const b, lh, lw = 2, 20, 26
	lat := randomFloats(b*4*lh*lw, -1, 1, 1)
	got, err := c.decode(lat, b, lh, lw)
	require.NoError(t, err)
	// The codec divides by scaling_factor first, in float32, as diffusers' pipelines.
	z := make([]float32, len(lat))
	for k, v := range lat {
		z[k] = float32(float64(v) / c.scale)
	}
	ref := refTiled(t4From(z, b, 4, lh, lw), 8, 6, 16, 48, func(tl t4) t4 {
		y, err := net.decode(tl.f32(), tl.b, tl.h, tl.w)
		require.NoError(t, err)
		return t4From(y, tl.b, 3, tl.h*8, tl.w*8)
	})
	require.Equal(t, []int{b, 3, lh * 8, lw * 8}, []int{ref.b, ref.c, ref.h, ref.w})
	assertClose(t, "tiled decode", got, ref.f32())
	whole, err := untiled.decode(lat, b, lh, lw)
	require.NoError(t, err)
	t.Logf("tiled vs untiled decode: %.2e of max|untiled|", relErr(got, whole))
	assert.Greater(t, relErr(got, whole), 1e-3, "tiling changes the result where tiles meet")

	const h, w = 160, 208
	x := randomFloats(b*3*h*w, -1, 1, 2)
	dist, err := c.encode(x, b, h, w)
	require.NoError(t, err)
	refMom := refTiled(t4From(x, b, 3, h, w), 64, 48, 2, 6, func(tl t4) t4 {
		m, l, err := net.encode(tl.f32(), tl.b, tl.h, tl.w)
		require.NoError(t, err)
		n := 4 * (tl.h / 8) * (tl.w / 8)
		var mom []float32
		for k := range tl.b {
			mom = append(append(mom, m[k*n:(k+1)*n]...), l[k*n:(k+1)*n]...)
		}
		return t4From(mom, tl.b, 8, tl.h/8, tl.w/8)
	})
	require.Equal(t, []int{b, 8, h / 8, w / 8}, []int{refMom.b, refMom.c, refMom.h, refMom.w})
	n := 4 * (h / 8) * (w / 8)
	var refMean, refLogvar []float32
	mom := refMom.f32()
	for k := range b {
		refMean = append(refMean, mom[2*k*n:(2*k+1)*n]...)
		refLogvar = append(refLogvar, mom[(2*k+1)*n:(2*k+2)*n]...)
	}
	assertClose(t, "tiled encode mean", dist.mean, refMean)
	assertClose(t, "tiled encode logvar", dist.logvar, refLogvar)
	wholeDist, err := untiled.encode(x, b, h, w)
	require.NoError(t, err)
	assert.Greater(t, relErr(dist.mean, wholeDist.mean), 1e-3)
}

// When tiling applies: only above one tile, and in auto mode only above the memory bound.
func TestVAETilingChoice(t *testing.T) {
	// diffusers' numbers for SD 1.5 (sample_size 512) and SDXL (1024).
	dec, enc := vaeTiles(512, 8)
	assert.Equal(t, tileGrid{in: 64, stride: 48, blend: 128, keep: 384}, dec)
	assert.Equal(t, tileGrid{in: 512, stride: 384, blend: 16, keep: 48}, enc)
	dec, enc = vaeTiles(1024, 8)
	assert.Equal(t, tileGrid{in: 128, stride: 96, blend: 256, keep: 768}, dec)
	assert.Equal(t, tileGrid{in: 1024, stride: 768, blend: 32, keep: 96}, enc)

	g := tileGrid{in: 64, stride: 48, blend: 128, keep: 384}
	for _, tc := range []struct {
		mode       Tiling
		width      int
		batch, h   int
		want       bool
		whatItSays string
	}{
		{TilingOn, 128, 1, 64, false, "one tile"},
		{TilingOn, 128, 1, 65, true, "larger than a tile"},
		{TilingOff, 128, 4, 256, false, "off"},
		{TilingAuto, 128, 1, 192, false, "SD at 1536x1536: 3.6 GB"},
		{TilingAuto, 128, 1, 256, true, "SD at 2048x2048: 6.4 GB"},
		{TilingAuto, 128, 2, 192, true, "a batch of two at 1536x1536"},
		{TilingAuto, 32, 1, 256, false, "a narrow VAE"},
	} {
		vt := vaeTiling{mode: tc.mode, dec: g, width: tc.width}
		assert.Equal(t, tc.want, vt.use(g, tc.batch, tc.h, tc.h, 8*tc.h, 8*tc.h), tc.whatItSays)
	}
	assert.False(t, vaeTiling{}.use(tileGrid{}, 1, 1000, 1000, 8000, 8000), "the zero value never tiles")

	for _, s := range []string{"auto", "on", "off", "true", "false", "ON"} {
		_, err := ParseTiling(s)
		assert.NoError(t, err, s)
	}
	_, err := ParseTiling("yes")
	assert.Error(t, err)
}

// A whole request with the VAE tiled: a 128x128 image of sd1-tiny takes 3x3 latent tiles
// (and img2img's encode 3x3 image tiles), the same image size comes back, close to the
// untiled one but not equal.
func TestTiledRequests(t *testing.T) {
	p := openTiny(t, "sd1-tiny")
	req := kitRequest(DDIM)
	req.Width, req.Height, req.Steps = 128, 128, 2
	var images [2]image.Image
	for k, mode := range []Tiling{TilingOff, TilingOn} {
		req.VAETiling = mode
		res, err := p.Txt2Img(context.Background(), req)
		require.NoError(t, err)
		images[k] = res.Images[0]
		assert.Equal(t, image.Rect(0, 0, 128, 128), res.Images[0].Bounds())
	}
	assert.NotEqual(t, imageCHW(images[0]), imageCHW(images[1]))
	res, err := p.Img2Img(context.Background(), Img2ImgRequest{Request: req, Image: images[0], Strength: 0.5})
	require.NoError(t, err)
	assert.Equal(t, image.Rect(0, 0, 128, 128), res.Images[0].Bounds())

	req.VAETiling = Tiling(5)
	_, err = p.Txt2Img(context.Background(), req)
	require.ErrorIs(t, err, ErrInvalidRequest)
}

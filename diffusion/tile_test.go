package diffusion

import (
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestTileStarts(t *testing.T) {
	cases := []struct {
		n, size, overlap int
		want             []int
	}{
		{16, 16, 4, []int{0}},
		{10, 16, 4, []int{0}},
		{17, 16, 4, []int{0, 1}},
		{40, 16, 4, []int{0, 12, 24}},
		{41, 16, 4, []int{0, 8, 16, 25}},
		{1024, 256, 64, []int{0, 192, 384, 576, 768}},
	}
	for _, tc := range cases {
		got := tileStarts(tc.n, tc.size, tc.overlap)
		assert.Equal(t, tc.want, got, "n %d size %d overlap %d", tc.n, tc.size, tc.overlap)
		// The tiles cover every pixel, neighbours overlap by at least overlap, the last
		// ends at n.
		assert.Equal(t, 0, got[0])
		assert.Equal(t, max(tc.n, tc.size), got[len(got)-1]+tc.size)
		for k := 1; k < len(got); k++ {
			assert.GreaterOrEqual(t, got[k-1]+tc.size-got[k], tc.overlap)
		}
	}
}

// A pointwise network (each output pixel a function of its input pixel alone, at scale
// 1 or upsampled 2x) gives in tiles exactly what it gives whole: tiles are cut, placed
// and their weights normalised right.
func TestBlendTilesPointwiseEqualsWhole(t *testing.T) {
	const b, c, h, w = 2, 3, 27, 40
	in := make([]float32, b*c*h*w)
	for k := range in {
		in[k] = float32(math.Sin(float64(k) * 0.37))
	}
	for _, scale := range []int{1, 2} {
		f := func(r rect) ([]float32, error) {
			v := crop(in, b*c, h, w, r)
			out := make([]float32, 0, len(v)*scale*scale)
			for p := 0; p < b*c; p++ {
				for y := 0; y < scale*r.h; y++ {
					for x := 0; x < scale*r.w; x++ {
						out = append(out, 2*v[p*r.h*r.w+(y/scale)*r.w+x/scale]+1)
					}
				}
			}
			return out, nil
		}
		whole, err := f(rect{0, 0, h, w})
		require.NoError(t, err)
		for _, tl := range []tiling{{16, 4}, {12, 3}, {8, 2}, {64, 16}} {
			got, err := blendTiles(tl, b, c, h, w, scale, f)
			require.NoError(t, err)
			require.Len(t, got, len(whole))
			for k := range whole {
				require.InDelta(t, whole[k], got[k], 1e-5, "scale %d tiling %v at %d", scale, tl, k)
			}
		}
	}
}

// Tiles whose outputs differ (each a constant, its index) blend across every overlap:
// the result stays between the tiles' values and moves by at most 1/(overlap+1) of the
// largest difference from one pixel to the next: there is no seam.
func TestBlendTilesSeamsBlend(t *testing.T) {
	const h, w = 40, 40
	tl := tiling{16, 4}
	tiles := tl.tiles(h, w)
	require.Len(t, tiles, 9)
	index := map[rect]float32{}
	for k, r := range tiles {
		index[r] = float32(k)
	}
	got, err := blendTiles(tl, 1, 1, h, w, 1, func(r rect) ([]float32, error) {
		out := make([]float32, r.h*r.w)
		for k := range out {
			out[k] = index[r]
		}
		return out, nil
	})
	require.NoError(t, err)
	maxStep := float64(len(tiles)-1) / float64(tl.overlap+1)
	var worst float64
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			v := got[y*w+x]
			require.GreaterOrEqual(t, v, float32(0))
			require.LessOrEqual(t, v, float32(len(tiles)-1))
			if x > 0 {
				worst = math.Max(worst, math.Abs(float64(v-got[y*w+x-1])))
			}
			if y > 0 {
				worst = math.Max(worst, math.Abs(float64(v-got[(y-1)*w+x])))
			}
		}
	}
	t.Logf("largest step between neighbouring pixels: %.3f (tiles differ by up to %d)", worst, len(tiles)-1)
	assert.LessOrEqual(t, worst, maxStep+1e-5)
	// Inside a tile, away from every overlap, the tile's own value.
	assert.Equal(t, float32(0), got[2*w+2])
	assert.Equal(t, float32(4), got[20*w+20])
}

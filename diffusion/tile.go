package diffusion

// Tiled evaluation: a network run on overlapping tiles of a large grid, the outputs
// blended with linear ramps across each overlap, so that memory follows the tile's size
// rather than the image's and no seam shows. The x4 upscaler's denoiser and decoder use
// it for inputs larger than their tile.

// tiling is a tile side and the overlap wanted between neighbours, in grid (latent)
// pixels; the zero value runs whole.
type tiling struct{ size, overlap int }

// covers reports whether one tile holds an h x w grid (or tiling is off).
func (t tiling) covers(h, w int) bool { return t.size == 0 || (h <= t.size && w <= t.size) }

// rect is a tile: its top-left corner and size in grid pixels.
type rect struct{ y, x, h, w int }

// tileStarts spreads tiles of side size evenly over n pixels, neighbours overlapping by
// at least overlap (0 < overlap < size): one tile at 0 when it holds n.
func tileStarts(n, size, overlap int) []int {
	if n <= size {
		return []int{0}
	}
	count := max(2, (n-overlap+size-overlap-1)/(size-overlap)) // ceil((n-overlap)/(size-overlap))
	starts := make([]int, count)
	for i := range starts {
		starts[i] = i * (n - size) / (count - 1)
	}
	return starts
}

// tiles lists the tiles of an h x w grid, row by row.
func (t tiling) tiles(h, w int) []rect {
	if t.covers(h, w) {
		return []rect{{0, 0, h, w}}
	}
	th, tw := min(t.size, h), min(t.size, w)
	var out []rect
	for _, y := range tileStarts(h, th, t.overlap) {
		for _, x := range tileStarts(w, tw, t.overlap) {
			out = append(out, rect{y, x, th, tw})
		}
	}
	return out
}

// ramp is a tile's blending weight along one axis at output position i of a tile of
// length n (output pixels): rising over the overlap with the previous tile (before
// pixels), falling over the one with the next (after pixels), 1 elsewhere. Neighbours'
// ramps sum to 1 across their overlap.
func ramp(i, n, before, after int) float32 {
	w := float32(1)
	if before > 0 {
		w = min(w, float32(i+1)/float32(before+1))
	}
	if after > 0 {
		w = min(w, float32(n-i)/float32(after+1))
	}
	return w
}

// overlaps returns, for the tile starting at start on an axis whose tiles start at
// starts, its overlaps with the previous and next tiles (grid pixels).
func overlaps(starts []int, start, size int) (before, after int) {
	for k, s := range starts {
		if s != start {
			continue
		}
		if k > 0 {
			before = starts[k-1] + size - s
		}
		if k+1 < len(starts) {
			after = s + size - starts[k+1]
		}
	}
	return before, after
}

// blendTiles runs f on every tile of an h x w grid and blends the outputs into one
// (b, c, scale*h, scale*w) result. f returns (b, c, scale*r.h, scale*r.w) for its tile;
// weights are normalised by their sum, so any overlap pattern blends to a convex
// combination of the tiles' outputs.
func blendTiles(t tiling, b, c, h, w, scale int, f func(r rect) ([]float32, error)) ([]float32, error) {
	tiles := t.tiles(h, w)
	if len(tiles) == 1 {
		return f(tiles[0])
	}
	oh, ow := scale*h, scale*w
	out := make([]float32, b*c*oh*ow)
	weight := make([]float32, oh*ow)
	ys := tileStarts(h, tiles[0].h, t.overlap)
	xs := tileStarts(w, tiles[0].w, t.overlap)
	for _, r := range tiles {
		v, err := f(r)
		if err != nil {
			return nil, err
		}
		th, tw := scale*r.h, scale*r.w
		yb, ya := overlaps(ys, r.y, r.h)
		xb, xa := overlaps(xs, r.x, r.w)
		wy := make([]float32, th)
		for i := range wy {
			wy[i] = ramp(i, th, scale*yb, scale*ya)
		}
		wx := make([]float32, tw)
		for i := range wx {
			wx[i] = ramp(i, tw, scale*xb, scale*xa)
		}
		for y := 0; y < th; y++ {
			row := (scale*r.y+y)*ow + scale*r.x
			for x := 0; x < tw; x++ {
				weight[row+x] += wy[y] * wx[x]
			}
		}
		for bc := 0; bc < b*c; bc++ {
			src, dst := v[bc*th*tw:], out[bc*oh*ow:]
			for y := 0; y < th; y++ {
				row := (scale*r.y+y)*ow + scale*r.x
				for x := 0; x < tw; x++ {
					dst[row+x] += wy[y] * wx[x] * src[y*tw+x]
				}
			}
		}
	}
	for bc := 0; bc < b*c; bc++ {
		plane := out[bc*oh*ow : (bc+1)*oh*ow]
		for k := range plane {
			plane[k] /= weight[k]
		}
	}
	return out, nil
}

// crop copies tile r out of v, (n, h, w) planes of an h x w grid, into (n, r.h, r.w).
func crop(v []float32, n, h, w int, r rect) []float32 {
	out := make([]float32, 0, n*r.h*r.w)
	for p := 0; p < n; p++ {
		plane := v[p*h*w:]
		for y := r.y; y < r.y+r.h; y++ {
			out = append(out, plane[y*w+r.x:y*w+r.x+r.w]...)
		}
	}
	return out
}

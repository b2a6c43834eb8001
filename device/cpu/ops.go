package cpu

import (
	"fmt"
	"math"

	"github.com/loomtrain/loom/device"
	"github.com/loomtrain/loom/internal/vec"
)

// The device.Backend ops over views. Each splits its rows (or elements)
// across the device's threads once the work is worth a fork; reductions and
// accumulated gradients add per-chunk partials in chunk order, so results
// depend on the thread count only, never on scheduling.

func checkShape(op string, v device.View, want int) {
	if v.N != want {
		panic(fmt.Sprintf("cpu device: %s: view of %d elements, want %d", op, v.N, want))
	}
}

// chunks splits n items into at most d.threads contiguous chunks of at
// least minChunk items: count chunks of per items (the last may be short).
func (d *Device) chunks(n, minChunk int) (count, per int) {
	if n <= 0 {
		return 0, 0
	}
	w := max(1, min(d.threads, ceilDiv(n, max(minChunk, 1))))
	per = ceilDiv(n, w)
	return ceilDiv(n, per), per
}

// Scale implements device.Backend.
func (d *Device) Scale(x device.View, s float32) {
	xs := d.f32(x)
	d.parallelFor(len(xs), minElemsPerThread, func(lo, hi int) {
		for i := range xs[lo:hi] {
			xs[lo+i] *= s
		}
	})
}

// Add implements device.Backend.
func (d *Device) Add(out, a, b device.View) {
	checkShape("add a", a, out.N)
	checkShape("add b", b, out.N)
	o, as, bs := d.f32(out), d.f32(a), d.f32(b)
	d.parallelFor(len(o), minElemsPerThread, func(lo, hi int) {
		vec.Sum(o[lo:hi], as[lo:hi], bs[lo:hi])
	})
}

// BiasAdd implements device.Backend.
func (d *Device) BiasAdd(x, bias device.View, rows, cols int) {
	checkShape("bias add x", x, rows*cols)
	checkShape("bias add bias", bias, cols)
	xs, bs := d.f32(x), d.f32(bias)
	d.parallelFor(rows, minRows(device.None, cols), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			vec.Add(xs[i*cols:(i+1)*cols], bs)
		}
	})
}

// BiasGrad implements device.Backend, splitting the columns across threads
// (each column adds its rows in order).
func (d *Device) BiasGrad(dbias, dy device.View, rows, cols int) {
	checkShape("bias grad dy", dy, rows*cols)
	checkShape("bias grad dbias", dbias, cols)
	db, g := d.f32(dbias), d.f32(dy)
	minCols := max(16, minElemsPerThread/max(rows, 1))
	d.parallelFor(cols, minCols, func(lo, hi int) {
		for i := 0; i < rows; i++ {
			vec.Add(db[lo:hi], g[i*cols+lo:i*cols+hi])
		}
	})
}

// Embedding implements device.Backend. Ids outside the table panic.
func (d *Device) Embedding(out, table, ids device.View, n, c int, accumulate bool) {
	checkShape("embedding out", out, n*c)
	checkShape("embedding ids", ids, n)
	o, tab, id := d.f32(out), d.f32(table), d.i32(ids)
	if c <= 0 || table.N%c != 0 {
		panic(fmt.Sprintf("cpu device: embedding table of %d elements is not rows of %d", table.N, c))
	}
	checkIDs(id, table.N/c)
	d.parallelFor(n, minRows(device.None, c), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			t := int(id[i])
			row, src := o[i*c:(i+1)*c], tab[t*c:(t+1)*c]
			if accumulate {
				vec.Add(row, src)
			} else {
				copy(row, src)
			}
		}
	})
}

// checkIDs panics, on the calling goroutine, if an id is outside [0, vocab).
func checkIDs(ids []int32, vocab int) {
	for i, t := range ids {
		if t < 0 || int(t) >= vocab {
			panic(fmt.Sprintf("cpu device: embedding id %d at %d outside [0, %d)", t, i, vocab))
		}
	}
}

// EmbeddingBackward implements device.Backend: the columns are split across
// threads, so repeated ids never race and each element adds in row order.
func (d *Device) EmbeddingBackward(dtable, dout, ids device.View, n, c int) {
	checkShape("embedding backward dout", dout, n*c)
	checkShape("embedding backward ids", ids, n)
	dt, g, id := d.f32(dtable), d.f32(dout), d.i32(ids)
	if c <= 0 || dtable.N%c != 0 {
		panic(fmt.Sprintf("cpu device: embedding table of %d elements is not rows of %d", dtable.N, c))
	}
	checkIDs(id, dtable.N/c)
	minCols := max(16, minElemsPerThread/max(n, 1))
	d.parallelFor(c, minCols, func(lo, hi int) {
		for i, t := range id {
			vec.Add(dt[int(t)*c+lo:int(t)*c+hi], g[i*c+lo:i*c+hi])
		}
	})
}

// LayerNorm's rows are split into blocks of at least lnBlockElems elements:
// across threads in the forward, and in LayerNormBackward into a fixed
// partition of lnBlockRows(c) rows, whatever the thread count, whose dw and
// db partials add in block order.
const lnBlockElems = 1 << 13

// lnBlockRows is LayerNormBackward's row block for rows of c: at least 32
// rows, so adding a block's partials costs at most 1/16 of its work.
func lnBlockRows(c int) int { return max(32, ceilDiv(lnBlockElems, max(c, 1))) }

// LayerNorm implements device.Backend one row at a time (layerNormRow).
func (d *Device) LayerNorm(out, mean, rstd, x, w, b device.View, rows, c int, eps float32) {
	checkShape("layernorm out", out, rows*c)
	checkShape("layernorm mean", mean, rows)
	checkShape("layernorm rstd", rstd, rows)
	checkShape("layernorm x", x, rows*c)
	checkShape("layernorm w", w, c)
	checkShape("layernorm b", b, c)
	o, mu, rs, xs, ws, bs := d.f32(out), d.f32(mean), d.f32(rstd), d.f32(x), d.f32(w), d.f32(b)
	d.parallelFor(rows, ceilDiv(lnBlockElems, max(c, 1)), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			mu[i], rs[i] = d.kern.layerNormRow(o[i*c:(i+1)*c], xs[i*c:(i+1)*c], ws, bs, eps)
		}
	})
}

// LayerNormBackward implements device.Backend one row at a time
// (layerNormBackwardRow):
//
//	x̂ = (x−μ)·rstd, ĝ = dout·w
//	dx += rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)), dw += Σ dout·x̂, db += Σ dout
//
// The first block of lnBlockRows(c) rows accumulates dw and db in place,
// later blocks into scratch partials added in block order, so the result
// does not depend on the thread count.
func (d *Device) LayerNormBackward(dx, dw, db, dout, x, w, mean, rstd device.View, rows, c int) {
	checkShape("layernorm backward dx", dx, rows*c)
	checkShape("layernorm backward dw", dw, c)
	checkShape("layernorm backward db", db, c)
	checkShape("layernorm backward dout", dout, rows*c)
	checkShape("layernorm backward x", x, rows*c)
	checkShape("layernorm backward w", w, c)
	checkShape("layernorm backward mean", mean, rows)
	checkShape("layernorm backward rstd", rstd, rows)
	dxs, dws, dbs, g, xs, ws, mu, rs := d.f32(dx), d.f32(dw), d.f32(db), d.f32(dout), d.f32(x), d.f32(w), d.f32(mean), d.f32(rstd)
	if rows <= 0 {
		return
	}
	per := lnBlockRows(c)
	count := ceilDiv(rows, per)
	part := grow(&d.scratch.lnDW, (count-1)*2*c)
	clear(part)
	d.parallel(d.threads, count, func(_, t int) {
		pw, pb := dws, dbs
		if t > 0 {
			pw, pb = part[(t-1)*2*c:(t-1)*2*c+c], part[(t-1)*2*c+c:t*2*c]
		}
		for i := t * per; i < min(rows, (t+1)*per); i++ {
			d.kern.layerNormBackwardRow(dxs[i*c:(i+1)*c], pw, pb, g[i*c:(i+1)*c], xs[i*c:(i+1)*c], ws, mu[i], rs[i])
		}
	})
	for t := 1; t < count; t++ {
		vec.Add(dws, part[(t-1)*2*c:(t-1)*2*c+c])
		vec.Add(dbs, part[(t-1)*2*c+c:t*2*c])
	}
}

// GELU implements device.Backend (tanh approximation, as gelu in
// elementwise.go).
func (d *Device) GELU(out, x device.View) {
	checkShape("gelu", x, out.N)
	o, xs := d.f32(out), d.f32(x)
	d.parallelFor(len(o), minGELUElemsPerThread, func(lo, hi int) {
		d.kern.geluInto(o[lo:hi], xs[lo:hi])
	})
}

// GELUBackward implements device.Backend; dx may alias dout.
func (d *Device) GELUBackward(dx, x, dout device.View) {
	checkShape("gelu backward x", x, dx.N)
	checkShape("gelu backward dout", dout, dx.N)
	o, xs, g := d.f32(dx), d.f32(x), d.f32(dout)
	d.parallelFor(len(o), minGELUElemsPerThread, func(lo, hi int) {
		d.kern.geluBackwardInto(o[lo:hi], xs[lo:hi], g[lo:hi])
	})
}

// Softmax implements device.Backend: exponentials in float32, each row's
// sum in float64; out may alias x.
func (d *Device) Softmax(out, x device.View, rows, cols int) {
	checkShape("softmax x", x, rows*cols)
	checkShape("softmax out", out, rows*cols)
	o, xs := d.f32(out), d.f32(x)
	d.parallelFor(rows, max(1, minGELUElemsPerThread/max(cols, 1)), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			row, orow := xs[i*cols:(i+1)*cols], o[i*cols:(i+1)*cols]
			mx := float32(math.Inf(-1))
			for _, v := range row {
				mx = max(mx, v)
			}
			var s float64
			for j, v := range row {
				e := exp32(v - mx)
				orow[j] = e
				s += float64(e)
			}
			inv := float32(1 / s)
			for j := range orow {
				orow[j] *= inv
			}
		}
	})
}

// CrossEntropy implements device.Backend with a stable log-sum-exp
// (exponentials in float32, sums in float64); dlogits may alias logits.
func (d *Device) CrossEntropy(losses, dlogits, logits, targets device.View, rows, v int, scale float32) {
	checkShape("cross entropy losses", losses, rows)
	checkShape("cross entropy logits", logits, rows*v)
	checkShape("cross entropy targets", targets, rows)
	ls, xs, ts := d.f32(losses), d.f32(logits), d.i32(targets)
	var gs []float32
	if !dlogits.IsZero() {
		checkShape("cross entropy dlogits", dlogits, rows*v)
		gs = d.f32(dlogits)
	}
	for i, t := range ts {
		if int(t) >= v {
			panic(fmt.Sprintf("cpu device: cross entropy target %d at row %d outside [0, %d)", t, i, v))
		}
	}
	d.parallelFor(rows, max(1, minGELUElemsPerThread/max(v, 1)), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			row := xs[i*v : (i+1)*v]
			var g []float32
			if gs != nil {
				g = gs[i*v : (i+1)*v]
			}
			t := int(ts[i])
			if t < 0 {
				ls[i] = 0
				clear(g)
				continue
			}
			xt := row[t]
			mx := float32(math.Inf(-1))
			for _, x := range row {
				mx = max(mx, x)
			}
			var s float64
			if g != nil {
				for j, x := range row {
					e := exp32(x - mx)
					g[j] = e
					s += float64(e)
				}
				inv := float32(float64(scale) / s)
				for j := range g {
					g[j] *= inv
				}
				g[t] -= scale
			} else {
				for _, x := range row {
					s += float64(exp32(x - mx))
				}
			}
			ls[i] = float32(float64(mx) + math.Log(s) - float64(xt))
		}
	})
}

// reduce adds f over chunks of x into out[0], each chunk's partial in
// float64 and the partials summed in chunk order.
func (d *Device) reduce(out, x device.View, f func([]float32) float64) {
	if out.N < 1 {
		panic("cpu device: reduction into an empty view")
	}
	o, xs := d.f32(out), d.f32(x)
	count, per := d.chunks(len(xs), minElemsPerThread)
	part := grow(&d.scratch.part, count)
	d.parallel(count, count, func(_, t int) {
		part[t] = f(xs[t*per : min(len(xs), (t+1)*per)])
	})
	s := float64(o[0])
	for _, p := range part {
		s += p
	}
	o[0] = float32(s)
}

func sumF64(x []float32) float64 {
	var s float64
	for _, v := range x {
		s += float64(v)
	}
	return s
}

func sumSquaresF64(x []float32) float64 {
	var s float64
	for _, v := range x {
		s += float64(v) * float64(v)
	}
	return s
}

func countNonFinite(x []float32) float64 {
	n := 0
	for _, v := range x {
		// Exponent all ones: ±Inf or NaN.
		if math.Float32bits(v)&0x7f800000 == 0x7f800000 {
			n++
		}
	}
	return float64(n)
}

// Sum implements device.Backend.
func (d *Device) Sum(out, x device.View) { d.reduce(out, x, sumF64) }

// SumSquares implements device.Backend.
func (d *Device) SumSquares(out, x device.View) { d.reduce(out, x, sumSquaresF64) }

// NonFinite implements device.Backend.
func (d *Device) NonFinite(out, x device.View) { d.reduce(out, x, countNonFinite) }

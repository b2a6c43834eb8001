package model

// A naive reference device.Backend for the GPT tests, used until (or in
// addition to) the CPU backend implementing device API v2: every op is a
// plain loop accumulating in float64. 16-bit buffers are stored as float32
// values rounded to their dtype.

import (
	"fmt"
	"math"

	"github.com/loomtrain/loom/device"
	"github.com/loomtrain/loom/tensor"
)

type refBuf struct {
	dt tensor.DType
	f  []float32
	i  []int32
}

func (b *refBuf) DType() tensor.DType { return b.dt }
func (b *refBuf) Len() int {
	if b.dt == tensor.I32 {
		return len(b.i)
	}
	return len(b.f)
}
func (b *refBuf) Free() {}

type refBackend struct {
	used    int64
	scratch []float64
}

var _ device.Backend = (*refBackend)(nil)

func (r *refBackend) Name() string                { return "ref" }
func (r *refBackend) Threads() int                { return 1 }
func (r *refBackend) Memory() (used, limit int64) { return r.used, 0 }
func (r *refBackend) Sync() error                 { return nil }

func (r *refBackend) Alloc(dt tensor.DType, n int) (device.Buffer, error) {
	if n < 0 {
		return nil, fmt.Errorf("ref: alloc %d", n)
	}
	b := &refBuf{dt: dt}
	if dt == tensor.I32 {
		b.i = make([]int32, n)
	} else {
		b.f = make([]float32, n)
	}
	r.used += int64(n) * 4
	return b, nil
}

func fl(v device.View) []float32 {
	b := v.Buf.(*refBuf)
	if b.dt == tensor.I32 {
		panic("ref: float view of I32 buffer")
	}
	return b.f[v.Off : v.Off+v.N]
}

func ints(v device.View) []int32 {
	b := v.Buf.(*refBuf)
	if b.dt != tensor.I32 {
		panic("ref: int view of float buffer")
	}
	return b.i[v.Off : v.Off+v.N]
}

func roundTo(dt tensor.DType, x float32) float32 {
	switch dt {
	case tensor.BF16:
		return tensor.FromBF16(tensor.ToBF16(x))
	case tensor.F16:
		return tensor.FromF16(tensor.ToF16(x))
	}
	return x
}

func (r *refBackend) Upload(dst device.View, src []float32) {
	d := fl(dst)
	if len(src) != len(d) {
		panic("ref: upload length")
	}
	for i, x := range src {
		d[i] = roundTo(dst.DType(), x)
	}
}

func (r *refBackend) UploadInt32(dst device.View, src []int32) { copy(ints(dst), src) }
func (r *refBackend) Download(dst []float32, src device.View)  { copy(dst, fl(src)) }

func (r *refBackend) Copy(dst, src device.View) {
	if dst.N != src.N {
		panic("ref: copy length")
	}
	d, s := fl(dst), fl(src)
	for i := range d {
		d[i] = roundTo(dst.DType(), s[i])
	}
}

func (r *refBackend) Fill(x device.View, val float32) {
	for i := range fl(x) {
		fl(x)[i] = val
	}
}

func (r *refBackend) Scale(x device.View, s float32) {
	d := fl(x)
	for i := range d {
		d[i] *= s
	}
}

func (r *refBackend) Add(out, a, b device.View) {
	o, x, y := fl(out), fl(a), fl(b)
	for i := range o {
		o[i] = x[i] + y[i]
	}
}

func (r *refBackend) MatMul(g device.GemmSpec) {
	batch := max(g.Batch, 1)
	prec := g.Precision
	if prec == 0 {
		prec = g.A.DType()
	}
	A, B, C := fl(g.A), fl(g.B), fl(g.C)
	for bi := 0; bi < batch; bi++ {
		a, b, c := A[bi*g.StrideA:], B[bi*g.StrideB:], C[bi*g.StrideC:]
		for i := 0; i < g.M; i++ {
			for j := 0; j < g.N; j++ {
				var s float64
				for k := 0; k < g.K; k++ {
					var av, bv float32
					if g.TransA {
						av = a[k*g.LDA+i]
					} else {
						av = a[i*g.LDA+k]
					}
					if g.TransB {
						bv = b[j*g.LDB+k]
					} else {
						bv = b[k*g.LDB+j]
					}
					s += float64(roundTo(prec, av)) * float64(roundTo(prec, bv))
				}
				v := g.Alpha * float32(s)
				if g.Beta != 0 {
					v += g.Beta * c[i*g.LDC+j]
				}
				c[i*g.LDC+j] = v
			}
		}
	}
}

func (r *refBackend) BiasAdd(x, bias device.View, rows, cols int) {
	d, bb := fl(x), fl(bias)
	for i := 0; i < rows; i++ {
		for j := 0; j < cols; j++ {
			d[i*cols+j] += bb[j]
		}
	}
}

func (r *refBackend) BiasGrad(dbias, dy device.View, rows, cols int) {
	db, d := fl(dbias), fl(dy)
	for j := 0; j < cols; j++ {
		var s float64
		for i := 0; i < rows; i++ {
			s += float64(d[i*cols+j])
		}
		db[j] += float32(s)
	}
}

func (r *refBackend) Embedding(out, table, ids device.View, n, c int, accumulate bool) {
	o, tb, id := fl(out), fl(table), ints(ids)
	for i := 0; i < n; i++ {
		row := tb[int(id[i])*c : int(id[i])*c+c]
		for j := 0; j < c; j++ {
			if accumulate {
				o[i*c+j] += row[j]
			} else {
				o[i*c+j] = row[j]
			}
		}
	}
}

func (r *refBackend) EmbeddingBackward(dtable, dout, ids device.View, n, c int) {
	dt, d, id := fl(dtable), fl(dout), ints(ids)
	for i := 0; i < n; i++ {
		for j := 0; j < c; j++ {
			dt[int(id[i])*c+j] += d[i*c+j]
		}
	}
}

func (r *refBackend) LayerNorm(out, mean, rstd, x, w, b device.View, rows, c int, eps float32) {
	o, m, rs, xx, ww, bb := fl(out), fl(mean), fl(rstd), fl(x), fl(w), fl(b)
	for i := 0; i < rows; i++ {
		row := xx[i*c : i*c+c]
		var mu, v float64
		for _, e := range row {
			mu += float64(e)
		}
		mu /= float64(c)
		for _, e := range row {
			v += (float64(e) - mu) * (float64(e) - mu)
		}
		v /= float64(c)
		s := 1 / math.Sqrt(v+float64(eps))
		for j, e := range row {
			o[i*c+j] = float32((float64(e)-mu)*s)*ww[j] + bb[j]
		}
		m[i], rs[i] = float32(mu), float32(s)
	}
}

func (r *refBackend) LayerNormBackward(dx, dw, db, dout, x, w, mean, rstd device.View, rows, c int) {
	ddx, ddw, ddb, d, xx, ww, m, rs := fl(dx), fl(dw), fl(db), fl(dout), fl(x), fl(w), fl(mean), fl(rstd)
	for i := 0; i < rows; i++ {
		mu, s := float64(m[i]), float64(rs[i])
		var dnMean, dnNorm float64
		for j := 0; j < c; j++ {
			norm := (float64(xx[i*c+j]) - mu) * s
			dn := float64(ww[j]) * float64(d[i*c+j])
			dnMean += dn
			dnNorm += dn * norm
		}
		dnMean /= float64(c)
		dnNorm /= float64(c)
		for j := 0; j < c; j++ {
			norm := (float64(xx[i*c+j]) - mu) * s
			dn := float64(ww[j]) * float64(d[i*c+j])
			ddb[j] += d[i*c+j]
			ddw[j] += float32(norm * float64(d[i*c+j]))
			ddx[i*c+j] += float32((dn - dnMean - norm*dnNorm) * s)
		}
	}
}

const refGeluK = 0.7978845608028654 // √(2/π)

func (r *refBackend) GELU(out, x device.View) {
	o, xx := fl(out), fl(x)
	for i, e := range xx {
		v := float64(e)
		o[i] = float32(0.5 * v * (1 + math.Tanh(refGeluK*(v+0.044715*v*v*v))))
	}
}

func (r *refBackend) GELUBackward(dx, x, dout device.View) {
	o, xx, d := fl(dx), fl(x), fl(dout)
	for i, e := range xx {
		v := float64(e)
		u := refGeluK * (v + 0.044715*v*v*v)
		th := math.Tanh(u)
		grad := 0.5*(1+th) + 0.5*v*(1-th*th)*refGeluK*(1+3*0.044715*v*v)
		o[i] = float32(grad * float64(d[i]))
	}
}

func (r *refBackend) Softmax(out, x device.View, rows, cols int) {
	o, xx := fl(out), fl(x)
	for i := 0; i < rows; i++ {
		row := xx[i*cols : i*cols+cols]
		mx := math.Inf(-1)
		for _, e := range row {
			mx = math.Max(mx, float64(e))
		}
		var s float64
		for _, e := range row {
			s += math.Exp(float64(e) - mx)
		}
		for j, e := range row {
			o[i*cols+j] = float32(math.Exp(float64(e)-mx) / s)
		}
	}
}

// qkv index of (b, t, part, head, d).
func refQKV(t, h, hs, bi, ti, part, hi, d int) int {
	return ((bi*t+ti)*3+part)*h*hs + hi*hs + d
}

func (r *refBackend) Attention(out, lse, qkv device.View, b, t, heads, hs int) {
	o, l, q := fl(out), fl(lse), fl(qkv)
	sc := 1 / math.Sqrt(float64(hs))
	if cap(r.scratch) < t {
		r.scratch = make([]float64, t)
	}
	p := r.scratch[:t]
	for bi := 0; bi < b; bi++ {
		for h := 0; h < heads; h++ {
			for i := 0; i < t; i++ {
				mx := math.Inf(-1)
				for j := 0; j <= i; j++ {
					var s float64
					for d := 0; d < hs; d++ {
						s += float64(q[refQKV(t, heads, hs, bi, i, 0, h, d)]) * float64(q[refQKV(t, heads, hs, bi, j, 1, h, d)])
					}
					p[j] = s * sc
					mx = math.Max(mx, p[j])
				}
				var z float64
				for j := 0; j <= i; j++ {
					p[j] = math.Exp(p[j] - mx)
					z += p[j]
				}
				l[(bi*heads+h)*t+i] = float32(mx + math.Log(z))
				for d := 0; d < hs; d++ {
					var s float64
					for j := 0; j <= i; j++ {
						s += p[j] / z * float64(q[refQKV(t, heads, hs, bi, j, 2, h, d)])
					}
					o[((bi*t+i)*heads+h)*hs+d] = float32(s)
				}
			}
		}
	}
}

func (r *refBackend) AttentionBackward(dqkv, dout, qkv, out, lse device.View, b, t, heads, hs int) {
	dq, do, q, o, l := fl(dqkv), fl(dout), fl(qkv), fl(out), fl(lse)
	for i := range dq {
		dq[i] = 0
	}
	sc := 1 / math.Sqrt(float64(hs))
	for bi := 0; bi < b; bi++ {
		for h := 0; h < heads; h++ {
			for i := 0; i < t; i++ {
				oi := ((bi*t+i)*heads + h) * hs
				var D float64
				for d := 0; d < hs; d++ {
					D += float64(do[oi+d]) * float64(o[oi+d])
				}
				L := float64(l[(bi*heads+h)*t+i])
				for j := 0; j <= i; j++ {
					var s, dp float64
					for d := 0; d < hs; d++ {
						s += float64(q[refQKV(t, heads, hs, bi, i, 0, h, d)]) * float64(q[refQKV(t, heads, hs, bi, j, 1, h, d)])
						dp += float64(do[oi+d]) * float64(q[refQKV(t, heads, hs, bi, j, 2, h, d)])
					}
					p := math.Exp(s*sc - L)
					ds := p * (dp - D) * sc
					for d := 0; d < hs; d++ {
						dq[refQKV(t, heads, hs, bi, j, 2, h, d)] += float32(p * float64(do[oi+d]))
						dq[refQKV(t, heads, hs, bi, i, 0, h, d)] += float32(ds * float64(q[refQKV(t, heads, hs, bi, j, 1, h, d)]))
						dq[refQKV(t, heads, hs, bi, j, 1, h, d)] += float32(ds * float64(q[refQKV(t, heads, hs, bi, i, 0, h, d)]))
					}
				}
			}
		}
	}
}

func (r *refBackend) CrossEntropy(losses, dlogits, logits, targets device.View, rows, v int, scale float32) {
	ls, lg, tg := fl(losses), fl(logits), ints(targets)
	var dl []float32
	if !dlogits.IsZero() {
		dl = fl(dlogits)
	}
	for i := 0; i < rows; i++ {
		row := lg[i*v : i*v+v]
		if tg[i] < 0 {
			ls[i] = 0
			for j := range v {
				if dl != nil {
					dl[i*v+j] = 0
				}
			}
			continue
		}
		mx := math.Inf(-1)
		for _, e := range row {
			mx = math.Max(mx, float64(e))
		}
		var z float64
		for _, e := range row {
			z += math.Exp(float64(e) - mx)
		}
		ls[i] = float32(mx + math.Log(z) - float64(row[tg[i]]))
		if dl != nil {
			for j := 0; j < v; j++ {
				p := math.Exp(float64(row[j])-mx) / z
				if j == int(tg[i]) {
					p--
				}
				dl[i*v+j] = scale * float32(p)
			}
		}
	}
}

func (r *refBackend) Sum(out, x device.View) {
	var s float64
	for _, e := range fl(x) {
		s += float64(e)
	}
	fl(out)[0] += float32(s)
}

func (r *refBackend) SumSquares(out, x device.View) {
	var s float64
	for _, e := range fl(x) {
		s += float64(e) * float64(e)
	}
	fl(out)[0] += float32(s)
}

func (r *refBackend) NonFinite(out, x device.View) {
	n := 0
	for _, e := range fl(x) {
		if math.IsNaN(float64(e)) || math.IsInf(float64(e), 0) {
			n++
		}
	}
	fl(out)[0] += float32(n)
}

func (r *refBackend) AdamWUpdate(p, g, m, v device.View, h device.AdamW) {
	pp, gg, mm, vv := fl(p), fl(g), fl(m), fl(v)
	bc1 := 1 - math.Pow(h.Beta1, float64(h.Step))
	bc2 := 1 - math.Pow(h.Beta2, float64(h.Step))
	for i := range pp {
		gr := float64(h.GradScale) * float64(gg[i])
		mm[i] = float32(h.Beta1*float64(mm[i]) + (1-h.Beta1)*gr)
		vv[i] = float32(h.Beta2*float64(vv[i]) + (1-h.Beta2)*gr*gr)
		upd := float64(mm[i])/bc1/(math.Sqrt(float64(vv[i])/bc2)+h.Eps) + h.WeightDecay*float64(pp[i])
		pp[i] -= float32(h.LR * upd)
	}
}

func (r *refBackend) SGDUpdate(p, g, mom device.View, h device.SGD) {
	pp, gg := fl(p), fl(g)
	for i := range pp {
		gr := float64(h.GradScale)*float64(gg[i]) + h.WeightDecay*float64(pp[i])
		if h.Momentum != 0 {
			mm := fl(mom)
			mm[i] = float32(h.Momentum*float64(mm[i]) + gr)
			gr = float64(mm[i])
		}
		pp[i] -= float32(h.LR * gr)
	}
}

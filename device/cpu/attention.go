package cpu

import (
	"fmt"
	"math"

	"github.com/loomtrain/loom/device"
)

// Fused causal attention (FlashAttention-2 on the CPU).
//
// qkv is (b, t, 3, heads, hs): token row s of batch bb starts at
// (bb·t+s)·3C (C = heads·hs) and holds q, k and v of every head, head h's
// q at +h·hs, its k at +C+h·hs, its v at +2C+h·hs. out is (b, t, C) and lse
// is (b, heads, t).
//
// Both passes work on square tiles of B query rows × B keys, B a multiple
// of the GEMM kernel's mr and nr (96 for the AVX kernels), and run every
// small product through the package's register-tiled micro-kernel on
// operands packed into its panel layouts (A: panels of mr rows, depth-major;
// B: panels of nr columns, depth-major), zero-padded to whole tiles so edge
// tiles need no special kernels. Padded or masked scores get P = 0, so they
// contribute nothing. The t×t score matrix is never formed: a worker holds
// one B×B score tile plus the packed keys/values (or queries) of one head,
// O(t·hs) floats that are grown once and reused across calls.
//
// Work is split across the device's threads by (batch, head) pair when
// there are enough pairs to keep every thread busy, and otherwise by query
// tile (forward) or by key tile for dK/dV plus query tile for dQ (backward,
// which then recomputes the scores of a tile pair twice instead of
// synchronising dQ across threads).

// attnScratch is one worker's reusable attention workspace.
type attnScratch struct {
	f []float32
}

// Attention implements device.Backend.
func (d *Device) Attention(out, lse, qkv device.View, b, t, heads, hs int) {
	d.attentionForward(d.HostF32(out), d.HostF32(lse), d.HostF32(qkv), b, t, heads, hs)
}

// AttentionBackward implements device.Backend.
func (d *Device) AttentionBackward(dqkv, dout, qkv, out, lse device.View, b, t, heads, hs int) {
	d.attentionBackward(d.HostF32(dqkv), d.HostF32(dout), d.HostF32(qkv), d.HostF32(out), d.HostF32(lse), b, t, heads, hs)
}

func checkAttention(op string, b, t, heads, hs int, sizes ...[2]int) {
	if b < 0 || t < 0 || heads < 0 || hs < 0 {
		panic(fmt.Sprintf("cpu device: %s with b=%d t=%d heads=%d hs=%d", op, b, t, heads, hs))
	}
	for _, s := range sizes {
		if s[0] != s[1] {
			panic(fmt.Sprintf("cpu device: %s (b=%d t=%d heads=%d hs=%d) got a view of %d elements, want %d", op, b, t, heads, hs, s[0], s[1]))
		}
	}
}

// attnTile is the tile edge B for kernel k: lcm(mr, nr), doubled until it
// is at least 64.
func attnTile(k *kernel) int {
	a, c := k.mr, k.nr
	for c != 0 {
		a, c = c, a%c
	}
	l := k.mr / a * k.nr
	for l < 64 {
		l *= 2
	}
	return l
}

// attnWorkers returns the per-worker scratch slices, each at least n long.
func (d *Device) attnWorkers(n int) []attnScratch {
	if len(d.attn) < d.threads {
		d.attn = make([]attnScratch, d.threads)
	}
	for i := range d.attn {
		grow(&d.attn[i].f, n)
	}
	return d.attn
}

// carve splits the front n elements off *p.
func carve(p *[]float32, n int) []float32 {
	s := (*p)[:n:n]
	*p = (*p)[n:]
	return s
}

// mm is C[0:m, 0:n] = alpha·A·B + beta·C over packed A (m/mr panels of
// kd×mr) and packed B (n/nr panels of kd×nr); m and n are multiples of mr
// and nr, C has row stride ldc and room for the whole m×n.
func (k *kernel) mm(m, n, kd int, a, b, c []float32, ldc int, alpha, beta float32) {
	mr, nr := k.mr, k.nr
	_ = a[m*kd-1]
	_ = b[n*kd-1]
	_ = c[(m-1)*ldc+n-1]
	for j := 0; j < n; j += nr {
		bp := &b[j*kd]
		for i := 0; i < m; i += mr {
			k.f32(kd, &a[i*kd], bp, &c[i*ldc+j], ldc, alpha, beta)
		}
	}
}

// packDepth packs the B rows [0, rows) of src (row r at base+r·ld, hs
// wide) depth-major in panels of p rows: dst[(r/p)·hs·p + d·p + r%p] =
// s·src[r][d]; rows [rows, B) are zero. It serves as an A operand (p = mr)
// or as a transposed B operand (p = nr).
//
// Whole 8-row groups of 8-wide panels go through the kernel's 8×8
// transposer when s is 1 (K and V), whole 6-row panels through a gather
// (Q and dO for the 6-row kernels); the rest element by element.
func (k *kernel) packDepth(dst, src []float32, base, ld, rows, B, hs, p int, s float32) {
	dst = dst[:B*hs]
	r := 0
	switch {
	case s == 1 && p%8 == 0 && hs%8 == 0 && hs > 0 && k.transpose8 != nil:
		for ; r+8 <= rows; r += 8 {
			o := r/p*hs*p + r%p
			_ = dst[o+(hs-1)*p+7]
			_ = src[base+(r+7)*ld+hs-1]
			k.transpose8(&dst[o], p, &src[base+r*ld], ld, hs/8)
		}
	case p == 6 && hs > 0:
		for ; r+6 <= rows; r += 6 {
			pan := dst[r*hs : (r+6)*hs]
			b0 := base + r*ld
			r0, r1, r2 := src[b0:b0+hs], src[b0+ld:b0+ld+hs], src[b0+2*ld:b0+2*ld+hs]
			r3, r4, r5 := src[b0+3*ld:b0+3*ld+hs], src[b0+4*ld:b0+4*ld+hs], src[b0+5*ld:b0+5*ld+hs]
			for dd := range r0 {
				d := (*[6]float32)(pan[6*dd:])
				d[0], d[1], d[2], d[3], d[4], d[5] = s*r0[dd], s*r1[dd], s*r2[dd], s*r3[dd], s*r4[dd], s*r5[dd]
			}
		}
	}
	for ; r < B; r++ {
		pan := dst[r/p*hs*p+r%p:]
		if r >= rows {
			for dd := 0; dd < hs; dd++ {
				pan[dd*p] = 0
			}
			continue
		}
		row := src[base+r*ld : base+r*ld+hs]
		for dd, v := range row {
			pan[dd*p] = s * v
		}
	}
}

// packRows packs the B rows [0, rows) of src (row r at base+r·ld, hs wide)
// as a B operand of depth B and width hsP (hs rounded up to nr): panel q
// holds dst[q·B·nr + r·nr + c] = src[r][q·nr+c], zero outside the data.
func packRows(dst, src []float32, base, ld, rows, B, hs, hsP, nr int) {
	dst = dst[:B*hsP]
	for q := 0; q < hsP; q += nr {
		pan := dst[q*B : (q+nr)*B]
		w := max(0, min(nr, hs-q))
		for r := 0; r < B; r++ {
			o := pan[r*nr : r*nr+nr]
			if r >= rows {
				clear(o)
				continue
			}
			copy(o, src[base+r*ld+q:base+r*ld+q+w])
			clear(o[w:])
		}
	}
}

// packA packs rows [0, m) of the row-major B×B tile x (row stride B; m a
// multiple of mr) as an A operand of depth B: dst[(r/mr)·B·mr + c·mr + r%mr]
// = x[r][c].
func packA(dst, x []float32, B, mr, m int) {
	dst = dst[:B*B]
	for r0 := 0; r0 < m; r0 += mr {
		pan := dst[r0*B : (r0+mr)*B]
		for i := 0; i < mr; i++ {
			row := x[(r0+i)*B : (r0+i+1)*B]
			for c, v := range row {
				pan[c*mr+i] = v
			}
		}
	}
}

// packAT packs columns [0, m) of the row-major B×B tile x (m a multiple of
// mr), transposed, as an A operand of depth B: dst[(c/mr)·B·mr + r·mr +
// c%mr] = x[r][c].
func packAT(dst, x []float32, B, mr, m int) {
	dst = dst[:B*B]
	for c0 := 0; c0 < m; c0 += mr {
		pan := dst[c0*B : (c0+mr)*B]
		for r := 0; r < B; r++ {
			copy(pan[r*mr:r*mr+mr], x[r*B+c0:r*B+c0+mr])
		}
	}
}

// attnSplit reports whether work should be split below (batch, head)
// pairs: when there are too few pairs to load every thread evenly.
func (d *Device) attnSplit(pairs, tiles int) bool {
	if d.threads <= 1 || tiles <= 1 {
		return false
	}
	return pairs < 4*d.threads && pairs%d.threads != 0
}

// attentionForward is Attention on host slices.
func (d *Device) attentionForward(out, lse, qkv []float32, b, t, heads, hs int) {
	c := heads * hs
	checkAttention("Attention", b, t, heads, hs,
		[2]int{len(qkv), b * t * 3 * c}, [2]int{len(out), b * t * c}, [2]int{len(lse), b * heads * t})
	if b*t*heads == 0 {
		return
	}
	if hs == 0 {
		// Every score is 0: lse = log(s+1) for query s; out is empty.
		for bh := 0; bh < b*heads; bh++ {
			for s := 0; s < t; s++ {
				lse[bh*t+s] = float32(math.Log(float64(s + 1)))
			}
		}
		return
	}
	k := d.kern
	B := attnTile(k)
	hsP := roundUp(hs, k.nr)
	nt := ceilDiv(t, B)
	pairs := b * heads
	need := nt*B*hs + nt*B*hsP + B*hs + 2*B*B + B*hsP + 2*B
	ws := d.attnWorkers(need)
	scale := float32(1 / math.Sqrt(float64(hs)))
	split := d.attnSplit(pairs, nt)
	tasks := pairs
	if split {
		tasks = pairs * nt
	}
	d.parallel(d.threads, tasks, func(w, task int) {
		bh, iLo, iHi := task, 0, nt
		if split {
			// Heaviest (last) query tiles first.
			i := nt - 1 - task/pairs
			bh, iLo, iHi = task%pairs, i, i+1
		}
		f := ws[w].f
		attnFwdTask(k, &f, out, lse, qkv, bh/heads, bh%heads, t, heads, hs, B, hsP, iLo, iHi, scale)
	})
}

func attnFwdTask(k *kernel, f *[]float32, out, lse, qkv []float32, bb, h, t, heads, hs, B, hsP, iLo, iHi int, scale float32) {
	c := heads * hs
	ld := 3 * c
	base := bb * t * ld
	nk := iHi // key tiles [0, iHi)
	kt := carve(f, nk*B*hs)
	vp := carve(f, nk*B*hsP)
	qp := carve(f, B*hs)
	sc := carve(f, B*B)
	pp := carve(f, B*B)
	o := carve(f, B*hsP)
	mx := carve(f, B)
	l := carve(f, B)
	for j := 0; j < nk; j++ {
		rows := min(B, t-j*B)
		rb := base + j*B*ld
		k.packDepth(kt[j*B*hs:], qkv, rb+c+h*hs, ld, rows, B, hs, k.nr, 1)
		packRows(vp[j*B*hsP:], qkv, rb+2*c+h*hs, ld, rows, B, hs, hsP, k.nr)
	}
	for i := iLo; i < iHi; i++ {
		q0 := i * B
		rows := min(B, t-q0)
		k.packDepth(qp, qkv, base+q0*ld+h*hs, ld, rows, B, hs, k.mr, scale)
		clear(o)
		for r := range mx {
			mx[r] = float32(math.Inf(-1))
			l[r] = 0
		}
		// A tile's products run over its rows and columns rounded up to the
		// register tile, not the whole B×B: the last tile of a short
		// sequence (T = 128 on B = 96 leaves 32) would otherwise cost a
		// full one. Rows and columns past them are cleared below.
		mRows := roundUp(rows, k.mr)
		for j := 0; j <= i; j++ {
			cols := min(B, t-j*B)
			k.mm(mRows, roundUp(cols, k.nr), hs, qp, kt[j*B*hs:], sc, B, 1, 0)
			for r := 0; r < B; r++ {
				p := sc[r*B : r*B+B]
				n := cols
				if j == i {
					n = min(n, r+1)
				}
				if r >= rows {
					n = 0
				}
				if n == 0 {
					clear(p)
					continue
				}
				m := mx[r]
				for _, v := range p[:n] {
					m = max(m, v)
				}
				sum := k.expSum(p[:n], m)
				clear(p[n:])
				if m != mx[r] {
					corr := exp32(mx[r] - m)
					l[r] *= corr
					if j > 0 {
						orow := o[r*hsP : r*hsP+hs]
						for dd := range orow {
							orow[dd] *= corr
						}
					}
					mx[r] = m
				}
				l[r] += sum
			}
			packA(pp, sc, B, k.mr, mRows)
			k.mm(mRows, hsP, B, pp, vp[j*B*hsP:], o, hsP, 1, 1)
		}
		for r := 0; r < rows; r++ {
			s := q0 + r
			inv := 1 / l[r]
			dst := out[(bb*t+s)*c+h*hs : (bb*t+s)*c+h*hs+hs]
			for dd := range dst {
				dst[dd] = o[r*hsP+dd] * inv
			}
			lse[(bb*heads+h)*t+s] = mx[r] + float32(math.Log(float64(l[r])))
		}
	}
}

// attentionBackward is AttentionBackward on host slices.
func (d *Device) attentionBackward(dqkv, dout, qkv, out, lse []float32, b, t, heads, hs int) {
	c := heads * hs
	checkAttention("AttentionBackward", b, t, heads, hs,
		[2]int{len(qkv), b * t * 3 * c}, [2]int{len(dqkv), b * t * 3 * c},
		[2]int{len(out), b * t * c}, [2]int{len(dout), b * t * c}, [2]int{len(lse), b * heads * t})
	if b*t*heads*hs == 0 {
		return
	}
	k := d.kern
	B := attnTile(k)
	hsP := roundUp(hs, k.nr)
	nt := ceilDiv(t, B)
	pairs := b * heads
	// Keys: KT, K rows, VT; queries: Q (depth), Q rows, dO (depth), dO
	// rows, D, lse, dQ; tiles: S, dP, packed A, dK, dV.
	need := nt*B*(2*hs+hsP) + nt*B*(2*hs+3*hsP+2) + 3*B*B + 2*B*hsP
	ws := d.attnWorkers(need)
	scale := float32(1 / math.Sqrt(float64(hs)))
	split := d.attnSplit(pairs, nt)
	tasks := pairs
	if split {
		tasks = 2 * pairs * nt
	}
	d.parallel(d.threads, tasks, func(w, task int) {
		a := bwdArgs{k: k, dqkv: dqkv, dout: dout, qkv: qkv, out: out, lse: lse,
			t: t, heads: heads, hs: hs, B: B, hsP: hsP, scale: scale,
			jLo: 0, jHi: nt, iLo: 0, iHi: nt, kv: true, q: true}
		bh := task
		if split {
			// dK/dV of key tile j (heaviest: j = 0) first, then dQ of
			// query tile i (heaviest: i = nt-1).
			bh = task % pairs
			if n := task / pairs; n < nt {
				a.jLo, a.jHi, a.iLo, a.q = n, n+1, n, false
			} else {
				i := 2*nt - 1 - n
				a.jHi, a.iLo, a.iHi, a.kv = i+1, i, i+1, false
			}
		}
		a.bb, a.h = bh/heads, bh%heads
		f := ws[w].f
		attnBwdTask(&a, &f)
	})
}

type bwdArgs struct {
	k                           *kernel
	dqkv, dout, qkv, out, lse   []float32
	bb, h, t, heads, hs, B, hsP int
	scale                       float32
	jLo, jHi, iLo, iHi          int // key tiles, query tiles
	kv, q                       bool
}

// attnBwdTask accumulates, over key tiles [jLo, jHi) and query tiles
// [iLo, iHi) with j ≤ i, dK and dV of those key tiles (if kv; written to
// dqkv) and dQ of those query tiles (if q; written to dqkv). With kv the
// query range must hold every query tile from jLo on; with q the key range
// must hold every key tile up to iHi-1.
func attnBwdTask(a *bwdArgs, f *[]float32) {
	k, B, hs, hsP, t := a.k, a.B, a.hs, a.hsP, a.t
	c := a.heads * hs
	ld := 3 * c
	base := a.bb * t * ld
	obase := a.bb * t * c
	nj := a.jHi - a.jLo
	iLo := max(a.iLo, a.jLo)
	ni := a.iHi - iLo
	kt := carve(f, nj*B*hs)
	kr := carve(f, nj*B*hsP)
	vt := carve(f, nj*B*hs)
	qd := carve(f, ni*B*hs)
	qr := carve(f, ni*B*hsP)
	gd := carve(f, ni*B*hs)
	gr := carve(f, ni*B*hsP)
	dd := carve(f, ni*B)
	ls := carve(f, ni*B)
	dq := carve(f, ni*B*hsP)
	sc := carve(f, B*B)
	dp := carve(f, B*B)
	ap := carve(f, B*B)
	dk := carve(f, B*hsP)
	dv := carve(f, B*hsP)
	h := a.h
	for j := a.jLo; j < a.jHi; j++ {
		x := j - a.jLo
		rows := min(B, t-j*B)
		rb := base + j*B*ld
		k.packDepth(kt[x*B*hs:], a.qkv, rb+c+h*hs, ld, rows, B, hs, k.nr, 1)
		if a.q {
			packRows(kr[x*B*hsP:], a.qkv, rb+c+h*hs, ld, rows, B, hs, hsP, k.nr)
		}
		k.packDepth(vt[x*B*hs:], a.qkv, rb+2*c+h*hs, ld, rows, B, hs, k.nr, 1)
	}
	for i := iLo; i < a.iHi; i++ {
		x := i - iLo
		q0 := i * B
		rows := min(B, t-q0)
		rb := base + q0*ld + h*hs
		ob := obase + q0*c + h*hs
		k.packDepth(qd[x*B*hs:], a.qkv, rb, ld, rows, B, hs, k.mr, 1)
		k.packDepth(gd[x*B*hs:], a.dout, ob, c, rows, B, hs, k.mr, 1)
		if a.kv {
			packRows(qr[x*B*hsP:], a.qkv, rb, ld, rows, B, hs, hsP, k.nr)
			packRows(gr[x*B*hsP:], a.dout, ob, c, rows, B, hs, hsP, k.nr)
		}
		for r := 0; r < B; r++ {
			if r >= rows {
				dd[x*B+r], ls[x*B+r] = 0, 0
				continue
			}
			var s float32
			g := a.dout[ob+r*c : ob+r*c+hs]
			o := a.out[ob+r*c : ob+r*c+hs]
			for e, v := range g {
				s += v * o[e]
			}
			dd[x*B+r] = s
			ls[x*B+r] = a.lse[(a.bb*a.heads+h)*t+q0+r]
		}
	}
	if a.q {
		clear(dq)
	}
	for j := a.jLo; j < a.jHi; j++ {
		y := j - a.jLo
		cols := min(B, t-j*B)
		clear(dk)
		clear(dv)
		for i := max(j, iLo); i < a.iHi; i++ {
			x := i - iLo
			rows := min(B, t-i*B)
			// Products over rounded rows and columns, as in the forward.
			mRows, nCols := roundUp(rows, k.mr), roundUp(cols, k.nr)
			k.mm(mRows, nCols, hs, qd[x*B*hs:], kt[y*B*hs:], sc, B, a.scale, 0)
			k.mm(mRows, nCols, hs, gd[x*B*hs:], vt[y*B*hs:], dp, B, 1, 0)
			for r := 0; r < B; r++ {
				p := sc[r*B : r*B+B]
				g := dp[r*B : r*B+B]
				n := cols
				if j == i {
					n = min(n, r+1)
				}
				if r >= rows {
					n = 0
				}
				l, di := ls[x*B+r], dd[x*B+r]
				k.expBwd(p[:n], g[:n], l, di)
				clear(p[n:])
				clear(g[n:])
			}
			if a.kv {
				keys := roundUp(cols, k.mr)
				packAT(ap, sc, B, k.mr, keys)
				k.mm(keys, hsP, B, ap, gr[x*B*hsP:], dv, hsP, 1, 1)
				packAT(ap, dp, B, k.mr, keys)
				k.mm(keys, hsP, B, ap, qr[x*B*hsP:], dk, hsP, a.scale, 1)
			}
			if a.q {
				packA(ap, dp, B, k.mr, mRows)
				k.mm(mRows, hsP, B, ap, kr[y*B*hsP:], dq[x*B*hsP:], hsP, a.scale, 1)
			}
		}
		if a.kv {
			for r := 0; r < cols; r++ {
				row := base + (j*B+r)*ld + h*hs
				copy(a.dqkv[row+c:row+c+hs], dk[r*hsP:r*hsP+hs])
				copy(a.dqkv[row+2*c:row+2*c+hs], dv[r*hsP:r*hsP+hs])
			}
		}
	}
	if a.q {
		for i := iLo; i < a.iHi; i++ {
			x := i - iLo
			rows := min(B, t-i*B)
			for r := 0; r < rows; r++ {
				row := base + (i*B+r)*ld + h*hs
				copy(a.dqkv[row:row+hs], dq[(x*B+r)*hsP:(x*B+r)*hsP+hs])
			}
		}
	}
}

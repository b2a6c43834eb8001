package model

import (
	"fmt"

	"github.com/loomtrain/loom/device"
	"github.com/loomtrain/loom/tensor"
)

const gptLNEps = 1e-5

// gptLayerActs are what the forward pass of one block saves for backward
// (like llm.c's ActivationTensors), each sized for the arena's maxTokens
// rows; use takes the first bt rows.
type gptLayerActs struct {
	ln1, ln1Mean, ln1Rstd device.View // (bt, C), (bt), (bt)
	qkv                   device.View // (bt, 3C): (b, t, 3, heads, hs)
	atty                  device.View // (bt, C): attention output (b, t, heads, hs)
	lse                   device.View // (b, heads, t)
	resid2                device.View // (bt, C): x + attn
	ln2, ln2Mean, ln2Rstd device.View
	fch, fchGelu          device.View // (bt, 4C)
	out                   device.View // (bt, C): resid2 + mlp, the block output
}

// gptActs is the activation arena: one F32 buffer carved into the saved
// tensors and backward scratch, allocated for maxTokens = b·t rows, plus the
// I32 position ids.
type gptActs struct {
	maxTokens int
	buf, pos  device.Buffer
	in        device.View // stage input: the embedding on stage 0, a copy of the incoming activations otherwise
	layers    []gptLayerActs
	lnf       device.View
	lnfMean   device.View
	lnfRstd   device.View
	logits    device.View // (bt, V); dlogits in place after Loss
	dres      device.View // running gradient of the residual stream (bt, C)
	dtmp      device.View // (bt, C): gradient of a layernorm output / attention output
	dqkv      device.View // (bt, 3C)
	dfch      device.View // (bt, 4C)
}

func (a *gptActs) free() {
	a.buf.Free()
	a.pos.Free()
}

type gptForwardState struct {
	b, t, bt int
	ids      device.View // token ids of the last forward (stage 0)
	posB     int         // (b, t) the position ids were uploaded for
	posT     int
	valid    bool
}

// Reserve allocates the activation arena for up to maxTokens = b·t tokens per
// forward. Forward calls it on its own (panicking if memory runs out); calling
// it first gets the error instead. A smaller request than the current arena
// keeps it.
func (g *GPT) Reserve(maxTokens int) error {
	if maxTokens <= 0 {
		return fmt.Errorf("gpt: reserve %d tokens", maxTokens)
	}
	if g.act != nil && g.act.maxTokens >= maxTokens {
		return nil
	}
	C, V, H, L := g.cfg.DModel, g.cfg.Vocab, g.cfg.Heads, g.r.Last-g.r.First
	total := g.cfg.activationFloats(L, g.Last(), maxTokens)
	buf, err := g.be.Alloc(tensor.F32, total)
	if err != nil {
		return fmt.Errorf("gpt: activations for %d tokens (%d floats): %w", maxTokens, total, err)
	}
	pos, err := g.be.Alloc(tensor.I32, maxTokens)
	if err != nil {
		buf.Free()
		return fmt.Errorf("gpt: position ids for %d tokens: %w", maxTokens, err)
	}
	if g.act != nil {
		g.act.free()
	}
	a := &gptActs{maxTokens: maxTokens, buf: buf, pos: pos}
	off := 0
	take := func(width int) device.View {
		v := device.View{Buf: buf, Off: off, N: maxTokens * width}
		off += maxTokens * width
		return v
	}
	a.in = take(C)
	a.layers = make([]gptLayerActs, L)
	for i := range a.layers {
		la := &a.layers[i]
		la.ln1, la.ln1Mean, la.ln1Rstd = take(C), take(1), take(1)
		la.qkv = take(3 * C)
		la.atty = take(C)
		la.lse = take(H)
		la.resid2 = take(C)
		la.ln2, la.ln2Mean, la.ln2Rstd = take(C), take(1), take(1)
		la.fch, la.fchGelu = take(4*C), take(4*C)
		la.out = take(C)
	}
	if g.Last() {
		a.lnf, a.lnfMean, a.lnfRstd = take(C), take(1), take(1)
		a.logits = take(V)
	}
	a.dres, a.dtmp, a.dqkv, a.dfch = take(C), take(C), take(3*C), take(4*C)
	if off != total {
		panic(fmt.Sprintf("gpt: arena carved %d of %d floats", off, total))
	}
	g.act = a
	g.fwd.posB, g.fwd.posT = 0, 0
	return nil
}

// rows returns the first n·width elements of an arena slot.
func rows(v device.View, n, width int) device.View { return v.Slice(0, n*width) }

// mm runs C = op(A)·op(B) + beta·C at the model's precision, with the row
// strides of densely stored operands.
func (g *GPT) mm(transA, transB bool, m, n, k int, a, b, c device.View, beta float32) {
	lda, ldb := k, n
	if transA {
		lda = m
	}
	if transB {
		ldb = k
	}
	g.be.MatMul(device.GemmSpec{
		TransA: transA, TransB: transB, M: m, N: n, K: k,
		Alpha: 1, Beta: beta, A: a, B: b, C: c,
		LDA: lda, LDB: ldb, LDC: n,
		Precision: g.cfg.precision(),
	})
}

// linear writes y (rows×out) = x (rows×in)·W + bias (plus beta·y), W
// stored (in, out).
func (g *GPT) linear(y, x, w, bias device.View, rows, in, out int, beta float32) {
	g.mm(false, false, rows, out, in, x, w, y, beta)
	g.be.BiasAdd(y, bias, rows, out)
}

// linearBackward accumulates dW += xᵀ·dy and db += colsum(dy), and writes (or
// with betaX = 1 accumulates) dx = dy·Wᵀ; dx may be the zero View.
func (g *GPT) linearBackward(dx, dw, db, dy, x, w device.View, rows, in, out int, betaX float32) {
	g.mm(true, false, in, out, rows, x, dy, dw, 1)
	if !db.IsZero() {
		g.be.BiasGrad(db, dy, rows, out)
	}
	if !dx.IsZero() {
		g.mm(false, true, rows, in, out, dy, w, dx, betaX)
	}
}

// Forward runs the stage on b sequences of t tokens. On stage 0, in is the
// b·t I32 token ids (they must stay unchanged until Backward); otherwise it
// is the previous stage's (b, t, C) F32 output (copied). It returns the
// (b·t, C) hidden states, or on the last stage the (b·t, V) logits: a view of
// the stage's arena, valid until the next Forward.
func (g *GPT) Forward(in device.View, b, t int) device.View {
	C, V, H := g.cfg.DModel, g.cfg.Vocab, g.cfg.Heads
	if b <= 0 || t <= 0 || t > g.cfg.Context {
		panic(fmt.Sprintf("gpt: forward b=%d t=%d (context %d)", b, t, g.cfg.Context))
	}
	bt := b * t
	if g.act == nil || g.act.maxTokens < bt {
		if err := g.Reserve(bt); err != nil {
			panic(err)
		}
	}
	a := g.act
	x := rows(a.in, bt, C)
	if g.First() {
		if in.DType() != tensor.I32 || in.N != bt {
			panic(fmt.Sprintf("gpt: stage 0 input must be %d I32 token ids, got %d %v", bt, in.N, in.DType()))
		}
		if g.fwd.posB != b || g.fwd.posT != t {
			if cap(g.posHost) < bt {
				g.posHost = make([]int32, bt)
			}
			ph := g.posHost[:bt]
			for i := range ph {
				ph[i] = int32(i % t)
			}
			g.be.UploadInt32(rows(device.Whole(a.pos), bt, 1), ph)
			g.fwd.posB, g.fwd.posT = b, t
		}
		g.be.Embedding(x, g.pv(g.wte), in, bt, C, false)
		g.be.Embedding(x, g.pv(g.wpe), rows(device.Whole(a.pos), bt, 1), bt, C, true)
		g.fwd.ids = in
	} else {
		if in.DType() != tensor.F32 || in.N != bt*C {
			panic(fmt.Sprintf("gpt: stage input must be %d F32 activations, got %d %v", bt*C, in.N, in.DType()))
		}
		g.be.Copy(x, in)
	}
	for i, bp := range g.blocks {
		la := &a.layers[i]
		ln1 := rows(la.ln1, bt, C)
		qkv := rows(la.qkv, bt, 3*C)
		atty := rows(la.atty, bt, C)
		r2 := rows(la.resid2, bt, C)
		ln2 := rows(la.ln2, bt, C)
		fch := rows(la.fch, bt, 4*C)
		fchg := rows(la.fchGelu, bt, 4*C)
		out := rows(la.out, bt, C)

		g.be.LayerNorm(ln1, rows(la.ln1Mean, bt, 1), rows(la.ln1Rstd, bt, 1), x, g.pv(bp.ln1w), g.pv(bp.ln1b), bt, C, gptLNEps)
		g.linear(qkv, ln1, g.pv(bp.attnW), g.pv(bp.attnB), bt, C, 3*C, 0)
		g.be.Attention(atty, rows(la.lse, bt, H), qkv, b, t, H, C/H)
		g.be.Copy(r2, x)
		g.linear(r2, atty, g.pv(bp.projW), g.pv(bp.projB), bt, C, C, 1)
		g.be.LayerNorm(ln2, rows(la.ln2Mean, bt, 1), rows(la.ln2Rstd, bt, 1), r2, g.pv(bp.ln2w), g.pv(bp.ln2b), bt, C, gptLNEps)
		g.linear(fch, ln2, g.pv(bp.fcW), g.pv(bp.fcB), bt, C, 4*C, 0)
		g.be.GELU(fchg, fch)
		g.be.Copy(out, r2)
		g.linear(out, fchg, g.pv(bp.fcProjW), g.pv(bp.fcProjB), bt, 4*C, C, 1)
		x = out
	}
	g.fwd.b, g.fwd.t, g.fwd.bt, g.fwd.valid = b, t, bt, true
	g.lossDone = false
	if !g.Last() {
		return x
	}
	lnf := rows(a.lnf, bt, C)
	g.be.LayerNorm(lnf, rows(a.lnfMean, bt, 1), rows(a.lnfRstd, bt, 1), x, g.pv(g.lnfw), g.pv(g.lnfb), bt, C, gptLNEps)
	logits := rows(a.logits, bt, V)
	g.mm(false, true, bt, V, C, lnf, g.headW(), logits, 0)
	return logits
}

// Loss computes, on the last stage after Forward, each row's cross-entropy
// against the b·t I32 targets (negative: ignored) into losses (b·t F32) and
// replaces the logits by dlogits = scale·(softmax − onehot) for Backward. It
// does not divide by the token count: the caller scales the summed gradient
// (e.g. scale = 1, then GradScale = 1/global tokens in the optimiser).
func (g *GPT) Loss(targets, losses device.View, scale float32) {
	if !g.Last() {
		panic("gpt: Loss on a stage without the head")
	}
	if !g.fwd.valid {
		panic("gpt: Loss before Forward")
	}
	if g.lossDone {
		panic("gpt: Loss twice after one Forward (the logits were replaced by their gradient)")
	}
	bt, V := g.fwd.bt, g.cfg.Vocab
	logits := rows(g.act.logits, bt, V)
	g.be.CrossEntropy(losses, logits, logits, targets, bt, V, scale)
	g.lossDone = true
}

// Backward back-propagates through the stage after Forward (and, on the last
// stage, Loss). dout is the gradient of the stage output, (b·t, C) F32, or
// the zero View on the last stage, which uses the loss gradient. Parameter
// gradients are accumulated into GradBuffer. It returns the gradient of the
// stage input, (b·t, C) F32 valid until the next Backward, or the zero View
// on stage 0.
func (g *GPT) Backward(dout device.View) device.View {
	if !g.fwd.valid {
		panic("gpt: Backward before Forward")
	}
	C, V, H := g.cfg.DModel, g.cfg.Vocab, g.cfg.Heads
	b, t, bt := g.fwd.b, g.fwd.t, g.fwd.bt
	a := g.act
	dres := rows(a.dres, bt, C)
	dtmp := rows(a.dtmp, bt, C)
	L := len(g.blocks)
	blockOut := func(i int) device.View { // input of block i+1
		if i < 0 {
			return rows(a.in, bt, C)
		}
		return rows(a.layers[i].out, bt, C)
	}
	if g.Last() {
		if !dout.IsZero() {
			panic("gpt: Backward on the last stage takes the zero View (the loss gradient)")
		}
		if !g.lossDone {
			panic("gpt: Backward on the last stage before Loss")
		}
		dlogits := rows(a.logits, bt, V)
		lnf := rows(a.lnf, bt, C)
		// The head is a (V, C) table: dW_head += dlogitsᵀ·lnf; dlnf = dlogits·W_head.
		g.mm(true, false, V, C, bt, dlogits, lnf, g.headG(), 1)
		g.mm(false, false, bt, C, V, dlogits, g.headW(), dtmp, 0)
		g.be.Fill(dres, 0)
		g.be.LayerNormBackward(dres, g.gv(g.lnfw), g.gv(g.lnfb), dtmp, blockOut(L-1), g.pv(g.lnfw),
			rows(a.lnfMean, bt, 1), rows(a.lnfRstd, bt, 1), bt, C)
		if g.OnLayerGrads != nil {
			lo := g.finalLo
			if g.cfg.TieEmbeddings {
				lo = g.params[g.lnfw].Offset
			}
			g.OnLayerGrads(lo, g.nparams)
		}
	} else {
		if dout.DType() != tensor.F32 || dout.N != bt*C {
			panic(fmt.Sprintf("gpt: Backward dout must be %d F32, got %d", bt*C, dout.N))
		}
		g.be.Copy(dres, dout)
	}
	dqkv := rows(a.dqkv, bt, 3*C)
	dfch := rows(a.dfch, bt, 4*C)
	for i := L - 1; i >= 0; i-- {
		bp := g.blocks[i]
		la := &a.layers[i]
		r2 := rows(la.resid2, bt, C)
		fch := rows(la.fch, bt, 4*C)
		// MLP: out = r2 + fcProj(gelu(fc(ln2(r2)))).
		g.linearBackward(dfch, g.gv(bp.fcProjW), g.gv(bp.fcProjB), dres, rows(la.fchGelu, bt, 4*C), g.pv(bp.fcProjW), bt, 4*C, C, 0)
		g.be.GELUBackward(dfch, fch, dfch)
		g.linearBackward(dtmp, g.gv(bp.fcW), g.gv(bp.fcB), dfch, rows(la.ln2, bt, C), g.pv(bp.fcW), bt, C, 4*C, 0)
		g.be.LayerNormBackward(dres, g.gv(bp.ln2w), g.gv(bp.ln2b), dtmp, r2, g.pv(bp.ln2w),
			rows(la.ln2Mean, bt, 1), rows(la.ln2Rstd, bt, 1), bt, C)
		// Attention: r2 = x + proj(attn(qkv(ln1(x)))).
		atty := rows(la.atty, bt, C)
		g.linearBackward(dtmp, g.gv(bp.projW), g.gv(bp.projB), dres, atty, g.pv(bp.projW), bt, C, C, 0)
		g.be.AttentionBackward(dqkv, dtmp, rows(la.qkv, bt, 3*C), atty, rows(la.lse, bt, H), b, t, H, C/H)
		g.linearBackward(dtmp, g.gv(bp.attnW), g.gv(bp.attnB), dqkv, rows(la.ln1, bt, C), g.pv(bp.attnW), bt, C, 3*C, 0)
		g.be.LayerNormBackward(dres, g.gv(bp.ln1w), g.gv(bp.ln1b), dtmp, blockOut(i-1), g.pv(bp.ln1w),
			rows(la.ln1Mean, bt, 1), rows(la.ln1Rstd, bt, 1), bt, C)
		if g.OnLayerGrads != nil {
			g.OnLayerGrads(bp.lo, bp.hi)
		}
	}
	if !g.First() {
		return dres
	}
	g.be.EmbeddingBackward(g.gv(g.wte), dres, g.fwd.ids, bt, C)
	g.be.EmbeddingBackward(g.gv(g.wpe), dres, rows(device.Whole(a.pos), bt, 1), bt, C)
	if g.OnLayerGrads != nil {
		g.OnLayerGrads(0, g.embedHi)
	}
	return device.View{}
}

// gptSlot is the state of one micro-batch in flight: its activations and
// what its forward pass left for Loss and Backward.
type gptSlot struct {
	act      *gptActs
	fwd      gptForwardState
	lossDone bool
}

// UseSlot makes activation slot i current: Forward, Loss and Backward use
// its arena, so a pipeline stage can run the forwards of several
// micro-batches before their backwards (1F1B keeps up to the stage count in
// flight). A slot keeps its micro-batch's saved activations until its next
// Forward. Slot 0 is the one a stage starts with; a slot first used is
// reserved by Forward (or by ReserveSlots first, to get the error).
func (g *GPT) UseSlot(i int) {
	if i == g.slot {
		return
	}
	if i < 0 {
		panic(fmt.Sprintf("gpt: slot %d", i))
	}
	for len(g.slots) <= max(i, g.slot) {
		g.slots = append(g.slots, gptSlot{})
	}
	g.slots[g.slot] = gptSlot{act: g.act, fwd: g.fwd, lossDone: g.lossDone}
	s := g.slots[i]
	g.act, g.fwd, g.lossDone = s.act, s.fwd, s.lossDone
	g.slots[i] = gptSlot{}
	g.slot = i
}

// ReserveSlots reserves n activation slots of maxTokens positions each and
// leaves slot 0 current.
func (g *GPT) ReserveSlots(n, maxTokens int) error {
	defer g.UseSlot(0)
	for i := range n {
		g.UseSlot(i)
		if err := g.Reserve(maxTokens); err != nil {
			return fmt.Errorf("gpt: activation slot %d of %d: %w", i+1, n, err)
		}
	}
	return nil
}

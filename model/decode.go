package model

import (
	"errors"
	"fmt"
	"math"

	"github.com/loomtrain/loom/device"
	"github.com/loomtrain/loom/tensor"
)

// Decoder generates from a whole GPT (one stage holding every block) one
// token at a time with a KV cache: each layer keeps the c_attn output (q, k,
// v) of every position so far, so a new token costs one row through the
// model and an attention over the cached keys and values instead of a
// forward over the whole prefix.
//
// The cache of a layer is a (Context, 3C) buffer in the layout c_attn
// writes (per position q, k, v, each (heads, hs)): a prompt's rows are
// copied from the training forward's qkv activations as they are, and the
// attention of a new token reads head h's keys as the strided columns
// [C + h·hs, C + (h+1)·hs) of the cached rows.
type Decoder struct {
	g     *GPT
	n     int             // positions in the cache
	cache []device.Buffer // per layer: (Context, 3C) F32

	buf    device.Buffer // one row of every intermediate
	x, ln  device.View   // (C)
	mean   device.View   // (1)
	rstd   device.View   // (1)
	att    device.View   // (C)
	r2     device.View   // (C)
	fch    device.View   // (4C)
	fchg   device.View   // (4C)
	scores device.View   // (heads, Context)
	logits device.View   // (V)
	ids    device.Buffer // I32 (2): the token, its position
	prompt device.Buffer // I32 (Context): a prompt's ids
	host   []float32     // logits on the host
}

// NewDecoder allocates the KV cache and scratch of g, which must hold the
// whole model.
func NewDecoder(g *GPT) (*Decoder, error) {
	if !g.First() || !g.Last() {
		return nil, errors.New("gpt: generating needs the whole model in one stage")
	}
	c := g.cfg
	C, T, H, V := c.DModel, c.Context, c.Heads, c.Vocab
	d := &Decoder{g: g}
	for range c.Layers {
		b, err := g.be.Alloc(tensor.F32, T*3*C)
		if err != nil {
			d.Free()
			return nil, fmt.Errorf("gpt: KV cache for %d positions: %w", T, err)
		}
		d.cache = append(d.cache, b)
	}
	widths := []int{C, C, 1, 1, C, C, 4 * C, 4 * C, H * T, V}
	total := 0
	for _, w := range widths {
		total += w
	}
	var err error
	if d.buf, err = g.be.Alloc(tensor.F32, total); err == nil {
		d.ids, err = g.be.Alloc(tensor.I32, 2)
	}
	if err != nil {
		d.Free()
		return nil, fmt.Errorf("gpt: decoder scratch: %w", err)
	}
	views := []*device.View{&d.x, &d.ln, &d.mean, &d.rstd, &d.att, &d.r2, &d.fch, &d.fchg, &d.scores, &d.logits}
	off := 0
	for i, v := range views {
		*v = device.View{Buf: d.buf, Off: off, N: widths[i]}
		off += widths[i]
	}
	d.host = make([]float32, V)
	return d, nil
}

// Free releases the cache and scratch (not the model).
func (d *Decoder) Free() {
	for _, b := range d.cache {
		b.Free()
	}
	d.cache = nil
	for _, b := range []*device.Buffer{&d.buf, &d.ids, &d.prompt} {
		if *b != nil {
			(*b).Free()
			*b = nil
		}
	}
}

// Len is the number of positions in the cache.
func (d *Decoder) Len() int { return d.n }

// Reset empties the cache.
func (d *Decoder) Reset() { d.n = 0 }

// Prefill runs the prompt (1 ≤ len ≤ Context tokens, into an empty cache)
// through the model's forward pass, keeps every layer's q, k, v in the
// cache and returns the logits after the last prompt token (valid until the
// next call).
func (d *Decoder) Prefill(ids []int32) ([]float32, error) {
	if d.n != 0 {
		return nil, errors.New("gpt: prefill into a non-empty cache (Reset first)")
	}
	if err := d.forward(ids); err != nil {
		return nil, err
	}
	C := d.g.cfg.DModel
	for l := range d.cache {
		d.g.be.Copy(device.Whole(d.cache[l]).Slice(0, len(ids)*3*C), rows(d.g.act.layers[l].qkv, len(ids), 3*C))
	}
	d.n = len(ids)
	return d.host, nil
}

// Recompute returns the logits after the last of ids from a forward pass
// over all of them, ignoring and leaving the cache: what generating without
// a KV cache costs per token.
func (d *Decoder) Recompute(ids []int32) ([]float32, error) {
	if err := d.forward(ids); err != nil {
		return nil, err
	}
	return d.host, nil
}

// forward runs the training forward pass over ids (one sequence) and
// downloads the last position's logits into d.host.
func (d *Decoder) forward(ids []int32) error {
	c := d.g.cfg
	t := len(ids)
	switch {
	case t == 0:
		return errors.New("gpt: empty prompt")
	case t > c.Context:
		return fmt.Errorf("gpt: a prompt of %d tokens is longer than the model's context of %d", t, c.Context)
	}
	if err := d.checkIDs(ids); err != nil {
		return err
	}
	if d.prompt == nil || d.prompt.Len() < t {
		if d.prompt != nil {
			d.prompt.Free()
		}
		var err error
		if d.prompt, err = d.g.be.Alloc(tensor.I32, c.Context); err != nil {
			return err
		}
	}
	if err := d.g.Reserve(t); err != nil {
		return err
	}
	in := device.Whole(d.prompt).Slice(0, t)
	d.g.be.UploadInt32(in, ids)
	logits := d.g.Forward(in, 1, t)
	V := c.Vocab
	d.g.be.Download(d.host, logits.Slice((t-1)*V, t*V))
	return nil
}

// Step appends one token at the next position and returns the logits that
// follow it (valid until the next call).
func (d *Decoder) Step(id int32) ([]float32, error) {
	g, c := d.g, d.g.cfg
	if d.n >= c.Context {
		return nil, fmt.Errorf("gpt: the cache holds the model's whole context of %d tokens", c.Context)
	}
	if err := d.checkIDs([]int32{id}); err != nil {
		return nil, err
	}
	C, H, V := c.DModel, c.Heads, c.Vocab
	hs := C / H
	p := d.n
	ids := device.Whole(d.ids)
	g.be.UploadInt32(ids, []int32{id, int32(p)})
	g.be.Embedding(d.x, g.pv(g.wte), ids.Slice(0, 1), 1, C, false)
	g.be.Embedding(d.x, g.pv(g.wpe), ids.Slice(1, 2), 1, C, true)
	seen := p + 1
	scores := d.scores.Slice(0, H*seen)
	for l, bp := range g.blocks {
		cache := device.Whole(d.cache[l])
		qkv := cache.Slice(p*3*C, (p+1)*3*C)
		g.be.LayerNorm(d.ln, d.mean, d.rstd, d.x, g.pv(bp.ln1w), g.pv(bp.ln1b), 1, C, gptLNEps)
		g.linear(qkv, d.ln, g.pv(bp.attnW), g.pv(bp.attnB), 1, C, 3*C, 0)
		// scores_h = q_h·K_hᵀ/√hs over the seen positions, then P_h·V_h.
		g.be.MatMul(device.GemmSpec{
			TransB: true, M: 1, N: seen, K: hs, Alpha: float32(1 / math.Sqrt(float64(hs))),
			A: qkv.Slice(0, C), B: cache.Slice(C, seen*3*C), C: scores,
			LDA: hs, LDB: 3 * C, LDC: seen,
			Batch: H, StrideA: hs, StrideB: hs, StrideC: seen, Precision: tensor.F32,
		})
		g.be.Softmax(scores, scores, H, seen)
		g.be.MatMul(device.GemmSpec{
			M: 1, N: hs, K: seen, Alpha: 1,
			A: scores, B: cache.Slice(2*C, seen*3*C), C: d.att,
			LDA: seen, LDB: 3 * C, LDC: hs,
			Batch: H, StrideA: seen, StrideB: hs, StrideC: hs, Precision: tensor.F32,
		})
		g.be.Copy(d.r2, d.x)
		g.linear(d.r2, d.att, g.pv(bp.projW), g.pv(bp.projB), 1, C, C, 1)
		g.be.LayerNorm(d.ln, d.mean, d.rstd, d.r2, g.pv(bp.ln2w), g.pv(bp.ln2b), 1, C, gptLNEps)
		g.linear(d.fch, d.ln, g.pv(bp.fcW), g.pv(bp.fcB), 1, C, 4*C, 0)
		g.be.GELU(d.fchg, d.fch)
		g.linear(d.r2, d.fchg, g.pv(bp.fcProjW), g.pv(bp.fcProjB), 1, 4*C, C, 1)
		d.x, d.r2 = d.r2, d.x
	}
	g.be.LayerNorm(d.ln, d.mean, d.rstd, d.x, g.pv(g.lnfw), g.pv(g.lnfb), 1, C, gptLNEps)
	g.mm(false, true, 1, V, C, d.ln, g.headW(), d.logits, 0)
	d.n++
	g.be.Download(d.host, d.logits)
	return d.host, nil
}

func (d *Decoder) checkIDs(ids []int32) error {
	for i, id := range ids {
		if id < 0 || int(id) >= d.g.cfg.Vocab {
			return fmt.Errorf("gpt: token %d at position %d is outside the vocabulary of %d", id, d.n+i, d.g.cfg.Vocab)
		}
	}
	return nil
}

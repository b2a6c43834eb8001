package model

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/loomtrain/loom/device"
	"github.com/loomtrain/loom/device/cpu"
	"github.com/loomtrain/loom/tensor"
)

// gptBackends returns the backends the GPT tests run on: the naive
// reference, and the CPU device once it implements device API v2.
func gptBackends(t testing.TB, threads int) []device.Backend {
	t.Helper()
	return []device.Backend{&refBackend{}, gptCPU(t, threads)}
}

func gptCPU(t testing.TB, threads int) device.Backend {
	t.Helper()
	d, err := cpu.New(cpu.Config{Threads: threads})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func tinyGPT(tied bool) GPTConfig {
	return GPTConfig{Layers: 2, Heads: 2, DModel: 16, Context: 8, Vocab: 11, TieEmbeddings: tied, Precision: tensor.F32}
}

type gptBatch struct {
	b, t             int
	ids, targets     device.View
	losses           device.View
	hostIDs, hostTgt []int32
}

func newGPTBatch(t testing.TB, be device.Backend, b, tt int, ids, tgt []int32) *gptBatch {
	t.Helper()
	alloc := func(dt tensor.DType, n int) device.View {
		buf, err := be.Alloc(dt, n)
		if err != nil {
			t.Fatal(err)
		}
		return device.Whole(buf)
	}
	bt := b * tt
	g := &gptBatch{b: b, t: tt, ids: alloc(tensor.I32, bt), targets: alloc(tensor.I32, bt), losses: alloc(tensor.F32, bt), hostIDs: ids, hostTgt: tgt}
	be.UploadInt32(g.ids, ids)
	be.UploadInt32(g.targets, tgt)
	return g
}

func randomBatch(t testing.TB, be device.Backend, r *rand.Rand, b, tt, vocab int) *gptBatch {
	ids := make([]int32, b*tt)
	tgt := make([]int32, b*tt)
	for i := range ids {
		ids[i] = int32(r.IntN(vocab))
		tgt[i] = int32(r.IntN(vocab))
	}
	return newGPTBatch(t, be, b, tt, ids, tgt)
}

func sumHost(be device.Backend, v device.View) float64 {
	h := make([]float32, v.N)
	be.Download(h, v)
	var s float64
	for _, x := range h {
		s += float64(x)
	}
	return s
}

// lossOnly runs a forward pass and returns the summed loss.
func lossOnly(g *GPT, bt *gptBatch) float64 {
	g.Forward(bt.ids, bt.b, bt.t)
	g.Loss(bt.targets, bt.losses, 1)
	return sumHost(g.be, bt.losses)
}

// step runs forward, loss and backward into zeroed gradients and returns the
// summed loss.
func gptStep(g *GPT, bt *gptBatch) float64 {
	g.ZeroGrad()
	l := lossOnly(g, bt)
	g.Backward(device.View{})
	return l
}

func download(be device.Backend, b device.Buffer) []float32 {
	h := make([]float32, b.Len())
	be.Download(h, device.Whole(b))
	return h
}

// perturbParams replaces the nanoGPT init by larger random values so that
// every path (attention scores, layernorm gains, biases) carries gradient.
func perturbParams(g *GPT, r *rand.Rand) {
	host := download(g.be, g.pbuf)
	for _, p := range g.params {
		for i := p.Offset; i < p.Offset+p.N; i++ {
			switch {
			case strings.Contains(p.Name, "ln_") && strings.HasSuffix(p.Name, "weight"):
				host[i] = 1 + float32(r.NormFloat64()*0.2)
			case p.Decay:
				host[i] = float32(r.NormFloat64() * 0.3)
			default:
				host[i] = float32(r.NormFloat64() * 0.1)
			}
		}
	}
	g.be.Upload(device.Whole(g.pbuf), host)
}

func TestGPTConfigValidate(t *testing.T) {
	good := tinyGPT(true)
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		mut  func(*GPTConfig)
		want string
	}{
		{func(c *GPTConfig) { c.Layers = 0 }, "layers"},
		{func(c *GPTConfig) { c.Heads = -1 }, "heads"},
		{func(c *GPTConfig) { c.DModel = 0 }, "d_model"},
		{func(c *GPTConfig) { c.Context = 0 }, "context"},
		{func(c *GPTConfig) { c.Vocab = 0 }, "vocab"},
		{func(c *GPTConfig) { c.Heads = 3 }, "divide"},
		{func(c *GPTConfig) { c.Precision = tensor.I32 }, "precision"},
	} {
		cfg := good
		c.mut(&cfg)
		err := cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: error %v, want mention of %q", cfg, err, c.want)
		}
	}
	be := &refBackend{}
	if _, err := NewGPT(be, tinyGPT(true), StageRange{0, 1}, 1); err == nil || !strings.Contains(err.Error(), "tied embeddings") {
		t.Errorf("tied multi-stage: %v", err)
	}
	if _, err := NewGPT(be, tinyGPT(false), StageRange{1, 1}, 1); err == nil {
		t.Error("empty range accepted")
	}
	if _, err := NewGPT(be, tinyGPT(false), StageRange{0, 3}, 1); err == nil {
		t.Error("range past the layers accepted")
	}
}

func TestGPTLayout(t *testing.T) {
	be := &refBackend{}
	cfg := tinyGPT(false)
	g, err := NewGPT(be, cfg, StageRange{0, 2}, 1)
	if err != nil {
		t.Fatal(err)
	}
	C, V, T := 16, 11, 8
	want := V*C + T*C + 2*(12*C*C+13*C) + 2*C + V*C
	if g.NumParams() != want || g.ParamBuffer().Len() != want || g.GradBuffer().Len() != want {
		t.Fatalf("params %d, want %d", g.NumParams(), want)
	}
	for _, tied := range []bool{false, true} {
		c := tinyGPT(tied)
		g2, err := NewGPT(be, c, StageRange{0, c.Layers}, 1)
		if err != nil {
			t.Fatal(err)
		}
		if c.NumParams() != g2.NumParams() {
			t.Fatalf("tied=%v: GPTConfig.NumParams %d, the model has %d", tied, c.NumParams(), g2.NumParams())
		}
	}
	ps := g.Params()
	if ps[0].Name != "transformer.wte.weight" || ps[2].Name != "transformer.h.0.ln_1.weight" || ps[4].Name != "transformer.h.0.attn.c_attn.weight" ||
		ps[len(ps)-1].Name != "lm_head.weight" || !ps[4].Shape.Equal(tensor.Shape{C, 3 * C}) {
		t.Fatalf("layout: %+v", ps)
	}
	off := 0
	for _, p := range ps {
		if p.Offset != off || p.N != p.Shape.Numel() || p.Decay != (len(p.Shape) >= 2) {
			t.Fatalf("%s: offset %d n %d decay %v", p.Name, p.Offset, p.N, p.Decay)
		}
		off += p.N
	}
	// Init statistics.
	host := download(be, g.ParamBuffer())
	for _, p := range ps {
		v := host[p.Offset : p.Offset+p.N]
		var s, s2 float64
		for _, x := range v {
			s += float64(x)
			s2 += float64(x) * float64(x)
		}
		mean, std := s/float64(p.N), math.Sqrt(s2/float64(p.N))
		switch {
		case strings.HasSuffix(p.Name, "c_proj.weight"):
			if w := 0.02 / math.Sqrt(4); math.Abs(std-w) > 0.3*w {
				t.Errorf("%s std %g want %g", p.Name, std, w)
			}
		case p.Decay:
			if math.Abs(std-0.02) > 0.3*0.02 {
				t.Errorf("%s std %g", p.Name, std)
			}
		case strings.HasSuffix(p.Name, "weight"):
			if mean != 1 || std != 1 {
				t.Errorf("%s not ones", p.Name)
			}
		default:
			if s2 != 0 {
				t.Errorf("%s not zero", p.Name)
			}
		}
	}
}

func TestGPTGradCheck(t *testing.T) {
	for _, be := range gptBackends(t, 2) {
		for _, tied := range []bool{false, true} {
			for _, few := range []bool{false, true} {
				t.Run(fmt.Sprintf("%s/tied=%v/few=%v", be.Name(), tied, few), func(t *testing.T) {
					gradCheckGPT(t, be, tied, few)
				})
			}
		}
	}
}

// gradCheckGPT compares the gradients of the summed loss with central finite
// differences on a sample of every tensor; with few, only three positions
// carry a loss (smaller sums, less float32 round-off in the differences).
func gradCheckGPT(t *testing.T, be device.Backend, tied, few bool) {
	cfg := tinyGPT(tied)
	g, err := NewGPT(be, cfg, StageRange{0, cfg.Layers}, 7)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	perturbParams(g, r)
	bt := randomBatch(t, be, r, 2, 8, cfg.Vocab)
	// A couple of ignored targets exercise the ignore path.
	bt.hostTgt[3], bt.hostTgt[12] = -1, -1
	if few {
		for i := range bt.hostTgt {
			if i != 2 && i != 7 && i != 13 {
				bt.hostTgt[i] = -1
			}
		}
	}
	be.UploadInt32(bt.targets, bt.hostTgt)

	gptStep(g, bt)
	grads := download(be, g.GradBuffer())
	params := download(be, g.ParamBuffer())
	const eps = 5e-3
	set := func(i int, v float32) { be.Upload(device.View{Buf: g.pbuf, Off: i, N: 1}, []float32{v}) }
	worst, worstName := 0.0, ""
	for _, p := range g.Params() {
		for s := 0; s < 5; s++ {
			i := p.Offset + r.IntN(p.N)
			orig := params[i]
			set(i, orig+eps)
			up := lossOnly(g, bt)
			set(i, orig-eps)
			down := lossOnly(g, bt)
			set(i, orig)
			num := (up - down) / (2 * eps)
			ana := float64(grads[i])
			err := math.Abs(num - ana)
			tol := 2e-2*math.Max(math.Abs(num), math.Abs(ana)) + 2e-3
			if err > tol {
				t.Errorf("%s[%d]: analytic %.6g numeric %.6g", p.Name, i-p.Offset, ana, num)
			}
			if e := err / (math.Abs(num) + 1e-3); e > worst {
				worst, worstName = e, fmt.Sprintf("%s[%d] ana %.6g num %.6g", p.Name, i-p.Offset, ana, num)
			}
		}
	}
	t.Logf("worst relative error %.3g: %s", worst, worstName)
}

// TestGPTStageEquivalence chains pipeline stages (forwarding activations,
// back-propagating the returned input gradients) and compares the loss and
// gradients with one stage holding every block.
func TestGPTStageEquivalence(t *testing.T) {
	for _, be := range gptBackends(t, 2) {
		for _, cut := range [][]StageRange{
			{{0, 1}, {1, 2}},
			{{0, 1}, {1, 2}, {2, 3}},
		} {
			t.Run(fmt.Sprintf("%s/%d", be.Name(), len(cut)), func(t *testing.T) {
				stageEquivalence(t, be, cut)
			})
		}
	}
}

func stageEquivalence(t *testing.T, be device.Backend, cut []StageRange) {
	cfg := tinyGPT(false)
	cfg.Layers = cut[len(cut)-1].Last
	full, err := NewGPT(be, cfg, StageRange{0, cfg.Layers}, 3)
	if err != nil {
		t.Fatal(err)
	}
	stages := make([]*GPT, len(cut))
	var catP []float32
	for i, r := range cut {
		if stages[i], err = NewGPT(be, cfg, r, 3); err != nil {
			t.Fatal(err)
		}
		if stages[i].First() != (i == 0) || stages[i].Last() != (i == len(cut)-1) {
			t.Fatalf("stage %d flags", i)
		}
		catP = append(catP, download(be, stages[i].ParamBuffer())...)
	}
	fullP := download(be, full.ParamBuffer())
	if len(catP) != len(fullP) {
		t.Fatalf("stage params %d vs %d", len(catP), len(fullP))
	}
	for i := range catP {
		if catP[i] != fullP[i] {
			t.Fatalf("param %d differs between stages and full model", i)
		}
	}
	r := rand.New(rand.NewPCG(5, 6))
	bt := randomBatch(t, be, r, 2, 8, cfg.Vocab)
	for it := 0; it < 2; it++ { // twice: gradients accumulate
		lf := lossOnly(full, bt)
		full.Backward(device.View{})

		h := bt.ids
		for i, s := range stages {
			h = s.Forward(h, bt.b, bt.t)
			if i < len(stages)-1 && (h.N != 2*8*cfg.DModel || h.DType() != tensor.F32) {
				t.Fatalf("stage %d output %d %v", i, h.N, h.DType())
			}
		}
		last := stages[len(stages)-1]
		last.Loss(bt.targets, bt.losses, 1)
		ls := sumHost(be, bt.losses)
		dh := device.View{}
		for i := len(stages) - 1; i >= 0; i-- {
			dh = stages[i].Backward(dh)
			if (i == 0) != dh.IsZero() {
				t.Fatalf("stage %d input gradient %+v", i, dh)
			}
		}
		if math.Abs(lf-ls) > 1e-5*math.Abs(lf) {
			t.Fatalf("loss full %v stages %v", lf, ls)
		}
	}
	var gc []float32
	for _, s := range stages {
		gc = append(gc, download(be, s.GradBuffer())...)
	}
	gf := download(be, full.GradBuffer())
	var maxAbs float64
	for _, x := range gf {
		maxAbs = math.Max(maxAbs, math.Abs(float64(x)))
	}
	for i := range gf {
		if d := math.Abs(float64(gf[i] - gc[i])); d > 1e-5*math.Max(math.Abs(float64(gf[i])), 1e-2*maxAbs) {
			t.Fatalf("grad %d: full %v stages %v", i, gf[i], gc[i])
		}
	}
}

func TestGPTLayerGradsCallback(t *testing.T) {
	be := &refBackend{}
	for _, tied := range []bool{false, true} {
		cfg := tinyGPT(tied)
		g, err := NewGPT(be, cfg, StageRange{0, 2}, 1)
		if err != nil {
			t.Fatal(err)
		}
		var got [][2]int
		g.OnLayerGrads = func(lo, hi int) { got = append(got, [2]int{lo, hi}) }
		bt := randomBatch(t, be, rand.New(rand.NewPCG(1, 1)), 1, 4, cfg.Vocab)
		gptStep(g, bt)
		if len(got) != 4 {
			t.Fatalf("tied=%v: %d callbacks %v", tied, len(got), got)
		}
		hi := g.NumParams()
		for _, rg := range got {
			if rg[1] != hi || rg[0] >= rg[1] {
				t.Fatalf("tied=%v: ranges %v not contiguous last-first", tied, got)
			}
			hi = rg[0]
		}
		if hi != 0 {
			t.Fatalf("ranges %v do not reach 0", got)
		}
	}
}

func TestGPTArenaReuse(t *testing.T) {
	be := &refBackend{}
	cfg := tinyGPT(true)
	g, err := NewGPT(be, cfg, StageRange{0, 2}, 5)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Reserve(4); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(8, 8))
	big := randomBatch(t, be, r, 2, 8, cfg.Vocab) // grows the arena
	gptStep(g, big)
	small := randomBatch(t, be, r, 1, 5, cfg.Vocab)
	ls := gptStep(g, small)
	gs := download(be, g.GradBuffer())
	fresh, _ := NewGPT(be, cfg, StageRange{0, 2}, 5)
	lf := gptStep(fresh, small)
	gf := download(be, fresh.GradBuffer())
	if ls != lf {
		t.Fatalf("loss after regrow %v, fresh %v", ls, lf)
	}
	for i := range gf {
		if gs[i] != gf[i] {
			t.Fatalf("grad %d: %v vs fresh %v", i, gs[i], gf[i])
		}
	}
	allocs := testing.AllocsPerRun(5, func() {
		g.ZeroGrad()
		g.Forward(big.ids, big.b, big.t)
		g.Loss(big.targets, big.losses, 1)
		g.Backward(device.View{})
	})
	if allocs != 0 {
		t.Fatalf("a step allocates %v times", allocs)
	}
}

func TestGPTDeterminism(t *testing.T) {
	be := &refBackend{}
	a, _ := NewGPT(be, tinyGPT(true), StageRange{0, 2}, 42)
	b, _ := NewGPT(be, tinyGPT(true), StageRange{0, 2}, 42)
	c, _ := NewGPT(be, tinyGPT(true), StageRange{0, 2}, 43)
	pa, pb, pc := download(be, a.ParamBuffer()), download(be, b.ParamBuffer()), download(be, c.ParamBuffer())
	same := true
	for i := range pa {
		if pa[i] != pb[i] {
			t.Fatalf("same seed differs at %d", i)
		}
		same = same && pa[i] == pc[i]
	}
	if same {
		t.Fatal("different seeds gave identical parameters")
	}
}

func repeatingBatch(t testing.TB, be device.Backend, b, tt, vocab, period int) *gptBatch {
	ids := make([]int32, b*tt)
	tgt := make([]int32, b*tt)
	for s := 0; s < b; s++ {
		for i := 0; i < tt; i++ {
			ids[s*tt+i] = int32((s + i) % period % vocab)
			tgt[s*tt+i] = int32((s + i + 1) % period % vocab)
		}
	}
	return newGPTBatch(t, be, b, tt, ids, tgt)
}

type gptAdam struct {
	m, v device.View
	step int
}

func newGPTAdam(t testing.TB, g *GPT) *gptAdam {
	m, err := g.be.Alloc(tensor.F32, g.NumParams())
	if err != nil {
		t.Fatal(err)
	}
	v, err := g.be.Alloc(tensor.F32, g.NumParams())
	if err != nil {
		t.Fatal(err)
	}
	return &gptAdam{m: device.Whole(m), v: device.Whole(v)}
}

func (o *gptAdam) update(g *GPT, lr float64, tokens int) {
	o.step++
	h := device.AdamW{LR: lr, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0, Step: o.step, GradScale: 1 / float32(tokens)}
	g.be.AdamWUpdate(device.Whole(g.ParamBuffer()), device.Whole(g.GradBuffer()), o.m, o.v, h)
}

func TestGPTAdamWLearns(t *testing.T) {
	for _, be := range gptBackends(t, 2) {
		t.Run(be.Name(), func(t *testing.T) {
			cfg := tinyGPT(true)
			g, err := NewGPT(be, cfg, StageRange{0, 2}, 9)
			if err != nil {
				t.Fatal(err)
			}
			bt := repeatingBatch(t, be, 2, 8, cfg.Vocab, 5)
			opt := newGPTAdam(t, g)
			var first, last float64
			for it := 0; it < 30; it++ {
				l := gptStep(g, bt) / 16
				if it == 0 {
					first = l
				}
				last = l
				opt.update(g, 1e-2, 16)
			}
			t.Logf("loss %.4f -> %.4f", first, last)
			if !(last < 0.5*first) {
				t.Fatalf("loss did not fall: %.4f -> %.4f", first, last)
			}
		})
	}
}

func TestGPTBF16(t *testing.T) {
	for _, be := range gptBackends(t, 2) {
		t.Run(be.Name(), func(t *testing.T) {
			cfg := tinyGPT(false)
			cfg.Layers, cfg.DModel, cfg.Heads, cfg.Vocab = 2, 32, 4, 37
			f32, err := NewGPT(be, cfg, StageRange{0, 2}, 11)
			if err != nil {
				t.Fatal(err)
			}
			cfg.Precision = tensor.BF16
			b16, err := NewGPT(be, cfg, StageRange{0, 2}, 11)
			if err != nil {
				t.Fatal(err)
			}
			bt := randomBatch(t, be, rand.New(rand.NewPCG(3, 3)), 2, 8, cfg.Vocab)
			l32 := gptStep(f32, bt)
			l16 := gptStep(b16, bt)
			if math.Abs(l16-l32) > 0.03*math.Abs(l32) {
				t.Fatalf("bf16 loss %v vs fp32 %v", l16, l32)
			}
			g32, g16 := download(be, f32.GradBuffer()), download(be, b16.GradBuffer())
			var dot, n32, n16 float64
			for i := range g32 {
				dot += float64(g32[i]) * float64(g16[i])
				n32 += float64(g32[i]) * float64(g32[i])
				n16 += float64(g16[i]) * float64(g16[i])
			}
			if cos := dot / math.Sqrt(n32*n16); cos < 0.95 {
				t.Fatalf("bf16 gradient cosine %v", cos)
			}
		})
	}
}

// The stage cost model: the parts' parameters add up to the model's, and on
// GPT-2 124M the head is the 27-31% of forward FLOPs it is measured to be.
func TestGPTCost(t *testing.T) {
	for _, tie := range []bool{false, true} {
		c := GPTConfig{Layers: 12, Heads: 12, DModel: 768, Context: 1024, Vocab: 50257, TieEmbeddings: tie}
		sc := c.Cost()
		if got := sc.EmbedParams + int64(c.Layers)*sc.BlockParams + sc.HeadParams; got != int64(c.NumParams()) {
			t.Errorf("tie=%v: parts hold %d parameters, the model %d", tie, got, c.NumParams())
		}
		head := sc.HeadFLOPs / (sc.EmbedFLOPs + float64(c.Layers)*sc.BlockFLOPs + sc.HeadFLOPs)
		if head < 0.27 || head > 0.31 {
			t.Errorf("head is %.3f of the FLOPs, want 0.27-0.31", head)
		}
	}
}

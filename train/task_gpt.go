package train

import (
	"fmt"
	"sort"
	"strings"

	"github.com/loomtrain/loom/data"
	"github.com/loomtrain/loom/device"
	"github.com/loomtrain/loom/jobspec"
	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/tensor"
)

// evalMaxTokens bounds the validation tokens one evaluation during training
// reads (in whole windows, at least 8 and at most 512), so it costs a
// bounded time on a large corpus.
const evalMaxTokens = 32768

// gptTask is a GPT language model over byte-level text, on a device API v2
// backend whose memory the host can address (the CPU): the step loop's flat
// parameters and gradients are the model's own device buffers.
type gptTask struct {
	be     device.Backend
	host   device.HostMemory
	text   *data.TextSplit
	net    *model.GPT
	ctx    int
	ps     []*model.Param
	values []float32
	grads  []float32
	bounds []int

	ids, targets  device.Buffer // I32, (batch·context)
	losses, total device.Buffer // F32 per position; one summed scalar
	hostIn        []int32
	hostTg        []int32
	hostLogits    []float32
	hostLoss      [1]float32

	// A pipeline stage's buffers (see stageTask): the token ids of each
	// activation slot (first stage), and the inbox for activations or
	// their gradients.
	slotIDs []device.Buffer
	in      device.Buffer
}

func newGPTTask(job *jobspec.Job, dev device.Device, split *data.Split) (*gptTask, error) {
	return newGPTStage(job, dev, split, model.StageRange{First: 0, Last: job.Model.GPTLayers()}, 1, job.Train.Micro())
}

// newGPTStage builds the task of one pipeline stage holding blocks r, with
// slots activation slots for micro-batches of a global batch split micro
// ways (1 slot and the whole model: a data-parallel rank).
func newGPTStage(job *jobspec.Job, dev device.Device, split *data.Split, r model.StageRange, slots, micro int) (*gptTask, error) {
	if split.Text == nil {
		return nil, fmt.Errorf("model.kind gpt needs a text dataset (data.dataset: text), not %s", split.Source)
	}
	be, ok := dev.(device.Backend)
	if !ok {
		return nil, fmt.Errorf("device %s does not implement the device API v2 that model.kind gpt needs", dev.Name())
	}
	host, ok := dev.(device.HostMemory)
	if !ok {
		return nil, fmt.Errorf("device %s: the gpt trainer needs host-addressable device memory (the cpu backend)", dev.Name())
	}
	m := job.Model
	if m.Vocab < split.Text.Vocab {
		return nil, fmt.Errorf("model.vocab %d is smaller than the %d token ids of %s", m.Vocab, split.Text.Vocab, split.Source)
	}
	cfg := model.GPTConfig{Layers: m.GPTLayers(), Heads: m.Heads, DModel: m.DModel, Context: m.Context, Vocab: m.Vocab,
		TieEmbeddings: m.TieEmbeddings, Precision: job.DType()}
	// The largest forward is one micro-batch of a whole global batch (a
	// rank's share is at most that, and a batch at most the epoch);
	// evaluation runs in batches of it.
	maxRows := (min(job.Train.GlobalBatch, max(split.Text.Train.N, 1)) + micro - 1) / micro
	if err := checkGPTMemory(be, cfg, r, maxRows*m.Context, slots); err != nil {
		return nil, err
	}
	net, err := model.NewGPT(be, cfg, r, job.Seed)
	if err != nil {
		return nil, err
	}
	g := &gptTask{be: be, host: host, text: split.Text, net: net, ctx: m.Context}
	g.values = host.HostF32(device.Whole(net.ParamBuffer()))
	g.grads = host.HostF32(device.Whole(net.GradBuffer()))
	groups := map[string]int{}
	for _, p := range net.Params() {
		g.ps = append(g.ps, &model.Param{Name: p.Name, Shape: p.Shape, Decay: p.Decay,
			Value: g.values[p.Offset : p.Offset+p.N : p.Offset+p.N], Grad: g.grads[p.Offset : p.Offset+p.N : p.Offset+p.N]})
		key := gptGroup(p.Name)
		if lo, ok := groups[key]; !ok || p.Offset < lo {
			groups[key] = p.Offset
		}
	}
	for _, lo := range groups {
		g.bounds = append(g.bounds, lo)
	}
	sort.Sort(sort.Reverse(sort.IntSlice(g.bounds)))
	// Everything a step needs is reserved now, for the largest batch, so a
	// model too large for the device fails here with the sizes.
	if err := g.reserve(maxRows, slots); err != nil {
		net.Free()
		return nil, err
	}
	return g, nil
}

// checkGPTMemory refuses, before anything is allocated, a model whose
// training step over tokens positions does not fit in the memory the device
// has left, saying what it needs and what there is.
func checkGPTMemory(be device.Backend, cfg model.GPTConfig, r model.StageRange, tokens, slots int) error {
	used, limit := be.Memory()
	if limit <= 0 {
		return nil // unknown: Alloc still fails cleanly if it runs out
	}
	params, acts := cfg.StageTrainingBytes(r, tokens, slots)
	if avail := limit - used; params+acts > avail {
		return fmt.Errorf("model too large for this worker: it needs %s (%d parameters: %s for values, gradients and AdamW's two moments; activations for %d tokens: %s) and %s is available; use a smaller model, batch or context",
			gib(params+acts), cfg.NumParams(), gib(params), tokens, gib(acts), gib(avail))
	}
	return nil
}

func gib(b int64) string { return fmt.Sprintf("%.2f GiB", float64(b)/(1<<30)) }

// gptGroup names the backward group of a parameter (the ranges the model
// reports final together): the embedding, one block, or the final
// layernorm with the head.
func gptGroup(name string) string {
	switch {
	case strings.HasPrefix(name, "transformer.h."):
		n, _, _ := strings.Cut(strings.TrimPrefix(name, "transformer.h."), ".")
		return "h." + n
	case strings.HasPrefix(name, "transformer.wte") || strings.HasPrefix(name, "transformer.wpe"):
		return "embed"
	}
	return "final"
}

// reserve allocates the batch buffers and the model's activations for rows
// windows in each of slots activation slots.
func (g *gptTask) reserve(rows, slots int) error {
	n := rows * g.ctx
	var err error
	alloc := func(dt tensor.DType, n int) device.Buffer {
		if err != nil {
			return nil
		}
		var b device.Buffer
		b, err = g.be.Alloc(dt, n)
		return b
	}
	g.ids, g.targets = alloc(tensor.I32, n), alloc(tensor.I32, n)
	g.losses, g.total = alloc(tensor.F32, n), alloc(tensor.F32, 1)
	if err != nil {
		return fmt.Errorf("gpt batch buffers: %w", err)
	}
	g.hostIn, g.hostTg = make([]int32, n), make([]int32, n)
	if g.net.First() {
		g.slotIDs = append(g.slotIDs, g.ids)
		for len(g.slotIDs) < slots {
			g.slotIDs = append(g.slotIDs, alloc(tensor.I32, n))
		}
	}
	if !g.net.First() || !g.net.Last() {
		g.in = alloc(tensor.F32, n*g.net.Config().DModel)
	}
	if err != nil {
		return fmt.Errorf("gpt stage buffers: %w", err)
	}
	return g.net.ReserveSlots(slots, n)
}

func (g *gptTask) params() []*model.Param          { return g.ps }
func (g *gptTask) flat() (values, grads []float32) { return g.values, g.grads }
func (g *gptTask) trainSize() int                  { return g.text.Train.N }
func (g *gptTask) tokensPerSample() int            { return g.ctx }
func (g *gptTask) bucketBounds() []int             { return g.bounds }
func (g *gptTask) weightsChanged()                 {}

// forward uploads the windows idx of set and runs the model. It returns
// the logits (valid until the loss replaces them by their gradient).
func (g *gptTask) forward(set *data.TextSet, idx []int) device.View {
	rows, n := len(idx), len(idx)*g.ctx
	for r, i := range idx {
		set.Window(i, g.hostIn[r*g.ctx:], g.hostTg[r*g.ctx:])
	}
	ids, tg := device.Whole(g.ids).Slice(0, n), device.Whole(g.targets).Slice(0, n)
	g.be.UploadInt32(ids, g.hostIn[:n])
	g.be.UploadInt32(tg, g.hostTg[:n])
	return g.net.Forward(ids, rows, g.ctx)
}

// loss computes the loss of the last forward over its n positions (leaving
// scale·dlogits for Backward) and returns its sum.
func (g *gptTask) loss(n int, scale float32) float64 {
	losses, total := device.Whole(g.losses).Slice(0, n), device.Whole(g.total)
	g.net.Loss(device.Whole(g.targets).Slice(0, n), losses, scale)
	g.be.Fill(total, 0)
	g.be.Sum(total, losses)
	g.be.Download(g.hostLoss[:], total)
	return float64(g.hostLoss[0])
}

func (g *gptTask) accumulate(idx []int, scale float32, add bool, done func(lo int)) (float64, int) {
	if !add {
		g.net.ZeroGrad()
	}
	g.forward(g.text.Train, idx)
	loss := g.loss(len(idx)*g.ctx, scale)
	g.net.OnLayerGrads = nil
	if done != nil {
		g.net.OnLayerGrads = func(lo, _ int) { done(lo) }
	}
	g.net.Backward(device.View{})
	return loss, 0
}

// evaluate returns the next-token accuracy and mean loss per token over the
// validation windows (see task.evaluate for limit; a limited evaluation
// reads windows evenly spaced over the split), in batches of the reserved
// size.
func (g *gptTask) evaluate(limit int) (acc, loss float64, windows int) {
	set := g.text.Validation
	windows = evalWindows(set.N, g.ctx, limit)
	batch := g.ids.Len() / g.ctx
	V := g.net.Config().Vocab
	idx := make([]int, 0, batch)
	correct := 0
	for lo := 0; lo < windows; lo += batch {
		idx = evalBatch(idx, lo, min(lo+batch, windows), set.N, windows)
		n := len(idx) * g.ctx
		logits := g.forward(set, idx)
		if cap(g.hostLogits) < n*V {
			g.hostLogits = make([]float32, n*V)
		}
		g.be.Download(g.hostLogits[:n*V], logits)
		correct += argmaxHits(g.hostLogits[:n*V], g.hostTg[:n], V)
		loss += g.loss(n, 1)
	}
	tokens := float64(windows * g.ctx)
	return float64(correct) / tokens, loss / tokens, windows
}

// evalWindows is how many of n validation windows of ctx tokens an
// evaluation reads (see task.evaluate for limit).
func evalWindows(n, ctx, limit int) int {
	switch {
	case limit < 0:
		return min(n, max(8, min(512, evalMaxTokens/ctx)))
	case limit > 0:
		return min(n, limit)
	}
	return n
}

// evalBatch sets idx to windows lo..hi-1 of an evaluation reading windows
// of n, spread over the whole split: the first windows alone are the first
// few documents, not a sample of all of them.
func evalBatch(idx []int, lo, hi, n, windows int) []int {
	idx = idx[:0]
	for i := lo; i < hi; i++ {
		idx = append(idx, int(int64(i)*int64(n)/int64(windows)))
	}
	return idx
}

// argmaxHits counts the rows of the n×v logits whose arg-max is the target.
func argmaxHits(logits []float32, targets []int32, v int) int {
	hits := 0
	for r, want := range targets {
		row := logits[r*v : (r+1)*v]
		best := 0
		for j, x := range row {
			if x > row[best] {
				best = j
			}
		}
		if int32(best) == want {
			hits++
		}
	}
	return hits
}

func (g *gptTask) stage() (model.StageRange, bool, bool) {
	return g.net.Range(), g.net.First(), g.net.Last()
}

func (g *gptTask) width() int { return g.ctx * g.net.Config().DModel }

func (g *gptTask) zeroGrad() { g.net.ZeroGrad() }

func (g *gptTask) inbox(rows int) []float32 {
	return g.host.HostF32(device.Whole(g.in).Slice(0, rows*g.width()))
}

// stageInput loads the windows idx of set: the first stage uploads their
// tokens into slot's ids and returns them; the others return the inbox.
// The targets are left in hostTg.
func (g *gptTask) stageInput(set *data.TextSet, slot int, idx []int) device.View {
	n := len(idx) * g.ctx
	for r, i := range idx {
		set.Window(i, g.hostIn[r*g.ctx:], g.hostTg[r*g.ctx:])
	}
	if !g.net.First() {
		return device.Whole(g.in).Slice(0, len(idx)*g.width())
	}
	ids := device.Whole(g.slotIDs[slot]).Slice(0, n)
	g.be.UploadInt32(ids, g.hostIn[:n])
	return ids
}

func (g *gptTask) forwardSlot(slot int, idx []int, scale float32) ([]float32, float64) {
	g.net.UseSlot(slot)
	out := g.net.Forward(g.stageInput(g.text.Train, slot, idx), len(idx), g.ctx)
	if !g.net.Last() {
		return g.host.HostF32(out), 0
	}
	n := len(idx) * g.ctx
	g.be.UploadInt32(device.Whole(g.targets).Slice(0, n), g.hostTg[:n])
	return nil, g.loss(n, scale)
}

func (g *gptTask) backwardSlot(slot, rows int, done func(lo int)) []float32 {
	g.net.UseSlot(slot)
	g.net.OnLayerGrads = nil
	if done != nil {
		g.net.OnLayerGrads = func(lo, _ int) { done(lo) }
	}
	var dout device.View
	if !g.net.Last() {
		dout = device.Whole(g.in).Slice(0, rows*g.width())
	}
	din := g.net.Backward(dout)
	if g.net.First() {
		return nil
	}
	return g.host.HostF32(din)
}

// evalSlot runs the forward of the validation windows idx in slot 0: it
// returns the output activations, or on the last stage the next-token hits
// and summed loss.
func (g *gptTask) evalSlot(idx []int) (out []float32, hits int, loss float64) {
	g.net.UseSlot(0)
	logits := g.net.Forward(g.stageInput(g.text.Validation, 0, idx), len(idx), g.ctx)
	if !g.net.Last() {
		return g.host.HostF32(logits), 0, 0
	}
	n, V := len(idx)*g.ctx, g.net.Config().Vocab
	if cap(g.hostLogits) < n*V {
		g.hostLogits = make([]float32, n*V)
	}
	g.be.Download(g.hostLogits[:n*V], logits)
	hits = argmaxHits(g.hostLogits[:n*V], g.hostTg[:n], V)
	g.be.UploadInt32(device.Whole(g.targets).Slice(0, n), g.hostTg[:n])
	return nil, hits, g.loss(n, 1)
}

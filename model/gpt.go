package model

// GPT-2 on device.Backend, cut into pipeline stages.
//
// Layout of a stage's parameters: one F32 buffer, tensors in this order
// (each a contiguous row-major range; the gradient buffer has the identical
// layout). Names and layouts are Hugging Face's GPT-2 (GPT2LMHeadModel), so
// a checkpoint's model.safetensors loads there as it is:
//
//	stage 0 only:      transformer.wte.weight (V×C), transformer.wpe.weight (T×C)
//	per block l:       transformer.h.l.ln_1.weight (C), ….ln_1.bias (C),
//	                   ….attn.c_attn.weight (C×3C), ….attn.c_attn.bias (3C),
//	                   ….attn.c_proj.weight (C×C), ….attn.c_proj.bias (C),
//	                   ….ln_2.weight (C), ….ln_2.bias (C),
//	                   ….mlp.c_fc.weight (C×4C), ….mlp.c_fc.bias (4C),
//	                   ….mlp.c_proj.weight (4C×C), ….mlp.c_proj.bias (C)
//	last stage only:   transformer.ln_f.weight (C), transformer.ln_f.bias (C),
//	                   lm_head.weight (V×C) when embeddings are untied
//
// The block's linear weights are stored (in, out), as HF's Conv1D stores
// them (not torch.nn.Linear's (out, in)), so a layer computes y = x·W + b;
// c_attn's output columns are q, k, v in that order, each (heads, hs). The
// embeddings and the head are (rows, C) tables: logits = ln_f(x)·Wᵀ.

import (
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"

	"github.com/loomtrain/loom/device"
	"github.com/loomtrain/loom/tensor"
)

// GPTConfig is the shape of a GPT-2 model.
type GPTConfig struct {
	Layers, Heads, DModel, Context, Vocab int
	// TieEmbeddings makes the head reuse wte (GPT-2's default).
	TieEmbeddings bool
	// Precision is the MatMul operand precision: F32, BF16 or F16 (0 means
	// F32). Master weights, activations and gradients are F32 either way.
	Precision tensor.DType
}

// Validate reports the first impossible setting.
func (c GPTConfig) Validate() error {
	switch {
	case c.Layers <= 0:
		return fmt.Errorf("gpt: layers=%d must be > 0", c.Layers)
	case c.Heads <= 0:
		return fmt.Errorf("gpt: heads=%d must be > 0", c.Heads)
	case c.DModel <= 0:
		return fmt.Errorf("gpt: d_model=%d must be > 0", c.DModel)
	case c.Context <= 0:
		return fmt.Errorf("gpt: context=%d must be > 0", c.Context)
	case c.Vocab <= 0:
		return fmt.Errorf("gpt: vocab=%d must be > 0", c.Vocab)
	case c.DModel%c.Heads != 0:
		return fmt.Errorf("gpt: heads=%d must divide d_model=%d", c.Heads, c.DModel)
	}
	switch c.Precision {
	case 0, tensor.F32, tensor.BF16, tensor.F16:
	default:
		return fmt.Errorf("gpt: precision %v must be fp32, bf16 or fp16", c.Precision)
	}
	return nil
}

// NumParams is the parameter count of the whole model (every stage).
func (c GPTConfig) NumParams() int {
	C, V := c.DModel, c.Vocab
	n := V*C + c.Context*C + c.Layers*(12*C*C+13*C) + 2*C
	if !c.TieEmbeddings {
		n += V * C
	}
	return n
}

// activationFloats is the F32 elements GPT.Reserve takes for maxTokens
// positions on a stage of layers blocks (last: with the head).
func (c GPTConfig) activationFloats(layers int, last bool, maxTokens int) int {
	C := c.DModel
	perTok := layers*(16*C+4+c.Heads) + C /*in*/ + C + C + 3*C + 4*C // in, dres, dtmp, dqkv, dfch
	if last {
		perTok += C + 2 + c.Vocab
	}
	return maxTokens * perTok
}

// TrainingBytes is the device memory a whole-model training step over
// tokens positions takes: parameters, gradients and AdamW's two moments
// (four F32 copies), and the activations.
func (c GPTConfig) TrainingBytes(tokens int) (params, activations int64) {
	return c.StageTrainingBytes(StageRange{First: 0, Last: c.Layers}, tokens, 1)
}

// StageTrainingBytes is TrainingBytes for the stage holding blocks r, with
// slots micro-batches' activations of tokens positions each in flight.
func (c GPTConfig) StageTrainingBytes(r StageRange, tokens, slots int) (params, activations int64) {
	g := &GPT{cfg: c, r: r}
	g.layout()
	return 16 * int64(g.nparams), int64(slots) * (4*int64(c.activationFloats(r.Last-r.First, r.Last == c.Layers, tokens)) + 4*int64(tokens))
}

func (c GPTConfig) precision() tensor.DType {
	if c.Precision == 0 {
		return tensor.F32
	}
	return c.Precision
}

// StageRange is the blocks [First, Last) a stage holds. The embedding belongs
// to the stage with First == 0, the final layernorm and head to the stage
// with Last == Layers.
type StageRange struct{ First, Last int }

// ParamView is one parameter tensor inside the stage's flat buffers: elements
// [Offset, Offset+N) of ParamBuffer (values) and GradBuffer (gradients).
type ParamView struct {
	Name   string // Hugging Face GPT-2 naming, e.g. "transformer.h.0.attn.c_attn.weight"
	Shape  tensor.Shape
	Offset int
	N      int
	// Decay reports whether weight decay applies (rank ≥ 2: matrices and
	// embeddings, not biases or layernorm gains).
	Decay bool
}

// blockParams indexes the tensors of one transformer block.
type blockParams struct {
	ln1w, ln1b, attnW, attnB, projW, projB, ln2w, ln2b, fcW, fcB, fcProjW, fcProjB int // indices into GPT.params
	lo, hi                                                                         int // element range of the block
}

// GPT is one pipeline stage of a GPT-2 model on a device.Backend.
type GPT struct {
	be  device.Backend
	cfg GPTConfig
	r   StageRange

	params   []ParamView
	nparams  int
	pbuf     device.Buffer
	gbuf     device.Buffer
	wte, wpe int // param indices (stage 0), -1 otherwise
	lnfw     int // param indices (last stage), -1 otherwise
	lnfb     int
	head     int // untied head param index, -1 if tied or not last
	blocks   []blockParams
	embedHi  int // end of the embedding range (0 when not stage 0)
	finalLo  int // start of ln_f (== nparams when not last)
	act      *gptActs
	posHost  []int32
	fwd      gptForwardState
	lossDone bool
	// slots hold the activations of the micro-batches in flight other than
	// the current one (act, fwd, lossDone); see UseSlot.
	slots []gptSlot
	slot  int

	// OnLayerGrads, when set, is called during Backward each time the
	// gradients in elements [lo, hi) of GradBuffer are final for this step:
	// ln_f and the head first, then each block from the last down, then the
	// embedding. Data-parallel callers can start all-reducing those ranges
	// while backward continues. (With tied embeddings wte's gradient is only
	// final with the embedding range, which is reported last.)
	OnLayerGrads func(lo, hi int)
}

// First reports whether the stage holds the embedding.
func (g *GPT) First() bool { return g.r.First == 0 }

// Last reports whether the stage holds the final layernorm and head.
func (g *GPT) Last() bool { return g.r.Last == g.cfg.Layers }

// Config returns the model configuration.
func (g *GPT) Config() GPTConfig { return g.cfg }

// Range returns the blocks this stage holds.
func (g *GPT) Range() StageRange { return g.r }

// Params lists the stage's parameter tensors in buffer order.
func (g *GPT) Params() []ParamView { return g.params }

// ParamBuffer is the F32 buffer of all the stage's parameters.
func (g *GPT) ParamBuffer() device.Buffer { return g.pbuf }

// GradBuffer is the F32 gradient buffer, laid out like ParamBuffer.
func (g *GPT) GradBuffer() device.Buffer { return g.gbuf }

// NumParams is the number of parameter elements of the stage.
func (g *GPT) NumParams() int { return g.nparams }

// ZeroGrad clears the gradient buffer (Backward accumulates).
func (g *GPT) ZeroGrad() { g.be.Fill(device.Whole(g.gbuf), 0) }

// Free releases the stage's device memory.
func (g *GPT) Free() {
	g.pbuf.Free()
	g.gbuf.Free()
	g.UseSlot(0)
	for _, sl := range append(g.slots, gptSlot{act: g.act}) {
		if sl.act != nil {
			sl.act.free()
		}
	}
	g.act, g.slots = nil, nil
}

func (g *GPT) addParam(name string, decay bool, shape ...int) int {
	s := tensor.Shape(shape)
	n := s.Numel()
	g.params = append(g.params, ParamView{Name: name, Shape: s, Offset: g.nparams, N: n, Decay: decay})
	g.nparams += n
	return len(g.params) - 1
}

// pv and gv are the value and gradient views of parameter i.
func (g *GPT) pv(i int) device.View {
	p := g.params[i]
	return device.View{Buf: g.pbuf, Off: p.Offset, N: p.N}
}

func (g *GPT) gv(i int) device.View {
	p := g.params[i]
	return device.View{Buf: g.gbuf, Off: p.Offset, N: p.N}
}

// headW and headG are the head weight (V×C) and its gradient: lm_head or,
// tied, wte.
func (g *GPT) headW() device.View {
	if g.cfg.TieEmbeddings {
		return g.pv(g.wte)
	}
	return g.pv(g.head)
}

func (g *GPT) headG() device.View {
	if g.cfg.TieEmbeddings {
		return g.gv(g.wte)
	}
	return g.gv(g.head)
}

// NewGPT builds the stage holding blocks [r.First, r.Last) of cfg, with the
// embedding if r.First == 0 and the final layernorm and head if r.Last ==
// cfg.Layers. Parameters are initialised as nanoGPT does, deterministically
// from seed: each tensor draws from its own PCG stream keyed by (seed, name),
// so a tensor has the same values whichever stage holds it.
func NewGPT(be device.Backend, cfg GPTConfig, r StageRange, seed uint64) (*GPT, error) {
	if be == nil {
		return nil, errors.New("gpt: nil backend")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if r.First < 0 || r.Last > cfg.Layers || r.First >= r.Last {
		return nil, fmt.Errorf("gpt: stage range [%d, %d) is not a non-empty range of blocks [0, %d)", r.First, r.Last, cfg.Layers)
	}
	if cfg.TieEmbeddings && !(r.First == 0 && r.Last == cfg.Layers) {
		return nil, fmt.Errorf("gpt: stage [%d, %d) of %d layers: tied embeddings need the embedding and head in one stage (untie them or use a single stage)", r.First, r.Last, cfg.Layers)
	}
	g := &GPT{be: be, cfg: cfg, r: r}
	g.layout()

	// Device memory first, so a model too large fails with the device's
	// sizes; then each tensor is drawn into one reused host slice.
	var err error
	if g.pbuf, err = be.Alloc(tensor.F32, g.nparams); err != nil {
		return nil, fmt.Errorf("gpt: parameters: %w", err)
	}
	if g.gbuf, err = be.Alloc(tensor.F32, g.nparams); err != nil {
		g.pbuf.Free()
		return nil, fmt.Errorf("gpt: gradients: %w", err)
	}
	var host []float32
	projStd := 0.02 / math.Sqrt(2*float64(cfg.Layers))
	for i, p := range g.params {
		host = grow(host, p.N)
		dst := host
		clear(dst)
		switch {
		case hasSuffix(p.Name, "ln_1.weight"), hasSuffix(p.Name, "ln_2.weight"), hasSuffix(p.Name, "ln_f.weight"):
			for i := range dst {
				dst[i] = 1
			}
		case !p.Decay: // biases
		default:
			std := 0.02
			if hasSuffix(p.Name, "c_proj.weight") {
				std = projStd
			}
			rng := rand.New(rand.NewPCG(seed, nameKey(p.Name)))
			for i := range dst {
				dst[i] = float32(rng.NormFloat64() * std)
			}
		}
		be.Upload(g.pv(i), dst)
	}
	return g, nil
}

// layout lists the stage's parameter tensors (names, shapes, offsets) for
// g.cfg and g.r, without allocating device memory.
func (g *GPT) layout() {
	C, V, T, r := g.cfg.DModel, g.cfg.Vocab, g.cfg.Context, g.r
	g.wte, g.wpe, g.lnfw, g.lnfb, g.head = -1, -1, -1, -1, -1
	if g.First() {
		g.wte = g.addParam("transformer.wte.weight", true, V, C)
		g.wpe = g.addParam("transformer.wpe.weight", true, T, C)
		g.embedHi = g.nparams
	}
	for l := r.First; l < r.Last; l++ {
		h := fmt.Sprintf("transformer.h.%d.", l)
		var b blockParams
		b.lo = g.nparams
		b.ln1w = g.addParam(h+"ln_1.weight", false, C)
		b.ln1b = g.addParam(h+"ln_1.bias", false, C)
		b.attnW = g.addParam(h+"attn.c_attn.weight", true, C, 3*C)
		b.attnB = g.addParam(h+"attn.c_attn.bias", false, 3*C)
		b.projW = g.addParam(h+"attn.c_proj.weight", true, C, C)
		b.projB = g.addParam(h+"attn.c_proj.bias", false, C)
		b.ln2w = g.addParam(h+"ln_2.weight", false, C)
		b.ln2b = g.addParam(h+"ln_2.bias", false, C)
		b.fcW = g.addParam(h+"mlp.c_fc.weight", true, C, 4*C)
		b.fcB = g.addParam(h+"mlp.c_fc.bias", false, 4*C)
		b.fcProjW = g.addParam(h+"mlp.c_proj.weight", true, 4*C, C)
		b.fcProjB = g.addParam(h+"mlp.c_proj.bias", false, C)
		b.hi = g.nparams
		g.blocks = append(g.blocks, b)
	}
	g.finalLo = g.nparams
	if g.Last() {
		g.lnfw = g.addParam("transformer.ln_f.weight", false, C)
		g.lnfb = g.addParam("transformer.ln_f.bias", false, C)
		if !g.cfg.TieEmbeddings {
			g.head = g.addParam("lm_head.weight", true, V, C)
		}
	}
}

// ParamShapes lists every parameter tensor of the whole model c (one stage
// holding every block), in buffer order, without allocating anything:
// the names and shapes a checkpoint or Hugging Face directory must hold.
func (c GPTConfig) ParamShapes() []ParamView {
	g := &GPT{cfg: c, r: StageRange{First: 0, Last: c.Layers}}
	g.layout()
	return g.params
}

func hasSuffix(s, suf string) bool { return len(s) >= len(suf) && s[len(s)-len(suf):] == suf }

func nameKey(name string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	return h.Sum64()
}

// StageCost is the per-sample (one window of Context tokens) cost of a
// GPT's parts, for cutting it into pipeline stages: forward+backward FLOPs
// (backward counted as twice the forward), parameters, the activation
// bytes a training step keeps for backward, and the bytes crossing a stage
// boundary each way.
type StageCost struct {
	EmbedFLOPs, BlockFLOPs, HeadFLOPs    float64
	EmbedParams, BlockParams, HeadParams int64
	BlockActBytes, HeadActBytes          int64
	BoundaryBytes                        int64
}

// Cost is c's StageCost. A block's forward is 24·C² FLOPs per token for its
// four matrix products and 2·T·C for causal attention (half of QKᵀ and of
// the weighted sum); the head's is 2·C·V for the output projection and
// about 5·V for the softmax and loss, which on GPT-2 124M at T = 1024 is
// about 30% of the forward FLOPs; the embedding's is a gather and add of
// 2·C per token.
func (c GPTConfig) Cost() StageCost {
	C, T, V, H := float64(c.DModel), float64(c.Context), float64(c.Vocab), int64(c.Heads)
	sc := StageCost{
		EmbedFLOPs:    3 * T * 2 * C,
		BlockFLOPs:    3 * T * (24*C*C + 2*T*C),
		HeadFLOPs:     3 * T * (2*C*V + 5*V),
		EmbedParams:   int64(c.Vocab+c.Context) * int64(c.DModel),
		BlockParams:   int64(12*c.DModel*c.DModel + 13*c.DModel),
		HeadParams:    int64(2 * c.DModel),
		BlockActBytes: 4 * int64(c.Context) * (16*int64(c.DModel) + 4 + H),
		HeadActBytes:  4 * int64(c.Context) * int64(c.DModel+2+c.Vocab),
		BoundaryBytes: 4 * int64(c.Context) * int64(c.DModel),
	}
	if !c.TieEmbeddings {
		sc.HeadParams += int64(c.Vocab) * int64(c.DModel)
	}
	return sc
}

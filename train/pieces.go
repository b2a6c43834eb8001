package train

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/loomtrain/loom/model"
)

// Pieces: when a pipeline job's plan moves layers between workers, its
// state moves in pieces, each whole from one holder: the embedding
// (PieceEmbedding), each transformer block (its index) and the final
// layernorm with the output head (the model's layer count). A piece's state
// is its parameters' fp32 master values and their optimizer state.

// PieceEmbedding is the piece of the token and position embeddings.
const PieceEmbedding = -1

// Pieces lists the pieces a stage of blocks r of a model of layers blocks
// holds, in order.
func Pieces(r model.StageRange, layers int) []int {
	var out []int
	if r.First == 0 {
		out = append(out, PieceEmbedding)
	}
	for b := r.First; b < r.Last; b++ {
		out = append(out, b)
	}
	if r.Last == layers {
		out = append(out, layers)
	}
	return out
}

// HoldsPiece reports whether a stage of blocks r holds piece p.
func HoldsPiece(r model.StageRange, layers, p int) bool {
	switch {
	case p == PieceEmbedding:
		return r.First == 0
	case p == layers:
		return r.Last == layers
	default:
		return p >= r.First && p < r.Last
	}
}

// PieceName describes piece p for messages.
func PieceName(p, layers int) string {
	switch p {
	case PieceEmbedding:
		return "the embedding"
	case layers:
		return "the head"
	}
	return "block " + strconv.Itoa(p)
}

// pieceOf is the piece of a GPT parameter by its Hugging Face name.
func pieceOf(name string, layers int) (int, error) {
	switch {
	case strings.HasPrefix(name, "transformer.wte.") || strings.HasPrefix(name, "transformer.wpe."):
		return PieceEmbedding, nil
	case strings.HasPrefix(name, "transformer.ln_f.") || strings.HasPrefix(name, "lm_head."):
		return layers, nil
	case strings.HasPrefix(name, "transformer.h."):
		rest := strings.TrimPrefix(name, "transformer.h.")
		if i := strings.IndexByte(rest, '.'); i > 0 {
			if b, err := strconv.Atoi(rest[:i]); err == nil && b >= 0 && b < layers {
				return b, nil
			}
		}
	}
	return 0, fmt.Errorf("parameter %q belongs to no piece of a %d-block GPT", name, layers)
}

// Range is the blocks the trainer holds: every block unless it is a
// pipeline stage's (an MLP has none).
func (t *Trainer) Range() model.StageRange {
	if g, ok := t.task.(*gptTask); ok {
		return g.net.Range()
	}
	return model.StageRange{}
}

// PieceTensors returns the state of piece p (which the trainer must hold):
// its parameters' values and their optimizer state, sorted by name so that
// trainers of different stages list the same piece alike; the slices alias
// live memory.
func (t *Trainer) PieceTensors(p int) ([][]float32, error) {
	layers := t.job.Model.GPTLayers()
	if !HoldsPiece(t.Range(), layers, p) {
		return nil, fmt.Errorf("%s is not held by this stage (blocks %d-%d)", PieceName(p, layers), t.Range().First, t.Range().Last-1)
	}
	type named struct {
		name string
		data []float32
	}
	var in []named
	owner := map[string]int{} // parameter name -> piece
	for _, prm := range t.task.params() {
		q, err := pieceOf(prm.Name, layers)
		if err != nil {
			return nil, err
		}
		owner[prm.Name] = q
		if q == p {
			in = append(in, named{prm.Name, prm.Value})
		}
	}
	for _, o := range t.opt.State() {
		// Optimizer state is named "<parameter name>.<kind>".
		i := strings.LastIndexByte(o.Name, '.')
		q, ok := owner[o.Name[:max(i, 0)]]
		if !ok {
			return nil, fmt.Errorf("optimizer state %q belongs to no parameter", o.Name)
		}
		if q == p {
			in = append(in, named{o.Name, o.Data})
		}
	}
	slices.SortFunc(in, func(a, b named) int { return strings.Compare(a.name, b.name) })
	out := make([][]float32, len(in))
	for i, n := range in {
		out[i] = n.data
	}
	return out, nil
}

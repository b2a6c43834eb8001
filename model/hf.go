package model

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
)

// HFConfig is the config.json of a Hugging Face GPT2LMHeadModel: the fields
// transformers reads for GPT-2, with the values that make its model compute
// what GPT computes (gelu_new, layernorm eps 1e-5, no dropout, scaled
// attention, a 4·n_embd MLP). Tokenizer is loom's own key (transformers
// keeps unknown keys): the tokenizer the model was trained with, so
// `loom generate` can decode.
type HFConfig struct {
	Architectures              []string `json:"architectures"`
	ModelType                  string   `json:"model_type"`
	NEmbd                      int      `json:"n_embd"`
	NHead                      int      `json:"n_head"`
	NLayer                     int      `json:"n_layer"`
	NPositions                 int      `json:"n_positions"`
	NCtx                       int      `json:"n_ctx,omitempty"`
	NInner                     *int     `json:"n_inner"`
	VocabSize                  int      `json:"vocab_size"`
	LayerNormEpsilon           float64  `json:"layer_norm_epsilon"`
	ActivationFunction         string   `json:"activation_function"`
	TieWordEmbeddings          *bool    `json:"tie_word_embeddings,omitempty"`
	ResidPdrop                 float64  `json:"resid_pdrop"`
	EmbdPdrop                  float64  `json:"embd_pdrop"`
	AttnPdrop                  float64  `json:"attn_pdrop"`
	ScaleAttnWeights           *bool    `json:"scale_attn_weights,omitempty"`
	ScaleAttnByInverseLayerIdx bool     `json:"scale_attn_by_inverse_layer_idx"`
	ReorderAndUpcastAttn       bool     `json:"reorder_and_upcast_attn"`
	BosTokenID                 *int     `json:"bos_token_id,omitempty"`
	EosTokenID                 *int     `json:"eos_token_id,omitempty"`
	TorchDtype                 string   `json:"torch_dtype,omitempty"`
	Tokenizer                  string   `json:"loom_tokenizer,omitempty"`
}

// gpt2EOT is GPT-2's <|endoftext|>, its BOS and EOS token.
const gpt2EOT = 50256

// HFConfig returns the Hugging Face config of c, trained with tokenizer
// ("gpt2", "byte", or "" if unknown).
func (c GPTConfig) HFConfig(tokenizer string) HFConfig {
	tie, scale := c.TieEmbeddings, true
	h := HFConfig{
		Architectures: []string{"GPT2LMHeadModel"}, ModelType: "gpt2",
		NEmbd: c.DModel, NHead: c.Heads, NLayer: c.Layers, NPositions: c.Context, NCtx: c.Context,
		VocabSize: c.Vocab, LayerNormEpsilon: gptLNEps, ActivationFunction: "gelu_new",
		TieWordEmbeddings: &tie, ScaleAttnWeights: &scale, TorchDtype: "float32", Tokenizer: tokenizer,
	}
	if tokenizer == "gpt2" && c.Vocab > gpt2EOT {
		eot := gpt2EOT
		h.BosTokenID, h.EosTokenID = &eot, &eot
	}
	return h
}

// MarshalHFConfig is c's config.json, indented as transformers writes it.
func (c GPTConfig) MarshalHFConfig(tokenizer string) []byte {
	b, err := json.MarshalIndent(c.HFConfig(tokenizer), "", "  ")
	if err != nil {
		panic(err) // a struct of plain fields always marshals
	}
	return append(b, '\n')
}

// ParseHFConfig reads a GPT-2 config.json and returns the model it
// describes, refusing (by field name) every setting GPT does not compute:
// another model type or activation, a layernorm epsilon other than 1e-5, an
// MLP width other than 4·n_embd, or attention scaled otherwise. Dropout is
// accepted and ignored (loom trains without it; the Hub's gpt2 says 0.1). The
// precision is left 0 (the job chooses it).
func ParseHFConfig(raw []byte) (GPTConfig, HFConfig, error) {
	var h HFConfig
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&h); err != nil {
		return GPTConfig{}, h, fmt.Errorf("config.json: %w", err)
	}
	bad := func(field string, format string, a ...any) (GPTConfig, HFConfig, error) {
		return GPTConfig{}, h, fmt.Errorf("config.json: %s: %s", field, fmt.Sprintf(format, a...))
	}
	if h.ModelType != "gpt2" {
		return bad("model_type", "%q, loom loads gpt2", h.ModelType)
	}
	switch h.ActivationFunction {
	case "gelu_new", "gelu_pytorch_tanh":
	default:
		return bad("activation_function", "%q; loom's GPT uses gelu_new (the tanh approximation)", h.ActivationFunction)
	}
	if h.LayerNormEpsilon != 0 && math.Abs(h.LayerNormEpsilon-gptLNEps) > 1e-12 {
		return bad("layer_norm_epsilon", "%g; loom's GPT uses %g", h.LayerNormEpsilon, gptLNEps)
	}
	if h.NInner != nil && *h.NInner != 4*h.NEmbd {
		return bad("n_inner", "%d; loom's GPT uses 4·n_embd = %d", *h.NInner, 4*h.NEmbd)
	}
	if h.ScaleAttnWeights != nil && !*h.ScaleAttnWeights {
		return bad("scale_attn_weights", "false; loom's GPT scales attention by 1/√head_size")
	}
	if h.ScaleAttnByInverseLayerIdx {
		return bad("scale_attn_by_inverse_layer_idx", "true is not supported")
	}
	tie := h.TieWordEmbeddings == nil || *h.TieWordEmbeddings // transformers' default
	c := GPTConfig{Layers: h.NLayer, Heads: h.NHead, DModel: h.NEmbd, Context: h.NPositions, Vocab: h.VocabSize, TieEmbeddings: tie}
	if err := c.Validate(); err != nil {
		return GPTConfig{}, h, fmt.Errorf("config.json: %w", err)
	}
	return c, h, nil
}

// SameArchitecture reports the first difference between the shapes of a and
// b (precision aside), as "field: a vs b", or "" if they are the same model.
func SameArchitecture(a, b GPTConfig) string {
	for _, f := range []struct {
		name string
		x, y int
	}{{"layers", a.Layers, b.Layers}, {"heads", a.Heads, b.Heads}, {"d_model", a.DModel, b.DModel},
		{"context", a.Context, b.Context}, {"vocab", a.Vocab, b.Vocab}} {
		if f.x != f.y {
			return fmt.Sprintf("%s %d vs %d", f.name, f.x, f.y)
		}
	}
	if a.TieEmbeddings != b.TieEmbeddings {
		return fmt.Sprintf("tie_embeddings %v vs %v", a.TieEmbeddings, b.TieEmbeddings)
	}
	return ""
}

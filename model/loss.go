package model

// SoftmaxCE is the softmax cross-entropy loss over class logits.
type SoftmaxCE struct {
	ctx  *Context
	grad []float32
}

// NewSoftmaxCE makes the loss.
func NewSoftmaxCE(ctx *Context) *SoftmaxCE { return &SoftmaxCE{ctx: ctx} }

// Forward returns the summed loss over rows, the number of correct arg-max
// predictions, and (in a buffer reused across calls) the gradient of
// scale × summed loss with respect to the logits. Summing, not averaging, is
// what lets data-parallel ranks with unequal shares add their gradients and
// divide by the global batch once.
func (s *SoftmaxCE) Forward(logits []float32, labels []int32, rows, classes int, scale float32) (loss float64, correct int, grad []float32) {
	s.grad = grow(s.grad, rows*classes)
	loss, correct = s.ctx.Dev.SoftmaxCrossEntropy(logits, labels, rows, classes, s.grad, scale)
	return loss, correct, s.grad
}

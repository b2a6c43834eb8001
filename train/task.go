package train

import (
	"fmt"

	"github.com/loomtrain/loom/data"
	"github.com/loomtrain/loom/device"
	"github.com/loomtrain/loom/jobspec"
	"github.com/loomtrain/loom/model"
)

// task is the model and data of one job, as the step loop sees them: a flat
// set of host-addressable parameters and gradients, and a way to turn
// sample indices into their summed gradients. The loop (sampling, shares,
// gradient sync, optimizer, ledger, checkpoints) is the same for every task.
type task interface {
	// params lists the trainable tensors in flat order; their Value and
	// Grad alias values and grads.
	params() []*model.Param
	// flat returns the parameter and gradient storage, NumParams long each.
	flat() (values, grads []float32)
	// trainSize is the number of training samples (examples or context
	// windows) one epoch draws.
	trainSize() int
	// tokensPerSample is the number of predicted positions per sample (1
	// for a classifier, the context for a language model): a step's
	// gradient is divided by rows·tokensPerSample.
	tokensPerSample() int
	// accumulate runs forward and backward over the training samples idx
	// (len > 0) and stores their summed loss-scaled gradients in grads,
	// overwriting what a previous step left, or adding to it if add (the
	// later micro-batches of a step). done, if non-nil, is called during
	// backward with the lowest flat offset whose gradients are now final
	// (descending). It returns the summed loss and correct count.
	accumulate(idx []int, scale float32, add bool, done func(lo int)) (loss float64, correct int)
	// bucketBounds are the offsets done reports, in the order it reports
	// them, so a rank with no samples starts the same ranges.
	bucketBounds() []int
	// weightsChanged tells the model its master weights were updated.
	weightsChanged()
	// evaluate returns the held-out accuracy (classes, or next tokens),
	// mean loss per predicted position and the samples it read: limit
	// held-out samples (0: every one; < 0: a bounded sample of a large
	// set, what an evaluation during training reads).
	evaluate(limit int) (acc, loss float64, samples int)
}

// newTask builds the task of job's model kind over split.
func newTask(job *jobspec.Job, dev device.Device, split *data.Split) (task, error) {
	switch job.Model.Kind {
	case "", "mlp":
		return newMLPTask(job, dev, split)
	case "gpt":
		return newGPTTask(job, dev, split)
	}
	return nil, fmt.Errorf("model.kind %q: no trainer for it", job.Model.Kind)
}

// mlpTask is an MLP classifier over a feature dataset (MNIST, IDX).
type mlpTask struct {
	split         *data.Split
	ctx           model.Context
	net           *model.MLP
	loss          *model.SoftmaxCE
	values, grads []float32
	offsets       map[*model.Param]int
	bounds        []int
	x             []float32
	y             []int32
}

func newMLPTask(job *jobspec.Job, dev device.Device, split *data.Split) (*mlpTask, error) {
	if split.Train == nil {
		return nil, fmt.Errorf("model.kind mlp needs an example dataset (mnist or idx), not %s", split.Source)
	}
	layers := job.Model.Layers
	if layers[0] != split.Train.Dim {
		return nil, fmt.Errorf("model.layers[0] is %d but %s examples have %d features", layers[0], split.Source, split.Train.Dim)
	}
	if layers[len(layers)-1] < split.Train.Classes {
		return nil, fmt.Errorf("model output width %d < %d classes in %s", layers[len(layers)-1], split.Train.Classes, split.Source)
	}
	m := &mlpTask{split: split, ctx: model.Context{Dev: dev, DType: job.DType()}}
	act := device.ReLU
	if job.Model.Activation == "gelu" {
		act = device.GELU
	}
	var err error
	if m.net, err = model.NewMLP(&m.ctx, layers, act, job.Seed); err != nil {
		return nil, err
	}
	m.loss = model.NewSoftmaxCE(&m.ctx)
	n := m.net.NumParams()
	m.values, m.grads = make([]float32, n), make([]float32, n)
	m.net.Bind(m.values, m.grads)
	m.offsets = map[*model.Param]int{}
	off := 0
	for _, p := range m.net.Params() {
		m.offsets[p] = off
		off += len(p.Value)
	}
	for i := len(m.net.Layers) - 1; i >= 0; i-- {
		m.bounds = append(m.bounds, m.offsets[m.net.Layers[i].W])
	}
	return m, nil
}

func (m *mlpTask) params() []*model.Param          { return m.net.Params() }
func (m *mlpTask) flat() (values, grads []float32) { return m.values, m.grads }
func (m *mlpTask) trainSize() int                  { return m.split.Train.N }
func (m *mlpTask) tokensPerSample() int            { return 1 }
func (m *mlpTask) bucketBounds() []int             { return m.bounds }
func (m *mlpTask) weightsChanged()                 { m.net.WeightsChanged() }

func (m *mlpTask) accumulate(idx []int, scale float32, add bool, done func(lo int)) (float64, int) {
	rows, dim := len(idx), m.split.Train.Dim
	m.x = grow(m.x, rows*dim)
	if cap(m.y) < rows {
		m.y = make([]int32, rows)
	}
	m.y = m.y[:rows]
	for r, i := range idx {
		copy(m.x[r*dim:(r+1)*dim], m.split.Train.Example(i))
		m.y[r] = m.split.Train.Y[i]
	}
	logits := m.net.Forward(m.x, rows)
	loss, correct, grad := m.loss.Forward(logits, m.y, rows, m.net.Classes(), scale)
	var each func([]*model.Param)
	if done != nil {
		each = func(ps []*model.Param) { done(m.offsets[ps[0]]) }
	}
	// The first pass of a step stores its gradients rather than clearing
	// the buffer and adding to it: that saves a write and a read of it.
	m.net.SetOverwriteGrads(!add)
	m.net.Backward(grad, rows, each)
	return loss, correct
}

// evaluate returns the accuracy and mean loss on the whole test set.
func (m *mlpTask) evaluate(int) (acc, loss float64, samples int) {
	const batch = 1000
	ds := m.split.Test
	correct := 0
	for lo := 0; lo < ds.N; lo += batch {
		rows := min(batch, ds.N-lo)
		logits := m.net.Forward(ds.X[lo*ds.Dim:(lo+rows)*ds.Dim], rows)
		l, c, _ := m.loss.Forward(logits, ds.Y[lo:lo+rows], rows, m.net.Classes(), 1)
		loss += l
		correct += c
	}
	return float64(correct) / float64(ds.N), loss / float64(ds.N), ds.N
}

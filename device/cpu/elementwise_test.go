package cpu

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/loomtrain/loom/device"
)

func TestExp32(t *testing.T) {
	worst := 0.0
	for x := -87.0; x <= 88.5; x += 0.001 {
		got, want := float64(exp32(float32(x))), math.Exp(float64(float32(x)))
		worst = max(worst, math.Abs(got-want)/want)
	}
	if worst > 3e-7 {
		t.Fatalf("exp32 relative error %g > 3e-7", worst)
	}
	if !math.IsInf(float64(exp32(89)), 1) || exp32(-88) != 0 || exp32(float32(math.NaN())) == exp32(float32(math.NaN())) {
		t.Fatal("exp32 out-of-range or NaN handling")
	}
}

func gelu64(x float64) float64 { return 0.5 * x * (1 + math.Tanh(geluC*(x+geluA*x*x*x))) }

func TestGELU(t *testing.T) {
	for x := -12.0; x <= 12.0; x += 0.0009 {
		xf := float32(x)
		v := float64(xf)
		if got, want := float64(gelu(xf)), gelu64(v); math.Abs(got-want) > 1e-6*math.Abs(want)+1e-7 {
			t.Fatalf("gelu(%g)=%g want %g", v, got, want)
		}
		const h = 1e-5
		want := (gelu64(v+h) - gelu64(v-h)) / (2 * h)
		if got := float64(geluGrad(xf)); math.Abs(got-want) > 2e-6*(1+math.Abs(want)) {
			t.Fatalf("gelu'(%g)=%g want %g", v, got, want)
		}
	}
}

func TestBiasActAndBackward(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	const rows, cols = 300, 130 // big enough to fork for every activation
	for _, threads := range []int{1, 2} {
		d, err := New(Config{Threads: threads})
		if err != nil {
			t.Fatal(err)
		}
		for _, act := range []device.Activation{device.None, device.ReLU, device.GELU} {
			x := make([]float32, rows*cols)
			bias := make([]float32, cols)
			for i := range x {
				x[i] = float32(3 * r.NormFloat64())
			}
			for i := range bias {
				bias[i] = float32(r.NormFloat64())
			}
			orig := append([]float32(nil), x...)
			pre := make([]float32, len(x))
			d.BiasAct(act, x, bias, pre, rows, cols)
			grad := make([]float32, len(x))
			for i := range grad {
				grad[i] = 1.5
			}
			d.ActBackward(act, grad, pre)
			for i, v := range orig {
				p := float64(v + bias[i%cols])
				want, dwant := p, 1.5
				switch act {
				case device.ReLU:
					want, dwant = max(p, 0), 0
					if p > 0 {
						dwant = 1.5
					}
				case device.GELU:
					want = gelu64(p)
					dwant = 1.5 * (gelu64(p+1e-5) - gelu64(p-1e-5)) / 2e-5
				}
				if math.Abs(float64(x[i])-want) > 1e-6*(1+math.Abs(want)) {
					t.Fatalf("%v t%d: x[%d]=%g want %g", act, threads, i, x[i], want)
				}
				if act != device.None && float64(pre[i]) != p {
					t.Fatalf("%v: pre[%d]=%g want %g", act, i, pre[i], p)
				}
				if math.Abs(float64(grad[i])-dwant) > 1e-5*(1+math.Abs(dwant)) {
					t.Fatalf("%v t%d: grad[%d]=%g want %g", act, threads, i, grad[i], dwant)
				}
			}
		}
	}
}

func TestSoftmaxCrossEntropy(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, shape := range [][2]int{{64, 10}, {33, 65}, {1, 1}} {
		rows, cols := shape[0], shape[1]
		logits := make([]float32, rows*cols)
		labels := make([]int32, rows)
		for i := range logits {
			logits[i] = float32(4 * r.NormFloat64())
		}
		for i := range labels {
			labels[i] = int32(r.IntN(cols))
		}
		logits[0] = 1e4 // stability: one huge logit
		var wantLoss float64
		wantCorrect := 0
		wantGrad := make([]float64, len(logits))
		const scale = 0.25
		for i := 0; i < rows; i++ {
			row := logits[i*cols : (i+1)*cols]
			m, arg := math.Inf(-1), 0
			for j, v := range row {
				if float64(v) > m {
					m, arg = float64(v), j
				}
			}
			var s float64
			for _, v := range row {
				s += math.Exp(float64(v) - m)
			}
			wantLoss += m + math.Log(s) - float64(row[labels[i]])
			if arg == int(labels[i]) {
				wantCorrect++
			}
			for j, v := range row {
				g := math.Exp(float64(v)-m) / s
				if j == int(labels[i]) {
					g--
				}
				wantGrad[i*cols+j] = scale * g
			}
		}
		for _, threads := range []int{1, 2} {
			t.Run(fmt.Sprintf("%dx%d/t%d", rows, cols, threads), func(t *testing.T) {
				d, _ := New(Config{Threads: threads})
				grad := make([]float32, len(logits))
				loss, correct := d.SoftmaxCrossEntropy(logits, labels, rows, cols, grad, scale)
				if math.Abs(loss-wantLoss) > 1e-6*math.Abs(wantLoss) || correct != wantCorrect {
					t.Fatalf("loss %g correct %d, want %g %d", loss, correct, wantLoss, wantCorrect)
				}
				for i, g := range grad {
					if math.Abs(float64(g)-wantGrad[i]) > 1e-6 {
						t.Fatalf("grad[%d]=%g want %g", i, g, wantGrad[i])
					}
				}
				if l2, c2 := d.SoftmaxCrossEntropy(logits, labels, rows, cols, nil, scale); l2 != loss || c2 != correct {
					t.Fatalf("without grad: %g %d, with: %g %d", l2, c2, loss, correct)
				}
			})
		}
	}
}

// SumRows adds each column's rows in order: bitwise the scalar loop, for
// widths on and off the vector step.
func TestSumRowsBitwise(t *testing.T) {
	d, err := New(Config{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(9, 9))
	for _, cols := range []int{1, 7, 16, 17, 33, 512} {
		const rows = 5
		x := make([]float32, rows*cols)
		for i := range x {
			x[i] = r.Float32()*2 - 1
		}
		got, want := make([]float32, cols), make([]float32, cols)
		for j := range got {
			got[j] = float32(j) * 0.1
			want[j] = got[j]
		}
		d.SumRows(got, x, rows, cols)
		for i := 0; i < rows; i++ {
			for j := 0; j < cols; j++ {
				want[j] += x[i*cols+j]
			}
		}
		for j := range got {
			if math.Float32bits(got[j]) != math.Float32bits(want[j]) {
				t.Fatalf("cols %d: column %d = %g, want %g", cols, j, got[j], want[j])
			}
		}
	}
}

// The vector bias+ReLU is bitwise the scalar relu(v+b), signed zeros and
// NaNs included.
func TestBiasReLUBitwise(t *testing.T) {
	d, err := New(Config{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	negZero := float32(math.Copysign(0, -1))
	nan := float32(math.NaN())
	special := []float32{negZero, 0, nan, -nan, -1, 1, float32(math.Inf(-1)), float32(math.Inf(1))}
	const cols = 37
	x := make([]float32, 2*cols)
	bias := make([]float32, cols)
	for i := range x {
		x[i] = special[i%len(special)]
	}
	for i := range bias {
		bias[i] = []float32{negZero, 0, 0.5, -0.5}[i%4]
	}
	want := make([]float32, len(x))
	for i, v := range x {
		want[i] = relu(v + bias[i%cols])
	}
	pre := make([]float32, len(x))
	d.BiasAct(device.ReLU, x, bias, pre, 2, cols)
	for i := range x {
		if math.Float32bits(x[i]) != math.Float32bits(want[i]) {
			t.Fatalf("x[%d] = %g (%#x), want %g (%#x)", i, x[i], math.Float32bits(x[i]), want[i], math.Float32bits(want[i]))
		}
	}
}

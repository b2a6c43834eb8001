package cpu

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/loomtrain/loom/device"
	"github.com/loomtrain/loom/tensor"
)

// refGemm is the float64 reference for C = alpha·op(A)·op(B) + beta·C on
// values already rounded to the operand dtype.
func refGemm(transA, transB bool, m, n, k int, alpha float64, a, b []float64, lda, ldb int, beta float64, c []float64, ldc int) {
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			var s float64
			for p := 0; p < k; p++ {
				var av, bv float64
				if transA {
					av = a[p*lda+i]
				} else {
					av = a[i*lda+p]
				}
				if transB {
					bv = b[j*ldb+p]
				} else {
					bv = b[p*ldb+j]
				}
				s += av * bv
			}
			c[i*ldc+j] = alpha*s + beta*c[i*ldc+j]
		}
	}
}

// operand makes a random rows×cols matrix (row stride ld) in dtype dt and
// returns it with its exact float64 values.
func randOperand(r *rand.Rand, dt tensor.DType, rows, cols, ld int) (device.Matrix, []float64) {
	n := max(0, (rows-1)*ld+cols)
	f := make([]float32, n)
	for i := range f {
		f[i] = float32(r.NormFloat64())
	}
	exact := make([]float64, n)
	if dt == tensor.F32 {
		for i, v := range f {
			exact[i] = float64(v)
		}
		return device.F32Matrix(f, ld), exact
	}
	h := make([]uint16, n)
	tensor.EncodeHalf(dt, h, f)
	for i, v := range h {
		exact[i] = float64(tensor.FromHalf(dt, v))
	}
	return device.HalfMatrix(dt, h, ld), exact
}

// checkGemmAgainstRef runs one configuration and compares with the float64
// reference. The bound is relative to Σ|a||b| (the error of float32
// accumulation grows with k; operand rounding is already in the reference).
func checkGemmAgainstRef(t *testing.T, d device.Device, dt tensor.DType, transA, transB bool, m, n, k int, alpha, beta float32) {
	t.Helper()
	r := rand.New(rand.NewPCG(uint64(m*131+n*17+k), 7))
	ar, ac := m, k
	if transA {
		ar, ac = k, m
	}
	br, bc := k, n
	if transB {
		br, bc = n, k
	}
	a, ax := randOperand(r, dt, ar, ac, ac+1)
	b, bx := randOperand(r, dt, br, bc, bc+2)
	ldc := n + 3
	c := make([]float32, max(0, (m-1)*ldc+n))
	cx := make([]float64, len(c))
	for i := range c {
		c[i] = float32(r.NormFloat64())
		cx[i] = float64(c[i])
	}
	absA := make([]float64, len(ax))
	absB := make([]float64, len(bx))
	for i, v := range ax {
		absA[i] = math.Abs(v)
	}
	for i, v := range bx {
		absB[i] = math.Abs(v)
	}
	mag := make([]float64, len(c))
	refGemm(transA, transB, m, n, k, math.Abs(float64(alpha)), absA, absB, ac+1, bc+2, 0, mag, ldc)
	refGemm(transA, transB, m, n, k, float64(alpha), ax, bx, ac+1, bc+2, float64(beta), cx, ldc)
	d.Gemm(transA, transB, m, n, k, alpha, a, b, beta, c, ldc)
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			got, want := float64(c[i*ldc+j]), cx[i*ldc+j]
			bound := 2e-6*float64(k+2)*(mag[i*ldc+j]+math.Abs(float64(beta))*math.Abs(want)) + 1e-6
			if math.Abs(got-want) > bound {
				t.Fatalf("%v tA=%v tB=%v %dx%dx%d: C[%d,%d]=%g want %g (bound %g)", dt, transA, transB, m, n, k, i, j, got, want, bound)
			}
		}
	}
}

// kernelDevices opens a device per GEMM kernel this CPU supports, so every
// path the machine can run is held to the same reference.
func kernelDevices(t testing.TB, threads int) []*Device {
	var ds []*Device
	for _, k := range KernelNames() {
		d, err := New(Config{Threads: threads, Kernel: k})
		if err != nil {
			t.Fatal(err)
		}
		ds = append(ds, d)
	}
	return ds
}

func TestGemmMatchesFloat64Reference(t *testing.T) {
	t.Logf("kernels on this CPU: %v", KernelNames())
	sizes := [][3]int{{1, 1, 1}, {3, 5, 7}, {4, 4, 4}, {17, 9, 33}, {64, 70, 300}, {5, 130, 257}, {0, 3, 3}, {3, 3, 0},
		{150, 40, 300}, {7, 70, 600}, {64, 200, 40}, {9, 96, 50}}
	threadCounts := []int{1, 2, 3}
	if raceEnabled {
		threadCounts = []int{3}
	}
	for _, threads := range threadCounts {
		for _, d := range kernelDevices(t, threads) {
			for _, dt := range []tensor.DType{tensor.F32, tensor.BF16, tensor.F16} {
				for _, s := range sizes {
					for _, tr := range [][2]bool{{false, false}, {false, true}, {true, false}, {true, true}} {
						t.Run(fmt.Sprintf("%s/t%d/%v/%dx%dx%d/%v", d.Name(), threads, dt, s[0], s[1], s[2], tr), func(t *testing.T) {
							checkGemmAgainstRef(t, d, dt, tr[0], tr[1], s[0], s[1], s[2], 0.75, 0.5)
							checkGemmAgainstRef(t, d, dt, tr[0], tr[1], s[0], s[1], s[2], 1, 0)
						})
					}
				}
			}
		}
	}
}

// TestGemmColumnBlocks shrinks the packed-B budget so op(B) is packed in
// several column blocks, a path only huge matrices take otherwise.
func TestGemmColumnBlocks(t *testing.T) {
	for _, d := range kernelDevices(t, 2) {
		d.bBudget = 1
		for _, dt := range []tensor.DType{tensor.F32, tensor.BF16} {
			t.Run(fmt.Sprintf("%s/%v", d.Name(), dt), func(t *testing.T) {
				checkGemmAgainstRef(t, d, dt, false, true, 20, 3*d.kern.nr+5, 41, 1.5, 0.5)
			})
		}
	}
}

func TestGemmBetaZeroIgnoresNaN(t *testing.T) {
	for _, d := range kernelDevices(t, 2) {
		c := []float32{float32(math.NaN()), float32(math.NaN())}
		d.Gemm(false, false, 1, 2, 1, 1, device.F32Matrix([]float32{2}, 1), device.F32Matrix([]float32{3, 4}, 2), 0, c, 2)
		if c[0] != 6 || c[1] != 8 {
			t.Fatalf("%s: got %v want [6 8]", d.Name(), c)
		}
		// Whole register tiles take the assembly store path.
		for _, dt := range []tensor.DType{tensor.F32, tensor.BF16} {
			m, n, k := 2*d.kern.mr, 2*d.kern.nr, 3
			a := make([]float32, m*k)
			b := make([]float32, k*n)
			for i := range a {
				a[i] = 1
			}
			for i := range b {
				b[i] = 2
			}
			am, bm := device.F32Matrix(a, k), device.F32Matrix(b, n)
			if dt == tensor.BF16 {
				ah, bh := make([]uint16, len(a)), make([]uint16, len(b))
				tensor.EncodeHalf(dt, ah, a)
				tensor.EncodeHalf(dt, bh, b)
				am, bm = device.HalfMatrix(dt, ah, k), device.HalfMatrix(dt, bh, n)
			}
			c := make([]float32, m*n)
			for i := range c {
				c[i] = float32(math.NaN())
			}
			d.Gemm(false, false, m, n, k, 0.5, am, bm, 0, c, n)
			for i, v := range c {
				if v != 3 {
					t.Fatalf("%s %v: C[%d]=%v want 3", d.Name(), dt, i, v)
				}
			}
		}
	}
}

func TestKernelSelection(t *testing.T) {
	var r device.Registry
	if err := Register(&r); err != nil {
		t.Fatal(err)
	}
	d, err := r.Open("cpu:threads=1,kernel=generic")
	if err != nil {
		t.Fatal(err)
	}
	if d.Name() != "cpu/generic" {
		t.Fatalf("kernel=generic gave %s", d.Name())
	}
	if _, err := r.Open("cpu:kernel=sse9"); err == nil {
		t.Fatal("unknown kernel accepted")
	}
	t.Setenv(KernelEnv, "generic")
	if d, err := New(Config{Threads: 1}); err != nil || d.Name() != "cpu/generic" {
		t.Fatalf("%s=generic: %v %v", KernelEnv, d, err)
	}
	if d, err := New(Config{Threads: 1, Kernel: "auto"}); err != nil || d.Kernel() != KernelNames()[0] {
		t.Fatalf("auto: %v %v", d, err)
	}
	for _, k := range []string{"avx512", "avx2"} {
		supported := false
		for _, have := range KernelNames() {
			supported = supported || have == k
		}
		if _, err := New(Config{Threads: 1, Kernel: k}); (err == nil) != supported {
			t.Fatalf("kernel %s: supported=%v but New returned %v", k, supported, err)
		}
	}
}

func TestGemmPanicsOnShortOperand(t *testing.T) {
	d, _ := New(Config{Threads: 1})
	defer func() {
		if recover() == nil {
			t.Fatal("short A accepted")
		}
	}()
	d.Gemm(false, false, 2, 2, 2, 1, device.F32Matrix(make([]float32, 3), 2), device.F32Matrix(make([]float32, 4), 2), 0, make([]float32, 4), 2)
}

func benchGemm(b *testing.B, dt tensor.DType, threads, size int) {
	d, err := New(Config{Threads: threads})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	r := rand.New(rand.NewPCG(1, 1))
	a, _ := randOperand(r, dt, size, size, size)
	bm, _ := randOperand(r, dt, size, size, size)
	c := make([]float32, size*size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d.Gemm(false, false, size, size, size, 1, a, bm, 0, c, size)
	}
	b.ReportMetric(2*float64(size)*float64(size)*float64(size)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
}

func BenchmarkGemm(b *testing.B) {
	for _, dt := range []tensor.DType{tensor.F32, tensor.BF16} {
		for _, threads := range []int{1, 2} {
			for _, size := range []int{256, 512, 1024, 2048} {
				b.Run(fmt.Sprintf("%v/threads=%d/%d", dt, threads, size), func(b *testing.B) { benchGemm(b, dt, threads, size) })
			}
		}
	}
}

// BenchmarkMicroKernel measures the register kernel alone on L1-resident
// panels: the ceiling the blocked GEMM can reach.
func BenchmarkMicroKernel(b *testing.B) {
	for _, k := range supportedKernels() {
		b.Run(k.name, func(b *testing.B) {
			const kc = 256
			ap := make([]float32, kc*k.mr)
			bp := make([]float32, kc*k.nr)
			c := make([]float32, k.mr*k.nr)
			for i := 0; i < b.N; i++ {
				k.f32(kc, &ap[0], &bp[0], &c[0], k.nr, 1, 0)
			}
			b.ReportMetric(2*float64(kc*k.mr*k.nr)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
	}
}

// TestGemmLargeAccuracy reports, for each kernel, the error of a 512³ GEMM
// against float64 the way the anchors do (max |C − ref| / max |ref|) and
// holds it to 4e-6. The operands are already rounded to the dtype in the
// reference, so what remains is float32 accumulation (u = 2⁻²⁴ ≈ 6e-8 per
// add; with random signs the error grows like u·√k, ~5e-7 here).
func TestGemmLargeAccuracy(t *testing.T) {
	n := 512
	if raceEnabled { // the float64 reference is slow under the race detector
		n = 192
	}
	r := rand.New(rand.NewPCG(9, 9))
	for _, dt := range []tensor.DType{tensor.F32, tensor.BF16} {
		a, ax := randOperand(r, dt, n, n, n)
		b, bx := randOperand(r, dt, n, n, n)
		ref := make([]float64, n*n)
		refGemm(false, false, n, n, n, 1, ax, bx, n, n, 0, ref, n)
		maxRef := 0.0
		for _, v := range ref {
			maxRef = max(maxRef, math.Abs(v))
		}
		for _, d := range kernelDevices(t, 2) {
			c := make([]float32, n*n)
			d.Gemm(false, false, n, n, n, 1, a, b, 0, c, n)
			maxErr := 0.0
			for i, v := range c {
				maxErr = max(maxErr, math.Abs(float64(v)-ref[i]))
			}
			t.Logf("%s %v %d³: max|C-ref|/max|ref| = %.2e", d.Name(), dt, n, maxErr/maxRef)
			if maxErr/maxRef > 4e-6 {
				t.Errorf("%s %v: relative error %.2e > 4e-6", d.Name(), dt, maxErr/maxRef)
			}
		}
	}
}

// TestSelfCheckRejectsWrongKernel: a kernel that computes the wrong thing
// (here: the portable tile with alpha doubled) fails the start-up check
// that guards kernels this build cannot run on its own CI machine.
func TestSelfCheckRejectsWrongKernel(t *testing.T) {
	wrong := *genericKernel
	wrong.name = "wrong"
	wrong.f32 = func(kc int, a, b, c *float32, ldc int, alpha, beta float32) {
		sgemm4x4Generic(kc, a, b, c, ldc, 2*alpha, beta)
	}
	if err := runSelfCheck(&wrong); err == nil {
		t.Fatal("self-check accepted a wrong kernel")
	}
	for _, k := range supportedKernels() {
		if err := runSelfCheck(k); err != nil {
			t.Errorf("%s: %v", k.name, err)
		}
	}
}

// TestPackPairLayouts checks the bf16 packers, fast paths included (6-row
// and 32-column blocks, dword views of even strides), against the pair
// layout's definition, for aligned and unaligned starts and odd depths.
func TestPackPairLayouts(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	for _, ld := range []int{70, 71} {
		for _, off := range []int{0, 1} {
			u := make([]uint16, off+80*ld)
			for i := range u {
				u[i] = uint16(r.Uint32())
			}
			x := device.Matrix{DType: tensor.BF16, U16: u[off:], LD: ld}
			for _, trans := range []bool{false, true} {
				for _, kd := range []int{64, 63} {
					op := &operand{x: x, trans: trans, k: kd}
					// elem is op(X)[i][p].
					elem := func(i, p int) uint16 {
						if p >= kd {
							return 0
						}
						if trans {
							return x.U16[p*ld+i]
						}
						return x.U16[i*ld+p]
					}
					const mr, kk = 6, 64
					for _, rows := range []int{6, 5} {
						dst := make([]uint16, kk*mr)
						packAPair(dst, op, 3, rows, 0, kk, mr)
						for p := 0; p < kk; p++ {
							for i := 0; i < mr; i++ {
								want := uint16(0)
								if i < rows {
									want = elem(3+i, p)
								}
								if got := dst[(p/2)*2*mr+2*i+p%2]; got != want {
									t.Fatalf("packAPair ld=%d off=%d trans=%v k=%d rows=%d: (%d,%d)=%#x want %#x", ld, off, trans, kd, rows, p, i, got, want)
								}
							}
						}
					}
					// B: op(X) is k×n, so column j of op(B) is op(X)ᵀ's row.
					bop := &operand{x: x, trans: !trans, k: kd}
					const nr = 32
					for _, cols := range []int{32, 29} {
						kpad := roundUp(kd, 2)
						dst := make([]uint16, kpad*nr)
						packBPanelPair(dst, bop, 2, cols, kpad, nr)
						for p := 0; p < kpad; p++ {
							for j := 0; j < nr; j++ {
								want := uint16(0)
								if j < cols {
									want = elem(2+j, p)
								}
								if got := dst[(p/2)*2*nr+2*j+p%2]; got != want {
									t.Fatalf("packBPanelPair ld=%d off=%d trans=%v k=%d cols=%d: (%d,%d)=%#x want %#x", ld, off, !trans, kd, cols, p, j, got, want)
								}
							}
						}
					}
				}
			}
		}
	}
}

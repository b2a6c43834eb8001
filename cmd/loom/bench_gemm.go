package main

import (
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/loomtrain/loom/device"
	"github.com/loomtrain/loom/device/cpu"
	"github.com/loomtrain/loom/tensor"
)

// gemmShape is one benchmarked problem: C(m×n) = op(A)·op(B) with depth k.
type gemmShape struct {
	m, n, k        int
	transA, transB bool
}

func (s gemmShape) String() string {
	op := func(t bool) string {
		if t {
			return "T"
		}
		return "N"
	}
	return fmt.Sprintf("%dx%dx%d:%s%s", s.m, s.n, s.k, op(s.transA), op(s.transB))
}

// parseGemmShape reads "MxNxK" or "MxNxK:NT" (op(A), op(B): N or T).
func parseGemmShape(s string) (gemmShape, error) {
	dims, ops, hasOps := strings.Cut(s, ":")
	parts := strings.Split(dims, "x")
	if len(parts) != 3 {
		return gemmShape{}, fmt.Errorf("shape %q: want MxNxK[:NN|NT|TN|TT]", s)
	}
	var v [3]int
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n <= 0 {
			return gemmShape{}, fmt.Errorf("shape %q: %q is not a positive integer", s, p)
		}
		v[i] = n
	}
	g := gemmShape{m: v[0], n: v[1], k: v[2]}
	if hasOps {
		if len(ops) != 2 || strings.Trim(ops, "NT") != "" {
			return gemmShape{}, fmt.Errorf("shape %q: ops %q must be two of N/T", s, ops)
		}
		g.transA, g.transB = ops[0] == 'T', ops[1] == 'T'
	}
	return g, nil
}

// mlpShapes are the GEMMs of one MNIST MLP (784-512-256-10) step at batch 64:
// forward X·Wᵀ, backward dX = dY·W and dW = dYᵀ·X.
var mlpShapes = []string{
	"64x512x784:NT", "64x256x512:NT", "64x10x256:NT",
	"64x512x256:NN", "64x256x10:NN",
	"512x784x64:TN", "256x512x64:TN", "10x256x64:TN",
}

func newBenchGemmCmd() *cobra.Command {
	var (
		sizes   []int
		shapes  []string
		dtypes  []string
		threads []int
		kernels []string
		mlp     bool
		repeat  int
		minTime time.Duration
	)
	cmd := &cobra.Command{
		Use:   "gemm",
		Short: "Measure CPU GEMM throughput (GFLOP/s) per kernel, dtype, shape and thread count",
		Long: `Runs C = op(A)·op(B) on the cpu device and prints GFLOP/s (median, min and
max over --repeat trials of at least --min-time each) and heap allocations per
call. Square sizes come from --sizes; other shapes from --shapes as
MxNxK[:NN|NT|TN|TT] or --mlp (the MNIST MLP's shapes at batch 64).
--kernel all runs every kernel this CPU supports; LOOM_CPU_KERNEL is ignored
here, name the kernel instead.

Compare against scripts/peers/gemm_openblas.sh and gemm_torch.sh in the
same run: the machine is shared, so only ratios measured together mean much.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var todo []gemmShape
			if !cmd.Flags().Changed("sizes") && (mlp || len(shapes) > 0) {
				sizes = nil // only the shapes asked for
			}
			for _, n := range sizes {
				if n <= 0 {
					return fmt.Errorf("--sizes: %d is not positive", n)
				}
				todo = append(todo, gemmShape{m: n, n: n, k: n})
			}
			if mlp {
				shapes = append(shapes, mlpShapes...)
			}
			for _, s := range shapes {
				g, err := parseGemmShape(s)
				if err != nil {
					return fmt.Errorf("--shapes: %w", err)
				}
				todo = append(todo, g)
			}
			var dts []tensor.DType
			for _, s := range dtypes {
				dt, err := tensor.ParseDType(s)
				if err != nil {
					return fmt.Errorf("--dtypes: %w", err)
				}
				dts = append(dts, dt)
			}
			if slices.Contains(kernels, "all") {
				kernels = cpu.KernelNames()
			}
			if repeat < 1 {
				return fmt.Errorf("--repeat must be at least 1, got %d", repeat)
			}
			return runBenchGemm(cmd.OutOrStdout(), todo, dts, threads, kernels, repeat, minTime)
		},
	}
	f := cmd.Flags()
	f.IntSliceVar(&sizes, "sizes", []int{256, 512, 1024, 2048}, "square sizes N (N×N·N×N); default only without --shapes/--mlp")
	f.StringSliceVar(&shapes, "shapes", nil, "extra shapes MxNxK[:NN|NT|TN|TT]")
	f.BoolVar(&mlp, "mlp", false, "add the MNIST MLP shapes at batch 64")
	f.StringSliceVar(&dtypes, "dtypes", []string{"fp32", "bf16"}, "operand dtypes: fp32, bf16, fp16")
	f.IntSliceVar(&threads, "threads", []int{1, runtime.NumCPU()}, "thread counts")
	f.StringSliceVar(&kernels, "kernel", []string{"auto"}, "kernels: auto, all, avx512, avx2, generic")
	f.IntVar(&repeat, "repeat", 5, "trials per point (median reported)")
	f.DurationVar(&minTime, "min-time", 300*time.Millisecond, "minimum duration of one trial")
	return cmd
}

func runBenchGemm(out io.Writer, shapes []gemmShape, dts []tensor.DType, threads []int, kernels []string, repeat int, minTime time.Duration) error {
	const row = "%-16s %-5s %7s %-18s %8s %8s %8s %11s\n"
	fmt.Fprintf(out, row, "kernel", "dtype", "threads", "shape", "GFLOP/s", "min", "max", "allocs/call")
	slices.Sort(threads)
	threads = slices.Compact(threads)
	for _, kn := range kernels {
		for _, th := range threads {
			d, err := cpu.New(cpu.Config{Threads: th, Kernel: kn})
			if err != nil {
				return err
			}
			for _, dt := range dts {
				for _, s := range shapes {
					med, lo, hi, allocs := timeGemm(d, dt, s, repeat, minTime)
					fmt.Fprintf(out, row, d.Name(), dt, strconv.Itoa(th), s,
						fmt.Sprintf("%.1f", med), fmt.Sprintf("%.1f", lo), fmt.Sprintf("%.1f", hi), fmt.Sprintf("%.1f", allocs))
				}
			}
		}
	}
	return nil
}

// timeGemm returns the median, min and max GFLOP/s over repeat trials and
// the heap allocations per call (after one warm-up call, which sizes the
// device's reusable buffers).
func timeGemm(d *cpu.Device, dt tensor.DType, s gemmShape, repeat int, minTime time.Duration) (med, lo, hi, allocs float64) {
	r := rand.New(rand.NewPCG(1, 2))
	mat := func(rows, cols int) device.Matrix {
		f := make([]float32, rows*cols)
		for i := range f {
			f[i] = float32(r.NormFloat64())
		}
		if dt == tensor.F32 {
			return device.F32Matrix(f, cols)
		}
		h := make([]uint16, len(f))
		tensor.EncodeHalf(dt, h, f)
		return device.HalfMatrix(dt, h, cols)
	}
	ar, ac := s.m, s.k
	if s.transA {
		ar, ac = ac, ar
	}
	br, bc := s.k, s.n
	if s.transB {
		br, bc = bc, br
	}
	a, b := mat(ar, ac), mat(br, bc)
	c := make([]float32, s.m*s.n)
	call := func() { d.Gemm(s.transA, s.transB, s.m, s.n, s.k, 1, a, b, 0, c, s.n) }
	call()
	flop := 2 * float64(s.m) * float64(s.n) * float64(s.k)
	rates := make([]float64, 0, repeat)
	var ms0, ms1 runtime.MemStats
	calls := 0
	runtime.ReadMemStats(&ms0)
	for range repeat {
		iters := 0
		t0 := time.Now()
		for iters == 0 || time.Since(t0) < minTime {
			call()
			iters++
		}
		calls += iters
		rates = append(rates, flop*float64(iters)/time.Since(t0).Seconds()/1e9)
	}
	runtime.ReadMemStats(&ms1)
	slices.Sort(rates)
	return rates[len(rates)/2], rates[0], rates[len(rates)-1], float64(ms1.Mallocs-ms0.Mallocs) / float64(calls)
}

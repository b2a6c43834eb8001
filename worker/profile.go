package worker

import (
	"bufio"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/device"
	"github.com/loomtrain/loom/tensor"
)

// MeasureProfile times a few GEMMs per dtype on dev (tens of ms in all) and
// reads the host's cores and memory. The planner turns the GFLOP/s into
// batch shares until measured samples/s replace them.
func MeasureProfile(dev device.Device, collectiveAddr string) *api.DeviceProfile {
	p := &api.DeviceProfile{
		DeviceName:     dev.Name(),
		Cores:          int32(runtime.NumCPU()),
		Threads:        int32(dev.Threads()),
		Gflops:         map[string]float64{},
		MemoryBytes:    memTotal(),
		CollectiveAddr: collectiveAddr,
	}
	const n = 256
	for _, dt := range []tensor.DType{tensor.F32, tensor.BF16} {
		a, b := benchOperand(dt, n), benchOperand(dt, n)
		c := make([]float32, n*n)
		dev.Gemm(false, false, n, n, n, 1, a, b, 0, c, n) // warm up
		// The mean over several calls, not the best one: a device that is
		// slow only some of the time (shared, throttled) must show it.
		const calls = 8
		start := time.Now()
		for i := 0; i < calls; i++ {
			dev.Gemm(false, false, n, n, n, 1, a, b, 0, c, n)
		}
		p.Gflops[dt.String()] = calls * 2 * n * n * n / time.Since(start).Seconds() / 1e9
	}
	return p
}

func benchOperand(dt tensor.DType, n int) device.Matrix {
	f := make([]float32, n*n)
	for i := range f {
		f[i] = float32(i%7) * 0.25
	}
	if dt == tensor.F32 {
		return device.F32Matrix(f, n)
	}
	h := make([]uint16, n*n)
	tensor.EncodeHalf(dt, h, f)
	return device.HalfMatrix(dt, h, n)
}

// memTotal reads MemTotal from /proc/meminfo (0 where unavailable).
func memTotal() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			kb, _ := strconv.ParseInt(fields[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

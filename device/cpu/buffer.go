package cpu

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/loomtrain/loom/device"
	"github.com/loomtrain/loom/tensor"
)

// buffer is a device.Buffer of host memory: exactly one of f32, u16 (BF16 or
// F16 bit patterns) or i32 holds its Len elements. A freed buffer has all
// three nil.
type buffer struct {
	dev   *Device
	dt    tensor.DType
	n     int
	f32   []float32
	u16   []uint16
	i32   []int32
	freed bool
}

// DType implements device.Buffer.
func (b *buffer) DType() tensor.DType { return b.dt }

// Len implements device.Buffer.
func (b *buffer) Len() int { return b.n }

// Free implements device.Buffer: it returns the bytes to the device's
// account and drops the slices (the garbage collector reclaims them once no
// HostF32/HostInt32 alias remains). Free twice is a no-op.
func (b *buffer) Free() {
	if b.freed {
		return
	}
	b.freed = true
	b.dev.memUsed -= int64(b.n) * int64(b.dt.Size())
	b.f32, b.u16, b.i32 = nil, nil, nil
}

// v2Scratch is the reusable scratch of the device.Backend ops, grown on
// demand and kept, so steady-state calls allocate no buffers.
type v2Scratch struct {
	round [2][]uint16 // MatMul: F32 operands rounded to 16-bit precision
	part  []float64   // per-chunk partial sums of reductions
	lnDW  []float32   // LayerNormBackward partial dw and db per fixed row block
}

// hostMemoryLimit is the lower of the cgroup limit (memory.max, v2) and the
// kernel's MemAvailable, in bytes; 0 when neither is known.
func hostMemoryLimit() int64 {
	var limit int64
	if b, err := os.ReadFile("/sys/fs/cgroup/memory.max"); err == nil {
		if v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil && v > 0 {
			limit = v
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) >= 2 && f[0] == "MemAvailable:" {
				if kb, err := strconv.ParseInt(f[1], 10, 64); err == nil && kb > 0 {
					if v := kb * 1024; limit == 0 || v < limit {
						limit = v
					}
				}
			}
		}
	}
	return limit
}

// Memory implements device.Backend: the bytes live buffers hold and the
// limit measured when the device was opened (0: unknown).
func (d *Device) Memory() (used, limit int64) { return d.memUsed, d.memLimit }

// Alloc implements device.Backend. It fails, before allocating, when the
// buffer would take the device past its memory limit.
func (d *Device) Alloc(dt tensor.DType, n int) (device.Buffer, error) {
	switch dt {
	case tensor.F32, tensor.BF16, tensor.F16, tensor.I32:
	default:
		return nil, fmt.Errorf("cpu device: alloc of dtype %v: unsupported", dt)
	}
	if n < 0 {
		return nil, fmt.Errorf("cpu device: alloc of %d %v elements: negative length", n, dt)
	}
	bytes := int64(n) * int64(dt.Size())
	if d.memLimit > 0 && d.memUsed+bytes > d.memLimit {
		return nil, fmt.Errorf("cpu device: alloc of %d %v elements (%d bytes): only %d of %d bytes available",
			n, dt, bytes, max(0, d.memLimit-d.memUsed), d.memLimit)
	}
	b := &buffer{dev: d, dt: dt, n: n}
	switch dt {
	case tensor.F32:
		b.f32 = make([]float32, n)
	case tensor.I32:
		b.i32 = make([]int32, n)
	default:
		b.u16 = make([]uint16, n)
	}
	d.memUsed += bytes
	return b, nil
}

// buf returns v's buffer, panicking if it is not a live buffer of d or the
// view lies outside it.
func (d *Device) buf(v device.View) *buffer {
	b, ok := v.Buf.(*buffer)
	if !ok || b == nil {
		panic(fmt.Sprintf("cpu device: view of %T, not a cpu buffer", v.Buf))
	}
	if b.dev != d {
		panic("cpu device: buffer belongs to another device")
	}
	if b.freed {
		panic("cpu device: use of a freed buffer")
	}
	if v.Off < 0 || v.N < 0 || v.Off+v.N > b.n {
		panic(fmt.Sprintf("cpu device: view [%d, %d) of a %d-element buffer", v.Off, v.Off+v.N, b.n))
	}
	return b
}

// f32 returns the elements of the F32 view v.
func (d *Device) f32(v device.View) []float32 {
	b := d.buf(v)
	if b.dt != tensor.F32 {
		panic(fmt.Sprintf("cpu device: %v view where F32 is required", b.dt))
	}
	return b.f32[v.Off : v.Off+v.N : v.Off+v.N]
}

// i32 returns the elements of the I32 view v.
func (d *Device) i32(v device.View) []int32 {
	b := d.buf(v)
	if b.dt != tensor.I32 {
		panic(fmt.Sprintf("cpu device: %v view where I32 is required", b.dt))
	}
	return b.i32[v.Off : v.Off+v.N : v.Off+v.N]
}

// u16 returns the bit patterns of the BF16 or F16 view v.
func (d *Device) u16(v device.View) []uint16 {
	b := d.buf(v)
	if b.dt != tensor.BF16 && b.dt != tensor.F16 {
		panic(fmt.Sprintf("cpu device: %v view where BF16/F16 is required", b.dt))
	}
	return b.u16[v.Off : v.Off+v.N : v.Off+v.N]
}

// HostF32 implements device.HostMemory: the F32 view's elements, aliasing
// the buffer. It panics on any other dtype.
func (d *Device) HostF32(v device.View) []float32 { return d.f32(v) }

// HostInt32 implements device.HostMemory for I32 views.
func (d *Device) HostInt32(v device.View) []int32 { return d.i32(v) }

var _ device.HostMemory = (*Device)(nil)

func checkLen(op string, a, b int) {
	if a != b {
		panic(fmt.Sprintf("cpu device: %s: lengths %d and %d differ", op, a, b))
	}
}

// Upload implements device.Backend.
func (d *Device) Upload(dst device.View, src []float32) {
	checkLen("upload", dst.N, len(src))
	b := d.buf(dst)
	switch b.dt {
	case tensor.F32:
		copy(d.f32(dst), src)
	case tensor.BF16, tensor.F16:
		d.Encode(b.dt, d.u16(dst), src)
	default:
		panic(fmt.Sprintf("cpu device: upload of float32 into a %v view", b.dt))
	}
}

// UploadInt32 implements device.Backend.
func (d *Device) UploadInt32(dst device.View, src []int32) {
	checkLen("upload int32", dst.N, len(src))
	copy(d.i32(dst), src)
}

// Download implements device.Backend; ops run at once, so there is nothing
// to wait for.
func (d *Device) Download(dst []float32, src device.View) {
	checkLen("download", len(dst), src.N)
	b := d.buf(src)
	switch b.dt {
	case tensor.F32:
		copy(dst, d.f32(src))
	case tensor.BF16, tensor.F16:
		tensor.DecodeHalf(b.dt, dst, d.u16(src))
	default:
		panic(fmt.Sprintf("cpu device: download of a %v view into float32", b.dt))
	}
}

// Sync implements device.Backend: CPU ops complete before they return.
func (d *Device) Sync() error { return nil }

// Copy implements device.Backend, converting between float dtypes (I32 only
// to I32).
func (d *Device) Copy(dst, src device.View) {
	checkLen("copy", dst.N, src.N)
	db, sb := d.buf(dst), d.buf(src)
	switch {
	case db.dt == tensor.I32 || sb.dt == tensor.I32:
		copy(d.i32(dst), d.i32(src))
	case sb.dt == tensor.F32:
		d.Upload(dst, d.f32(src))
	case db.dt == tensor.F32:
		d.Download(d.f32(dst), src)
	case db.dt == sb.dt:
		copy(d.u16(dst), d.u16(src))
	default: // BF16 ↔ F16 through float32, which holds both exactly
		out, in := d.u16(dst), d.u16(src)
		for i, h := range in {
			out[i] = tensor.ToHalf(db.dt, tensor.FromHalf(sb.dt, h))
		}
	}
}

// Fill implements device.Backend (16-bit views get val rounded; I32 views
// get int32(val)).
func (d *Device) Fill(x device.View, val float32) {
	b := d.buf(x)
	switch b.dt {
	case tensor.F32:
		s := d.f32(x)
		for i := range s {
			s[i] = val
		}
	case tensor.I32:
		s := d.i32(x)
		for i := range s {
			s[i] = int32(val)
		}
	default:
		s := d.u16(x)
		h := tensor.ToHalf(b.dt, val)
		for i := range s {
			s[i] = h
		}
	}
}

var _ device.Backend = (*Device)(nil)

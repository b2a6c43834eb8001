//go:build amd64 && !purego

package cpu

import (
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// evexVDPBF16PS encodes VDPBF16PS zmm(dst), zmm(src1), zmm(src2) (Intel
// operand order: dst += dot(src1, src2)), register form:
// EVEX.512.F3.0F38.W0 52 /r.
func evexVDPBF16PS(dst, src1, src2 int) [6]byte {
	inv := func(b int) int { return ^b & 1 }
	p0 := inv(dst>>3)<<7 | inv(src2>>4)<<6 | inv(src2>>3)<<5 | inv(dst>>4)<<4 | 0b10 // map 0F38
	p1 := (^src1&0xf)<<3 | 1<<2 | 0b10                                               // W0, vvvv, pp=F3
	p2 := 0b10<<5 | inv(src1>>4)<<3                                                  // L'L=512, V'
	modrm := 0b11<<6 | (dst&7)<<3 | src2&7
	return [6]byte{0x62, byte(p0), byte(p1), byte(p2), 0x52, byte(modrm)}
}

// TestBF16Encodings re-derives the hand-emitted VDPBF16PS bytes of
// kernel_amd64.s (the Go assembler has no mnemonic for it), so an edit to
// those macros cannot silently encode another instruction. The encoder was
// checked against GNU as/objdump when the kernel was written; this machine
// may lack AVX512_BF16 and then cannot run the kernel itself.
func TestBF16Encodings(t *testing.T) {
	// Reference bytes from GNU as for three register combinations.
	for _, ref := range []struct {
		dst, src1, src2 int
		bytes           [6]byte
	}{
		{4, 0, 2, [6]byte{0x62, 0xf2, 0x7e, 0x48, 0x52, 0xe2}},
		{16, 1, 3, [6]byte{0x62, 0xe2, 0x76, 0x48, 0x52, 0xc3}},
		{31, 17, 30, [6]byte{0x62, 0x02, 0x76, 0x40, 0x52, 0xfe}},
	} {
		if got := evexVDPBF16PS(ref.dst, ref.src1, ref.src2); got != ref.bytes {
			t.Fatalf("encoder: VDPBF16PS Z%d, Z%d, Z%d = % x, GNU as gives % x", ref.dst, ref.src1, ref.src2, got, ref.bytes)
		}
	}
	src, err := os.ReadFile("kernel_amd64.s")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`#define DPBF16_Z(\d+)_Z(\d+)_Z(\d+) (.*)`)
	found := 0
	for _, m := range re.FindAllStringSubmatch(string(src), -1) {
		var regs [3]int
		for i := range regs {
			regs[i], _ = strconv.Atoi(m[i+1])
		}
		want := evexVDPBF16PS(regs[0], regs[1], regs[2])
		var got []byte
		for _, f := range strings.Split(m[4], ";") {
			v, err := strconv.ParseUint(strings.TrimPrefix(strings.TrimSpace(f), "BYTE $0x"), 16, 8)
			if err != nil {
				t.Fatalf("%s: %v", m[0], err)
			}
			got = append(got, byte(v))
		}
		if fmt.Sprint(got) != fmt.Sprint(want[:]) {
			t.Errorf("VDPBF16PS Z%d, Z%d, Z%d: file has % x, want % x", regs[0], regs[1], regs[2], got, want)
		}
		found++
	}
	if found != 12 {
		t.Fatalf("found %d DPBF16 macros, want 12 (6 rows × 2 halves)", found)
	}
}

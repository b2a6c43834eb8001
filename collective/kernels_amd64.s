#include "textflag.h"

// AVX2 kernels for kernels_amd64.go. Each processes n elements, n a multiple
// of 16; the Go wrappers handle the tail. Results are bit-identical to the
// scalar code in buffer.go (same IEEE float32 adds, same bf16 rounding).

// func addBF16AVX2(dst *float32, src *uint16, n int)
// dst[i] += float32 from bf16 src[i]
TEXT ·addBF16AVX2(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	SHRQ $4, CX
	JZ   done
loop:
	VPMOVZXWD (SI), Y0
	VPMOVZXWD 16(SI), Y1
	VPSLLD    $16, Y0, Y0
	VPSLLD    $16, Y1, Y1
	VADDPS    (DI), Y0, Y0
	VADDPS    32(DI), Y1, Y1
	VMOVUPS   Y0, (DI)
	VMOVUPS   Y1, 32(DI)
	ADDQ      $64, DI
	ADDQ      $32, SI
	DECQ      CX
	JNZ       loop
done:
	VZEROUPPER
	RET

// func decodeBF16AVX2(dst *float32, src *uint16, n int)
TEXT ·decodeBF16AVX2(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	SHRQ $4, CX
	JZ   done
loop:
	VPMOVZXWD (SI), Y0
	VPMOVZXWD 16(SI), Y1
	VPSLLD    $16, Y0, Y0
	VPSLLD    $16, Y1, Y1
	VMOVUPS   Y0, (DI)
	VMOVUPS   Y1, 32(DI)
	ADDQ      $64, DI
	ADDQ      $32, SI
	DECQ      CX
	JNZ       loop
done:
	VZEROUPPER
	RET

// func encodeBF16AVX2(dst *uint16, src *float32, n int)
// Round to nearest even exactly as tensor.ToBF16: b += 0x7fff + (b>>16)&1;
// NaN (abs > 0x7f800000) becomes (b>>16) | 0x0040.
TEXT ·encodeBF16AVX2(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	SHRQ $4, CX
	JZ   done
	MOVL $0x7fff, AX
	MOVQ AX, X15
	VPBROADCASTD X15, Y15
	MOVL $1, AX
	MOVQ AX, X14
	VPBROADCASTD X14, Y14
	MOVL $0x7fffffff, AX
	MOVQ AX, X13
	VPBROADCASTD X13, Y13
	MOVL $0x7f800000, AX
	MOVQ AX, X12
	VPBROADCASTD X12, Y12
	MOVL $0x40, AX
	MOVQ AX, X11
	VPBROADCASTD X11, Y11
loop:
	VMOVDQU   (SI), Y0
	VMOVDQU   32(SI), Y6
	// first 8
	VPSRLD    $16, Y0, Y1
	VPAND     Y14, Y1, Y2
	VPADDD    Y15, Y0, Y3
	VPADDD    Y2, Y3, Y3
	VPSRLD    $16, Y3, Y3
	VPAND     Y13, Y0, Y4
	VPCMPGTD  Y12, Y4, Y4
	VPOR      Y11, Y1, Y5
	VPBLENDVB Y4, Y5, Y3, Y3
	// second 8
	VPSRLD    $16, Y6, Y7
	VPAND     Y14, Y7, Y8
	VPADDD    Y15, Y6, Y9
	VPADDD    Y8, Y9, Y9
	VPSRLD    $16, Y9, Y9
	VPAND     Y13, Y6, Y10
	VPCMPGTD  Y12, Y10, Y10
	VPOR      Y11, Y7, Y5
	VPBLENDVB Y10, Y5, Y9, Y9
	// pack 16 dwords to 16 words, in order
	VPACKUSDW Y9, Y3, Y3
	VPERMQ    $0xD8, Y3, Y3
	VMOVDQU   Y3, (DI)
	ADDQ      $32, DI
	ADDQ      $64, SI
	DECQ      CX
	JNZ       loop
done:
	VZEROUPPER
	RET

// F16C kernels: VCVTPS2PH with immediate rounding 0 (nearest even) and
// VCVTPH2PS, which convert subnormals, infinities and NaNs exactly as
// tensor.ToF16 / tensor.FromF16 do for the quiet NaNs ToF16 produces.

// func encodeF16F16C(dst *uint16, src *float32, n int)
TEXT ·encodeF16F16C(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	SHRQ $4, CX
	JZ   done
loop:
	VMOVUPS   (SI), Y0
	VMOVUPS   32(SI), Y1
	VCVTPS2PH $0, Y0, X2
	VCVTPS2PH $0, Y1, X3
	VMOVDQU   X2, (DI)
	VMOVDQU   X3, 16(DI)
	ADDQ      $32, DI
	ADDQ      $64, SI
	DECQ      CX
	JNZ       loop
done:
	VZEROUPPER
	RET

// func decodeF16F16C(dst *float32, src *uint16, n int)
TEXT ·decodeF16F16C(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	SHRQ $4, CX
	JZ   done
loop:
	VCVTPH2PS (SI), Y0
	VCVTPH2PS 16(SI), Y1
	VMOVUPS   Y0, (DI)
	VMOVUPS   Y1, 32(DI)
	ADDQ      $64, DI
	ADDQ      $32, SI
	DECQ      CX
	JNZ       loop
done:
	VZEROUPPER
	RET

// func addF16F16C(dst *float32, src *uint16, n int)
TEXT ·addF16F16C(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	SHRQ $4, CX
	JZ   done
loop:
	VCVTPH2PS (SI), Y0
	VCVTPH2PS 16(SI), Y1
	VADDPS    (DI), Y0, Y0
	VADDPS    32(DI), Y1, Y1
	VMOVUPS   Y0, (DI)
	VMOVUPS   Y1, 32(DI)
	ADDQ      $64, DI
	ADDQ      $32, SI
	DECQ      CX
	JNZ       loop
done:
	VZEROUPPER
	RET

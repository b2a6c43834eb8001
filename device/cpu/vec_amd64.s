//go:build amd64 && !purego

#include "textflag.h"

// Elementwise AVX2+FMA kernels (see vec_amd64.go): the GELU forward and
// backward, the shifted exponentials of the attention softmax, and the
// float32 → bf16 rounding. Each processes 8 floats per iteration; the Go
// callers hand them multiples of 8 (16 for the encoder) and finish tails.
//
// The exponential is exp32's algorithm on 8 lanes: x clamped to
// [-87.33654, 88], n = round(x·log2e), r = x − n·ln2 (split in two),
// eʳ by the degree-6 Taylor polynomial, times 2ⁿ built in the exponent
// field. The clamp keeps n in [−126, 127], so 2ⁿ is always normal.

// vconst holds each constant 8 times (32 bytes), at the offsets below.
#define C_LOG2E   0
#define C_LN2HI   32
#define C_LN2LO   64
#define C_EXPHI   96
#define C_EXPLO   128
#define C_ONE     160
#define C_P2      192
#define C_P3      224
#define C_P4      256
#define C_P5      288
#define C_P6      320
#define C_BIAS    352
#define C_M2C     384
#define C_M2CA    416
#define C_3A      448
#define C_2C      480
#define C_I1      512
#define C_7FFF    544
#define C_ABS     576
#define C_INF     608
#define C_QNAN    640

#define REP8(off, v) \
	DATA vconst<>+(off+0)(SB)/4, v; \
	DATA vconst<>+(off+4)(SB)/4, v; \
	DATA vconst<>+(off+8)(SB)/4, v; \
	DATA vconst<>+(off+12)(SB)/4, v; \
	DATA vconst<>+(off+16)(SB)/4, v; \
	DATA vconst<>+(off+20)(SB)/4, v; \
	DATA vconst<>+(off+24)(SB)/4, v; \
	DATA vconst<>+(off+28)(SB)/4, v

REP8(C_LOG2E, $1.44269504088896341)
REP8(C_LN2HI, $0.693359375)
REP8(C_LN2LO, $-2.12194440e-4)
REP8(C_EXPHI, $88.0)
REP8(C_EXPLO, $-87.33654)
REP8(C_ONE, $1.0)
REP8(C_P2, $0.5)
REP8(C_P3, $0.16666666666666666)
REP8(C_P4, $0.041666666666666664)
REP8(C_P5, $0.008333333333333333)
REP8(C_P6, $0.001388888888888889)
REP8(C_BIAS, $0x0000007f)
REP8(C_M2C, $-1.5957691216057308)      // −2·√(2/π)
REP8(C_M2CA, $-0.07135481627)          // −2·√(2/π)·0.044715
REP8(C_3A, $0.134145)                  // 3·0.044715
REP8(C_2C, $1.5957691216057308)        // 2·√(2/π)
REP8(C_I1, $0x00000001)
REP8(C_7FFF, $0x00007fff)
REP8(C_ABS, $0x7fffffff)
REP8(C_INF, $0x7f800000)
REP8(C_QNAN, $0x00000040)
GLOBL vconst<>(SB), RODATA|NOPTR, $672

// EXP8 replaces Y0 by exp(Y0); it clobbers Y1-Y3. The clamps take x as
// their second source, which MINPS/MAXPS return for a NaN: NaN stays NaN.
#define EXP8 \
	VMOVUPS      vconst<>+C_EXPHI(SB), Y1; \
	VMINPS       Y0, Y1, Y0; \
	VMOVUPS      vconst<>+C_EXPLO(SB), Y1; \
	VMAXPS       Y0, Y1, Y0; \
	VMULPS       vconst<>+C_LOG2E(SB), Y0, Y1; \
	VROUNDPS     $0, Y1, Y1; \
	VFNMADD231PS vconst<>+C_LN2HI(SB), Y1, Y0; \
	VFNMADD231PS vconst<>+C_LN2LO(SB), Y1, Y0; \
	VMOVUPS      vconst<>+C_P6(SB), Y2; \
	VFMADD213PS  vconst<>+C_P5(SB), Y0, Y2; \
	VFMADD213PS  vconst<>+C_P4(SB), Y0, Y2; \
	VFMADD213PS  vconst<>+C_P3(SB), Y0, Y2; \
	VFMADD213PS  vconst<>+C_P2(SB), Y0, Y2; \
	VFMADD213PS  vconst<>+C_ONE(SB), Y0, Y2; \
	VFMADD213PS  vconst<>+C_ONE(SB), Y0, Y2; \
	VCVTPS2DQ    Y1, Y3; \
	VPADDD       vconst<>+C_BIAS(SB), Y3, Y3; \
	VPSLLD       $23, Y3, Y3; \
	VMULPS       Y3, Y2, Y0

// GELUSIG puts σ(2u) of the GELU argument in Y4 into Y1 (u = √(2/π)·(x +
// 0.044715x³)); it clobbers Y0, Y2, Y3.
#define GELUSIG \
	VMULPS      Y4, Y4, Y1; \
	VMOVUPS     vconst<>+C_M2CA(SB), Y0; \
	VFMADD213PS vconst<>+C_M2C(SB), Y1, Y0; \
	VMULPS      Y4, Y0, Y0; \
	EXP8; \
	VADDPS      vconst<>+C_ONE(SB), Y0, Y0; \
	VMOVUPS     vconst<>+C_ONE(SB), Y1; \
	VDIVPS      Y0, Y1, Y1

// func geluAVX2(out, x *float32, n int)
TEXT ·geluAVX2(SB), NOSPLIT, $0-24
	MOVQ out+0(FP), DI
	MOVQ x+8(FP), SI
	MOVQ n+16(FP), CX
	SHRQ $3, CX
	JZ   gdone
gloop:
	VMOVUPS (SI), Y4
	GELUSIG
	VMULPS  Y4, Y1, Y1
	VMOVUPS Y1, (DI)
	ADDQ    $32, SI
	ADDQ    $32, DI
	DECQ    CX
	JNZ     gloop
gdone:
	VZEROUPPER
	RET

// func geluBwdAVX2(dx, x, dout *float32, n int)
// dx = dout · (s + 2·√(2/π)·x·s(1−s)(1 + 3·0.044715x²)), s = σ(2u).
TEXT ·geluBwdAVX2(SB), NOSPLIT, $0-32
	MOVQ dx+0(FP), DI
	MOVQ x+8(FP), SI
	MOVQ dout+16(FP), DX
	MOVQ n+24(FP), CX
	SHRQ $3, CX
	JZ   gbdone
gbloop:
	VMOVUPS      (SI), Y4
	GELUSIG
	VMULPS       Y4, Y4, Y5
	VMOVUPS      vconst<>+C_3A(SB), Y6
	VFMADD213PS  vconst<>+C_ONE(SB), Y5, Y6
	VMOVAPS      Y1, Y7
	VFNMADD231PS Y1, Y1, Y7
	VMULPS       Y4, Y7, Y7
	VMULPS       Y6, Y7, Y7
	VFMADD132PS  vconst<>+C_2C(SB), Y1, Y7
	VMULPS       (DX), Y7, Y7
	VMOVUPS      Y7, (DI)
	ADDQ         $32, SI
	ADDQ         $32, DX
	ADDQ         $32, DI
	DECQ         CX
	JNZ          gbloop
gbdone:
	VZEROUPPER
	RET

// func expSumAVX2(p *float32, n int, m float32) float32
// p[i] = exp(p[i] − m); returns the sum of the new p (8 lane sums, then
// the lanes pairwise).
TEXT ·expSumAVX2(SB), NOSPLIT, $0-28
	MOVQ         p+0(FP), DI
	MOVQ         n+8(FP), CX
	VBROADCASTSS m+16(FP), Y5
	VXORPS       Y6, Y6, Y6
	SHRQ         $3, CX
	JZ           esdone
esloop:
	VMOVUPS (DI), Y0
	VSUBPS  Y5, Y0, Y0
	EXP8
	VMOVUPS Y0, (DI)
	VADDPS  Y0, Y6, Y6
	ADDQ    $32, DI
	DECQ    CX
	JNZ     esloop
esdone:
	VEXTRACTF128 $1, Y6, X1
	VADDPS       X1, X6, X6
	VMOVHLPS     X6, X1, X1
	VADDPS       X1, X6, X6
	VMOVSHDUP    X6, X1
	VADDSS       X1, X6, X6
	MOVSS        X6, ret+24(FP)
	VZEROUPPER
	RET

// func expBwdAVX2(p, q *float32, n int, l, di float32)
// e = exp(p[i] − l); p[i] = e; q[i] = e·(q[i] − di).
TEXT ·expBwdAVX2(SB), NOSPLIT, $0-32
	MOVQ         p+0(FP), DI
	MOVQ         q+8(FP), SI
	MOVQ         n+16(FP), CX
	VBROADCASTSS l+24(FP), Y5
	VBROADCASTSS di+28(FP), Y6
	SHRQ         $3, CX
	JZ           ebdone
ebloop:
	VMOVUPS (DI), Y0
	VSUBPS  Y5, Y0, Y0
	EXP8
	VMOVUPS Y0, (DI)
	VMOVUPS (SI), Y4
	VSUBPS  Y6, Y4, Y4
	VMULPS  Y0, Y4, Y4
	VMOVUPS Y4, (SI)
	ADDQ    $32, DI
	ADDQ    $32, SI
	DECQ    CX
	JNZ     ebloop
ebdone:
	VZEROUPPER
	RET

// func encodeBF16AVX2(dst *uint16, src *float32, n int)
// tensor.ToBF16 on 16 lanes per iteration: round to nearest even by adding
// 0x7fff plus the lowest kept bit; NaNs keep their top bits and are quieted.
TEXT ·encodeBF16AVX2(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	SHRQ $4, CX
	JZ   endone
enloop:
	VMOVDQU   (SI), Y0
	VPSRLD    $16, Y0, Y1
	VPAND     vconst<>+C_I1(SB), Y1, Y2
	VPADDD    vconst<>+C_7FFF(SB), Y2, Y2
	VPADDD    Y0, Y2, Y2
	VPSRLD    $16, Y2, Y2
	VPAND     vconst<>+C_ABS(SB), Y0, Y3
	VPCMPGTD  vconst<>+C_INF(SB), Y3, Y3
	VPOR      vconst<>+C_QNAN(SB), Y1, Y1
	VPBLENDVB Y3, Y1, Y2, Y2
	VMOVDQU   32(SI), Y0
	VPSRLD    $16, Y0, Y1
	VPAND     vconst<>+C_I1(SB), Y1, Y4
	VPADDD    vconst<>+C_7FFF(SB), Y4, Y4
	VPADDD    Y0, Y4, Y4
	VPSRLD    $16, Y4, Y4
	VPAND     vconst<>+C_ABS(SB), Y0, Y3
	VPCMPGTD  vconst<>+C_INF(SB), Y3, Y3
	VPOR      vconst<>+C_QNAN(SB), Y1, Y1
	VPBLENDVB Y3, Y1, Y4, Y4
	VPACKUSDW Y4, Y2, Y2
	VPERMQ    $0xd8, Y2, Y2
	VMOVDQU   Y2, (DI)
	ADDQ      $64, SI
	ADDQ      $32, DI
	DECQ      CX
	JNZ       enloop
endone:
	VZEROUPPER
	RET

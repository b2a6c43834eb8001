//go:build amd64 && !purego

#include "textflag.h"

// Elementwise AVX2+FMA kernels (see vec_amd64.go): the GELU forward and
// backward, the shifted exponentials of the attention softmax, the
// float32 → bf16 rounding, and the LayerNorm rows. Each processes 8 floats
// per iteration; the Go callers hand them multiples of 8 (16 for the
// encoder) and finish tails, except the LayerNorm rows, which mask their
// own last n mod 8 lanes.
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

// lnmask is 8 all-ones lanes then 8 zero lanes: the 8 floats at
// lnmask<>+32−4r select the first r lanes, the masked tail of a row.
DATA lnmask<>+0(SB)/8, $0xffffffffffffffff
DATA lnmask<>+8(SB)/8, $0xffffffffffffffff
DATA lnmask<>+16(SB)/8, $0xffffffffffffffff
DATA lnmask<>+24(SB)/8, $0xffffffffffffffff
DATA lnmask<>+32(SB)/8, $0
DATA lnmask<>+40(SB)/8, $0
DATA lnmask<>+48(SB)/8, $0
DATA lnmask<>+56(SB)/8, $0
GLOBL lnmask<>(SB), RODATA|NOPTR, $64

// LNMASK puts the tail mask of a row of n floats (n in CX) in Y15 and the
// number of whole vectors in BX; it clobbers AX and R9.
#define LNMASK \
	MOVQ    CX, AX; \
	ANDQ    $7, AX; \
	NEGQ    AX; \
	LEAQ    lnmask<>+32(SB), R9; \
	VMOVUPS (R9)(AX*4), Y15; \
	MOVQ    CX, BX; \
	SHRQ    $3, BX

// HSUM replaces the low lane of X0 by the sum of Y0's 8 lanes (halves,
// then pairs); it clobbers X1.
#define HSUM \
	VEXTRACTF128 $1, Y0, X1; \
	VADDPS       X1, X0, X0; \
	VMOVHLPS     X0, X1, X1; \
	VADDPS       X1, X0, X0; \
	VMOVSHDUP    X0, X1; \
	VADDSS       X1, X0, X0

// func layerNormAVX2(out, x, w, b *float32, n int, eps float32) (mean, rstd float32)
// One row, n ≥ 1 floats, the last n mod 8 through masked loads and stores:
// μ = Σx/n and var = Σ(x−μ)²/n in float32 (4×8 lane sums, then the lanes),
// rstd = 1/√(var+eps), out = (x−μ)·rstd·w + b.
TEXT ·layerNormAVX2(SB), NOSPLIT, $0-56
	MOVQ out+0(FP), DI
	MOVQ x+8(FP), SI
	MOVQ w+16(FP), DX
	MOVQ b+24(FP), R8
	MOVQ n+32(FP), CX
	LNMASK
	VCVTSI2SSQ CX, X5, X5

	// Σx.
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	XORQ   AX, AX
	MOVQ   BX, R10
	CMPQ   R10, $4
	JB     lfs1
lfs4:
	VADDPS (SI)(AX*1), Y0, Y0
	VADDPS 32(SI)(AX*1), Y1, Y1
	VADDPS 64(SI)(AX*1), Y2, Y2
	VADDPS 96(SI)(AX*1), Y3, Y3
	ADDQ   $128, AX
	SUBQ   $4, R10
	CMPQ   R10, $4
	JAE    lfs4
lfs1:
	TESTQ R10, R10
	JZ    lfst
lfs1loop:
	VADDPS (SI)(AX*1), Y0, Y0
	ADDQ   $32, AX
	DECQ   R10
	JNZ    lfs1loop
lfst:
	TESTQ      $7, CX
	JZ         lfsdone
	VMASKMOVPS (SI)(AX*1), Y15, Y4
	VADDPS     Y4, Y1, Y1
lfsdone:
	VADDPS       Y1, Y0, Y0
	VADDPS       Y3, Y2, Y2
	VADDPS       Y2, Y0, Y0
	HSUM
	VDIVSS       X5, X0, X0
	VMOVSS       X0, mean+48(FP)
	VBROADCASTSS X0, Y6

	// Σ(x−μ)².
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	XORQ   AX, AX
	MOVQ   BX, R10
	CMPQ   R10, $4
	JB     lfq1
lfq4:
	VMOVUPS     (SI)(AX*1), Y4
	VMOVUPS     32(SI)(AX*1), Y7
	VMOVUPS     64(SI)(AX*1), Y8
	VMOVUPS     96(SI)(AX*1), Y9
	VSUBPS      Y6, Y4, Y4
	VSUBPS      Y6, Y7, Y7
	VSUBPS      Y6, Y8, Y8
	VSUBPS      Y6, Y9, Y9
	VFMADD231PS Y4, Y4, Y0
	VFMADD231PS Y7, Y7, Y1
	VFMADD231PS Y8, Y8, Y2
	VFMADD231PS Y9, Y9, Y3
	ADDQ        $128, AX
	SUBQ        $4, R10
	CMPQ        R10, $4
	JAE         lfq4
lfq1:
	TESTQ R10, R10
	JZ    lfqt
lfq1loop:
	VMOVUPS     (SI)(AX*1), Y4
	VSUBPS      Y6, Y4, Y4
	VFMADD231PS Y4, Y4, Y0
	ADDQ        $32, AX
	DECQ        R10
	JNZ         lfq1loop
lfqt:
	TESTQ       $7, CX
	JZ          lfqdone
	VMASKMOVPS  (SI)(AX*1), Y15, Y4
	VSUBPS      Y6, Y4, Y4
	VANDPS      Y15, Y4, Y4
	VFMADD231PS Y4, Y4, Y1
lfqdone:
	VADDPS       Y1, Y0, Y0
	VADDPS       Y3, Y2, Y2
	VADDPS       Y2, Y0, Y0
	HSUM
	VDIVSS       X5, X0, X0
	VADDSS       eps+40(FP), X0, X0
	VSQRTSS      X0, X0, X0
	VMOVSS       vconst<>+C_ONE(SB), X1
	VDIVSS       X0, X1, X1
	VMOVSS       X1, rstd+52(FP)
	VBROADCASTSS X1, Y7

	// out = (x−μ)·rstd·w + b.
	XORQ  AX, AX
	MOVQ  BX, R10
	TESTQ R10, R10
	JZ    lfot
lfoloop:
	VMOVUPS     (SI)(AX*1), Y4
	VSUBPS      Y6, Y4, Y4
	VMULPS      Y7, Y4, Y4
	VMOVUPS     (R8)(AX*1), Y5
	VFMADD231PS (DX)(AX*1), Y4, Y5
	VMOVUPS     Y5, (DI)(AX*1)
	ADDQ        $32, AX
	DECQ        R10
	JNZ         lfoloop
lfot:
	TESTQ       $7, CX
	JZ          lfodone
	VMASKMOVPS  (SI)(AX*1), Y15, Y4
	VMASKMOVPS  (DX)(AX*1), Y15, Y8
	VMASKMOVPS  (R8)(AX*1), Y15, Y5
	VSUBPS      Y6, Y4, Y4
	VMULPS      Y7, Y4, Y4
	VFMADD231PS Y8, Y4, Y5
	VMASKMOVPS  Y5, Y15, (DI)(AX*1)
lfodone:
	VZEROUPPER
	RET

// LNBWD1 is one vector of the backward's first pass at byte offset AX:
// x̂ = (x−μ)·rstd, ĝ = dout·w; sĝ (Y0 or Y2) += ĝ, sĝx̂ (Y1 or Y3) += ĝ·x̂,
// dw += dout·x̂, db += dout. It clobbers Y4, Y5, Y8-Y10.
#define LNBWD1(off, sg, sgx) \
	VMOVUPS     off(SI)(AX*1), Y4; \
	VSUBPS      Y6, Y4, Y4; \
	VMULPS      Y7, Y4, Y4; \
	VMOVUPS     off(DX)(AX*1), Y5; \
	VMULPS      off(R8)(AX*1), Y5, Y8; \
	VADDPS      Y8, sg, sg; \
	VFMADD231PS Y8, Y4, sgx; \
	VMOVUPS     off(R11)(AX*1), Y9; \
	VFMADD231PS Y5, Y4, Y9; \
	VMOVUPS     Y9, off(R11)(AX*1); \
	VADDPS      off(R12)(AX*1), Y5, Y10; \
	VMOVUPS     Y10, off(R12)(AX*1)

// LNBWD2 is one vector of the backward's second pass at byte offset AX:
// dx += rstd·(ĝ − mean(ĝ) − x̂·mean(ĝx̂)). It clobbers Y4, Y5, Y9.
#define LNBWD2 \
	VMOVUPS      (SI)(AX*1), Y4; \
	VSUBPS       Y6, Y4, Y4; \
	VMULPS       Y7, Y4, Y4; \
	VMOVUPS      (DX)(AX*1), Y5; \
	VMULPS       (R8)(AX*1), Y5, Y5; \
	VSUBPS       Y11, Y5, Y5; \
	VFNMADD231PS Y12, Y4, Y5; \
	VMOVUPS      (DI)(AX*1), Y9; \
	VFMADD231PS  Y7, Y5, Y9; \
	VMOVUPS      Y9, (DI)(AX*1)

// func layerNormBwdAVX2(dx, dw, db, dout, x, w *float32, n int, mean, rstd float32)
// One row of n ≥ 1 floats, the last n mod 8 through masked loads and
// stores: dw += dout·x̂ and db += dout, then dx += rstd·(ĝ − mean(ĝ) −
// x̂·mean(ĝx̂)) with the two means from 2×8 lane sums.
TEXT ·layerNormBwdAVX2(SB), NOSPLIT, $0-64
	MOVQ         dx+0(FP), DI
	MOVQ         dw+8(FP), R11
	MOVQ         db+16(FP), R12
	MOVQ         dout+24(FP), DX
	MOVQ         x+32(FP), SI
	MOVQ         w+40(FP), R8
	MOVQ         n+48(FP), CX
	VBROADCASTSS mean+56(FP), Y6
	VBROADCASTSS rstd+60(FP), Y7
	LNMASK
	VCVTSI2SSQ   CX, X13, X13

	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	XORQ   AX, AX
	MOVQ   BX, R10
	CMPQ   R10, $2
	JB     lb1
lb2:
	LNBWD1(0, Y0, Y1)
	LNBWD1(32, Y2, Y3)
	ADDQ $64, AX
	SUBQ $2, R10
	CMPQ R10, $2
	JAE  lb2
lb1:
	TESTQ R10, R10
	JZ    lbt
	LNBWD1(0, Y0, Y1)
	ADDQ  $32, AX
lbt:
	TESTQ       $7, CX
	JZ          lbsums
	VMASKMOVPS  (SI)(AX*1), Y15, Y4
	VSUBPS      Y6, Y4, Y4
	VMULPS      Y7, Y4, Y4
	VANDPS      Y15, Y4, Y4
	VMASKMOVPS  (DX)(AX*1), Y15, Y5
	VMASKMOVPS  (R8)(AX*1), Y15, Y8
	VMULPS      Y8, Y5, Y8
	VADDPS      Y8, Y2, Y2
	VFMADD231PS Y8, Y4, Y3
	VMASKMOVPS  (R11)(AX*1), Y15, Y9
	VFMADD231PS Y5, Y4, Y9
	VMASKMOVPS  Y9, Y15, (R11)(AX*1)
	VMASKMOVPS  (R12)(AX*1), Y15, Y10
	VADDPS      Y5, Y10, Y10
	VMASKMOVPS  Y10, Y15, (R12)(AX*1)
lbsums:
	VADDPS       Y3, Y1, Y14
	VADDPS       Y2, Y0, Y0
	HSUM
	VDIVSS       X13, X0, X0
	VBROADCASTSS X0, Y11
	VMOVAPS      Y14, Y0
	HSUM
	VDIVSS       X13, X0, X0
	VBROADCASTSS X0, Y12

	XORQ  AX, AX
	MOVQ  BX, R10
	TESTQ R10, R10
	JZ    lbdt
lbdloop:
	LNBWD2
	ADDQ $32, AX
	DECQ R10
	JNZ  lbdloop
lbdt:
	TESTQ        $7, CX
	JZ           lbdone
	VMASKMOVPS   (SI)(AX*1), Y15, Y4
	VSUBPS       Y6, Y4, Y4
	VMULPS       Y7, Y4, Y4
	VMASKMOVPS   (DX)(AX*1), Y15, Y5
	VMASKMOVPS   (R8)(AX*1), Y15, Y8
	VMULPS       Y8, Y5, Y5
	VSUBPS       Y11, Y5, Y5
	VFNMADD231PS Y12, Y4, Y5
	VMASKMOVPS   (DI)(AX*1), Y15, Y9
	VFMADD231PS  Y7, Y5, Y9
	VMASKMOVPS   Y9, Y15, (DI)(AX*1)
lbdone:
	VZEROUPPER
	RET

//go:build amd64 && !purego

#include "textflag.h"

// Micro-kernels: C[0:MR, 0:NR] = alpha·(Ap·Bp) + beta·C for one kc-deep
// slice of a packed A panel (kc steps of MR values) and packed B panel (kc
// steps of NR values). beta == 0 (either sign) stores without reading C, so
// NaNs in C do not propagate. ldc is in elements.
//
// Go frame layout shared by all kernels:
//   kc+0(FP) a+8(FP) b+16(FP) c+24(FP) ldc+32(FP) alpha+40(FP) beta+44(FP)

// Accumulators live in Y4..Y15 (AVX2) or Z4..Z15 (AVX-512), row r in
// registers 4+2r (columns 0..W-1) and 5+2r (columns W..2W-1), W = lanes.

// PREFETCH_C touches the six C rows (DX, stride R8) the store will update,
// so their cache misses overlap the multiply loop instead of stalling it.
#define PREFETCH_C \
	LEAQ (R8)(R8*2), R9; \
	PREFETCHT0 (DX); \
	PREFETCHT0 (DX)(R8*1); \
	PREFETCHT0 (DX)(R8*2); \
	PREFETCHT0 (DX)(R9*1); \
	PREFETCHT0 (DX)(R8*4); \
	LEAQ (DX)(R8*4), R10; \
	PREFETCHT0 (R10)(R8*1)

// ---- AVX2 + FMA: 6×16 f32 ----

#define FMA_ROW_Y(off, bc, acc0, acc1) \
	VBROADCASTSS off(SI), bc; \
	VFMADD231PS Y0, bc, acc0; \
	VFMADD231PS Y1, bc, acc1

#define STEP_AVX2(aoff, boff) \
	VMOVUPS boff(DI), Y0; \
	VMOVUPS boff+32(DI), Y1; \
	FMA_ROW_Y(aoff, Y2, Y4, Y5); \
	FMA_ROW_Y(aoff+4, Y3, Y6, Y7); \
	FMA_ROW_Y(aoff+8, Y2, Y8, Y9); \
	FMA_ROW_Y(aoff+12, Y3, Y10, Y11); \
	FMA_ROW_Y(aoff+16, Y2, Y12, Y13); \
	FMA_ROW_Y(aoff+20, Y3, Y14, Y15)

// Y0 = alpha, Y1 = beta; row pointer in DX, stride in R8 (bytes).
#define STORE_ROW_Y(acc0, acc1) \
	VMULPS Y0, acc0, acc0; \
	VMULPS Y0, acc1, acc1; \
	VMOVUPS acc0, (DX); \
	VMOVUPS acc1, 32(DX); \
	ADDQ R8, DX

#define UPDATE_ROW_Y(acc0, acc1) \
	VMULPS (DX), Y1, Y2; \
	VMULPS 32(DX), Y1, Y3; \
	VFMADD231PS acc0, Y0, Y2; \
	VFMADD231PS acc1, Y0, Y3; \
	VMOVUPS Y2, (DX); \
	VMOVUPS Y3, 32(DX); \
	ADDQ R8, DX

// func sgemm6x16AVX2(kc int, a, b, c *float32, ldc int, alpha, beta float32)
TEXT ·sgemm6x16AVX2(SB), NOSPLIT, $0-48
	MOVQ kc+0(FP), CX
	MOVQ a+8(FP), SI
	MOVQ b+16(FP), DI
	MOVQ c+24(FP), DX
	MOVQ ldc+32(FP), R8
	SHLQ $2, R8
	PREFETCH_C
	VXORPS Y4, Y4, Y4
	VXORPS Y5, Y5, Y5
	VXORPS Y6, Y6, Y6
	VXORPS Y7, Y7, Y7
	VXORPS Y8, Y8, Y8
	VXORPS Y9, Y9, Y9
	VXORPS Y10, Y10, Y10
	VXORPS Y11, Y11, Y11
	VXORPS Y12, Y12, Y12
	VXORPS Y13, Y13, Y13
	VXORPS Y14, Y14, Y14
	VXORPS Y15, Y15, Y15
	CMPQ CX, $4
	JLT  avx2tail
avx2loop4:
	PREFETCHT0 384(SI)
	PREFETCHT0 768(DI)
	STEP_AVX2(0, 0)
	STEP_AVX2(24, 64)
	PREFETCHT0 448(SI)
	PREFETCHT0 832(DI)
	STEP_AVX2(48, 128)
	STEP_AVX2(72, 192)
	ADDQ $96, SI
	ADDQ $256, DI
	SUBQ $4, CX
	CMPQ CX, $4
	JGE  avx2loop4
avx2tail:
	TESTQ CX, CX
	JEQ  avx2store
avx2loop1:
	STEP_AVX2(0, 0)
	ADDQ $24, SI
	ADDQ $64, DI
	DECQ CX
	JNE  avx2loop1
avx2store:
	VBROADCASTSS alpha+40(FP), Y0
	MOVL beta+44(FP), AX
	ANDL $0x7fffffff, AX
	JNE  avx2update
	STORE_ROW_Y(Y4, Y5)
	STORE_ROW_Y(Y6, Y7)
	STORE_ROW_Y(Y8, Y9)
	STORE_ROW_Y(Y10, Y11)
	STORE_ROW_Y(Y12, Y13)
	STORE_ROW_Y(Y14, Y15)
	VZEROUPPER
	RET
avx2update:
	VBROADCASTSS beta+44(FP), Y1
	UPDATE_ROW_Y(Y4, Y5)
	UPDATE_ROW_Y(Y6, Y7)
	UPDATE_ROW_Y(Y8, Y9)
	UPDATE_ROW_Y(Y10, Y11)
	UPDATE_ROW_Y(Y12, Y13)
	UPDATE_ROW_Y(Y14, Y15)
	VZEROUPPER
	RET

// ---- AVX-512F: 6×32 f32 ----

#define FMA_ROW_Z(off, bc, acc0, acc1) \
	VBROADCASTSS off(SI), bc; \
	VFMADD231PS Z0, bc, acc0; \
	VFMADD231PS Z1, bc, acc1

#define STEP_AVX512(aoff, boff) \
	VMOVUPS boff(DI), Z0; \
	VMOVUPS boff+64(DI), Z1; \
	FMA_ROW_Z(aoff, Z2, Z4, Z5); \
	FMA_ROW_Z(aoff+4, Z3, Z6, Z7); \
	FMA_ROW_Z(aoff+8, Z2, Z8, Z9); \
	FMA_ROW_Z(aoff+12, Z3, Z10, Z11); \
	FMA_ROW_Z(aoff+16, Z2, Z12, Z13); \
	FMA_ROW_Z(aoff+20, Z3, Z14, Z15)

#define STORE_ROW_Z(acc0, acc1) \
	VMULPS Z0, acc0, acc0; \
	VMULPS Z0, acc1, acc1; \
	VMOVUPS acc0, (DX); \
	VMOVUPS acc1, 64(DX); \
	ADDQ R8, DX

#define UPDATE_ROW_Z(acc0, acc1) \
	VMULPS (DX), Z1, Z2; \
	VMULPS 64(DX), Z1, Z3; \
	VFMADD231PS acc0, Z0, Z2; \
	VFMADD231PS acc1, Z0, Z3; \
	VMOVUPS Z2, (DX); \
	VMOVUPS Z3, 64(DX); \
	ADDQ R8, DX

#define ZERO_ACC_Z \
	VPXORD Z4, Z4, Z4; \
	VPXORD Z5, Z5, Z5; \
	VPXORD Z6, Z6, Z6; \
	VPXORD Z7, Z7, Z7; \
	VPXORD Z8, Z8, Z8; \
	VPXORD Z9, Z9, Z9; \
	VPXORD Z10, Z10, Z10; \
	VPXORD Z11, Z11, Z11; \
	VPXORD Z12, Z12, Z12; \
	VPXORD Z13, Z13, Z13; \
	VPXORD Z14, Z14, Z14; \
	VPXORD Z15, Z15, Z15

// Stores Z4..Z15 to C: alpha/beta from the frame, C in DX, stride in R8.
#define STORE_ACC_Z(update, done) \
	VBROADCASTSS alpha+40(FP), Z0; \
	MOVL beta+44(FP), AX; \
	ANDL $0x7fffffff, AX; \
	JNE  update; \
	STORE_ROW_Z(Z4, Z5); \
	STORE_ROW_Z(Z6, Z7); \
	STORE_ROW_Z(Z8, Z9); \
	STORE_ROW_Z(Z10, Z11); \
	STORE_ROW_Z(Z12, Z13); \
	STORE_ROW_Z(Z14, Z15); \
	JMP  done; \
update: \
	VBROADCASTSS beta+44(FP), Z1; \
	UPDATE_ROW_Z(Z4, Z5); \
	UPDATE_ROW_Z(Z6, Z7); \
	UPDATE_ROW_Z(Z8, Z9); \
	UPDATE_ROW_Z(Z10, Z11); \
	UPDATE_ROW_Z(Z12, Z13); \
	UPDATE_ROW_Z(Z14, Z15); \
done: \
	VZEROUPPER

// func sgemm6x32AVX512(kc int, a, b, c *float32, ldc int, alpha, beta float32)
TEXT ·sgemm6x32AVX512(SB), NOSPLIT, $0-48
	MOVQ kc+0(FP), CX
	MOVQ a+8(FP), SI
	MOVQ b+16(FP), DI
	MOVQ c+24(FP), DX
	MOVQ ldc+32(FP), R8
	SHLQ $2, R8
	PREFETCH_C
	ZERO_ACC_Z
	CMPQ CX, $4
	JLT  z32tail
z32loop4:
	PREFETCHT0 384(SI)
	PREFETCHT0 1536(DI)
	STEP_AVX512(0, 0)
	STEP_AVX512(24, 128)
	PREFETCHT0 1600(DI)
	STEP_AVX512(48, 256)
	STEP_AVX512(72, 384)
	ADDQ $96, SI
	ADDQ $512, DI
	SUBQ $4, CX
	CMPQ CX, $4
	JGE  z32loop4
z32tail:
	TESTQ CX, CX
	JEQ  z32store
z32loop1:
	STEP_AVX512(0, 0)
	ADDQ $24, SI
	ADDQ $128, DI
	DECQ CX
	JNE  z32loop1
z32store:
	STORE_ACC_Z(z32update, z32done)
	RET

// ---- AVX512_BF16: 6×32, bf16 pairs, f32 accumulation ----
//
// Packed A holds, per k pair, MR dwords (row r: bf16 of k and k+1); packed B
// holds, per k pair, NR dwords (column j: bf16 of k and k+1). kc+0(FP) is the
// number of k pairs. VDPBF16PS acc, b, a adds a.lo·b.lo + a.hi·b.hi to each
// f32 lane. The Go assembler has no mnemonic for it, so it is emitted as
// bytes: EVEX.512.F3.0F38.W0 52 /r, register form (encodings checked
// against GNU as; see kernel_amd64.go).
// VDPBF16PS Z4, Z0, Z2 (Intel order)
#define DPBF16_Z4_Z0_Z2 BYTE $0x62; BYTE $0xf2; BYTE $0x7e; BYTE $0x48; BYTE $0x52; BYTE $0xe2
// VDPBF16PS Z5, Z1, Z2 (Intel order)
#define DPBF16_Z5_Z1_Z2 BYTE $0x62; BYTE $0xf2; BYTE $0x76; BYTE $0x48; BYTE $0x52; BYTE $0xea
// VDPBF16PS Z6, Z0, Z3 (Intel order)
#define DPBF16_Z6_Z0_Z3 BYTE $0x62; BYTE $0xf2; BYTE $0x7e; BYTE $0x48; BYTE $0x52; BYTE $0xf3
// VDPBF16PS Z7, Z1, Z3 (Intel order)
#define DPBF16_Z7_Z1_Z3 BYTE $0x62; BYTE $0xf2; BYTE $0x76; BYTE $0x48; BYTE $0x52; BYTE $0xfb
// VDPBF16PS Z8, Z0, Z2 (Intel order)
#define DPBF16_Z8_Z0_Z2 BYTE $0x62; BYTE $0x72; BYTE $0x7e; BYTE $0x48; BYTE $0x52; BYTE $0xc2
// VDPBF16PS Z9, Z1, Z2 (Intel order)
#define DPBF16_Z9_Z1_Z2 BYTE $0x62; BYTE $0x72; BYTE $0x76; BYTE $0x48; BYTE $0x52; BYTE $0xca
// VDPBF16PS Z10, Z0, Z3 (Intel order)
#define DPBF16_Z10_Z0_Z3 BYTE $0x62; BYTE $0x72; BYTE $0x7e; BYTE $0x48; BYTE $0x52; BYTE $0xd3
// VDPBF16PS Z11, Z1, Z3 (Intel order)
#define DPBF16_Z11_Z1_Z3 BYTE $0x62; BYTE $0x72; BYTE $0x76; BYTE $0x48; BYTE $0x52; BYTE $0xdb
// VDPBF16PS Z12, Z0, Z2 (Intel order)
#define DPBF16_Z12_Z0_Z2 BYTE $0x62; BYTE $0x72; BYTE $0x7e; BYTE $0x48; BYTE $0x52; BYTE $0xe2
// VDPBF16PS Z13, Z1, Z2 (Intel order)
#define DPBF16_Z13_Z1_Z2 BYTE $0x62; BYTE $0x72; BYTE $0x76; BYTE $0x48; BYTE $0x52; BYTE $0xea
// VDPBF16PS Z14, Z0, Z3 (Intel order)
#define DPBF16_Z14_Z0_Z3 BYTE $0x62; BYTE $0x72; BYTE $0x7e; BYTE $0x48; BYTE $0x52; BYTE $0xf3
// VDPBF16PS Z15, Z1, Z3 (Intel order)
#define DPBF16_Z15_Z1_Z3 BYTE $0x62; BYTE $0x72; BYTE $0x76; BYTE $0x48; BYTE $0x52; BYTE $0xfb

#define DP_ROW(off, bc, dp0, dp1) \
	VPBROADCASTD off(SI), bc; \
	dp0; \
	dp1

#define STEP_BF16(aoff, boff) \
	VMOVUPS boff(DI), Z0; \
	VMOVUPS boff+64(DI), Z1; \
	DP_ROW(aoff, Z2, DPBF16_Z4_Z0_Z2, DPBF16_Z5_Z1_Z2); \
	DP_ROW(aoff+4, Z3, DPBF16_Z6_Z0_Z3, DPBF16_Z7_Z1_Z3); \
	DP_ROW(aoff+8, Z2, DPBF16_Z8_Z0_Z2, DPBF16_Z9_Z1_Z2); \
	DP_ROW(aoff+12, Z3, DPBF16_Z10_Z0_Z3, DPBF16_Z11_Z1_Z3); \
	DP_ROW(aoff+16, Z2, DPBF16_Z12_Z0_Z2, DPBF16_Z13_Z1_Z2); \
	DP_ROW(aoff+20, Z3, DPBF16_Z14_Z0_Z3, DPBF16_Z15_Z1_Z3)

// func bgemm6x32AVX512BF16(kpairs int, a, b *uint16, c *float32, ldc int, alpha, beta float32)
TEXT ·bgemm6x32AVX512BF16(SB), NOSPLIT, $0-48
	MOVQ kc+0(FP), CX
	MOVQ a+8(FP), SI
	MOVQ b+16(FP), DI
	MOVQ c+24(FP), DX
	MOVQ ldc+32(FP), R8
	SHLQ $2, R8
	PREFETCH_C
	ZERO_ACC_Z
	CMPQ CX, $2
	JLT  bf16tail
bf16loop2:
	PREFETCHT0 384(SI)
	PREFETCHT0 1536(DI)
	STEP_BF16(0, 0)
	PREFETCHT0 1600(DI)
	STEP_BF16(24, 128)
	ADDQ $48, SI
	ADDQ $256, DI
	SUBQ $2, CX
	CMPQ CX, $2
	JGE  bf16loop2
bf16tail:
	TESTQ CX, CX
	JEQ  bf16store
	STEP_BF16(0, 0)
bf16store:
	STORE_ACC_Z(bf16update, bf16done)
	RET

// ---- AVX: 8×8 transposes for packing a transposed B ----

// func transpose8AVX(dst *float32, stride int, src *float32, ld int, blocks int)
//
// Reads 8 rows of src (stride ld elements) over blocks×8 columns and writes
// column p of those rows as 8 consecutive floats at dst + p·stride.
TEXT ·transpose8AVX(SB), NOSPLIT, $0-40
	MOVQ dst+0(FP), DI
	MOVQ stride+8(FP), R8
	SHLQ $2, R8
	MOVQ src+16(FP), SI
	MOVQ ld+24(FP), R9
	SHLQ $2, R9
	MOVQ blocks+32(FP), CX
	LEAQ (R9)(R9*2), R10
	LEAQ (SI)(R9*4), R11
	LEAQ (R8)(R8*2), R12
	TESTQ CX, CX
	JEQ  tdone
tloop:
	VMOVUPS (SI), Y0
	VMOVUPS (SI)(R9*1), Y1
	VMOVUPS (SI)(R9*2), Y2
	VMOVUPS (SI)(R10*1), Y3
	VMOVUPS (R11), Y4
	VMOVUPS (R11)(R9*1), Y5
	VMOVUPS (R11)(R9*2), Y6
	VMOVUPS (R11)(R10*1), Y7
	VUNPCKLPS Y1, Y0, Y8
	VUNPCKHPS Y1, Y0, Y9
	VUNPCKLPS Y3, Y2, Y10
	VUNPCKHPS Y3, Y2, Y11
	VUNPCKLPS Y5, Y4, Y12
	VUNPCKHPS Y5, Y4, Y13
	VUNPCKLPS Y7, Y6, Y14
	VUNPCKHPS Y7, Y6, Y15
	VSHUFPS $0x44, Y10, Y8, Y0
	VSHUFPS $0xEE, Y10, Y8, Y1
	VSHUFPS $0x44, Y11, Y9, Y2
	VSHUFPS $0xEE, Y11, Y9, Y3
	VSHUFPS $0x44, Y14, Y12, Y4
	VSHUFPS $0xEE, Y14, Y12, Y5
	VSHUFPS $0x44, Y15, Y13, Y6
	VSHUFPS $0xEE, Y15, Y13, Y7
	VPERM2F128 $0x20, Y4, Y0, Y8
	VPERM2F128 $0x20, Y5, Y1, Y9
	VPERM2F128 $0x20, Y6, Y2, Y10
	VPERM2F128 $0x20, Y7, Y3, Y11
	VPERM2F128 $0x31, Y4, Y0, Y12
	VPERM2F128 $0x31, Y5, Y1, Y13
	VPERM2F128 $0x31, Y6, Y2, Y14
	VPERM2F128 $0x31, Y7, Y3, Y15
	VMOVUPS Y8, (DI)
	VMOVUPS Y9, (DI)(R8*1)
	VMOVUPS Y10, (DI)(R8*2)
	VMOVUPS Y11, (DI)(R12*1)
	LEAQ (DI)(R8*4), R13
	VMOVUPS Y12, (R13)
	VMOVUPS Y13, (R13)(R8*1)
	VMOVUPS Y14, (R13)(R8*2)
	VMOVUPS Y15, (R13)(R12*1)
	LEAQ (R13)(R8*4), DI
	ADDQ $32, SI
	ADDQ $32, R11
	DECQ CX
	JNE  tloop
tdone:
	VZEROUPPER
	RET

// func prefetchT1(p *float32, lines int)
//
// Hints lines consecutive 64-byte lines from p into L2: the next B
// micro-panel is fetched from L3 while the current one is in use.
TEXT ·prefetchT1(SB), NOSPLIT, $0-16
	MOVQ p+0(FP), SI
	MOVQ lines+8(FP), CX
	TESTQ CX, CX
	JEQ  pfdone
pfloop:
	PREFETCHT1 (SI)
	ADDQ $64, SI
	DECQ CX
	JNE  pfloop
pfdone:
	RET

// func biasReLUAVX2(row, bias, pre *float32, n int)
TEXT ·biasReLUAVX2(SB), NOSPLIT, $0-32
	MOVQ row+0(FP), DI
	MOVQ bias+8(FP), SI
	MOVQ pre+16(FP), DX
	MOVQ n+24(FP), CX
	SHRQ $4, CX
	JZ   brdone
brloop:
	VMOVUPS (DI), Y0
	VMOVUPS 32(DI), Y1
	VADDPS  (SI), Y0, Y0
	VADDPS  32(SI), Y1, Y1
	VMOVUPS Y0, (DX)
	VMOVUPS Y1, 32(DX)
	VPSRAD  $31, Y0, Y2
	VPSRAD  $31, Y1, Y3
	VPANDN  Y0, Y2, Y0
	VPANDN  Y1, Y3, Y1
	VMOVUPS Y0, (DI)
	VMOVUPS Y1, 32(DI)
	ADDQ    $64, DI
	ADDQ    $64, SI
	ADDQ    $64, DX
	DECQ    CX
	JNZ     brloop
brdone:
	VZEROUPPER
	RET

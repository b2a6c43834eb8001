//go:build amd64 && !purego

#include "textflag.h"

// func sgdMomentumAVX2(val, grad, buf *float32, n int, gs, wd, mu, lr float32)
// Per element, in the scalar loop's order (see sgd.go):
//   g = grad*gs + wd*val; buf = mu*buf + g; val = val - lr*buf
TEXT ·sgdMomentumAVX2(SB), NOSPLIT, $0-48
	MOVQ         val+0(FP), DI
	MOVQ         grad+8(FP), SI
	MOVQ         buf+16(FP), DX
	MOVQ         n+24(FP), CX
	VBROADCASTSS gs+32(FP), Y12
	VBROADCASTSS wd+36(FP), Y13
	VBROADCASTSS mu+40(FP), Y14
	VBROADCASTSS lr+44(FP), Y15
	SHRQ         $4, CX
	JZ           done
loop:
	VMOVUPS (DI), Y0
	VMOVUPS 32(DI), Y1
	VMULPS  (SI), Y12, Y2
	VMULPS  32(SI), Y12, Y3
	VMULPS  Y0, Y13, Y4
	VMULPS  Y1, Y13, Y5
	VADDPS  Y4, Y2, Y2
	VADDPS  Y5, Y3, Y3
	VMULPS  (DX), Y14, Y6
	VMULPS  32(DX), Y14, Y7
	VADDPS  Y2, Y6, Y6
	VADDPS  Y3, Y7, Y7
	VMOVUPS Y6, (DX)
	VMOVUPS Y7, 32(DX)
	VMULPS  Y6, Y15, Y6
	VMULPS  Y7, Y15, Y7
	VSUBPS  Y6, Y0, Y0
	VSUBPS  Y7, Y1, Y1
	VMOVUPS Y0, (DI)
	VMOVUPS Y1, 32(DI)
	ADDQ    $64, DI
	ADDQ    $64, SI
	ADDQ    $64, DX
	DECQ    CX
	JNZ     loop
done:
	VZEROUPPER
	RET

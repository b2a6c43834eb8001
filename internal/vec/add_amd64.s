//go:build amd64 && !purego

#include "textflag.h"

// func sumF32AVX2(dst, a, b *float32, n int)
TEXT ·sumF32AVX2(SB), NOSPLIT, $0-32
	MOVQ dst+0(FP), DI
	MOVQ a+8(FP), SI
	MOVQ b+16(FP), DX
	MOVQ n+24(FP), CX
	SHRQ $4, CX
	JZ   done
loop:
	VMOVUPS (SI), Y0
	VMOVUPS 32(SI), Y1
	VADDPS  (DX), Y0, Y0
	VADDPS  32(DX), Y1, Y1
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

// func sum2F32AVX2(d1, d2, a, b *float32, n int)
TEXT ·sum2F32AVX2(SB), NOSPLIT, $0-40
	MOVQ d1+0(FP), DI
	MOVQ d2+8(FP), R8
	MOVQ a+16(FP), SI
	MOVQ b+24(FP), DX
	MOVQ n+32(FP), CX
	SHRQ $4, CX
	JZ   done2
loop2:
	VMOVUPS (SI), Y0
	VMOVUPS 32(SI), Y1
	VADDPS  (DX), Y0, Y0
	VADDPS  32(DX), Y1, Y1
	VMOVUPS Y0, (DI)
	VMOVUPS Y1, 32(DI)
	VMOVUPS Y0, (R8)
	VMOVUPS Y1, 32(R8)
	ADDQ    $64, DI
	ADDQ    $64, R8
	ADDQ    $64, SI
	ADDQ    $64, DX
	DECQ    CX
	JNZ     loop2
done2:
	VZEROUPPER
	RET

// func copy2AVX2(d1, d2, src *float32, n int)
TEXT ·copy2AVX2(SB), NOSPLIT, $0-32
	MOVQ d1+0(FP), DI
	MOVQ d2+8(FP), R8
	MOVQ src+16(FP), SI
	MOVQ n+24(FP), CX
	SHRQ $4, CX
	JZ   done3
loop3:
	VMOVUPS (SI), Y0
	VMOVUPS 32(SI), Y1
	VMOVUPS Y0, (DI)
	VMOVUPS Y1, 32(DI)
	VMOVUPS Y0, (R8)
	VMOVUPS Y1, 32(R8)
	ADDQ    $64, DI
	ADDQ    $64, R8
	ADDQ    $64, SI
	DECQ    CX
	JNZ     loop3
done3:
	VZEROUPPER
	RET

package collective

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/loomtrain/loom/tensor"
)

func TestHeaderRoundTripAndCorruption(t *testing.T) {
	h := Header{Kind: KindData, Op: OpAllReduce, DType: tensor.BF16, Generation: 1 << 40, Src: 3, Dst: 4, Seq: 99, Len: 1024}
	b := make([]byte, headerSize)
	EncodeHeader(b, h)
	got, err := DecodeHeader(b, 4096)
	if err != nil || got != h {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	if _, err := DecodeHeader(b, 1000); !errors.Is(err, ErrBadFrame) {
		t.Fatalf("oversize payload accepted: %v", err)
	}
	for i := range headerSize {
		c := append([]byte(nil), b...)
		c[i] ^= 0x10
		if _, err := DecodeHeader(c, 4096); !errors.Is(err, ErrBadFrame) {
			t.Fatalf("flipped bit in byte %d not detected", i)
		}
	}
	if _, err := DecodeHeader(b[:headerSize-1], 4096); !errors.Is(err, ErrBadFrame) {
		t.Fatalf("short header accepted")
	}
	odd := h
	odd.Len = 3 // not a whole number of bf16
	EncodeHeader(b, odd)
	if _, err := DecodeHeader(b, 4096); !errors.Is(err, ErrBadFrame) {
		t.Fatalf("odd length accepted")
	}
}

// FuzzDecodeFrame feeds arbitrary streams to the frame reader the TCP
// transport uses: it must never panic, never accept a payload over the
// limit, and every frame it accepts must re-encode to the same header bytes.
// Run: go test ./collective/ -run '^$' -fuzz FuzzDecodeFrame -fuzztime 20s
func FuzzDecodeFrame(f *testing.F) {
	b := make([]byte, headerSize)
	for _, h := range []Header{
		{Kind: KindData, Op: OpAllReduce, DType: tensor.F32, Generation: 7, Src: 0, Dst: 1, Seq: 1, Len: 8},
		{Kind: KindHello, Op: OpHandshake, DType: tensor.F32, Generation: 1, Src: 2, Dst: 0},
		{Kind: KindData, Op: OpP2P, DType: tensor.F16, Generation: 3, Src: 1, Dst: 0, Seq: 5, Len: 2},
	} {
		EncodeHeader(b, h)
		f.Add(append(append([]byte(nil), b...), make([]byte, h.Len)...))
	}
	f.Add([]byte{})
	f.Add([]byte("LOOM this is not a frame at all, but long enough"))
	const maxLen = 1 << 12
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		var hdr [headerSize]byte
		payload := make([]byte, maxLen)
		for {
			h, err := readHeader(r, hdr[:], maxLen)
			if err != nil {
				if !errors.Is(err, ErrBadFrame) && err != io.EOF && err != io.ErrUnexpectedEOF {
					t.Fatalf("unexpected error kind: %v", err)
				}
				return
			}
			if h.Len > maxLen {
				t.Fatalf("accepted %d-byte payload over limit", h.Len)
			}
			var again [headerSize]byte
			EncodeHeader(again[:], h)
			if again != hdr {
				t.Fatalf("re-encoding differs:\n%x\n%x", again, hdr)
			}
			if _, err := io.ReadFull(r, payload[:h.Len]); err != nil {
				return
			}
		}
	})
}

package data

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"fmt"
	"io"
	"os"
)

// IDX holds one decoded IDX file of unsigned bytes: dims and the flat data.
type IDX struct {
	Dims []int
	Data []byte
}

// maxIDXElements bounds what a header may claim, so a corrupt file fails
// cleanly instead of asking for terabytes.
const maxIDXElements = 1 << 31

// ReadIDXFile reads an IDX file, gzip-compressed or not (detected from the
// content, not the name).
func ReadIDXFile(path string) (*IDX, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	x, err := ReadIDX(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return x, nil
}

// readIDXHeader reads the magic and dimensions of an IDX stream (gzipped
// or not) and checks that the element count is sane.
func readIDXHeader(r io.Reader) ([]int, error) {
	br := bufio.NewReader(r)
	if magic, err := br.Peek(2); err == nil && bytes.Equal(magic, []byte{0x1f, 0x8b}) {
		gz, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("gzip: %w", err)
		}
		br = bufio.NewReader(gz)
	}
	return readDims(br)
}

// ReadIDX decodes an IDX stream of unsigned bytes (type code 0x08).
func ReadIDX(r io.Reader) (*IDX, error) {
	br := bufio.NewReader(r)
	if magic, err := br.Peek(2); err == nil && bytes.Equal(magic, []byte{0x1f, 0x8b}) {
		gz, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("gzip: %w", err)
		}
		defer gz.Close()
		br = bufio.NewReader(gz)
	}
	dims, err := readDims(br)
	if err != nil {
		return nil, err
	}
	total := 1
	for _, d := range dims {
		total *= d
	}
	buf := make([]byte, total)
	if _, err := io.ReadFull(br, buf); err != nil {
		return nil, fmt.Errorf("idx data: want %d bytes for dims %v: %w", total, dims, err)
	}
	return &IDX{Dims: dims, Data: buf}, nil
}

// readDims reads an IDX header (magic, dimensions) from an uncompressed
// stream and rejects element counts beyond maxIDXElements.
func readDims(br io.Reader) ([]int, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return nil, fmt.Errorf("idx header: %w", err)
	}
	if hdr[0] != 0 || hdr[1] != 0 {
		return nil, fmt.Errorf("not an IDX file (magic %x)", hdr)
	}
	if hdr[2] != 0x08 {
		return nil, fmt.Errorf("idx element type %#x unsupported (want 0x08, unsigned byte)", hdr[2])
	}
	nd := int(hdr[3])
	if nd == 0 || nd > 8 {
		return nil, fmt.Errorf("idx: %d dimensions", nd)
	}
	dims := make([]int, nd)
	total := 1
	for i := range dims {
		var d uint32
		if err := binary.Read(br, binary.BigEndian, &d); err != nil {
			return nil, fmt.Errorf("idx dims: %w", err)
		}
		dims[i] = int(d)
		total *= int(d)
		if total > maxIDXElements {
			return nil, fmt.Errorf("idx: dims %v too large", dims[:i+1])
		}
	}
	return dims, nil
}

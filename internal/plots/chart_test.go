package plots

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"image/png"
	"io"
	"math"
	"strings"
	"testing"
)

// svgInfo is what a browser test reads back from a rendered SVG.
type svgInfo struct {
	points string   // the root's data-points attribute
	texts  []string // the content of every <text> element
}

// parseSVG checks that b is well-formed XML with an <svg> root.
func parseSVG(t *testing.T, b []byte) svgInfo {
	t.Helper()
	dec := xml.NewDecoder(bytes.NewReader(b))
	var info svgInfo
	depth, inText := 0, false
	for {
		tok, err := dec.Token()
		if err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			t.Fatalf("svg is not well-formed XML: %v", err)
		}
		switch el := tok.(type) {
		case xml.StartElement:
			if depth == 0 {
				if el.Name.Local != "svg" {
					t.Fatalf("root element is <%s>, want <svg>", el.Name.Local)
				}
				for _, a := range el.Attr {
					if a.Name.Local == "data-points" {
						info.points = a.Value
					}
				}
			}
			depth++
			inText = el.Name.Local == "text"
		case xml.EndElement:
			depth--
			inText = false
		case xml.CharData:
			if inText {
				info.texts = append(info.texts, strings.TrimSpace(string(el)))
			}
		}
	}
	if depth != 0 {
		t.Fatalf("svg ends with %d elements open", depth)
	}
	return info
}

func hasText(info svgInfo, s string) bool {
	for _, x := range info.texts {
		if x == s {
			return true
		}
	}
	return false
}

func hex(i int) string {
	c := Colour(i)
	return fmt.Sprintf("#%02X%02X%02X", c.R, c.G, c.B) // as gonum writes it
}

func sine(n int) []Point {
	pts := make([]Point, n)
	for i := range pts {
		pts[i] = Point{X: float64(i), Y: 2 + math.Sin(float64(i)/10)}
	}
	return pts
}

func TestRenderSVGCountsLegendAndColours(t *testing.T) {
	val := []Point{{0, 3}, {50, 2.5}, {100, math.NaN()}, {math.Inf(1), 2}, {150, 2.1}}
	c := Chart{Title: "Loss", XLabel: "step", YLabel: "loss", Lines: []Line{
		{Name: "train", Points: sine(200)},
		{Name: "val", Points: val, Dashed: true, Markers: true},
		{Name: "a,b:c", Points: sine(3)},
	}}
	b, err := Render(c, SVG, 640, 360)
	if err != nil {
		t.Fatal(err)
	}
	info := parseSVG(t, b)
	if want := "train:200,val:3,a_b_c:3"; info.points != want {
		t.Errorf("data-points = %q, want %q", info.points, want)
	}
	for _, s := range []string{"Loss", "step", "loss", "train", "val", "a,b:c"} {
		if !hasText(info, s) {
			t.Errorf("no text %q in the svg (texts %q)", s, info.texts)
		}
	}
	if hasText(info, NoDataText) {
		t.Errorf("a chart with data says %q", NoDataText)
	}
	for i := range c.Lines {
		if !bytes.Contains(b, []byte("stroke:"+hex(i))) {
			t.Errorf("line %d's colour %s is not drawn", i, hex(i))
		}
	}
	if !bytes.Contains(b, []byte("stroke-dasharray")) {
		t.Error("the dashed line is not dashed")
	}
	if !bytes.Contains(b, []byte(`width="480pt" height="270pt"`)) {
		t.Errorf("svg is not 640x360 CSS pixels: %.200s", b)
	}
}

func TestRenderPNGSize(t *testing.T) {
	for _, c := range []Chart{
		{Title: "Throughput", Lines: []Line{{Name: "tokens/s", Points: sine(500)}}},
		{Title: "empty"},
	} {
		b, err := Render(c, PNG, 321, 123)
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("%s: %v", c.Title, err)
		}
		if got := img.Bounds().Size(); got.X != 321 || got.Y != 123 {
			t.Errorf("%s: png is %v, want 321x123", c.Title, got)
		}
	}
}

func TestRenderEmptySaysNoData(t *testing.T) {
	for _, tc := range []struct {
		name   string
		chart  Chart
		points string
	}{
		{"no lines", Chart{Title: "Loss"}, ""},
		{"empty lines", Chart{Title: "Loss", Lines: []Line{{Name: "train"}, {Name: "val", Markers: true}}}, "train:0,val:0"},
		{"only NaN", Chart{Title: "Loss", Lines: []Line{{Name: "train", Points: []Point{{1, math.NaN()}, {math.Inf(-1), 1}}}}}, "train:0"},
		{"log, only <= 0", Chart{Title: "Loss", LogY: true, XIsTime: true, Lines: []Line{{Name: "train", Points: []Point{{1, 0}, {2, -1}}}}}, "train:0"},
	} {
		b, err := Render(tc.chart, SVG, 400, 300)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		info := parseSVG(t, b)
		if !hasText(info, NoDataText) || !hasText(info, "Loss") {
			t.Errorf("%s: texts %q lack the title or %q", tc.name, info.texts, NoDataText)
		}
		for _, l := range tc.chart.Lines {
			if !hasText(info, l.Name) {
				t.Errorf("%s: no legend entry for %q", tc.name, l.Name)
			}
		}
		if info.points != tc.points {
			t.Errorf("%s: data-points = %q, want %q", tc.name, info.points, tc.points)
		}
	}
}

func TestRenderLogYAndTime(t *testing.T) {
	const t0 = 1.7e9
	pts := []Point{{t0, 4}, {t0 + 60, 3}, {t0 + 120, 0}, {t0 + 180, 2.5}, {t0 + 240, -1}, {t0 + 300, 2}}
	b, err := Render(Chart{Lines: []Line{{Name: "train", Points: pts}}, LogY: true, XIsTime: true}, SVG, 500, 300)
	if err != nil {
		t.Fatal(err)
	}
	info := parseSVG(t, b)
	if info.points != "train:4" {
		t.Errorf("data-points = %q, want train:4 (Y <= 0 skipped on a log axis)", info.points)
	}
	for _, s := range []string{"2", "3", "4"} {
		if !hasText(info, s) {
			t.Errorf("log axis over 2–4 lacks the label %q (texts %q)", s, info.texts)
		}
	}
	clock := 0
	for _, s := range info.texts {
		if len(s) == len("15:04:05") && s[2] == ':' && s[5] == ':' {
			clock++
		}
	}
	if clock < 2 {
		t.Errorf("time axis has %d clock labels, want several (texts %q)", clock, info.texts)
	}

	one, err := Render(Chart{Lines: []Line{{Name: "x", Points: []Point{{1, 0.5}}}}, LogY: true}, PNG, 200, 100)
	if err != nil || len(one) == 0 {
		t.Fatalf("a single point on a log axis: %v", err)
	}
}

func TestRenderRejectsBadArguments(t *testing.T) {
	c := Chart{Lines: []Line{{Points: sine(10)}}}
	for _, tc := range []struct {
		format string
		w, h   int
		want   string
	}{
		{"pdf", 100, 100, "unknown format"},
		{"SVG", 100, 100, "unknown format"},
		{SVG, 0, 100, "out of range"},
		{PNG, 100, -1, "out of range"},
		{PNG, MaxPixels + 1, 100, "out of range"},
	} {
		_, err := Render(c, tc.format, tc.w, tc.h)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Render(%q, %d, %d) = %v, want an error with %q", tc.format, tc.w, tc.h, err, tc.want)
		}
	}
}

func TestUnnamedLinesAndDistinctColours(t *testing.T) {
	seen := map[string]int{}
	for i := range 64 {
		if j, dup := seen[hex(i)]; dup {
			t.Fatalf("lines %d and %d share colour %s", j, i, hex(i))
		}
		seen[hex(i)] = i
	}
	b, err := Render(Chart{Lines: []Line{{Points: sine(5)}, {Points: sine(7)}}}, SVG, 300, 200)
	if err != nil {
		t.Fatal(err)
	}
	info := parseSVG(t, b)
	if info.points != "line 1:5,line 2:7" || !hasText(info, "line 1") || !hasText(info, "line 2") {
		t.Errorf("unnamed lines: data-points %q, texts %q", info.points, info.texts)
	}
}

func TestStandardCharts(t *testing.T) {
	train := sine(10_000)
	c := LossChart(train, []Point{{100, 2}, {200, 1.9}}, 500)
	if len(c.Lines) != 2 || c.Lines[0].Name != "train" || len(c.Lines[0].Points) > 500 ||
		c.Lines[1].Name != "val" || len(c.Lines[1].Points) != 2 || !c.Lines[1].Dashed || !c.Lines[1].Markers {
		t.Fatalf("LossChart: %+v", c.Lines)
	}
	if c := LossChart(train, nil, 500); len(c.Lines) != 1 {
		t.Errorf("LossChart without validation has %d lines", len(c.Lines))
	}
	if c := ThroughputChart("tokens/s", train, 100); c.YLabel != "tokens/s" || c.Lines[0].Name != "tokens/s" || len(c.Lines[0].Points) > 100 {
		t.Errorf("ThroughputChart: %+v", c)
	}
	if c := LearningRateChart(train[:50], 100); c.Lines[0].Name != "lr" || len(c.Lines[0].Points) != 50 {
		t.Errorf("LearningRateChart: %+v", c)
	}
}

// BenchmarkRenderSVG renders a 2000-point loss chart with a validation
// line, the size of a web page's chart.
func BenchmarkRenderSVG(b *testing.B) {
	train := sine(2000)
	val := make([]Point, 20)
	for i := range val {
		val[i] = Point{X: float64(i * 100), Y: 2.5}
	}
	c := LossChart(train, val, 2000)
	for b.Loop() {
		if _, err := Render(c, SVG, 960, 540); err != nil {
			b.Fatal(err)
		}
	}
}

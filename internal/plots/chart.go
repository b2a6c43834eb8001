// Package plots renders training charts (loss, throughput, learning rate)
// with gonum.org/v1/plot, as SVG for a web page and PNG for files.
//
// A Chart is plain data: named lines of (x, y) points. Render draws it at a
// size given in pixels; Downsample shrinks a long history to what a chart
// of that width can show; LossChart, ThroughputChart and LearningRateChart
// build the standard charts from plain series, for `loom plot` and the
// coordinator's web page alike. Nothing here holds state: every function is
// safe for concurrent use.
package plots

import (
	"bytes"
	"fmt"
	"image"
	"image/png"
	"math"
	"strconv"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
	"gonum.org/v1/plot/vg/vgsvg"
)

// Point is one sample of a line.
type Point struct{ X, Y float64 }

// Line is one named series of a chart. Points are in X order.
type Line struct {
	Name    string // legend entry; "line N" (1-based) when empty
	Points  []Point
	Dashed  bool // draw the line dashed
	Markers bool // also mark every point (for sparse series such as evaluations)
}

// Chart is what Render draws.
type Chart struct {
	Title, XLabel, YLabel string
	Lines                 []Line
	// LogY draws the Y axis on a log scale; points with Y <= 0 are then
	// skipped like non-finite ones.
	LogY bool
	// XIsTime shows X (Unix seconds) as local clock time.
	XIsTime bool
}

// Output formats accepted by Render.
const (
	SVG = "svg"
	PNG = "png"
)

// MaxPixels bounds Render's width and height.
const MaxPixels = 8192

// NoDataText is drawn on a chart that has no plottable point.
const NoDataText = "no data yet"

// pixel is one CSS pixel: 96 per inch, as PNG output is rendered.
const pixel = vg.Inch / 96

// Render draws c as format (SVG or PNG), width × height pixels. An SVG is
// sized in points (width×0.75 pt), which a browser shows at width CSS
// pixels; a PNG is exactly width × height.
//
// Points with a NaN or infinite coordinate are skipped (and, under LogY,
// points with Y <= 0); a chart left with no point is drawn with its title
// and NoDataText rather than failing. Line i gets Colour(i) and a legend
// entry, whether or not it has points. Render does not downsample: pass
// histories through Downsample first.
//
// The root <svg> element of an SVG carries the points drawn per line as
// data-points="name:count,name:count" in line order; ',' and ':' in names
// are written as '_'.
func Render(c Chart, format string, width, height int) ([]byte, error) {
	if format != SVG && format != PNG {
		return nil, fmt.Errorf("plots: unknown format %q (want %q or %q)", format, SVG, PNG)
	}
	if width <= 0 || height <= 0 || width > MaxPixels || height > MaxPixels {
		return nil, fmt.Errorf("plots: size %dx%d pixels out of range (1 to %d each)", width, height, MaxPixels)
	}
	p, counts, err := build(c)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if format == PNG {
		canvas := vgimg.NewWith(vgimg.UseImage(image.NewRGBA(image.Rect(0, 0, width, height))))
		p.Draw(draw.New(canvas))
		if err := png.Encode(&buf, canvas.Image()); err != nil {
			return nil, fmt.Errorf("plots: encode png: %w", err)
		}
		return buf.Bytes(), nil
	}
	canvas := vgsvg.New(vg.Length(width)*pixel, vg.Length(height)*pixel)
	p.Draw(draw.New(canvas))
	if _, err := canvas.WriteTo(&buf); err != nil {
		return nil, fmt.Errorf("plots: write svg: %w", err)
	}
	return annotate(buf.Bytes(), c.Lines, counts)
}

// build turns c into a gonum plot, returning the points drawn per line.
func build(c Chart) (*plot.Plot, []int, error) {
	p := plot.New()
	p.Title.Text = c.Title
	p.X.Label.Text = c.XLabel
	p.Y.Label.Text = c.YLabel
	p.Legend.Top = true
	p.Legend.XOffs, p.Legend.YOffs = -vg.Points(6), -vg.Points(4)

	kept := make([][]Point, len(c.Lines))
	counts := make([]int, len(c.Lines))
	total := 0
	for i, l := range c.Lines {
		kept[i] = plottable(l.Points, c.LogY)
		counts[i] = len(kept[i])
		total += counts[i]
	}
	if total == 0 {
		return p, counts, drawNoData(p, c.Lines)
	}
	p.Add(plotter.NewGrid())
	for i, l := range c.Lines {
		if err := addLine(p, i, l, kept[i]); err != nil {
			return nil, nil, err
		}
	}
	if c.LogY {
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = logTicks{}
		if p.Y.Min == p.Y.Max { // the axis would otherwise widen by ±1, possibly below zero
			p.Y.Min, p.Y.Max = p.Y.Min/2, p.Y.Max*2
		}
	}
	if c.XIsTime {
		p.X.Tick.Marker = plot.TimeTicks{Format: clockFormat(p.X.Max - p.X.Min), Time: plot.UnixTimeIn(time.Local)}
	}
	return p, counts, nil
}

// PointCounts returns the number of points Render draws of each line, in
// line order: those left after skipping the ones it cannot draw.
func (c Chart) PointCounts() []int {
	counts := make([]int, len(c.Lines))
	for i, l := range c.Lines {
		for _, pt := range l.Points {
			if drawable(pt, c.LogY) {
				counts[i]++
			}
		}
	}
	return counts
}

// plottable returns the points of pts that can be drawn.
func plottable(pts []Point, logY bool) []Point {
	out := make([]Point, 0, len(pts))
	for _, pt := range pts {
		if drawable(pt, logY) {
			out = append(out, pt)
		}
	}
	return out
}

func drawable(pt Point, logY bool) bool {
	return finite(pt) && (!logY || pt.Y > 0)
}

func finite(pt Point) bool {
	return !math.IsNaN(pt.X) && !math.IsInf(pt.X, 0) && !math.IsNaN(pt.Y) && !math.IsInf(pt.Y, 0)
}

// addLine adds line i with its kept points and its legend entry.
func addLine(p *plot.Plot, i int, l Line, pts []Point) error {
	xys := make(plotter.XYs, len(pts))
	for j, pt := range pts {
		xys[j] = plotter.XY{X: pt.X, Y: pt.Y}
	}
	line, err := plotter.NewLine(xys)
	if err != nil {
		return fmt.Errorf("plots: line %q: %w", l.Name, err)
	}
	line.Color = Colour(i)
	line.Width = vg.Points(1.5)
	if l.Dashed {
		line.Dashes = []vg.Length{vg.Points(6), vg.Points(3)}
	}
	thumbs := []plot.Thumbnailer{line}
	if len(pts) > 0 {
		p.Add(line)
	}
	if l.Markers {
		marks, err := plotter.NewScatter(xys)
		if err != nil {
			return fmt.Errorf("plots: line %q: %w", l.Name, err)
		}
		marks.Color = Colour(i)
		marks.Shape = draw.CircleGlyph{}
		marks.Radius = vg.Points(2.5)
		thumbs = append(thumbs, marks)
		if len(pts) > 0 {
			p.Add(marks)
		}
	}
	p.Legend.Add(lineName(i, l), thumbs...)
	return nil
}

// drawNoData makes p an empty frame with NoDataText in its middle, keeping
// the legend so the reader sees which lines are awaited.
func drawNoData(p *plot.Plot, lines []Line) error {
	p.X.Min, p.X.Max, p.Y.Min, p.Y.Max = 0, 1, 0, 1
	p.X.Tick.Marker = plot.ConstantTicks{}
	p.Y.Tick.Marker = plot.ConstantTicks{}
	label, err := plotter.NewLabels(plotter.XYLabels{
		XYs:    plotter.XYs{{X: 0.5, Y: 0.5}},
		Labels: []string{NoDataText},
	})
	if err != nil {
		return fmt.Errorf("plots: %w", err)
	}
	label.TextStyle[0].XAlign = draw.XCenter
	label.TextStyle[0].YAlign = draw.YCenter
	label.TextStyle[0].Font.Size = vg.Points(14)
	p.Add(label)
	for i, l := range lines {
		if err := addLine(p, i, l, nil); err != nil {
			return err
		}
	}
	return nil
}

func lineName(i int, l Line) string {
	if l.Name == "" {
		return "line " + strconv.Itoa(i+1)
	}
	return l.Name
}

// annotate inserts the data-points attribute into the root <svg> element.
func annotate(svg []byte, lines []Line, counts []int) ([]byte, error) {
	at := bytes.Index(svg, []byte("<svg "))
	if at < 0 {
		return nil, fmt.Errorf("plots: svg output has no <svg> element")
	}
	at += len("<svg")
	var attr strings.Builder
	attr.WriteString(` data-points="`)
	for i, l := range lines {
		if i > 0 {
			attr.WriteByte(',')
		}
		attr.WriteString(attrEscaper.Replace(lineName(i, l)))
		attr.WriteByte(':')
		attr.WriteString(strconv.Itoa(counts[i]))
	}
	attr.WriteByte('"')
	out := make([]byte, 0, len(svg)+attr.Len())
	out = append(out, svg[:at]...)
	out = append(out, attr.String()...)
	return append(out, svg[at:]...), nil
}

// attrEscaper writes a line name into the data-points attribute: the
// list's separators become '_', XML specials become entities.
var attrEscaper = strings.NewReplacer(",", "_", ":", "_", "&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;")

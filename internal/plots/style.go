package plots

import (
	"image/color"
	"math"
	"strconv"

	"gonum.org/v1/plot"
)

// palette is Tableau 10: distinguishable on white and under the common
// forms of colour blindness.
var palette = [...]color.RGBA{
	{0x4e, 0x79, 0xa7, 0xff}, // blue
	{0xf2, 0x8e, 0x2b, 0xff}, // orange
	{0xe1, 0x57, 0x59, 0xff}, // red
	{0x59, 0xa1, 0x4f, 0xff}, // green
	{0xb0, 0x7a, 0xa1, 0xff}, // purple
	{0x9c, 0x75, 0x5f, 0xff}, // brown
	{0x76, 0xb7, 0xb2, 0xff}, // teal
	{0xed, 0xc9, 0x48, 0xff}, // yellow
	{0xff, 0x9d, 0xa7, 0xff}, // pink
	{0xba, 0xb0, 0xac, 0xff}, // grey
}

// Colour is the colour Render gives line i (0-based): the palette first,
// then hues stepped by the golden angle, so every line of a chart differs.
func Colour(i int) color.RGBA {
	if i < len(palette) {
		return palette[i]
	}
	hue := math.Mod(float64(i-len(palette))*0.6180339887498949, 1)
	return hsv(hue, 0.7, 0.8)
}

// hsv converts a colour with hue, saturation and value in [0, 1) to RGB.
func hsv(h, s, v float64) color.RGBA {
	sector := int(h * 6)
	f := h*6 - float64(sector)
	p, q, t := v*(1-s), v*(1-s*f), v*(1-s*(1-f))
	var r, g, b float64
	switch sector {
	case 0:
		r, g, b = v, t, p
	case 1:
		r, g, b = q, v, p
	case 2:
		r, g, b = p, v, t
	case 3:
		r, g, b = p, q, v
	case 4:
		r, g, b = t, p, v
	default:
		r, g, b = v, p, q
	}
	return color.RGBA{uint8(r*255 + 0.5), uint8(g*255 + 0.5), uint8(b*255 + 0.5), 0xff}
}

// logTicks marks a log axis at m·10^k. gonum's LogTicks labels powers of
// ten only, which leaves a loss axis spanning 2–5 unlabelled; logTicks
// labels more multiples the narrower the range.
type logTicks struct{}

// Ticks implements plot.Ticker; min and max are > 0.
func (logTicks) Ticks(min, max float64) []plot.Tick {
	labelled := func(m int) bool { return m == 1 }
	switch decades := math.Log10(max / min); {
	case decades <= 1:
		labelled = func(int) bool { return true }
	case decades <= 3:
		labelled = func(m int) bool { return m == 1 || m == 2 || m == 5 }
	}
	var ticks []plot.Tick
	for k := math.Floor(math.Log10(min)); k <= math.Ceil(math.Log10(max)); k++ {
		for m := 1; m <= 9; m++ {
			v := float64(m) * math.Pow(10, k)
			t := plot.Tick{Value: v}
			if labelled(m) {
				t.Label = strconv.FormatFloat(v, 'g', 4, 64)
			}
			ticks = append(ticks, t)
		}
	}
	return ticks
}

// clockFormat is the time layout of X tick labels for a span of seconds:
// the date is shown only when the span exceeds a day.
func clockFormat(span float64) string {
	if span > 24*3600 {
		return "Jan 2 15:04"
	}
	return "15:04:05"
}

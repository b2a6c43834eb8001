package plots

// The standard charts of a training run, shared by `loom plot` and the
// coordinator's web page. X is the step; a caller plotting against time
// sets XLabel and XIsTime on the result. Every series is passed through
// Downsample(series, maxPoints): about twice the chart's pixel width keeps
// the picture exact.

// LossChart charts train (the loss of each step) as a solid line named
// "train" and, when val is non-empty, the validation loss of the steps
// where an evaluation ran as a dashed line named "val" with a marker per
// evaluation.
func LossChart(train, val []Point, maxPoints int) Chart {
	c := Chart{
		Title: "Loss", XLabel: "step", YLabel: "loss",
		Lines: []Line{{Name: "train", Points: Downsample(train, maxPoints)}},
	}
	if len(val) > 0 {
		c.Lines = append(c.Lines, Line{Name: "val", Points: Downsample(val, maxPoints), Dashed: true, Markers: true})
	}
	return c
}

// ThroughputChart charts pts, a rate in unit ("tokens/s", "samples/s"), as
// one line named unit.
func ThroughputChart(unit string, pts []Point, maxPoints int) Chart {
	return Chart{
		Title: "Throughput", XLabel: "step", YLabel: unit,
		Lines: []Line{{Name: unit, Points: Downsample(pts, maxPoints)}},
	}
}

// LearningRateChart charts the learning rate of each step as one line
// named "lr".
func LearningRateChart(pts []Point, maxPoints int) Chart {
	return Chart{
		Title: "Learning rate", XLabel: "step", YLabel: "learning rate",
		Lines: []Line{{Name: "lr", Points: Downsample(pts, maxPoints)}},
	}
}

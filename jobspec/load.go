package jobspec

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Load reads, checks and validates the job config at path. Unknown keys,
// values of the wrong type and invalid settings are all reported as *Error
// naming the file, line and field.
func Load(path string) (*Job, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, b)
}

// Parse is Load on bytes already read; file is used in error messages.
func Parse(file string, b []byte) (*Job, error) {
	j := Default()
	j.file = file
	j.lines = map[string]int{}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &Error{File: file, Msg: "empty job config"}
		}
		return nil, &Error{File: file, Line: yamlErrLine(err), Msg: strings.TrimPrefix(err.Error(), "yaml: ")}
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	if err := check(file, root, reflect.TypeOf(j), "", j.lines); err != nil {
		return nil, err
	}
	if err := root.Decode(&j); err != nil {
		return nil, &Error{File: file, Line: yamlErrLine(err), Msg: err.Error()}
	}
	if j.Model.Kind == "gpt" {
		// gpt defaults that differ from mlp's.
		if _, set := j.lines["model.tie_embeddings"]; !set {
			j.Model.TieEmbeddings = true
		}
		if _, set := j.lines["model.activation"]; !set {
			j.Model.Activation = ""
		}
	}
	if err := j.Validate(); err != nil {
		return nil, err
	}
	return &j, nil
}

// yamlErrLine extracts "line N" from a yaml.v3 error message.
func yamlErrLine(err error) int {
	var n int
	s := err.Error()
	if i := strings.Index(s, "line "); i >= 0 {
		fmt.Sscanf(s[i+5:], "%d", &n)
	}
	return n
}

// check walks the YAML tree against the Go type t, rejecting unknown keys and
// scalars that cannot hold the field's type, and records the line of every
// field path it sees.
var stagesType = reflect.TypeOf(Stages(0))

func check(file string, n *yaml.Node, t reflect.Type, path string, lines map[string]int) error {
	at := func(msg string, args ...any) error {
		return &Error{File: file, Line: n.Line, Field: path, Msg: fmt.Sprintf(msg, args...)}
	}
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil // leaves the default in place
	}
	if t == layersType && n.Kind == yaml.ScalarNode {
		// model.layers: a gpt block count; Validate rejects it for mlp.
		if !scalarFits(n, reflect.TypeOf(0)) {
			return at("want an integer or a list of integers, got %s %q", strings.TrimPrefix(n.ShortTag(), "!!"), n.Value)
		}
		return nil
	}
	if t == stagesType && n.Kind == yaml.ScalarNode {
		if n.Value != "auto" && !scalarFits(n, reflect.TypeOf(0)) {
			return at("want a stage count or auto, got %s %q", strings.TrimPrefix(n.ShortTag(), "!!"), n.Value)
		}
		return nil
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return at("want a mapping of %s, got %s", strings.Join(yamlFields(t), ", "), describe(n))
		}
		fields := map[string]reflect.StructField{}
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if tag := strings.Split(f.Tag.Get("yaml"), ",")[0]; tag != "" && f.IsExported() {
				fields[tag] = f
			}
		}
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			sub := k.Value
			if path != "" {
				sub = path + "." + k.Value
			}
			f, ok := fields[k.Value]
			if !ok {
				return &Error{File: file, Line: k.Line, Field: sub, Msg: fmt.Sprintf("unknown field (known: %s)", strings.Join(yamlFields(t), ", "))}
			}
			if seen[k.Value] {
				return &Error{File: file, Line: k.Line, Field: sub, Msg: "set twice"}
			}
			seen[k.Value] = true
			lines[sub] = k.Line
			if err := check(file, v, f.Type, sub, lines); err != nil {
				return err
			}
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return at("want a list of %s, got %s", kindName(t.Elem()), describe(n))
		}
		for i, e := range n.Content {
			sub := fmt.Sprintf("%s[%d]", path, i)
			lines[sub] = e.Line
			if err := check(file, e, t.Elem(), sub, lines); err != nil {
				return err
			}
		}
	default:
		if n.Kind != yaml.ScalarNode {
			return at("want %s, got %s", kindName(t), describe(n))
		}
		if !scalarFits(n, t) {
			return at("want %s, got %s %q", kindName(t), strings.TrimPrefix(n.ShortTag(), "!!"), n.Value)
		}
	}
	return nil
}

var layersType = reflect.TypeOf(Layers(nil))

func scalarFits(n *yaml.Node, t reflect.Type) bool {
	tag := n.ShortTag()
	switch t.Kind() {
	case reflect.String:
		return tag == "!!str" || tag == "!!int" || tag == "!!float"
	case reflect.Bool:
		return tag == "!!bool"
	case reflect.Int, reflect.Int64, reflect.Int32:
		var v int64
		return tag == "!!int" && n.Decode(&v) == nil
	case reflect.Uint64, reflect.Uint32, reflect.Uint:
		var v uint64
		return tag == "!!int" && n.Decode(&v) == nil
	case reflect.Float64, reflect.Float32:
		return tag == "!!int" || tag == "!!float"
	}
	return false
}

func kindName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int64, reflect.Int32:
		return "an integer"
	case reflect.Uint64, reflect.Uint32, reflect.Uint:
		return "a non-negative integer"
	case reflect.Float64, reflect.Float32:
		return "a number"
	case reflect.Slice:
		return "a list"
	case reflect.Struct:
		return "a mapping"
	}
	return t.String()
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	return fmt.Sprintf("%s %q", strings.TrimPrefix(n.ShortTag(), "!!"), n.Value)
}

func yamlFields(t reflect.Type) []string {
	var names []string
	for i := 0; i < t.NumField(); i++ {
		if tag := strings.Split(t.Field(i).Tag.Get("yaml"), ",")[0]; tag != "" && t.Field(i).IsExported() {
			names = append(names, tag)
		}
	}
	sort.Strings(names)
	return names
}

// Marshal returns the job as YAML that Parse accepts, with data.path,
// checkpoint.dir and checkpoint.resume made absolute, so a worker on another directory (or machine with the same
// layout) reads the same files.
func (j *Job) Marshal() ([]byte, error) {
	c := *j
	c.Data.Path = j.DataPath()
	if c.Data.Path != "" {
		if abs, err := filepath.Abs(c.Data.Path); err == nil {
			c.Data.Path = abs
		}
	}
	if p := j.InitPath(); p != "" {
		if abs, err := filepath.Abs(p); err == nil {
			c.Model.Init = abs
		}
	}
	if c.Checkpoint.Dir != "" {
		if abs, err := filepath.Abs(c.Checkpoint.Dir); err == nil {
			c.Checkpoint.Dir = abs
		}
	}
	if r := c.Checkpoint.Resume; r != "" && r != "latest" {
		if abs, err := filepath.Abs(r); err == nil {
			c.Checkpoint.Resume = abs
		}
	}
	return yaml.Marshal(&c)
}

// Hash identifies what a checkpoint must agree with to be resumed: the
// model, the seed (the data order) and the global batch. Step counts,
// logging and cluster settings may change between runs.
func (j *Job) Hash() string {
	// model.init only chooses the first weights: where that directory
	// lives does not change which checkpoints continue the job.
	m := j.Model
	m.Init = ""
	b, _ := yaml.Marshal(struct {
		Seed   uint64
		Model  Model
		Batch  int
		Opt    string
		Sched  string
		Warmup int
	}{j.Seed, m, j.Train.GlobalBatch, j.Optimizer.Kind, j.Schedule.Kind, j.Schedule.WarmupSteps})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

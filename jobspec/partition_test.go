package jobspec

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// cluster.pipeline_partition takes measured (also empty) or uniform, keeps
// its value through Marshal, and names its line and field for anything
// else.
func TestPipelinePartition(t *testing.T) {
	dir, y := gptYAML(t)
	y = strings.Replace(y, "  vocab: 256\n", "  vocab: 256\n  tie_embeddings: false\n", 1) +
		"checkpoint: {disabled: true}\ncluster:\n  pipeline_stages: 2\n"
	path := filepath.Join(dir, "job.yaml")
	for _, v := range []string{"", "measured", "uniform"} {
		yv := y
		if v != "" {
			yv += "  pipeline_partition: " + v + "\n"
		}
		os.WriteFile(path, []byte(yv), 0o644)
		j, err := Load(path)
		if err != nil {
			t.Fatalf("pipeline_partition %q: %v", v, err)
		}
		if j.Cluster.PipelinePartition != v {
			t.Fatalf("pipeline_partition %q parsed as %q", v, j.Cluster.PipelinePartition)
		}
		b, err := j.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if k, err := Parse("again.yaml", b); err != nil || k.Cluster.PipelinePartition != v {
			t.Fatalf("pipeline_partition %q after a round trip: %v %+v\n%s", v, err, k, b)
		}
	}
	bad := y + "  pipeline_partition: parameters\n"
	os.WriteFile(path, []byte(bad), 0o644)
	line := strings.Count(bad, "\n")
	checkErr(t, path, bad, line, "cluster.pipeline_partition", `"parameters" unknown (want measured or uniform)`)
}

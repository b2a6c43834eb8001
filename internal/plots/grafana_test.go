package plots

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The Grafana dashboard in deploy/grafana charts the metrics of the
// workers (metrics.Trainer) and the coordinators (coordinator.Collector).
// This test holds it to their names and labels, so renaming a metric
// without updating the dashboard fails here.

const dashboardFile = "../../deploy/grafana/loom-dashboard.json"

// exported lists every metric the dashboard may query with the labels it
// carries. Histograms (marked) are queried as _bucket, _sum, _count.
var exported = map[string]struct {
	labels    []string
	histogram bool
}{
	"loom_train_steps_total":                     {labels: workerLabels()},
	"loom_train_samples_total":                   {labels: workerLabels()},
	"loom_train_tokens_total":                    {labels: workerLabels()},
	"loom_train_loss":                            {labels: workerLabels()},
	"loom_train_learning_rate":                   {labels: workerLabels()},
	"loom_train_grad_norm":                       {labels: workerLabels()},
	"loom_train_step_duration_seconds":           {labels: workerLabels(), histogram: true},
	"loom_train_phase_seconds_total":             {labels: workerLabels("phase")},
	"loom_collective_allreduce_bytes_total":      {labels: workerLabels("transport")},
	"loom_collective_allreduce_duration_seconds": {labels: workerLabels("transport"), histogram: true},
	"loom_checkpoint_write_duration_seconds":     {labels: workerLabels(), histogram: true},
	"loom_checkpoint_size_bytes":                 {labels: workerLabels()},
	"loom_checkpoint_failures_total":             {labels: workerLabels()},
	"loom_plan_generation":                       {labels: workerLabels()},
	"loom_eval_loss":                             {labels: workerLabels()},
	"loom_eval_accuracy_ratio":                   {labels: workerLabels()},
	"loom_worker_info":                           {labels: workerLabels("rank", "stage", "device")},

	"loom_raft_term":                         {labels: []string{"node"}},
	"loom_raft_commit_index":                 {labels: []string{"node"}},
	"loom_raft_applied_index":                {labels: []string{"node"}},
	"loom_raft_is_leader":                    {labels: []string{"node"}},
	"loom_coordinator_lease_expiries_total":  {labels: []string{"node"}},
	"loom_coordinator_failure_reports_total": {labels: []string{"node"}},
	"loom_coordinator_workers":               {labels: []string{"node", "state"}},
	"loom_coordinator_jobs":                  {labels: []string{"node", "state"}},
	"loom_job_step":                          {labels: []string{"node", "job", "name"}},
	"loom_job_generation":                    {labels: []string{"node", "job", "name"}},
	"loom_job_loss":                          {labels: []string{"node", "job", "name"}},
	"loom_job_samples_per_second":            {labels: []string{"node", "job", "name"}},
	"loom_coordinator_events_total":          {labels: []string{"node", "kind"}},
}

func workerLabels(extra ...string) []string { return append([]string{"job", "worker"}, extra...) }

type dashPanel struct {
	ID         int             `json:"id"`
	Type       string          `json:"type"`
	Title      string          `json:"title"`
	Datasource json.RawMessage `json:"datasource"`
	GridPos    struct{ X, Y, W, H int }
	Targets    []struct {
		Datasource json.RawMessage `json:"datasource"`
		Expr       string          `json:"expr"`
	} `json:"targets"`
	Panels []dashPanel `json:"panels"` // a collapsed row's
}

type dashboard struct {
	Inputs []struct {
		Name, Type, PluginID string
	} `json:"__inputs"`
	SchemaVersion int `json:"schemaVersion"`
	Templating    struct {
		List []struct {
			Name, Type string
			Query      json.RawMessage `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Panels []dashPanel `json:"panels"`
}

var (
	reString   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	reMatchers = regexp.MustCompile(`(loom_[a-z0-9_]+)?\{([^}]*)\}`)
	reLabel    = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)`)
	reRange    = regexp.MustCompile(`\[[^\]]*\]`)
	reGrouping = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	reNumber   = regexp.MustCompile(`\b\d+(?:\.\d+)?(?:[eE][+-]?\d+)?\b`)
	reIdent    = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*(\s*\()?`)
	keywords   = []string{"and", "or", "unless", "bool", "offset"}
)

// metricsOf returns the metrics expr selects, and a problem for each name
// loom does not export and each label matched on that a metric lacks.
func metricsOf(expr string) (names, problems []string) {
	for _, m := range reMatchers.FindAllStringSubmatch(expr, -1) {
		name := base(m[1])
		if name == "" {
			problems = append(problems, "a selector without a metric name")
			continue
		}
		metric, known := exported[name]
		for _, l := range reLabel.FindAllStringSubmatch(reString.ReplaceAllString(m[2], `""`), -1) {
			if known && l[1] != "le" && !slices.Contains(metric.labels, l[1]) {
				problems = append(problems, fmt.Sprintf("%s has no label %q", name, l[1]))
			}
		}
	}
	rest := reString.ReplaceAllString(expr, `""`)
	for _, re := range []*regexp.Regexp{reMatchers, reRange, reGrouping, reNumber} {
		rest = re.ReplaceAllString(rest, "$1 ")
	}
	for _, m := range reIdent.FindAllStringSubmatch(rest, -1) {
		if m[1] != "" || slices.Contains(keywords, m[0]) {
			continue // a function or an aggregation
		}
		name := base(m[0])
		if _, ok := exported[name]; !ok {
			problems = append(problems, fmt.Sprintf("%q is not a metric loom exports", m[0]))
			continue
		}
		names = append(names, name)
	}
	return names, problems
}

// checkExpr reports expr's problems and returns its metrics.
func checkExpr(t *testing.T, where, expr string) []string {
	t.Helper()
	names, problems := metricsOf(expr)
	for _, p := range problems {
		t.Errorf("%s: %q: %s", where, expr, p)
	}
	return names
}

// base maps a histogram's series name to the histogram's name.
func base(series string) string {
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if h, ok := strings.CutSuffix(series, suffix); ok && exported[h].histogram {
			return h
		}
	}
	if exported[series].histogram {
		return series + " (a histogram queried without _bucket/_sum/_count)"
	}
	return series
}

func TestGrafanaDashboardQueriesExportedMetrics(t *testing.T) {
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	if d.SchemaVersion < 36 || d.SchemaVersion > 41 {
		t.Errorf("schemaVersion %d, want about 39", d.SchemaVersion)
	}
	if len(d.Inputs) != 1 || d.Inputs[0].Name != "DS_PROMETHEUS" || d.Inputs[0].PluginID != "prometheus" {
		t.Errorf("__inputs = %+v, want the one Prometheus data source DS_PROMETHEUS", d.Inputs)
	}
	const ds = `{"type":"prometheus","uid":"${DS_PROMETHEUS}"}`
	compact := func(r json.RawMessage) string {
		var v any
		if json.Unmarshal(r, &v) != nil {
			return string(r)
		}
		out, _ := json.Marshal(v)
		return string(out)
	}

	used := map[string]bool{}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct{ Query string }
		if err := json.Unmarshal(v.Query, &q); err != nil {
			t.Fatalf("variable %s: %v", v.Name, err)
		}
		vars[v.Name] = q.Query
		inner, ok := strings.CutPrefix(q.Query, "label_values(")
		if !ok {
			t.Errorf("variable %s: query %q is not label_values(...)", v.Name, q.Query)
			continue
		}
		sel, label, _ := strings.Cut(strings.TrimSuffix(inner, ")"), ", ")
		for _, m := range checkExpr(t, "variable "+v.Name, sel) {
			used[m] = true
			if !slices.Contains(exported[m].labels, label) {
				t.Errorf("variable %s: %s has no label %q", v.Name, m, label)
			}
		}
	}
	for _, name := range []string{"job", "worker"} {
		if _, ok := vars[name]; !ok {
			t.Errorf("no %s variable (have %v)", name, vars)
		}
	}

	ids := map[int]string{}
	var walk func([]dashPanel)
	walk = func(panels []dashPanel) {
		for _, p := range panels {
			if prev, dup := ids[p.ID]; dup {
				t.Errorf("panels %q and %q share id %d", prev, p.Title, p.ID)
			}
			ids[p.ID] = p.Title
			if p.GridPos.W <= 0 || p.GridPos.X+p.GridPos.W > 24 {
				t.Errorf("panel %q: gridPos %+v outside the 24 columns", p.Title, p.GridPos)
			}
			walk(p.Panels)
			if p.Type == "row" {
				continue
			}
			if compact(p.Datasource) != ds {
				t.Errorf("panel %q: datasource %s, want %s", p.Title, p.Datasource, ds)
			}
			if len(p.Targets) == 0 {
				t.Errorf("panel %q has no query", p.Title)
			}
			for _, q := range p.Targets {
				if compact(q.Datasource) != ds {
					t.Errorf("panel %q: query datasource %s, want %s", p.Title, q.Datasource, ds)
				}
				names := checkExpr(t, "panel "+strconv.Quote(p.Title), q.Expr)
				if len(names) == 0 {
					t.Errorf("panel %q: %q queries no loom metric", p.Title, q.Expr)
				}
				for _, n := range names {
					used[n] = true
				}
			}
		}
	}
	walk(d.Panels)
	for name := range exported {
		if !used[name] {
			t.Errorf("no panel charts %s", name)
		}
	}
}

// TestMetricsOfRejects checks the checker itself on queries the dashboard
// must not contain.
func TestMetricsOfRejects(t *testing.T) {
	for _, expr := range []string{
		`rate(loom_train_step_total[5m])`,                           // renamed metric
		`sum by (job) (up{job="loom"})`,                             // not a loom metric
		`loom_train_loss{job=~"$job",rank="0"}`,                     // label it does not carry
		`rate(loom_train_step_duration_seconds[5m])`,                // histogram without a suffix
		`loom_job_loss{worker=~"$worker"}`,                          // worker label on a coordinator metric
		`histogram_quantile(0.5, rate(loom_train_loss_bucket[5m]))`, // _bucket of a gauge
	} {
		if _, problems := metricsOf(expr); len(problems) == 0 {
			t.Errorf("%q passes the check", expr)
		}
	}
	if got := checkExpr(t, "example", `histogram_quantile(0.95, sum by (le, job) (rate(loom_train_step_duration_seconds_bucket{job=~"$job"}[$__rate_interval]))) / 1e3`); !slices.Equal(got, []string{"loom_train_step_duration_seconds"}) {
		t.Errorf("metricsOf = %v", got)
	}
}

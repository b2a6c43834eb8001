// Package web is the coordinator's status page: the jobs, and for each job
// its loss and throughput plots, each worker's throughput, the current
// plan and the event log, drawn on the server (internal/plots, SVG inline:
// nothing is loaded from elsewhere, clusters are often offline) from the
// coordinator's replicated state. A job's page refreshes its live part
// every two seconds while the job runs.
//
// Routes: / (jobs), /jobs/{id} (a job; ?part=live returns only the part
// that refreshes), /workers/{id}, /api/jobs/{id}/history and
// /api/jobs/{id}/events (JSON), and /metrics when a metrics handler is
// given. An unknown job or worker is a 404 page that says so.
package web

import (
	"bytes"
	"embed"
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/internal/plots"
)

// Source is what the page reads: the coordinator's FSM.
type Source interface {
	Jobs() []*api.Job
	Job(id string) (*api.Job, bool)
	Plan(jobID string) (*api.Plan, bool)
	Workers() []*api.Worker
	Worker(id string) (*api.Worker, bool)
	LostWorkers() []*api.Worker
	Events(jobID string, after uint64) ([]*api.Event, uint64)
	History(jobID string) *api.JobHistory
}

//go:embed templates/*.html
var files embed.FS

var pages = template.Must(template.New("").Funcs(template.FuncMap{
	"state": stateName,
	"clock": func(ns int64) string {
		if ns == 0 {
			return "-"
		}
		return time.Unix(0, ns).Format("15:04:05")
	},
	// svg inlines a chart rendered by internal/plots: gonum's SVG writer
	// escapes its text (legend names are worker ids) and plots escapes
	// data-points; the XML prolog is dropped.
	"svg": func(b []byte) template.HTML {
		if i := bytes.Index(b, []byte("<svg")); i > 0 {
			b = b[i:]
		}
		return template.HTML(b)
	},
	"float": func(f float64) string { return fmt.Sprintf("%.4g", f) },
	"now":   func() int64 { return time.Now().UnixNano() },
	"mul":   func(a, b float64) float64 { return a * b },
	"add":   func(a, b int) int { return a + b },
	"n0": func(n int64) string { // a count, blank when zero (not recorded)
		if n == 0 {
			return ""
		}
		return fmt.Sprint(n)
	},
}).ParseFS(files, "templates/*.html"))

// pageEvents is how many of a job's newest events its page lists.
const pageEvents = 200

// plotPoints is how many points a chart draws at most (the page's charts
// are 640 px wide).
const plotPoints = 640

// Handler serves the status page from src; metrics, if not nil, is served
// at /metrics.
func Handler(src Source, metrics http.Handler) http.Handler {
	h := &handler{src: src}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", h.jobs)
	mux.HandleFunc("GET /jobs/{id}", h.job)
	mux.HandleFunc("GET /workers/{id}", h.worker)
	mux.HandleFunc("GET /api/jobs/{id}/history", h.history)
	mux.HandleFunc("GET /api/jobs/{id}/events", h.events)
	if metrics != nil {
		mux.Handle("GET /metrics", metrics)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		h.notFound(w, fmt.Sprintf("no page at %s: start at /", r.URL.Path))
	})
	return mux
}

type handler struct{ src Source }

func (h *handler) render(w http.ResponseWriter, status int, name string, data any) {
	var b strings.Builder
	if err := pages.ExecuteTemplate(&b, name, data); err != nil {
		http.Error(w, "render "+name+": "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(b.String()))
}

func (h *handler) notFound(w http.ResponseWriter, msg string) {
	h.render(w, http.StatusNotFound, "notfound.html", msg)
}

// unknownJob is the 404 of a job id the coordinators do not know.
func (h *handler) unknownJob(w http.ResponseWriter, id string) {
	var ids []string
	for _, j := range h.src.Jobs() {
		ids = append(ids, j.GetId())
	}
	msg := fmt.Sprintf("job %q does not exist", id)
	if len(ids) > 0 {
		msg += "; the coordinators know " + strings.Join(ids, ", ")
	} else {
		msg += "; no job has been submitted"
	}
	h.notFound(w, msg)
}

func (h *handler) jobs(w http.ResponseWriter, _ *http.Request) {
	jobs := h.src.Jobs()
	slices.SortFunc(jobs, func(a, b *api.Job) int { return strings.Compare(b.GetId(), a.GetId()) })
	h.render(w, http.StatusOK, "jobs.html", map[string]any{"Jobs": jobs, "Workers": len(h.src.Workers())})
}

// jobView is what a job's page shows.
type jobView struct {
	Job                  *api.Job
	Running              bool
	Ranks                []rankView
	Stages               int32
	Events               []*api.Event
	Older                int // events not shown (loom events has them all)
	Dropped              uint64
	Loss, Speed, Workers []byte // SVG charts
}

type rankView struct {
	*api.Rank
	Device string
	Speed  float64
	Share  float64 // percent of the global batch
}

func (h *handler) job(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	j, ok := h.src.Job(id)
	if !ok {
		h.unknownJob(w, id)
		return
	}
	v, err := h.jobView(j)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	name := "job.html"
	if r.URL.Query().Get("part") == "live" {
		name = "live"
	}
	h.render(w, http.StatusOK, name, v)
}

func (h *handler) jobView(j *api.Job) (*jobView, error) {
	v := &jobView{Job: j, Running: j.GetState() == api.JobState_JOB_STATE_RUNNING || j.GetState() == api.JobState_JOB_STATE_PENDING}
	if p, ok := h.src.Plan(j.GetId()); ok {
		v.Stages = max(p.GetPipelineStages(), 1)
		for _, rk := range p.GetRanks() {
			rv := rankView{Rank: rk}
			if wk, ok := h.src.Worker(rk.GetWorkerId()); ok {
				rv.Device, rv.Speed = wk.GetProfile().GetDeviceName(), wk.GetSamplesPerSecond()
			}
			if gb := p.GetGlobalBatch(); gb > 0 {
				rv.Share = 100 * float64(rk.GetBatchShare()) / float64(gb)
			}
			v.Ranks = append(v.Ranks, rv)
		}
	}
	es, dropped := h.src.Events(j.GetId(), 0)
	slices.Reverse(es) // newest first
	if len(es) > pageEvents {
		v.Older = len(es) - pageEvents
		es = es[:pageEvents]
	}
	v.Events, v.Dropped = es, dropped
	var err error
	hist := h.src.History(j.GetId())
	if v.Loss, err = plots.Render(lossChart(hist), plots.SVG, 640, 300); err != nil {
		return nil, err
	}
	if v.Speed, err = plots.Render(speedChart(hist, tokensPerSample(j)), plots.SVG, 640, 300); err != nil {
		return nil, err
	}
	if v.Workers, err = plots.Render(workersChart(hist), plots.SVG, 640, 300); err != nil {
		return nil, err
	}
	return v, nil
}

func (h *handler) worker(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	wk, ok := h.src.Worker(id)
	lost := false
	if !ok {
		for _, l := range h.src.LostWorkers() {
			if l.GetId() == id {
				wk, ok, lost = l, true, true
			}
		}
	}
	if !ok {
		var ids []string
		for _, x := range h.src.Workers() {
			ids = append(ids, x.GetId())
		}
		msg := fmt.Sprintf("worker %q is not registered and not among the recently lost", id)
		if len(ids) > 0 {
			msg += "; registered: " + strings.Join(ids, ", ")
		}
		h.notFound(w, msg)
		return
	}
	var chart []byte
	if wk.GetJobId() != "" {
		c := workersChart(h.src.History(wk.GetJobId()))
		c.Lines = slices.DeleteFunc(c.Lines, func(l plots.Line) bool { return l.Name != id })
		c.Title = id + " samples/s"
		var err error
		if chart, err = plots.Render(c, plots.SVG, 640, 300); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
	}
	h.render(w, http.StatusOK, "worker.html", map[string]any{"W": wk, "Lost": lost, "Chart": chart})
}

func (h *handler) history(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if _, ok := h.src.Job(id); !ok {
		jsonError(w, fmt.Sprintf("job %q does not exist", id))
		return
	}
	writeJSON(w, h.src.History(id))
}

func (h *handler) events(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if _, ok := h.src.Job(id); !ok {
		jsonError(w, fmt.Sprintf("job %q does not exist", id))
		return
	}
	es, dropped := h.src.Events(id, 0)
	writeJSON(w, &api.ListEventsResponse{Events: es, Dropped: dropped})
}

func writeJSON(w http.ResponseWriter, m proto.Message) {
	b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b)
}

func jsonError(w http.ResponseWriter, msg string) {
	b, _ := json.Marshal(map[string]string{"error": msg})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusNotFound)
	_, _ = w.Write(append(b, '\n'))
}

func stateName(s api.JobState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "JOB_STATE_"))
}

package train

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/loomtrain/loom/collective"
	"github.com/loomtrain/loom/device"
	"github.com/loomtrain/loom/device/cpu"
	"github.com/loomtrain/loom/jobspec"
	"github.com/loomtrain/loom/model"
)

// pipeJob is gptJob with 4 untied blocks (a pipeline cannot split tied
// embeddings) and micro micro-batches.
func pipeJob(t testing.TB, steps, micro int) *jobspec.Job {
	job := gptJob(t, steps)
	job.Model.Layers = jobspec.LayerCount(4)
	job.Model.TieEmbeddings = false
	job.Train.MicroBatches = micro
	return job
}

// pipeLayout is a test's pipeline: per stage its blocks and its ranks'
// shares.
type pipeLayout struct {
	name   string
	layers []model.StageRange
	shares [][]int
	gpipe  bool
	device string // each rank's device spec; "" is cpu:threads=1
}

// runPipeline trains job for its steps on the layout, every rank a
// goroutine over one in-memory world transport (a ring per stage over a
// Sub of it, and a Pipe), and returns the trainers and each rank's
// losses, in rank order (stage by stage).
func runPipeline(t testing.TB, job *jobspec.Job, lay pipeLayout, kind collective.TransportKind, before func(rank, step int, tr *Trainer)) ([]*Trainer, [][]float64) {
	t.Helper()
	var stages [][]PipeRank
	var members [][]int
	type place struct{ stage, me int }
	var places []place
	for s, sh := range lay.shares {
		var ranks []PipeRank
		var mem []int
		for i, w := range sh {
			ranks = append(ranks, PipeRank{Peer: len(places), Share: w})
			mem = append(mem, len(places))
			places = append(places, place{s, i})
		}
		stages = append(stages, ranks)
		members = append(members, mem)
	}
	n := len(places)
	world := collective.NewTestTransports(t, kind, 1, n)
	split, err := OpenData(job)
	if err != nil {
		t.Fatal(err)
	}
	trainers := make([]*Trainer, n)
	pipes := make([]*Pipeline, n)
	for r, pl := range places {
		var reg device.Registry
		if err := cpu.Register(&reg); err != nil {
			t.Fatal(err)
		}
		spec := lay.device
		if spec == "" {
			spec = "cpu:threads=1"
		}
		dev, err := reg.Open(spec)
		if err != nil {
			t.Fatal(err)
		}
		pipes[r] = &Pipeline{Stages: stages, Stage: pl.stage, Me: pl.me, Pipe: collective.NewPipe(world[r], collective.PipeConfig{}), GPipe: lay.gpipe}
		if trainers[r], err = NewStageTrainer(job, dev, split, nil, lay.layers[pl.stage], pipes[r]); err != nil {
			t.Fatal(err)
		}
	}
	losses := make([][]float64, n)
	errs := collective.RunRanks(n, func(r int) error {
		pl := places[r]
		var sync GradSync
		if len(members[pl.stage]) > 1 {
			sub, err := collective.Sub(world[r], members[pl.stage])
			if err != nil {
				return err
			}
			cfg := collective.DefaultConfig()
			cfg.Rank, cfg.Generation = pl.me, 1
			comm, err := collective.New(sub, cfg)
			if err != nil {
				return err
			}
			rs := NewRingSync(comm)
			defer rs.Close()
			sync = rs
		}
		for i := range job.Train.MaxSteps {
			if before != nil {
				before(r, i, trainers[r])
			}
			l, err := trainers[r].stepPipeline(context.Background(), sync, pipes[r])
			if err != nil {
				return fmt.Errorf("step %d: %w", i+1, err)
			}
			losses[r] = append(losses[r], l)
		}
		return nil
	})
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d (stage %d): %v", r, places[r].stage, err)
		}
	}
	return trainers, losses
}

// The pipeline contract: 2, 3 and 4 stages, with one or two ranks per
// stage at uneven shares, 1F1B or GPipe, end with the parameters of one
// worker taking the whole batch (each stage's tensors against the same
// names), to relative 1e-5 after 20 fp32 steps, and every rank reports the
// single worker's loss.
func TestPipelineEquivalence(t *testing.T) {
	const steps = 20
	single := gptTrainer(t, pipeJob(t, steps, 1))
	var singleLoss []float64
	for range steps {
		singleLoss = append(singleLoss, single.Step())
	}
	if !(singleLoss[steps-1] < singleLoss[0]) {
		t.Fatalf("the single worker did not learn: loss %g → %g", singleLoss[0], singleLoss[steps-1])
	}
	want := map[string][]float32{}
	for _, p := range single.Params() {
		want[p.Name] = p.Value
	}
	r := func(a, b int) model.StageRange { return model.StageRange{First: a, Last: b} }
	for _, lay := range []pipeLayout{
		{name: "2 stages", layers: []model.StageRange{r(0, 2), r(2, 4)}, shares: [][]int{{1}, {1}}},
		{name: "2 stages x 2 uneven ranks", layers: []model.StageRange{r(0, 1), r(1, 4)}, shares: [][]int{{20, 12}, {8, 24}}},
		{name: "3 stages of 1-2-1 ranks", layers: []model.StageRange{r(0, 1), r(1, 3), r(3, 4)}, shares: [][]int{{1}, {3, 1}, {1}}},
		{name: "4 stages x 2 ranks", layers: []model.StageRange{r(0, 1), r(1, 2), r(2, 3), r(3, 4)}, shares: [][]int{{1, 1}, {2, 1}, {1, 1}, {1, 3}}},
		{name: "3 stages gpipe", layers: []model.StageRange{r(0, 2), r(2, 3), r(3, 4)}, shares: [][]int{{1}, {1}, {1, 1}}, gpipe: true},
	} {
		t.Run(lay.name, func(t *testing.T) {
			trainers, losses := runPipeline(t, pipeJob(t, steps, 4), lay, collective.TransportMem, nil)
			for rank, tr := range trainers {
				var num, den float64
				for _, p := range tr.Params() {
					w := want[p.Name]
					for i, v := range p.Value {
						num += math.Pow(float64(v-w[i]), 2)
						den += float64(w[i]) * float64(w[i])
					}
				}
				if rel := math.Sqrt(num / den); !(rel <= 1e-5) {
					t.Errorf("rank %d: parameters differ from the single worker by relative %g", rank, rel)
				}
				for i, l := range losses[rank] {
					if math.Abs(l-singleLoss[i]) > 1e-5*math.Abs(singleLoss[i]) {
						t.Errorf("rank %d step %d: loss %g, single worker %g", rank, i+1, l, singleLoss[i])
						break
					}
				}
			}
		})
	}
}

// A pipeline over loopback TCP (shared memory between the ranks of this
// host) trains as it does in memory: the same losses, bitwise.
func TestPipelineTCP(t *testing.T) {
	r := func(a, b int) model.StageRange { return model.StageRange{First: a, Last: b} }
	lay := pipeLayout{layers: []model.StageRange{r(0, 2), r(2, 4)}, shares: [][]int{{1, 1}, {1}}}
	_, mem := runPipeline(t, pipeJob(t, 5, 4), lay, collective.TransportMem, nil)
	_, tcp := runPipeline(t, pipeJob(t, 5, 4), lay, collective.TransportTCP, nil)
	for rank := range mem {
		for i := range mem[rank] {
			if mem[rank][i] != tcp[rank][i] {
				t.Fatalf("rank %d step %d: loss %v over TCP, %v in memory", rank, i+1, tcp[rank][i], mem[rank][i])
			}
		}
	}
}

// Switch votes cross the stages: every rank learns that all ranks voted,
// and a step where one rank did not vote ends with no rank leaving.
func TestPipelineSwitchVotes(t *testing.T) {
	r := func(a, b int) model.StageRange { return model.StageRange{First: a, Last: b} }
	lay := pipeLayout{layers: []model.StageRange{r(0, 1), r(1, 3), r(3, 4)}, shares: [][]int{{1, 1}, {1}, {2, 1}}}
	votes := make([][]float32, 5)
	trainers, _ := runPipeline(t, pipeJob(t, 3, 3), lay, collective.TransportMem, func(rank, step int, tr *Trainer) {
		if step > 0 {
			votes[rank] = append(votes[rank], tr.SwitchVotes)
		}
		// Step 1: nobody votes; step 2: all but the first stage's second
		// rank; step 3: everyone.
		tr.SwitchVote = 0
		if step == 2 || (step == 1 && rank != 1) {
			tr.SwitchVote = 1
		}
	})
	for rank, tr := range trainers {
		got := append(votes[rank], tr.SwitchVotes)
		if want := []float32{0, 0, 5}; fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("rank %d: switch votes after each step %v, want %v", rank, got, want)
		}
	}
}

// The schedules hold what they promise: every micro-batch forward once and
// backward once after its forward, at most the slot count in flight (1F1B:
// the stages after this one, plus one), backwards in micro-batch order.
func TestSchedule(t *testing.T) {
	for _, gpipe := range []bool{false, true} {
		for stages := 1; stages <= 4; stages++ {
			for stage := range stages {
				for m := 1; m <= 9; m++ {
					ops, slots := schedule(stages, stage, m, gpipe)
					want := min(stages-stage, m)
					if gpipe {
						want = m
					}
					if slots != want || len(ops) != 2*m {
						t.Fatalf("gpipe=%v stages=%d stage=%d m=%d: %d ops, %d slots; want %d, %d", gpipe, stages, stage, m, len(ops), slots, 2*m, want)
					}
					fwd, bwd := 0, 0
					for _, op := range ops {
						if op.backward {
							if op.micro != bwd || op.micro >= fwd {
								t.Fatalf("gpipe=%v stages=%d stage=%d m=%d: backward %d out of order (%d forwards done)", gpipe, stages, stage, m, op.micro, fwd)
							}
							bwd++
						} else {
							if op.micro != fwd {
								t.Fatalf("forward %d out of order", op.micro)
							}
							fwd++
						}
						if fwd-bwd > slots {
							t.Fatalf("gpipe=%v stages=%d stage=%d m=%d: %d in flight > %d slots", gpipe, stages, stage, m, fwd-bwd, slots)
						}
					}
				}
			}
		}
	}
}

// BenchmarkPipelineBubble measures the idle fraction of a 4-stage 1F1B
// schedule (one block per stage, one rank each) at 4, 8 and 16
// micro-batches beside the ideal (p−1)/(m+p−1). Idle is the time each
// stage's schedule waited on its neighbours (StepTimes.Bubble) over that
// plus its compute, summed over the stages and steps. Every device runs at
// slowdown=4 (3/4 of each kernel's time asleep), so that the four stages
// do not contend for the two cores of a test machine, which would slow
// the stages that overlap and hide the bubble.
func BenchmarkPipelineBubble(b *testing.B) {
	r := func(a, b int) model.StageRange { return model.StageRange{First: a, Last: b} }
	lay := pipeLayout{layers: []model.StageRange{r(0, 1), r(1, 2), r(2, 3), r(3, 4)}, shares: [][]int{{1}, {1}, {1}, {1}},
		device: "cpu:threads=1,slowdown=4"}
	for _, m := range []int{4, 8, 16} {
		b.Run(fmt.Sprintf("m=%d", m), func(b *testing.B) {
			job := pipeJob(b, 4, m)
			job.Model.DModel, job.Model.Heads = 256, 4
			job.Train.GlobalBatch = 2 * m
			var mu sync.Mutex
			var idle, busy time.Duration
			stageBusy := make([]time.Duration, 4)
			for b.Loop() {
				runPipeline(b, job, lay, collective.TransportMem, func(rank, step int, tr *Trainer) {
					if step > 1 { // the first step's time includes warming up
						mu.Lock()
						idle += tr.lastBubble
						busy += tr.lastCompute
						stageBusy[rank] += tr.lastCompute
						mu.Unlock()
					}
				})
			}
			b.ReportMetric(100*float64(idle)/float64(idle+busy), "idle-%")
			// How much the slowest stage computes beyond the mean: the
			// ideal assumes equal stages, and in 1F1B's steady state every
			// stage waits for the slowest on each micro-batch.
			b.ReportMetric(100*(float64(slices.Max(stageBusy))/(float64(busy)/4)-1), "imbalance-%")
			b.ReportMetric(100*float64(3)/float64(m+3), "ideal-%")
		})
	}
}

// A step cut short after the first stage applied it (here: the second
// stage never hears the first stage's commit) leaves the second stage with
// the step pending, never ahead; rolling it forward brings the stages back
// to one step, and training on ends where one worker does.
func TestPipelinePendingStepRollsForward(t *testing.T) {
	const steps = 8
	job := pipeJob(t, steps, 4)
	single := gptTrainer(t, job)
	for range steps {
		single.Step()
	}
	split, err := OpenData(job)
	if err != nil {
		t.Fatal(err)
	}
	r := func(a, b int) model.StageRange { return model.StageRange{First: a, Last: b} }
	layers := []model.StageRange{r(0, 2), r(2, 4)}
	stages := [][]PipeRank{{{Peer: 0, Share: 1}}, {{Peer: 1, Share: 1}}}
	trainers := make([]*Trainer, 2)
	built := collective.NewTestTransports(t, collective.TransportMem, 1, 2)
	for s := range trainers {
		dev, err := cpu.New(cpu.Config{Threads: 1})
		if err != nil {
			t.Fatal(err)
		}
		p := &Pipeline{Stages: stages, Stage: s, Micro: 4, Pipe: collective.NewPipe(built[s], collective.PipeConfig{})}
		if trainers[s], err = NewStageTrainer(job, dev, split, nil, layers[s], p); err != nil {
			t.Fatal(err)
		}
	}
	// run trains steps (from, to] on a new world; the second stage's
	// commit of step cut fails.
	run := func(from, to, cut int) []error {
		world := collective.NewTestTransports(t, collective.TransportMem, 1, 2)
		return collective.RunRanks(2, func(s int) error {
			pipe := collective.NewPipe(world[s], collective.PipeConfig{})
			defer func() {
				// As a worker leaving a generation does: what it queued
				// reaches the links first.
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_ = pipe.Flush(ctx)
				cancel()
				pipe.Close()
			}()
			p := &Pipeline{Stages: stages, Stage: s, Micro: 4, Pipe: pipe}
			for step := from + 1; step <= to; step++ {
				if s == 1 && step == cut {
					trainers[s].beforeCommit = func() error { return errors.New("commit lost") }
				}
				if _, err := trainers[s].stepPipeline(context.Background(), nil, p); err != nil {
					return err
				}
			}
			return nil
		})
	}
	errs := run(0, 3, 3)
	if errs[0] != nil || errs[1] == nil || !strings.Contains(errs[1].Error(), "commit lost") {
		t.Fatalf("cut step: errors %v", errs)
	}
	trainers[1].beforeCommit = nil
	if trainers[0].Steps() != 3 || trainers[1].Steps() != 2 || !trainers[1].Pending() || trainers[0].Pending() {
		t.Fatalf("after the cut: stages at steps %d and %d, pending %v %v; want 3, 2 with the second pending",
			trainers[0].Steps(), trainers[1].Steps(), trainers[0].Pending(), trainers[1].Pending())
	}
	if err := trainers[1].RollForward(); err != nil {
		t.Fatal(err)
	}
	for s, err := range run(3, steps, 0) {
		if err != nil {
			t.Fatalf("stage %d after rolling forward: %v", s, err)
		}
	}
	want := map[string][]float32{}
	for _, p := range single.Params() {
		want[p.Name] = p.Value
	}
	for s, tr := range trainers {
		for _, p := range tr.Params() {
			var num, den float64
			for i, v := range p.Value {
				d := float64(v - want[p.Name][i])
				num += d * d
				den += float64(want[p.Name][i]) * float64(want[p.Name][i])
			}
			if rel := math.Sqrt(num / den); !(rel < 1e-5) {
				t.Fatalf("stage %d %s: relative difference %g from one worker", s, p.Name, rel)
			}
		}
	}
}

// Every rank of a stage gets its share of a step's rows, however small
// beside a micro-batch (a share of 2 of 16 rows in 8 micro-batches of 2,
// beside shares of 9 and 5, once got none), spread over the micro-batches,
// each micro-batch's rows covered once in rank order.
func TestLayoutRowsGivesEveryShare(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	cases := [][]int{{9, 5, 2}, {1, 15}, {16}, {3, 3, 3, 3, 4}}
	for range 200 {
		n := 1 + rng.IntN(5)
		sh := make([]int, n)
		for i := range sh {
			sh[i] = 1 + rng.IntN(40)
		}
		cases = append(cases, sh)
	}
	for _, shares := range cases {
		rows := 0
		ranks := make([]PipeRank, len(shares))
		for i, v := range shares {
			rows += v
			ranks[i] = PipeRank{Peer: i, Share: v}
		}
		for _, m := range []int{1, 4, 8, rows} {
			l := layoutRows(&Pipeline{Stages: [][]PipeRank{ranks}}, rows, m)
			got := make([]int, len(shares))
			for k := range m {
				at := l.at[0][k]
				if at[0] != l.micro[k] || at[len(shares)] != l.micro[k+1] {
					t.Fatalf("shares %v m=%d: micro-batch %d covers %v, want [%d, %d)", shares, m, k, at, l.micro[k], l.micro[k+1])
				}
				for i := range shares {
					if at[i+1] < at[i] {
						t.Fatalf("shares %v m=%d: micro-batch %d ranges %v", shares, m, k, at)
					}
					got[i] += at[i+1] - at[i]
				}
			}
			if !slices.Equal(got, shares) {
				t.Fatalf("shares %v m=%d: ranks got %v rows", shares, m, got)
			}
		}
	}
}

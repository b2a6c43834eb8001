package train

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/loomtrain/loom/checkpoint"
	"github.com/loomtrain/loom/device/cpu"
	"github.com/loomtrain/loom/jobspec"
)

// The checkpointer's state round-trips through a real checkpoint: a
// trainer restored from it continues exactly like the original.
func TestCheckpointRoundTripContinuesBitwise(t *testing.T) {
	job := smallJob(t, "fp32", 30)
	job.Checkpoint = jobspec.Checkpoint{Dir: t.TempDir(), Keep: 0}
	a := newTrainer(t, job, 1)
	ck, err := NewCheckpointer(job, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		a.Step()
	}
	if err := ck.Begin(context.Background(), a, 1); err != nil {
		t.Fatal(err)
	}
	var want []float64
	for i := 0; i < 5; i++ {
		want = append(want, a.Step()) // overlaps the background copy
	}
	if err := ck.Close(); err != nil {
		t.Fatal(err)
	}
	job.Checkpoint.Resume = "latest"
	b := newTrainer(t, job, 1)
	info, err := ResumeFrom(context.Background(), b, nil, nil)
	if err != nil || info.Step != 10 || b.Steps() != 10 {
		t.Fatalf("resume: %v %+v step %d", err, info, b.Steps())
	}
	for i, w := range want {
		if got := b.Step(); got != w {
			t.Fatalf("step %d after resume: loss %v, original %v", 11+i, got, w)
		}
	}
	for i, v := range a.values {
		if b.values[i] != v {
			t.Fatalf("parameter %d differs after resume", i)
		}
	}
}

// BenchmarkCheckpointOverhead: the example MLP's step time (AdamW, batch
// 64 and 256) with a checkpoint begun every 20 or 100 steps, against none. The
// copy overlaps the next step; only what does not overlap costs the loop.
func BenchmarkCheckpointOverhead(b *testing.B) {
	split := mnistForBench(b)
	for _, batch := range []int{64, 256} {
		for _, every := range []int{0, 20, 100} {
			name := "batch=" + strconv.Itoa(batch) + "/every=" + strconv.Itoa(every)
			b.Run(name, func(b *testing.B) {
				job, err := jobspec.Parse("bench.yaml", []byte("name: ckbench\nmodel: {kind: mlp, layers: [784, 512, 256, 10]}\ntrain: {epochs: 100, global_batch: "+strconv.Itoa(batch)+"}\n"))
				if err != nil {
					b.Fatal(err)
				}
				job.Checkpoint = jobspec.Checkpoint{Dir: b.TempDir(), Keep: 2}
				dev, _ := cpu.New(cpu.DefaultConfig())
				tr, err := NewTrainer(job, dev, split, nil)
				if err != nil {
					b.Fatal(err)
				}
				ck, err := NewCheckpointer(job, nil, nil, nil)
				if err != nil {
					b.Fatal(err)
				}
				defer ck.Close()
				tr.Step()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					tr.Step()
					if every > 0 && tr.Steps()%every == 0 {
						if err := ck.Begin(context.Background(), tr, 1); err != nil {
							b.Fatal(err)
						}
					}
				}
				b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/step")
			})
		}
	}
}

// recordingObserver is a CheckpointObserver that keeps what it is told.
type recordingObserver struct {
	mu     sync.Mutex
	took   []time.Duration
	bytes  []int64
	failed int
}

func (o *recordingObserver) CheckpointWritten(took time.Duration, bytes int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.took, o.bytes = append(o.took, took), append(o.bytes, bytes)
}

func (o *recordingObserver) CheckpointFailed() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.failed++
}

// The observer hears of every published checkpoint with its size (as
// listed on disk) and how long it took from Begin.
func TestCheckpointObserverTimesEachWrite(t *testing.T) {
	job := smallJob(t, "fp32", 30)
	job.Checkpoint = jobspec.Checkpoint{Dir: t.TempDir(), Keep: 0}
	tr := newTrainer(t, job, 1)
	ck, err := NewCheckpointer(job, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	obs := &recordingObserver{}
	ck.Observer = obs
	for range 2 {
		tr.Step()
		begun := time.Now()
		if err := ck.Begin(context.Background(), tr, 1); err != nil {
			t.Fatal(err)
		}
		if err := ck.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
		elapsed := time.Since(begun)
		obs.mu.Lock()
		n := len(obs.took)
		last := obs.took[n-1]
		obs.mu.Unlock()
		if last <= 0 || last > elapsed {
			t.Fatalf("write took %v by the observer, %v around Begin and Flush", last, elapsed)
		}
	}
	if err := ck.Close(); err != nil {
		t.Fatal(err)
	}
	store, _ := checkpoint.NewLocalStorage(job.Checkpoint.Dir)
	infos, err := checkpoint.List(context.Background(), store, job.Name)
	if err != nil || len(infos) != 2 {
		t.Fatalf("checkpoints: %v %+v", err, infos)
	}
	if len(obs.bytes) != 2 || obs.failed != 0 {
		t.Fatalf("observer: %+v", obs)
	}
	for _, i := range infos { // newest first
		if want := obs.bytes[i.Step-1]; i.Bytes != want {
			t.Fatalf("step %d: %d bytes on disk, observer told %d", i.Step, i.Bytes, want)
		}
	}
}

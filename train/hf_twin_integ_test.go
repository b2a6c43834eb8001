//go:build integ

package train

import (
	"context"
	"encoding/binary"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/loomtrain/loom/device"
	"github.com/loomtrain/loom/device/cpu"
	"github.com/loomtrain/loom/tensor"
)

// A loom GPT checkpoint loads, by name, into a PyTorch rebuild of Hugging
// Face's GPT2LMHeadModel (scripts/hf_gpt2.py: Conv1D, gelu_new, eps 1e-5,
// load_state_dict strict) and gives loom's logits for the same tokens to
// relative 1e-4, with tied and untied embeddings. Needs Debian's
// python3-torch (.ci/run and scripts/peers/setup.sh install it).
func TestHuggingFaceTwinLogits(t *testing.T) {
	for _, tied := range []bool{true, false} {
		job := gptJob(t, 10)
		job.Model.TieEmbeddings = tied
		_, dir := savedGPT(t, job, 5)
		w, err := LoadGPTDir(context.Background(), dir)
		if err != nil {
			t.Fatal(err)
		}
		be, err := cpu.New(cpu.Config{Threads: 1})
		if err != nil {
			t.Fatal(err)
		}
		g, err := w.NewGPT(be)
		if err != nil {
			t.Fatal(err)
		}
		text := "the quick brown"
		ids := make([]int32, len(text))
		var list []string
		for i := range text {
			ids[i] = int32(text[i])
			list = append(list, strconv.Itoa(int(text[i])))
		}
		in, err := be.Alloc(tensor.I32, len(ids))
		if err != nil {
			t.Fatal(err)
		}
		be.UploadInt32(device.Whole(in), ids)
		logits := g.Forward(device.Whole(in), 1, len(ids))
		host := make([]float32, logits.N)
		be.Download(host, logits)
		raw := make([]byte, 4*len(host))
		for i, x := range host {
			binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(x))
		}
		lf := filepath.Join(t.TempDir(), "logits.f32")
		if err := os.WriteFile(lf, raw, 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("/usr/bin/python3", "../scripts/hf_gpt2.py", dir, "--tokens", strings.Join(list, ","), "--logits", lf).CombinedOutput()
		t.Logf("tied=%v: %s", tied, out)
		if err != nil {
			t.Fatalf("tied=%v: scripts/hf_gpt2.py: %v", tied, err)
		}
		if !strings.Contains(string(out), "max relative difference") {
			t.Fatal("the script did not compare logits")
		}
		g.Free()
	}
}

//go:build integ

package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// freeAddr returns a loopback address with a port free just now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// The status page in a real browser (Debian's chromium, headless, driven by
// chromedp): a running job's page loads with the job's loss points in its
// plot; a worker SIGKILLed while the page is open appears in its event log
// without a reload (the page refreshes itself); an unknown job is a 404
// that names it.
func TestStatusPageInBrowser(t *testing.T) {
	addr := freeAddr(t)
	r := startElasticJob(t, 230, mnistElastic, "--http-addr", addr)
	r.waitStep(20)
	x1 := r.join("x1")
	r.waitTrained(map[string]*proc{"x1": x1})

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath("/usr/bin/chromium"), chromedp.NoSandbox, chromedp.DisableGPU)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(actx)
	defer cancelBrowser()
	ctx, cancel := context.WithTimeout(bctx, 90*time.Second)
	defer cancel()

	url := "http://" + addr + "/jobs/" + r.jobID
	loadStart := time.Now()
	if err := chromedp.Do(ctx, chromedp.Navigate(url), chromedp.WaitVisible(chromedp.CSS("#chart-loss svg"))); err != nil {
		t.Fatalf("load %s: %v\n%s", url, err, r.log())
	}
	points := lossPoints(ctx, t)
	before := trainPoints(points)
	t.Logf("job page loaded in %v; loss chart points %q", time.Since(loadStart).Round(time.Millisecond), points)
	if n := trainPoints(points); n < 1 {
		t.Fatalf("loss chart has no train points: data-points %q", points)
	}

	_ = syscall.Kill(x1.cmd.Process.Pid, syscall.SIGKILL)
	deadline := time.Now().Add(45 * time.Second)
	for {
		events, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#events")))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(events, "worker_lost") && strings.Contains(events, "x1 lost:") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the open page never showed x1 lost; events:\n%s", events)
		}
		time.Sleep(250 * time.Millisecond)
	}
	// The plot grew while the page refreshed itself.
	if after := lossPoints(ctx, t); trainPoints(after) <= before {
		t.Fatalf("loss chart points %q after the kill, %q before: the page did not refresh its plot", after, points)
	}

	if err := chromedp.Do(ctx, chromedp.Navigate("http://"+addr+"/jobs/job-9999")); err != nil {
		t.Fatal(err)
	}
	msg, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#error")))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(msg, `job "job-9999" does not exist`) || !strings.Contains(msg, r.jobID) {
		t.Fatalf("unknown job page says %q", msg)
	}
	resp, err := http.Get("http://" + addr + "/workers/nobody")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(body), "worker &#34;nobody&#34; is not registered") {
		t.Fatalf("unknown worker: %d %s", resp.StatusCode, body)
	}
	r.finish()
}

// lossPoints is the data-points attribute of the page's loss chart.
func lossPoints(ctx context.Context, t *testing.T) string {
	t.Helper()
	a, err := chromedp.Run(ctx, chromedp.AttributeValue(chromedp.CSS("#chart-loss svg"), "data-points"))
	if err != nil || !a.Exists {
		t.Fatalf("loss chart data-points: %v (present %v)", err, a.Exists)
	}
	return a.Value
}

// trainPoints reads the count of the "train" line from a chart's
// data-points attribute ("train:120,val:4").
func trainPoints(attr string) int {
	for _, kv := range strings.Split(attr, ",") {
		if name, n, ok := strings.Cut(kv, ":"); ok && name == "train" {
			v, _ := strconv.Atoi(n)
			return v
		}
	}
	return 0
}

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/loomtrain/loom/collective"
	"github.com/loomtrain/loom/internal/pki"
)

// allreduceOpts are the flags of `loom bench allreduce`.
type allreduceOpts struct {
	ranks      int
	sizes      []string
	compress   string
	chunk      string
	iters      int
	warmup     int
	target     string
	trials     int
	order      []int
	jsonOut    bool
	timeout    time.Duration
	rank       int      // join mode: this process's rank (-1: launch locally)
	peers      []string // join mode: every rank's address
	listenFD   int      // set by the launcher: inherited listener fd
	generation uint64
	cpuProfile string // per-rank CPU profile path prefix
	sockBuf    string
	shmRing    string
	tlsAuto    bool     // launch mode: make throwaway certificates, one per rank
	tls        tlsFiles // join mode: this rank's worker certificate
}

func newBenchAllreduceCmd() *cobra.Command {
	o := allreduceOpts{rank: -1}
	cmd := &cobra.Command{
		Use:   "allreduce",
		Short: "Measure ring all-reduce bandwidth (algbw and busbw, nccl-tests convention)",
		Long: `Measure collective.AllReduce (float32 sum, ring over TCP) and print, per size,
the time per call (max over ranks), algbw = size/time and busbw = algbw·2(n-1)/n,
the convention of nccl-tests and of the anchors in shared/anchors, and the CPU
time per call summed over ranks (steadier than wall time on a shared machine).

By default it launches --ranks local processes on 127.0.0.1 (re-running this
binary) and rank 0 prints the results. To measure across machines, start one
process per rank with --rank and the same --peers list on each; rank 0 prints.

Ranks on one host, as the local launch puts them, pass payloads through shared
memory (a --shm-ring of that size per link direction, in /dev/shm); the socket
still carries frame headers and notices a dead peer. --shm-ring 0 sends every
byte through TCP, as between hosts.

--tls puts every link under mutual TLS as loom worker does (a throwaway CA
and a worker certificate per rank, in a temporary directory removed at the
end); with --rank, give each rank its worker certificate with --tls-ca,
--tls-cert and --tls-key. Shared-memory payloads stay off the network and
are not encrypted: compare with --shm-ring 0.

Sizes are MiB unless suffixed (B, KiB, MiB, GiB). Before timing each size the
result of summing all-ones buffers is checked on every rank.`,
		Example: `  loom bench allreduce --ranks 2 --size 1,16,64
  loom bench allreduce --ranks 4 --size 16MiB --compress bf16 --json
  loom bench allreduce --ranks 4 --size 16 --shm-ring 0     # TCP only
  loom bench allreduce --ranks 4 --size 16 --shm-ring 0 --tls   # TCP with mTLS
  loom bench allreduce --rank 1 --peers 10.0.0.1:7000,10.0.0.2:7000 --size 64`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := o.parse() // before any rank starts: one clear error, not one per rank
			if err != nil {
				return err
			}
			switch {
			case o.tlsAuto && o.rank >= 0:
				return fmt.Errorf("--tls makes throwaway certificates for the ranks this command launches; with --rank give this rank's worker certificate with --tls-ca, --tls-cert and --tls-key")
			case o.tls.changed(cmd) && o.rank < 0:
				return fmt.Errorf("--tls-ca, --tls-cert and --tls-key are for one rank (--rank); to launch local ranks with mTLS give --tls")
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), o.timeout)
			defer cancel()
			if o.rank < 0 {
				return launchAllreduceRanks(ctx, cmd.OutOrStdout(), cmd.ErrOrStderr(), o)
			}
			return runAllreduceRank(ctx, cmd.OutOrStdout(), o, p)
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.ranks, "ranks", 2, "number of local rank processes to launch")
	f.StringSliceVar(&o.sizes, "size", []string{"1", "16", "64"}, "buffer sizes (comma list; MiB unless suffixed)")
	f.StringVar(&o.compress, "compress", "none", "wire compression: none, bf16 or fp16")
	f.StringVar(&o.chunk, "chunk", "auto", "pipelining chunk size; auto: 1MiB when every rank is on one host with shared memory, else 512KiB")
	f.IntVar(&o.iters, "iters", 0, "timed iterations per size (0: enough to move --target bytes, 5 to 10000)")
	f.IntVar(&o.warmup, "warmup", 3, "untimed iterations per size")
	f.StringVar(&o.target, "target", "1GiB", "bytes to all-reduce per size when --iters is 0")
	f.IntVar(&o.trials, "trials", 1, "timed loops per size; the median is reported")
	f.IntSliceVar(&o.order, "order", nil, "ring order as a permutation of ranks (default 0..n-1)")
	f.BoolVar(&o.jsonOut, "json", false, "print one JSON object per size")
	f.DurationVar(&o.timeout, "timeout", 10*time.Minute, "give up after this long")
	f.IntVar(&o.rank, "rank", -1, "join an existing group as this rank (needs --peers)")
	f.StringSliceVar(&o.peers, "peers", nil, "every rank's host:port, in rank order (join mode)")
	f.IntVar(&o.listenFD, "listen-fd", 0, "inherited listener file descriptor (set by the launcher)")
	f.Uint64Var(&o.generation, "generation", 1, "plan generation of the group")
	f.StringVar(&o.cpuProfile, "cpuprofile", "", "write each rank's CPU profile to PREFIX.rankN")
	f.StringVar(&o.sockBuf, "sockbuf", "4MiB", "TCP socket buffer size (SO_SNDBUF/SO_RCVBUF); 0 keeps the OS autotuning")
	f.StringVar(&o.shmRing, "shm-ring", "4MiB", "shared-memory ring per direction between ranks on one host; 0: everything over TCP")
	f.BoolVar(&o.tlsAuto, "tls", false, "mutual TLS on every link, with throwaway certificates (launch mode)")
	o.tls.flags(cmd)
	_ = f.MarkHidden("listen-fd")
	return cmd
}

// parseByteSize reads "64", "64MiB", "4KiB", "1GiB", "512B" (plain numbers are MiB).
func parseByteSize(s string) (int, error) {
	s = strings.TrimSpace(s)
	units := []struct {
		suffix string
		mult   int
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"B", 1}}
	mult := 1 << 20
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSuffix(s, u.suffix), u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("size %q: want a non-negative number with optional B/KiB/MiB/GiB suffix", s)
	}
	return int(v * float64(mult)), nil
}

// launchAllreduceRanks starts o.ranks copies of this binary in join mode on
// 127.0.0.1, each given its pre-bound listener, relays rank 0's output, and
// kills every rank if one fails or ctx ends.
func launchAllreduceRanks(ctx context.Context, stdout, stderr io.Writer, o allreduceOpts) error {
	if o.ranks < 1 {
		return fmt.Errorf("--ranks %d: need at least 1", o.ranks)
	}
	lns, addrs, err := collective.LoopbackListeners(o.ranks)
	if err != nil {
		return err
	}
	defer func() {
		for _, l := range lns {
			_ = l.Close()
		}
	}()
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	var tlsDir string
	if o.tlsAuto {
		if tlsDir, err = os.MkdirTemp("", "loom-bench-tls-"); err != nil {
			return err
		}
		defer os.RemoveAll(tlsDir)
		if err := throwawayCerts(tlsDir, o.ranks); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make([]error, o.ranks)
	var wg sync.WaitGroup
	for r := range o.ranks {
		f, err := lns[r].(*net.TCPListener).File()
		if err != nil {
			return err
		}
		args := []string{"bench", "allreduce", "--rank", strconv.Itoa(r), "--listen-fd", "3",
			"--peers", strings.Join(addrs, ","), "--size", strings.Join(o.sizes, ","),
			"--compress", o.compress, "--chunk", o.chunk, "--iters", strconv.Itoa(o.iters),
			"--warmup", strconv.Itoa(o.warmup), "--trials", strconv.Itoa(o.trials), "--target", o.target, "--timeout", o.timeout.String(),
			"--generation", strconv.FormatUint(o.generation, 10), "--json=" + strconv.FormatBool(o.jsonOut),
			"--cpuprofile", o.cpuProfile, "--sockbuf", o.sockBuf, "--shm-ring", o.shmRing}
		if tlsDir != "" {
			name := fmt.Sprintf("rank%d", r)
			args = append(args, "--tls-ca", filepath.Join(tlsDir, "ca.crt"),
				"--tls-cert", filepath.Join(tlsDir, name+".crt"), "--tls-key", filepath.Join(tlsDir, name+".key"))
		}
		if len(o.order) > 0 {
			args = append(args, "--order", strings.Trim(strings.Join(strings.Fields(fmt.Sprint(o.order)), ","), "[]"))
		}
		cmd := exec.CommandContext(ctx, exe, args...)
		cmd.ExtraFiles = []*os.File{f}
		cmd.Env = rankEnv(o.ranks)
		cmd.Stderr = stderr
		if r == 0 {
			cmd.Stdout = stdout
		}
		if err := cmd.Start(); err != nil {
			_ = f.Close()
			return err
		}
		_ = f.Close()
		wg.Go(func() {
			if err := cmd.Wait(); err != nil {
				errs[r] = fmt.Errorf("rank %d: %w", r, err)
				cancel() // one rank failed: the others cannot finish
			}
		})
	}
	for _, l := range lns { // the children hold their own copies
		_ = l.Close()
	}
	lns = nil
	wg.Wait()
	return errors.Join(errs...)
}

// rankEnv is the environment of a launched rank: this process's, plus
// GOMAXPROCS = cores/ranks (at least 1) unless the caller set GOMAXPROCS, as
// loom worker does for its device threads. Every rank otherwise keeps one P
// per core, and with more ranks than cores their idle Ms spin for work that
// another process needs the core for: on 2 cores this cut CPU per 16 MiB
// all-reduce by ~10% at 4 ranks and the 1 MiB time by ~30% at 2 ranks.
func rankEnv(ranks int) []string {
	// A launched rank uses TLS only when the launcher says so (--tls), never
	// because LOOM_TLS_* happens to be set for the user's cluster.
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "LOOM_TLS_") })
	if os.Getenv("GOMAXPROCS") == "" {
		env = append(env, "GOMAXPROCS="+strconv.Itoa(max(1, runtime.NumCPU()/ranks)))
	}
	return env
}

// allreduceResult is one size's measurement, as rank 0 prints it.
type allreduceResult struct {
	Impl     string  `json:"impl"`
	World    int     `json:"world"`
	SizeMiB  float64 `json:"size_mib"`
	Bytes    int     `json:"bytes"`
	Compress string  `json:"compress"`
	Iters    int     `json:"iters"`
	Trials   int     `json:"trials"` // timed loops; time and cpu are their medians
	TimeMs   float64 `json:"time_ms"`
	CPUMs    float64 `json:"cpu_ms"` // user+sys CPU per call, summed over ranks
	AlgBW    float64 `json:"algbw_GBps"`
	BusBW    float64 `json:"busbw_GBps"`
}

// allreduceParams are the byte-size and compression flags, parsed.
type allreduceParams struct {
	comp                            collective.Compression
	sizes                           []int
	target, sockBuf, shmRing, chunk int
}

// parse checks every flag a rank needs and names the flag at fault.
func (o allreduceOpts) parse() (p allreduceParams, err error) {
	if o.trials < 1 {
		return p, fmt.Errorf("--trials %d: need at least 1", o.trials)
	}
	if p.comp, err = collective.ParseCompression(o.compress); err != nil {
		return p, fmt.Errorf("--compress: %w", err)
	}
	for _, f := range []struct {
		name, val string
		dst       *int
	}{{"--target", o.target, &p.target}, {"--sockbuf", o.sockBuf, &p.sockBuf}, {"--shm-ring", o.shmRing, &p.shmRing}} {
		if *f.dst, err = parseByteSize(f.val); err != nil {
			return p, fmt.Errorf("%s: %w", f.name, err)
		}
	}
	p.sizes = make([]int, len(o.sizes))
	for i, s := range o.sizes {
		if p.sizes[i], err = parseByteSize(s); err != nil {
			return p, fmt.Errorf("--size: %w", err)
		}
	}
	if err := collective.CheckShmRing(p.shmRing); err != nil {
		return p, fmt.Errorf("--shm-ring %q: %w", o.shmRing, err)
	}
	if p.chunk, err = benchChunk(o.chunk, p.shmRing, o.peers); err != nil {
		return p, fmt.Errorf("--chunk: %w", err)
	}
	if p.chunk < 64 || p.chunk > collective.DefaultMaxFrameBytes {
		return p, fmt.Errorf("--chunk %q: want auto or 64B to %dMiB", o.chunk, collective.DefaultMaxFrameBytes>>20)
	}
	return p, nil
}

// runAllreduceRank is one rank of the benchmark (launched or joining).
func runAllreduceRank(ctx context.Context, stdout io.Writer, o allreduceOpts, p allreduceParams) error {
	comp, target, sizes, sockBuf, shmRing, chunk := p.comp, p.target, p.sizes, p.sockBuf, p.shmRing, p.chunk
	var err error
	if o.cpuProfile != "" {
		stop, err := startCPUProfile(fmt.Sprintf("%s.rank%d", o.cpuProfile, o.rank))
		if err != nil {
			return err
		}
		defer stop()
	}
	tcfg := collective.DefaultTCPConfig()
	tcfg.Generation, tcfg.Rank, tcfg.Peers, tcfg.SocketBufferBytes, tcfg.ShmRingBytes = o.generation, o.rank, o.peers, sockBuf, shmRing
	id, err := o.tls.load(pki.RoleWorker)
	if err != nil {
		return err
	}
	if id != nil {
		tcfg.TLS = id.Config(pki.RoleWorker)
	}
	if o.listenFD > 0 {
		if tcfg.Listener, err = net.FileListener(os.NewFile(uintptr(o.listenFD), "listener")); err != nil {
			return fmt.Errorf("inherited listener: %w", err)
		}
	}
	tr, err := collective.NewTCPTransport(ctx, tcfg)
	if err != nil {
		return err
	}
	cfg := collective.DefaultConfig()
	cfg.Generation, cfg.Rank, cfg.Order, cfg.Compress, cfg.ChunkBytes = o.generation, o.rank, o.order, comp, chunk
	c, err := collective.New(tr, cfg)
	if err != nil {
		_ = tr.Close()
		return err
	}
	defer c.Close()
	n := c.Size()
	if o.rank == 0 && !o.jsonOut {
		fmt.Fprintf(stdout, "# loom ring all-reduce over %s: ranks=%d compress=%s chunk=%dKiB order=%v\n", linkKind(tr, tcfg.TLS != nil), n, comp, chunk>>10, c.Order())
		fmt.Fprintf(stdout, "# %12s %8s %10s %12s %12s %12s\n", "size(B)", "iters", "time(ms)", "algbw(GB/s)", "busbw(GB/s)", "cpu(ms)")
	}
	times := make([]float32, 2*n) // per rank: seconds per call, CPU seconds per call
	for _, size := range sizes {
		buf := make([]float32, size/4)
		iters := o.iters
		if iters <= 0 {
			iters = min(max(5, target/max(1, size)), 10000)
		}
		for range o.warmup {
			if err := c.AllReduce(ctx, collective.F32(buf)); err != nil {
				return err
			}
		}
		for i := range buf { // correctness: all-ones summed over n ranks
			buf[i] = 1
		}
		if err := c.AllReduce(ctx, collective.F32(buf)); err != nil {
			return err
		}
		for i, v := range buf {
			if v != float32(n) {
				return fmt.Errorf("rank %d: element %d of %d is %v after summing ones over %d ranks", o.rank, i, len(buf), v, n)
			}
		}
		walls, cpus := make([]float64, 0, o.trials), make([]float64, 0, o.trials)
		for range o.trials {
			wall, cpu, err := timeAllreduce(ctx, c, buf, iters, times)
			if err != nil {
				return err
			}
			walls, cpus = append(walls, wall), append(cpus, cpu)
		}
		if o.rank != 0 {
			continue
		}
		worst, cpu := median(walls), median(cpus)
		bytes := len(buf) * 4
		alg := float64(bytes) / worst / 1e9
		res := allreduceResult{Impl: "loom-ring-" + linkKind(tr, tcfg.TLS != nil), World: n, SizeMiB: float64(bytes) / (1 << 20), Bytes: bytes,
			Compress: comp.String(), Iters: iters, Trials: o.trials, TimeMs: worst * 1e3, CPUMs: cpu * 1e3, AlgBW: alg, BusBW: alg * 2 * float64(n-1) / float64(n)}
		if n == 1 {
			res.BusBW = 0
		}
		if o.jsonOut {
			b, _ := json.Marshal(res)
			fmt.Fprintln(stdout, string(b))
		} else {
			fmt.Fprintf(stdout, "  %12d %8d %10.3f %12.3f %12.3f %12.3f\n", bytes, iters, res.TimeMs, res.AlgBW, res.BusBW, res.CPUMs)
		}
	}
	return c.Barrier(ctx)
}

// benchChunk resolves --chunk. Every rank resolves "auto" alike from the
// same flags, as it must: ranks that cut a buffer into different chunks
// fail with ErrMismatch. Through shared memory a chunk costs a socket
// header and a wake-up but no kernel copy, so larger ones pay (4 ranks on
// 2 cores, 64 MiB: busbw 1.09 GB/s at 512 KiB, 1.31 at 1 MiB); over TCP
// 512 KiB keeps small buffers pipelined (2 ranks, 1 MiB: 2.7 GB/s against
// 1.2 at 1 MiB).
func benchChunk(flag string, shmRing int, peers []string) (int, error) {
	if flag != "auto" {
		return parseByteSize(flag)
	}
	oneHost := shmRing > 0
	for _, p := range peers {
		h, _, err := net.SplitHostPort(p)
		if first, _, _ := net.SplitHostPort(peers[0]); err != nil || h != first {
			oneHost = false
		}
	}
	if oneHost {
		return 1 << 20, nil
	}
	return 512 << 10, nil
}

// linkKind names what carries the payloads: "shm" when every link of this
// rank is in shared memory, "tcp" (or "tls") when none is, "tcp+shm" (or
// "tls+shm") for a mix.
func linkKind(tr *collective.TCPTransport, tls bool) string {
	sock := "tcp"
	if tls {
		sock = "tls"
	}
	switch tr.SharedMemoryLinks() {
	case 0:
		return sock
	case tr.Size() - 1:
		return "shm"
	}
	return sock + "+shm"
}

// throwawayCerts writes a CA and a worker certificate rankN per rank in
// dir, valid for a day.
func throwawayCerts(dir string, ranks int) error {
	caCert, caKey, err := pki.NewCA(pki.InitOptions{Name: "loom bench CA", Validity: day})
	if err != nil {
		return err
	}
	if _, err := pki.WritePair(dir, "ca", caCert, caKey, false); err != nil {
		return err
	}
	for r := range ranks {
		c, k, err := pki.Issue(caCert, caKey, pki.IssueOptions{Role: pki.RoleWorker, Name: fmt.Sprintf("rank%d", r), Validity: day})
		if err != nil {
			return err
		}
		if _, err := pki.WritePair(dir, fmt.Sprintf("rank%d", r), c, k, false); err != nil {
			return err
		}
	}
	return nil
}

// timeAllreduce runs one timed loop of iters all-reduces on every rank and
// returns, on every rank, the slowest rank's seconds per call and the CPU
// seconds per call summed over ranks. times is 2n scratch floats.
func timeAllreduce(ctx context.Context, c *collective.Communicator, buf []float32, iters int, times []float32) (wall, cpu float64, err error) {
	if err := c.Barrier(ctx); err != nil {
		return 0, 0, err
	}
	start, cpu0 := time.Now(), cpuSeconds()
	for range iters {
		if err := c.AllReduce(ctx, collective.F32(buf)); err != nil {
			return 0, 0, err
		}
	}
	per := time.Since(start).Seconds() / float64(iters)
	r := c.Rank()
	clear(times)
	times[2*r] = float32(per) // Shard(2n, n, r) is [2r, 2r+2)
	times[2*r+1] = float32((cpuSeconds() - cpu0) / float64(iters))
	if err := c.AllGather(ctx, collective.F32(times)); err != nil {
		return 0, 0, err
	}
	for r := range c.Size() {
		wall = max(wall, float64(times[2*r]))
		cpu += float64(times[2*r+1])
	}
	return wall, cpu, nil
}

// median of xs (xs is reordered).
func median(xs []float64) float64 {
	slices.Sort(xs)
	if len(xs)%2 == 1 {
		return xs[len(xs)/2]
	}
	return (xs[len(xs)/2-1] + xs[len(xs)/2]) / 2
}

// cpuSeconds is this process's user+system CPU time so far. The benchmark
// reports it per call because on a shared machine CPU cost per byte is
// steadier than wall time.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

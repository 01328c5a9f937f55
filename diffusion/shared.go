package diffusion

import (
	"context"
	"log/slog"
	"runtime"
	"sync"

	"github.com/gosd/gosd/binding"
)

// netShare ties together the engines whose native contexts run one copy of the loaded
// networks: in the runtime, a share group of contexts (sd_ctx_init_shared), each with its
// own activations, scratch memory, thread pool or GPU stream and cancel flag, and the
// models held by the group. The last engine to close frees the networks.
type netShare struct {
	// mu guards users and, while they change (fork, close), the engines' ctx: Clone may
	// run on one Pipeline while another of the share closes.
	mu     sync.Mutex
	users  int               // engines whose context is alive
	params binding.CtxParams // of the first context; forks get the same backend and threads
	pins   *runtime.Pinner   // the loading engine's: the Go memory the networks read
	lora   loraState         // the adapters merged into the networks' weights
}

// fork makes an engine with a context of its own in e's share group, running e's
// networks. e may be in use meanwhile (the runtime only reads what fixes the group).
func (e *engine) fork() (*engine, error) {
	s := e.share
	s.mu.Lock()
	defer s.mu.Unlock()
	if e.ctx == 0 {
		return nil, ErrClosed
	}
	p := s.params
	ctx, err := e.lib.CtxInitShared(e.ctx, &p)
	if err != nil {
		return nil, err
	}
	s.users++
	return &engine{lib: e.lib, ctx: ctx, clip: e.clip, unet: e.unet, vae: e.vae, text: e.text,
		unetCfg: e.unetCfg, vaeCfg: e.vaeCfg, taesd: e.taesd, taesdCfg: e.taesdCfg, share: s}, nil
}

// Clone returns another Pipeline on the same loaded model: it has a native context of its
// own (activations, scratch memory, CPU thread pool or GPU stream, cancellation), so the
// two generate concurrently, and shares the weights instead of loading a copy, on the GPU
// and on the CPU alike. The clone runs on the same device with the same thread count (on
// the CPU, open with WithThreads(n/k) to run k Pipelines side by side) and logs to the
// same logger. The weights and the model's files stay until the last of the Pipelines
// sharing them closes; each may be closed at any time, in any order. Cloning a closed
// Pipeline is ErrClosed.
func (p *Pipeline) Clone() (*Pipeline, error) {
	if p.closing.Err() != nil {
		return nil, ErrClosed
	}
	eng, err := p.eng.fork()
	if err != nil {
		return nil, err
	}
	eng.lib.CtxSetLog(eng.ctx, runtimeLog(p.log))
	// The rest is read-only once opened (the tokenizer's cache locks itself).
	q := &Pipeline{turn: make(chan struct{}, 1), model: p.model, eng: eng, tok: p.tok,
		padID: p.padID, desc: p.desc, hash: p.hash, log: p.log, taesd: p.taesd}
	q.closing, q.stopAll = context.WithCancel(context.Background())
	return q, nil
}

// runtimeLog forwards a native context's log messages to log.
func runtimeLog(log *slog.Logger) func(binding.LogLevel, string) {
	return func(level binding.LogLevel, msg string) {
		log.Log(context.Background(), slogLevel(level), msg, "component", "runtime")
	}
}

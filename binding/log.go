package binding

import (
	"sync"
	"unsafe"

	"github.com/ebitengine/purego"
)

// LogFunc receives a context's log messages, on the goroutine that made the call.
type LogFunc func(level LogLevel, msg string)

// One C callback for the whole process (purego's callback slots are never freed); it
// dispatches on the user_data value, a key into this registry.
var logs struct {
	once     sync.Once
	callback uintptr
	mu       sync.Mutex
	next     uintptr
	funcs    map[uintptr]LogFunc
	byCtx    map[Ctx]uintptr
}

func logTrampoline(level int32, msg *byte, user uintptr) {
	logs.mu.Lock()
	fn := logs.funcs[user]
	logs.mu.Unlock()
	if fn != nil {
		fn(LogLevel(level), goString(msg))
	}
}

// CtxSetLog sends the context's log messages to fn (nil stops them).
func (l *Library) CtxSetLog(ctx Ctx, fn LogFunc) {
	logs.once.Do(func() {
		logs.callback = purego.NewCallback(logTrampoline)
		logs.funcs = map[uintptr]LogFunc{}
		logs.byCtx = map[Ctx]uintptr{}
	})
	forgetLog(ctx)
	if fn == nil {
		l.sdCtxSetLog(ctx, 0, 0)
		return
	}
	logs.mu.Lock()
	logs.next++
	key := logs.next
	logs.funcs[key] = fn
	logs.byCtx[ctx] = key
	logs.mu.Unlock()
	l.sdCtxSetLog(ctx, logs.callback, key)
}

func forgetLog(ctx Ctx) {
	logs.mu.Lock()
	defer logs.mu.Unlock()
	if key, ok := logs.byCtx[ctx]; ok {
		delete(logs.funcs, key)
		delete(logs.byCtx, ctx)
	}
}

// goString copies a NUL-terminated C string.
func goString(p *byte) string {
	if p == nil {
		return ""
	}
	n := 0
	for *(*byte)(unsafe.Add(unsafe.Pointer(p), n)) != 0 {
		n++
	}
	return string(unsafe.Slice(p, n))
}

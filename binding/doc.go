// Package binding is the thin layer between Go and the gosd runtime library (libsd or
// libsd-cuda): it finds and loads the shared library with purego (no cgo), mirrors the C
// API of csrc/include/sd.h one function at a time, and turns sd_status_t codes into Go
// errors.
//
// Most programs use package diffusion instead; binding is for code that drives the
// runtime's tensors and operations directly.
//
// # Loading
//
// [Load] looks for the library in this order: the path given in [LoadOptions], the SD_LIB
// environment variable, the executable's own folder, the directories lib/ next to the
// executable (and ../lib), a CMake build tree (build/ in the working directory or one of
// its parents), then the system's default search path. When none loads, the error lists
// every path tried. Where a GPU build (libsd-cuda) is found and a usable GPU is present
// it is preferred; otherwise the CPU library is used and [Library.FallbackReason] says why.
// Before anything else the ABI version and the sizes of the parameter structs are checked,
// and every function is resolved, so a stale or foreign library is an error at load time
// rather than a crash later.
//
// # Errors
//
// A failed call returns an [*Error] holding the status, the operation and the context's
// message. It matches the sentinel errors with errors.Is:
//
//	if errors.Is(err, binding.ErrCancelled) { ... }
//
// # Concurrency
//
// A [Library] may be used from any goroutine. A context ([Ctx]) and everything created
// from it must be used by one goroutine at a time, except [Library.CtxCancel], which may
// be called at any time.
package binding

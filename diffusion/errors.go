package diffusion

import (
	"errors"

	"github.com/gosd/gosd/binding"
	"github.com/gosd/gosd/internal/sderr"
)

// Errors returned by this package, matched with errors.Is. Cancellation returns the
// context's own error (context.Canceled or context.DeadlineExceeded).
var (
	// ErrInvalidRequest: a request field is out of range (the message names it).
	ErrInvalidRequest = errors.New("invalid request")
	// ErrClosed: the pipeline was closed.
	ErrClosed = errors.New("pipeline is closed")
	// ErrNonFinite: a network produced NaN or infinite values (the message names the
	// stage): corrupt weights, or settings the model cannot work with.
	ErrNonFinite = errors.New("non-finite values")
	// ErrUnsupported: the model or request needs something this runtime does not do.
	// It is modelfile.ErrUnsupported too, and the runtime library's kind of the same.
	ErrUnsupported = sderr.Unsupported
	// ErrBadModel: the model's files are inconsistent (malformed or truncated files,
	// missing or mis-shaped weights, a broken tokenizer). It is modelfile.ErrBadModel too,
	// and the runtime library's kind of the same.
	ErrBadModel = sderr.BadModel
	// ErrLibraryNotFound: no runtime library loads from the path given (WithLibrary,
	// FindRuntime) or, without one, from any place searched; the message lists them.
	// The value is the binding's, which reports it.
	ErrLibraryNotFound = binding.ErrLibraryNotFound
	// ErrDevice: the device failed, or WithDevice(DeviceCUDA) found no usable GPU. The
	// value is the binding's, which reports device errors of the runtime.
	ErrDevice = binding.ErrDevice
)

package binding

import (
	"errors"
	"fmt"

	"github.com/gosd/gosd/internal/sderr"
)

// Status mirrors sd_status_t.
type Status int32

// Status codes, as in sd.h.
const (
	StatusOK              Status = 0
	StatusInvalidArgument Status = -1
	StatusIO              Status = -2
	StatusBadModel        Status = -3
	StatusOutOfMemory     Status = -4
	StatusDevice          Status = -5
	StatusUnsupported     Status = -6
	StatusCancelled       Status = -7
	StatusInternal        Status = -8
)

// Sentinel errors matched by [*Error] through errors.Is. ErrBadModel and
// ErrUnsupported are also what the pure-Go model and tokenizer readers mark their
// errors with, so one test matches a bad model whichever layer found it.
var (
	ErrInvalidArgument = errors.New("invalid argument")
	ErrIO              = errors.New("i/o error")
	ErrBadModel        = sderr.BadModel
	ErrOutOfMemory     = errors.New("out of memory")
	ErrDevice          = errors.New("device error")
	ErrUnsupported     = sderr.Unsupported
	ErrCancelled       = errors.New("cancelled")
	ErrInternal        = errors.New("internal error")
)

// Load errors.
var (
	// ErrLibraryNotFound: no runtime library could be opened at the searched places.
	ErrLibraryNotFound = errors.New("runtime library not found")
	// ErrABIMismatch: the library was built for another version of the API.
	ErrABIMismatch = errors.New("runtime library ABI mismatch")
	// ErrMissingSymbol: the library lacks a function of the API.
	ErrMissingSymbol = errors.New("runtime library misses a function")
)

var sentinels = map[Status]error{
	StatusInvalidArgument: ErrInvalidArgument,
	StatusIO:              ErrIO,
	StatusBadModel:        ErrBadModel,
	StatusOutOfMemory:     ErrOutOfMemory,
	StatusDevice:          ErrDevice,
	StatusUnsupported:     ErrUnsupported,
	StatusCancelled:       ErrCancelled,
	StatusInternal:        ErrInternal,
}

// Sentinel returns the sentinel error for a status (nil for OK or an unknown code).
func (s Status) Sentinel() error { return sentinels[s] }

// String names the status as sd_status_string does.
func (s Status) String() string {
	if s == StatusOK {
		return "ok"
	}
	if e := sentinels[s]; e != nil {
		return e.Error()
	}
	return fmt.Sprintf("unknown status %d", int32(s))
}

// Error is a failed call into the runtime.
type Error struct {
	Code Status // the sd_status_t returned
	Op   string // the C function, e.g. "sd_op_conv2d"
	Msg  string // the context's last error, may be empty
}

func (e *Error) Error() string {
	if e.Msg == "" {
		return fmt.Sprintf("%s: %s", e.Op, e.Code)
	}
	return fmt.Sprintf("%s: %s: %s", e.Op, e.Code, e.Msg)
}

// Is reports whether target is the sentinel for e's status.
func (e *Error) Is(target error) bool {
	s := sentinels[e.Code]
	return s != nil && s == target
}

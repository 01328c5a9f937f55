// Package sderr holds the error kinds that more than one layer reports: the
// runtime binding (for statuses of the native library) and the pure-Go readers
// of model files and tokenizers, which must not depend on the binding. Sharing
// the values lets one errors.Is test match a bad or unsupported model whichever
// layer found the problem.
package sderr

import "errors"

var (
	// BadModel: the model's files are inconsistent (malformed, truncated,
	// missing or mis-shaped weights).
	BadModel = errors.New("bad model")
	// Unsupported: the model needs something this runtime does not do.
	Unsupported = errors.New("unsupported")
)

// Mark returns err with kind added to what errors.Is matches, its message
// unchanged. An error already marked keeps its kind, so the innermost, most
// specific classification wins (an unsupported dtype inside a file that is
// otherwise read as bad stays unsupported). Mark(kind, nil) is nil.
func Mark(kind, err error) error {
	if err == nil || errors.Is(err, BadModel) || errors.Is(err, Unsupported) {
		return err
	}
	return &marked{kind: kind, err: err}
}

type marked struct{ kind, err error }

func (e *marked) Error() string   { return e.err.Error() }
func (e *marked) Unwrap() []error { return []error{e.kind, e.err} }

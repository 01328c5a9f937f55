package modelfile

import (
	"fmt"

	"github.com/gosd/gosd/internal/sderr"
)

// Kinds of Load and OpenFile errors, matched with errors.Is. They are the
// values diffusion.ErrBadModel and diffusion.ErrUnsupported (and the runtime
// binding's) are, so a caller tests one sentinel whichever layer failed.
// Errors of the file system (a path that does not exist) and of options are
// neither.
var (
	// ErrBadModel: the files are inconsistent: malformed or truncated, a
	// missing file or tensor, a shape or count the rest contradicts.
	ErrBadModel = sderr.BadModel
	// ErrUnsupported: a well-formed model of a kind this package does not
	// read (an SDXL pipeline, an F8 tensor, another activation).
	ErrUnsupported = sderr.Unsupported
)

// badModel marks err as ErrBadModel unless it is already classified.
func badModel(err error) error { return sderr.Mark(ErrBadModel, err) }

// badModelf is fmt.Errorf marked as ErrBadModel.
func badModelf(format string, args ...any) error { return badModel(fmt.Errorf(format, args...)) }

// unsupportedf is fmt.Errorf marked as ErrUnsupported.
func unsupportedf(format string, args ...any) error {
	return sderr.Mark(ErrUnsupported, fmt.Errorf(format, args...))
}

package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// flagSet is one subcommand's flags. Values are checked as they are parsed, so that the
// flag package reports a bad value naming its flag; the help lists the flags in the
// order they were defined, each with its argument and default.
type flagSet struct {
	*flag.FlagSet
	docs []flagDoc
}

type flagDoc struct {
	name, arg, usage string
}

func newFlagSet(name string) *flagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported by run, the help by printUsage
	fs.Usage = func() {}
	return &flagSet{FlagSet: fs}
}

// usageError is a mistake on the command line (exit code 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

// errHelp asks for the subcommand's help (-h).
var errHelp = errors.New("help requested")

func (f *flagSet) parse(args []string) error {
	err := f.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		return errHelp
	}
	if err != nil {
		return usageError{err}
	}
	return nil
}

func (f *flagSet) document(name, arg, usage string) {
	f.docs = append(f.docs, flagDoc{name: name, arg: arg, usage: usage})
}

func (f *flagSet) stringVar(p *string, name, arg, def, usage string) {
	f.StringVar(p, name, def, usage)
	f.document(name, arg, usage)
}

func (f *flagSet) boolVar(p *bool, name, usage string) {
	f.BoolVar(p, name, false, usage)
	f.document(name, "", usage)
}

// funcVar defines a flag whose value set parses and checks.
func (f *flagSet) funcVar(name, arg, usage string, set func(string) error) {
	f.Func(name, usage, set)
	f.document(name, arg, usage)
}

func (f *flagSet) intVar(p *int, name, arg string, def int, usage string, check func(int) error) {
	*p = def
	f.funcVar(name, arg, usage, func(s string) error {
		v, err := strconv.Atoi(s)
		if err != nil {
			return errors.New("not an integer")
		}
		if err := check(v); err != nil {
			return err
		}
		*p = v
		return nil
	})
}

func (f *flagSet) floatVar(p *float64, name, arg string, def float64, usage string, check func(float64) error) {
	*p = def
	f.funcVar(name, arg, usage, func(s string) error {
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return errors.New("not a number")
		}
		if err := check(v); err != nil {
			return err
		}
		*p = v
		return nil
	})
}

// intRange accepts lo <= v <= hi.
func intRange(lo, hi int) func(int) error {
	return func(v int) error {
		if v < lo || v > hi {
			return fmt.Errorf("must be between %d and %d", lo, hi)
		}
		return nil
	}
}

// floatRange accepts lo <= v <= hi (not NaN).
func floatRange(lo, hi float64) func(float64) error {
	return func(v float64) error {
		if !(v >= lo && v <= hi) {
			return fmt.Errorf("must be between %g and %g", lo, hi)
		}
		return nil
	}
}

// side checks an image side: a positive multiple of 8 up to max.
func side(max int) func(int) error {
	return func(v int) error {
		if v < 8 || v > max || v%8 != 0 {
			return fmt.Errorf("must be a multiple of 8 between 8 and %d", max)
		}
		return nil
	}
}

// printUsage writes a subcommand's help: its synopsis, summary and flags.
func printUsage(w io.Writer, c *command, fs *flagSet) {
	if len(fs.docs) == 0 {
		fmt.Fprintf(w, "Usage: sdcli %s%s\n\n%s\n", c.name, c.args, c.summary)
		return
	}
	fmt.Fprintf(w, "Usage: sdcli %s [flags]%s\n\n%s\n", c.name, c.args, c.summary)
	fmt.Fprintln(w, "\nFlags:")
	for _, d := range fs.docs {
		dashes := "--"
		if len(d.name) == 1 {
			dashes = "-"
		}
		head := "  " + dashes + d.name
		if d.arg != "" {
			head += " " + d.arg
		}
		fmt.Fprintf(w, "%s\n        %s\n", head, strings.ReplaceAll(d.usage, "\n", "\n        "))
	}
}

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"

	"github.com/gosd/gosd/diffusion"
	"github.com/gosd/gosd/diffusion/modelfile"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	context.AfterFunc(ctx, stop) // after the first Ctrl-C, a second one kills at once
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit codes.
const (
	exitOK        = 0
	exitError     = 1
	exitUsage     = 2
	exitCancelled = 130 // 128 + SIGINT, as shells report an interrupted command
)

// app is the CLI with its environment; tests build one with their own.
type app struct {
	stdout, stderr io.Writer
	// stderrTerminal: progress redraws one line with \r instead of printing lines.
	stderrTerminal bool
	// demoDirs are the folders searched for the demo model, in order.
	demoDirs []string
	// archs are bench's --arch choices (tests substitute tiny architectures).
	archs map[string]modelfile.Architecture
}

func newApp(stdout, stderr io.Writer) *app {
	return &app{
		stdout:         stdout,
		stderr:         stderr,
		stderrTerminal: isTerminal(stderr),
		demoDirs:       demoModelDirs(),
		archs: map[string]modelfile.Architecture{"sd15": modelfile.SD15(), "sd21": modelfile.SD21(), "sdxl": modelfile.SDXL(),
			"x4-upscaler": modelfile.X4Upscaler()},
	}
}

// run is the whole CLI: it parses args (without the program name), runs the subcommand
// and returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return newApp(stdout, stderr).run(ctx, args)
}

// command is one subcommand.
type command struct {
	name    string
	args    string // positional arguments of the synopsis, after [flags]
	summary string
	// setup defines the flags on fs and returns the command, which runs with the
	// arguments left after the flags.
	setup func(a *app, fs *flagSet) func(ctx context.Context, args []string) error
}

var commands = []*command{
	{name: "txt2img", summary: "Generate images from a prompt.", setup: generateCommand(modeTxt2Img)},
	{name: "img2img", summary: "Repaint an image (-i) guided by a prompt.", setup: generateCommand(modeImg2Img)},
	{name: "inpaint", summary: "Repaint the white part of a mask (--mask) over an image (-i), or extend the image (--outpaint).", setup: generateCommand(modeInpaint)},
	{name: "upscale", summary: "Upscale an image (-i) 4x with a Stable Diffusion x4 upscaler (-m), guided by a prompt, or with an ESRGAN file.", setup: generateCommand(modeUpscale)},
	{name: "info", args: " [MODEL]", summary: "Describe a model file or diffusers folder (default: the demo model) without loading the runtime.", setup: infoCommand},
	{name: "preprocess", args: " KIND", summary: "Make a ControlNet control image from an image (-i) without a model; KIND: canny (edges), gray or invert (white lines on black from black on white).", setup: preprocessCommand},
	{name: "bench", summary: "Time a txt2img run on random full-size weights (written once to a cache folder) or on a model.", setup: benchCommand},
	{name: "serve", summary: "Serve the OpenAI and AUTOMATIC1111 image APIs, a job queue and a web page over HTTP (default 127.0.0.1:7860).", setup: serveCommand},
	{name: "version", summary: "Print the version of sdcli and of the runtime library it finds.", setup: versionCommand},
}

func findCommand(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

func (a *app) usage(w io.Writer) {
	fmt.Fprintln(w, "Usage: sdcli <command> [flags]\n\nCommands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "  help       Show the help of a command: sdcli help <command>, or sdcli <command> -h.")
}

func (a *app) run(ctx context.Context, args []string) int {
	if len(args) == 0 {
		a.usage(a.stderr)
		return exitUsage
	}
	name, rest := args[0], args[1:]
	if isHelp(name) {
		return a.help(rest)
	}
	c := findCommand(name)
	if c == nil {
		fmt.Fprintf(a.stderr, "sdcli: unknown command %q\nRun 'sdcli help' for usage.\n", name)
		return exitUsage
	}
	fs := newFlagSet(c.name)
	exec := c.setup(a, fs)
	err := fs.parse(rest)
	if err == nil {
		err = exec(ctx, fs.Args())
	}
	return a.exitCode(c, fs, err)
}

// isHelp reports whether arg asks for the general help: help itself or its flags.
func isHelp(arg string) bool {
	switch arg {
	case "help", "-h", "-help", "--help":
		return true
	}
	return false
}

func (a *app) help(args []string) int {
	if len(args) == 0 || len(args) == 1 && isHelp(args[0]) {
		a.usage(a.stdout) // sdcli help -h, sdcli help help: the help of help is this
		return exitOK
	}
	c := findCommand(args[0])
	if c == nil || len(args) > 1 {
		fmt.Fprintf(a.stderr, "sdcli help: unknown command %q\nRun 'sdcli help' for usage.\n", args[0])
		return exitUsage
	}
	fs := newFlagSet(c.name)
	c.setup(a, fs)
	printUsage(a.stdout, c, fs)
	return exitOK
}

// exitCode reports err on stderr and maps it to the exit code.
func (a *app) exitCode(c *command, fs *flagSet, err error) int {
	var usage usageError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, errHelp):
		printUsage(a.stdout, c, fs)
		return exitOK
	case errors.Is(err, context.Canceled):
		fmt.Fprintf(a.stderr, "sdcli %s: cancelled\n", c.name)
		return exitCancelled
	case errors.As(err, &usage), errors.Is(err, diffusion.ErrInvalidRequest):
		fmt.Fprintf(a.stderr, "sdcli %s: %v\nRun 'sdcli %s -h' for usage.\n", c.name, err, c.name)
		return exitUsage
	}
	fmt.Fprintf(a.stderr, "sdcli %s: %v\n", c.name, err)
	return exitError
}

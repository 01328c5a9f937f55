package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/gosd/gosd/diffusion"
)

// progressBar shows sampling progress on stderr. On a terminal it redraws one line
// with \r; elsewhere (a log file, a pipe) it prints a line for the first and the last
// step and at most one per interval between them.
type progressBar struct {
	w        io.Writer
	terminal bool
	label    string
	interval time.Duration // plain lines: the least time between two lines
	printed  time.Duration // elapsed time of the last plain line
	open     bool          // a terminal line is drawn and not yet ended
}

const barWidth = 24

func newProgressBar(w io.Writer, terminal bool, label string) *progressBar {
	return &progressBar{w: w, terminal: terminal, label: label, interval: 5 * time.Second}
}

// update is a diffusion.Request.Progress callback.
func (p *progressBar) update(pr diffusion.Progress) {
	last := pr.Evaluation == pr.Evaluations
	if p.terminal {
		fmt.Fprintf(p.w, "\r%s\x1b[K", progressLine(p.label, pr))
		p.open = !last
		if last {
			fmt.Fprintln(p.w)
		}
		return
	}
	if pr.Evaluation == 1 || last || pr.Elapsed-p.printed >= p.interval {
		fmt.Fprintln(p.w, progressLine(p.label, pr))
		p.printed = pr.Elapsed
	}
}

// finish ends a terminal line left open by a run that stopped early.
func (p *progressBar) finish() {
	if p.open {
		fmt.Fprintln(p.w)
		p.open = false
	}
}

// progressLine is e.g. "txt2img |======      | 3/12 4.2s 1.40s/it", counting sampling
// steps (a Heun step, two UNet evaluations, is one).
func progressLine(label string, pr diffusion.Progress) string {
	done := 0
	if pr.Steps > 0 {
		done = barWidth * pr.Step / pr.Steps
	}
	bar := strings.Repeat("=", done) + strings.Repeat(" ", barWidth-done)
	perStep := pr.Elapsed.Seconds() / float64(max(pr.Step, 1))
	return fmt.Sprintf("%s |%s| %d/%d %s %.2fs/it", label, bar, pr.Step, pr.Steps, pr.Elapsed.Round(100*time.Millisecond), perStep)
}

// isTerminal reports whether w is a terminal, where progress redraws its line.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && isTerminalFd(f.Fd())
}

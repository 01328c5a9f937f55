package main

import (
	"bytes"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gosd/gosd/diffusion"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestProgressLine(t *testing.T) {
	tests := []struct {
		pr   diffusion.Progress
		want string
	}{
		{diffusion.Progress{Step: 1, Steps: 4, Elapsed: 1500 * time.Millisecond}, "txt2img |======                  | 1/4 1.5s 1.50s/it"},
		{diffusion.Progress{Step: 3, Steps: 12, Elapsed: 4200 * time.Millisecond}, "txt2img |======                  | 3/12 4.2s 1.40s/it"},
		{diffusion.Progress{Step: 20, Steps: 20, Elapsed: 5 * time.Second}, "txt2img |========================| 20/20 5s 0.25s/it"},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, progressLine("txt2img", tt.pr))
	}
}

func steps(n int, each time.Duration) []diffusion.Progress {
	prs := make([]diffusion.Progress, n)
	for i := range prs {
		prs[i] = diffusion.Progress{Step: i + 1, Steps: n, Evaluation: i + 1, Evaluations: n, Elapsed: time.Duration(i+1) * each}
	}
	return prs
}

var stepRE = regexp.MustCompile(`\d+/\d+`)

// Without a terminal, lines for the first and last steps and one per interval between.
func TestProgressPlainLines(t *testing.T) {
	var buf bytes.Buffer
	bar := newProgressBar(&buf, false, "x")
	for _, pr := range steps(12, time.Second) {
		bar.update(pr)
	}
	bar.finish()
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	var shown []string
	for _, l := range lines {
		shown = append(shown, stepRE.FindString(l))
	}
	assert.Equal(t, []string{"1/12", "6/12", "11/12", "12/12"}, shown)
	assert.NotContains(t, buf.String(), "\r")
}

// On a terminal, one line redrawn with \r and ended once.
func TestProgressTerminal(t *testing.T) {
	var buf bytes.Buffer
	bar := newProgressBar(&buf, true, "x")
	for _, pr := range steps(3, time.Second) {
		bar.update(pr)
	}
	bar.finish()
	out := buf.String()
	assert.Equal(t, 3, strings.Count(out, "\r"))
	assert.Equal(t, 1, strings.Count(out, "\n"))
	assert.True(t, strings.HasSuffix(out, "3/3 3s 1.00s/it\x1b[K\n"), "%q", out)

	// A run stopped early: finish ends the line.
	buf.Reset()
	bar = newProgressBar(&buf, true, "x")
	bar.update(steps(3, time.Second)[0])
	assert.NotContains(t, buf.String(), "\n")
	bar.finish()
	bar.finish()
	assert.Equal(t, 1, strings.Count(buf.String(), "\n"))
}

// A second-order sampler's 20 steps are 39 UNet evaluations: the bar counts the steps.
func TestProgressCountsSteps(t *testing.T) {
	var buf bytes.Buffer
	bar := newProgressBar(&buf, false, "x")
	for e := 1; e <= 39; e++ {
		step := e / 2 // as the pipeline reports Heun: a step ends with its second evaluation
		if e == 39 {
			step = 20
		}
		bar.update(diffusion.Progress{Step: step, Steps: 20, Evaluation: e, Evaluations: 39, Elapsed: time.Duration(e) * time.Millisecond})
	}
	bar.finish()
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	require.Len(t, lines, 2, "the first and the last evaluation")
	assert.Equal(t, "0/20", stepRE.FindString(lines[0]))
	assert.Equal(t, "20/20", stepRE.FindString(lines[1]))
	assert.NotContains(t, buf.String(), "/39")
}

package main

import (
	"bytes"
	"context"
	"flag"
	"os"
	"regexp"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// testApp is the CLI writing into buffers, with no demo model to find.
func testApp(t *testing.T) (*app, *bytes.Buffer, *bytes.Buffer) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	a := newApp(&stdout, &stderr)
	a.demoDirs = []string{t.TempDir()}
	return a, &stdout, &stderr
}

type runResult struct {
	code           int
	stdout, stderr string
}

func runArgs(t *testing.T, args ...string) runResult {
	t.Helper()
	a, stdout, stderr := testApp(t)
	code := a.run(context.Background(), args)
	return runResult{code, stdout.String(), stderr.String()}
}

func TestRunDispatch(t *testing.T) {
	tests := []struct {
		name   string
		args   []string
		code   int
		stdout []string
		stderr []string
	}{
		{"no command", nil, exitUsage, nil, []string{"Usage: sdcli <command>", "txt2img", "bench"}},
		{"help", []string{"help"}, exitOK, []string{"Usage: sdcli <command>", "txt2img", "img2img", "inpaint", "info", "bench", "version"}, nil},
		{"-h", []string{"-h"}, exitOK, []string{"Usage: sdcli <command>"}, nil},
		{"help of a command", []string{"help", "inpaint"}, exitOK, []string{"Usage: sdcli inpaint [flags]", "--outpaint L,T,R,B", "--mask path"}, nil},
		{"help of an unknown command", []string{"help", "paint"}, exitUsage, nil, []string{`unknown command "paint"`}},
		{"command -h", []string{"txt2img", "-h"}, exitOK, []string{"Usage: sdcli txt2img [flags]", "--sampler NAME", "(default 20)"}, nil},
		{"command --help", []string{"bench", "--help"}, exitOK, []string{"Usage: sdcli bench [flags]", "--arch NAME", "-m path", "(default 512;"}, nil},
		{"info -h", []string{"info", "-h"}, exitOK, []string{"Usage: sdcli info [MODEL]\n"}, nil},
		{"unknown command", []string{"paint"}, exitUsage, nil, []string{`sdcli: unknown command "paint"`}},
		{"version", []string{"version"}, exitOK, []string{"sdcli ", runtime.Version(), "runtime library: "}, nil},
		{"version with an argument", []string{"version", "x"}, exitUsage, nil, []string{`unexpected argument "x"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runArgs(t, tt.args...)
			assert.Equal(t, tt.code, r.code, "stderr: %s", r.stderr)
			for _, s := range tt.stdout {
				assert.Contains(t, r.stdout, s)
			}
			for _, s := range tt.stderr {
				assert.Contains(t, r.stderr, s)
			}
		})
	}
}

// Every flag of every command says what its default is, and the package documentation
// lists it in its command's section (or, for commands that take the flags of txt2img,
// in txt2img's).
func TestFlagsDocumented(t *testing.T) {
	doc, err := os.ReadFile("doc.go")
	require.NoError(t, err)
	section := func(name string) string {
		for _, s := range strings.Split(string(doc), "\n// # ") {
			if strings.HasPrefix(s, "sdcli "+name+"\n") {
				return s
			}
		}
		return ""
	}
	for _, c := range commands {
		t.Run(c.name, func(t *testing.T) {
			fs := newFlagSet(c.name)
			c.setup(newApp(nil, nil), fs)
			own := section(c.name)
			require.NotEmpty(t, own, "doc.go has a section # sdcli %s", c.name)
			docs := own
			if strings.Contains(own, "the flags of txt2img") {
				docs += section("txt2img")
			}
			var defined int
			fs.VisitAll(func(*flag.Flag) { defined++ })
			assert.Len(t, fs.docs, defined, "every flag is in the help")
			for _, d := range fs.docs {
				assert.Contains(t, d.usage, "default", "-%s names its default", d.name)
				dashes := "--"
				if len(d.name) == 1 {
					dashes = "-"
				}
				mention := regexp.MustCompile(`[\s,]` + dashes + regexp.QuoteMeta(d.name) + `[\s,]`)
				assert.Regexp(t, mention, docs, "doc.go documents %s%s", dashes, d.name)
			}
		})
	}
}

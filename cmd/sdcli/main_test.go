package main

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"

	"github.com/gosd/gosd/internal/testutil"
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
	noLib := filepath.Join(t.TempDir(), "no-such-lib")
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
		{"help -h", []string{"help", "-h"}, exitOK, []string{"Usage: sdcli <command>"}, nil},
		{"help --help", []string{"help", "--help"}, exitOK, []string{"Usage: sdcli <command>"}, nil},
		{"help help", []string{"help", "help"}, exitOK, []string{"Usage: sdcli <command>"}, nil},
		{"help txt2img", []string{"help", "txt2img"}, exitOK, []string{"Usage: sdcli txt2img [flags]", "--text-heads N[,N2]"}, nil},
		{"help of a flag", []string{"help", "-x"}, exitUsage, nil, []string{`unknown command "-x"`}},
		{"help of a command", []string{"help", "inpaint"}, exitOK, []string{"Usage: sdcli inpaint [flags]", "--outpaint L,T,R,B", "--mask path"}, nil},
		{"help of an unknown command", []string{"help", "paint"}, exitUsage, nil, []string{`unknown command "paint"`}},
		{"command -h", []string{"txt2img", "-h"}, exitOK, []string{"Usage: sdcli txt2img [flags]", "--sampler NAME", "(default 20)"}, nil},
		{"command --help", []string{"bench", "--help"}, exitOK, []string{"Usage: sdcli bench [flags]", "--arch NAME", "-m path", "(default 512, sdxl 1024;"}, nil},
		{"info -h", []string{"info", "-h"}, exitOK, []string{"Usage: sdcli info [flags] [MODEL]\n", "--text-heads N[,N2]"}, nil},
		{"unknown command", []string{"paint"}, exitUsage, nil, []string{`sdcli: unknown command "paint"`}},
		{"version without a library", []string{"version", "--lib", noLib}, exitError,
			[]string{"sdcli ", runtime.Version(), "runtime library: none loads\n"},
			[]string{"sdcli version: runtime library not found: " + noLib}},
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

// version reports the library it loads, and exits 0 only then.
func TestVersionFindsLibrary(t *testing.T) {
	build := filepath.Join(testutil.RepoRoot(t), "build")
	lib := filepath.Join(build, "libsd.so")
	if runtime.GOOS == "darwin" {
		lib = filepath.Join(build, "libsd.dylib")
	}
	if _, err := os.Stat(lib); err != nil {
		t.Skipf("runtime library not built (run make): %v", err)
	}
	r := runArgs(t, "version", "--lib", lib)
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	assert.Contains(t, r.stdout, "runtime library: "+lib+" (ABI ")
	assert.Empty(t, r.stderr)
}

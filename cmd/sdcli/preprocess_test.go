package main

import (
	"context"
	"image"
	"image/png"
	"os"
	"path/filepath"
	"testing"

	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// controlData is package control's folder of OpenCV references (see make_canny.py).
func controlData(t *testing.T, name string) string {
	t.Helper()
	return filepath.Join(testutil.RepoRoot(t), "diffusion", "control", "testdata", name)
}

func readGrayPNG(t *testing.T, path string) *image.Gray {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	img, err := png.Decode(f)
	require.NoError(t, err)
	g, ok := img.(*image.Gray)
	require.True(t, ok, "%s is a %T, not gray", path, img)
	return g
}

func TestPreprocessFlagValidation(t *testing.T) {
	in := controlData(t, "shapes.png")
	out := filepath.Join(t.TempDir(), "out.png")
	tests := []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"no kind", []string{"-i", in, "-o", out}, exitUsage, "want KIND: canny, gray or invert"},
		{"unknown kind", []string{"depth", "-i", in, "-o", out}, exitUsage, `unknown kind "depth"`},
		{"extra argument", []string{"canny", "-i", in, "-o", out, "more"}, exitUsage, `unexpected argument "more"`},
		{"no input", []string{"gray", "-o", out}, exitUsage, "pass -i"},
		{"no output", []string{"gray", "-i", in}, exitUsage, "pass -o"},
		{"not png", []string{"gray", "-i", in, "-o", "out.jpg"}, exitUsage, "must be a .png file"},
		{"one threshold", []string{"canny", "--canny", "100", "-i", in, "-o", out}, exitUsage, "invalid value \"100\" for flag -canny: want two comma-separated integers"},
		{"not integers", []string{"canny", "--canny", "1.5,3", "-i", in, "-o", out}, exitUsage, `"1.5": want an integer between 0 and 2040`},
		{"negative", []string{"canny", "--canny", "-1,3", "-i", in, "-o", out}, exitUsage, `"-1": want an integer`},
		{"too high", []string{"canny", "--canny", "10,2041", "-i", in, "-o", out}, exitUsage, `"2041": want an integer`},
		{"canny of gray", []string{"gray", "--canny", "10,20", "-i", in, "-o", out}, exitUsage, "--canny is for canny, not gray"},
		{"unknown flag after kind", []string{"canny", "--blur", "3"}, exitUsage, "flag provided but not defined: -blur"},
		{"missing folder", []string{"gray", "-i", in, "-o", filepath.Join(t.TempDir(), "no", "out.png")}, exitError, "does not exist"},
		{"missing input", []string{"gray", "-i", filepath.Join(t.TempDir(), "none.png"), "-o", out}, exitError, "no such file"},
		{"not an image", []string{"gray", "-i", writeTemp(t, "x.png", []byte("text")), "-o", out}, exitError, "not a PNG or JPEG image"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runArgs(t, append([]string{"preprocess"}, tt.args...)...)
			assert.Equal(t, tt.code, r.code, "stderr: %s", r.stderr)
			assert.Contains(t, r.stderr, tt.msg)
			assert.Empty(t, r.stdout)
		})
	}
	_, err := os.Stat(out)
	assert.ErrorIs(t, err, os.ErrNotExist, "nothing is written")

	r := runArgs(t, "help", "preprocess")
	assert.Equal(t, exitOK, r.code)
	assert.Contains(t, r.stdout, "Usage: sdcli preprocess [flags] KIND\n")
	assert.Contains(t, r.stdout, "--canny LOW,HIGH")
	r = runArgs(t, "preprocess", "canny", "-h") // -h after KIND too
	assert.Equal(t, exitOK, r.code)
	assert.Contains(t, r.stdout, "Usage: sdcli preprocess")
}

// The files written are OpenCV's results, with the flags before or after KIND.
func TestPreprocessRoundTrip(t *testing.T) {
	in := controlData(t, "shapes.png")
	dir := t.TempDir()
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"canny", "-i", in}, "shapes_canny_100_200.png"},
		{[]string{"--canny", "20,60", "-i", in, "canny"}, "shapes_canny_20_60.png"},
		{[]string{"canny", "--canny", "200,100", "-i", in}, "shapes_canny_200_100.png"},
		{[]string{"-i", in, "gray"}, "shapes_gray.png"},
	}
	for _, tt := range tests {
		out := filepath.Join(dir, tt.want)
		r := runArgs(t, append([]string{"preprocess", "-o", out}, tt.args...)...)
		require.Equal(t, exitOK, r.code, "%v: %s", tt.args, r.stderr)
		assert.Equal(t, out+"\n", r.stdout)
		assert.Empty(t, r.stderr)
		assert.Equal(t, readGrayPNG(t, controlData(t, tt.want)).Pix, readGrayPNG(t, out).Pix, "%v", tt.args)
	}

	out := filepath.Join(dir, "inverted.png")
	r := runArgs(t, "preprocess", "invert", "-i", in, "-o", out)
	require.Equal(t, exitOK, r.code, r.stderr)
	gray, inverted := readGrayPNG(t, controlData(t, "shapes_gray.png")), readGrayPNG(t, out)
	require.Len(t, inverted.Pix, len(gray.Pix))
	for i, v := range gray.Pix {
		require.Equal(t, 255-v, inverted.Pix[i], "pixel %d", i)
	}
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Len(t, entries, len(tests)+1, "no temporary file is left")
}

// Cancelled before the image is written: exit 130 and no file.
func TestPreprocessCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	a, stdout, stderr := testApp(t)
	out := filepath.Join(t.TempDir(), "edges.png")
	code := a.run(ctx, []string{"preprocess", "canny", "-i", controlData(t, "shapes.png"), "-o", out})
	assert.Equal(t, exitCancelled, code, stderr.String())
	assert.Empty(t, stdout.String())
	_, err := os.Stat(out)
	assert.ErrorIs(t, err, os.ErrNotExist)
}

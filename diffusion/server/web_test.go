package server

import (
	"bytes"
	"context"
	"encoding/base64"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// chromium finds the browser, skipping the test without one.
func chromium(t *testing.T) string {
	for _, name := range []string{"/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("chromium not found (apt-get install -y chromium)")
	return ""
}

// TestWebPage drives the page in headless Chromium: it generates with the demo model,
// watches the progress bar move and the preview appear, and reads the PNG of the
// gallery back with its parameters. The screenshot (a PNG: quality 100) goes to $SDSERVER_SCREENSHOT_DIR, else
// the test's temporary folder.
func TestWebPage(t *testing.T) {
	browser := chromium(t)
	_, hs := testServer(t, nil)
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(browser), chromedp.NoSandbox,
		chromedp.Flag("disable-gpu", true), chromedp.WindowSize(1100, 800))
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelA()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, cancelT := context.WithTimeout(ctx, 60*time.Second)
	defer cancelT()

	require.NoError(t, chromedp.Do(ctx,
		chromedp.Navigate(hs.URL+"/"),
		chromedp.WaitVisible("#prompt"),
	))
	_, err := chromedp.Run(ctx, chromedp.Poll[bool](`document.querySelectorAll("#sampler option").length > 5 && document.querySelector("#model").options.length == 1`))
	require.NoError(t, err)
	samplers, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("#sampler option").length`))
	require.NoError(t, err)
	require.NoError(t, chromedp.Do(ctx,
		chromedp.SetValue("#prompt", "a red apple"),
		chromedp.SetValue("#steps", "40"),
		chromedp.SetValue("#seed", "11"),
		chromedp.SetValue("#sampler", "Euler a"),
	))
	// A click as the user's: the button submits the form.
	_, err = chromedp.Run(ctx, chromedp.Evaluate[bool](`document.querySelector("#generate").click(), true`))
	require.NoError(t, err)
	// Sample the progress bar until the image arrives.
	seen := map[float64]bool{}
	deadline := time.Now().Add(15 * time.Second)
	for {
		v, err := chromedp.Run(ctx, chromedp.Evaluate[float64](`document.querySelector("#progress").value`))
		require.NoError(t, err)
		seen[v] = true
		done, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.querySelectorAll("#gallery .item").length > 0`))
		require.NoError(t, err)
		if done {
			break
		}
		if time.Now().After(deadline) {
			st, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector("#status").textContent`))
			loc, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`location.href + " " + document.querySelector("#generate").disabled + " " + document.querySelector("#prompt").value`))
			t.Fatalf("no image in the gallery; the page says %q; progress seen %v; %s", st, seen, loc)
		}
		time.Sleep(15 * time.Millisecond)
	}
	var intermediate int
	for v := range seen {
		if v > 0 && v < 40 {
			intermediate++
		}
	}
	assert.GreaterOrEqual(t, intermediate, 2, "the progress bar moved: %v", seen)

	str := func(js string) string {
		v, err := chromedp.Run(ctx, chromedp.Evaluate[string](js))
		require.NoError(t, err, js)
		return v
	}
	src := str(`document.querySelector("#gallery .item img").src`)
	params := str(`document.querySelector("#gallery .item pre").textContent`)
	preview := str(`document.querySelector("#preview").src`)
	statusText := str(`document.querySelector("#status").textContent`)
	download := str(`document.querySelector("#gallery .item a").download`)
	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	require.NoError(t, err)
	assert.Equal(t, "done", statusText)
	assert.Equal(t, "gosd-11.png", download)
	assert.True(t, strings.HasPrefix(preview, "data:image/png;base64,"), "the preview was shown")
	raw, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(src, "data:image/png;base64,"))
	require.NoError(t, err)
	img, err := png.Decode(bytes.NewReader(raw))
	require.NoError(t, err)
	assert.Equal(t, 64, img.Bounds().Dx())
	text, err := pngText(raw)
	require.NoError(t, err)
	assert.Contains(t, text["parameters"], "a red apple")
	assert.Contains(t, text["parameters"], "Steps: 40, Sampler: Euler a")
	assert.Contains(t, text["parameters"], "Seed: 11,")
	assert.Equal(t, text["parameters"], params, "the gallery shows the PNG's parameters")

	dir := os.Getenv("SDSERVER_SCREENSHOT_DIR")
	if dir == "" {
		dir = t.TempDir()
	}
	path := filepath.Join(dir, "webpage.png")
	require.NoError(t, os.WriteFile(path, shot, 0o644))
	t.Logf("screenshot: %s (%d samplers listed, progress values seen: %d)", path, samplers-1, len(seen))
}

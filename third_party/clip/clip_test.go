package clip

import (
	"bufio"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/gosd/gosd/internal/testutil"
)

func readMerges(t *testing.T) []byte {
	t.Helper()
	r, err := OpenMerges()
	require.NoError(t, err)
	defer r.Close()
	data, err := io.ReadAll(r)
	require.NoError(t, err)
	return data
}

func TestMergesFormat(t *testing.T) {
	data := readMerges(t)
	sc := bufio.NewScanner(bytes.NewReader(data))
	require.True(t, sc.Scan())
	assert.Equal(t, "#version: 0.2", sc.Text())
	n := 0
	for sc.Scan() {
		n++
		fields := strings.Split(sc.Text(), " ")
		assert.Len(t, fields, 2, "line %d: %q", n+1, sc.Text())
	}
	require.NoError(t, sc.Err())
	assert.Equal(t, MergeCount, n)
}

// The embedded merges must be exactly the merges.txt that diffusers ships in
// a Stable Diffusion tokenizer folder.
func TestMergesMatchDiffusersTokenizer(t *testing.T) {
	kit := testutil.ConformanceDir(t)
	for _, model := range []string{"sd1-tiny", "sd2-tiny-v"} {
		t.Run(model, func(t *testing.T) {
			want, err := os.ReadFile(filepath.Join(kit, model, "diffusers", "tokenizer", "merges.txt"))
			require.NoError(t, err)
			assert.True(t, bytes.Equal(want, readMerges(t)), "embedded merges differ from %s merges.txt", model)
		})
	}
}

package tokenizer

import (
	"bufio"
	"compress/bzip2"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestNFC(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"ascii", "a photo of a cat", "a photo of a cat"},
		{"precomposed stays", "naïve café", "naïve café"},
		{"combining acute composes", "cafe\u0301", "café"},
		{"two marks reorder and compose", "a\u0307\u0323", "\u1ea1\u0307"},
		{"blocked by a starter", "e\u0062\u0301", "eb\u0301"},
		{"singleton ohm sign", "\u2126", "\u03a9"},
		{"angstrom sign", "\u212b", "\u00c5"},
		{"excluded composite stays decomposed", "\u0958", "\u0915\u093c"},
		{"hangul jamo compose", "\u1100\u1161\u11a8", "\uac01"},
		{"hangul LV + T", "\uac00\u11a8", "\uac01"},
		{"cjk and emoji untouched", "東京 🍎", "東京 🍎"},
		{"lone combining mark", "\u0301x", "\u0301x"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, nfc(tc.in))
		})
	}
}

// The quick path returns text below U+0300 unchanged: no composition pair
// has a second rune below U+0300.
func TestNFCQuickPathIsSound(t *testing.T) {
	for pair := range canonicalComposition {
		assert.GreaterOrEqual(t, pair[1], rune(0x300), "%U %U", pair[0], pair[1])
	}
}

// NormalizationTest.txt (Unicode's conformance file, in Debian's unicode-data
// package) checks every NFC case: c2 == NFC(c1) == NFC(c2) == NFC(c3) and
// c4 == NFC(c4) == NFC(c5).
func TestNFCConformance(t *testing.T) {
	const path = "/usr/share/unicode/NormalizationTest.txt.bz2"
	f, err := os.Open(path)
	if err != nil {
		t.Skipf("Unicode conformance file not installed (apt-get install unicode-data): %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(bzip2.NewReader(f))
	lines := 0
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		if line == "" || strings.HasPrefix(line, "@") {
			continue
		}
		fields := strings.Split(line, ";")
		require.GreaterOrEqual(t, len(fields), 5, line)
		var c [5]string
		for i := range c {
			var b strings.Builder
			for _, hex := range strings.Fields(fields[i]) {
				v, err := strconv.ParseUint(hex, 16, 32)
				require.NoError(t, err, line)
				b.WriteRune(rune(v))
			}
			c[i] = b.String()
		}
		for _, k := range []int{0, 1, 2} {
			if !assert.Equal(t, c[1], nfc(c[k]), "NFC(c%d) in %q", k+1, line) {
				return
			}
		}
		for _, k := range []int{3, 4} {
			if !assert.Equal(t, c[3], nfc(c[k]), "NFC(c%d) in %q", k+1, line) {
				return
			}
		}
		lines++
	}
	require.NoError(t, sc.Err())
	assert.Greater(t, lines, 18000)
}

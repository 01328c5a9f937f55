package diffusion

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseLoRATags(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"style.safetensors", "sub/detail.pt", "a/twin.safetensors", "b/twin.ckpt", "notes.txt"} {
		path := filepath.Join(dir, f)
		require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
		require.NoError(t, os.WriteFile(path, nil, 0o644))
	}
	style, detail := filepath.Join(dir, "style.safetensors"), filepath.Join(dir, "sub", "detail.pt")
	type scaled struct {
		path       string
		unet, text float64
	}
	for _, tc := range []struct {
		name, prompt, want string
		loras              []scaled
		err                string
	}{
		{"none", "a cat, (red:1.2)", "a cat, (red:1.2)", nil, ""},
		{"default multiplier", "a cat <lora:style>", "a cat ", []scaled{{style, 1, 1}}, ""},
		{"one multiplier", "<lora:style:0.8>a cat", "a cat", []scaled{{style, 0.8, 0.8}}, ""},
		{"te then unet", "a <lora:style:0.5:1.25> cat", "a  cat", []scaled{{style, 1.25, 0.5}}, ""},
		{"named", "<lora:style:unet=0.3:te=0.7>", "", []scaled{{style, 0.3, 0.7}}, ""},
		// As the web UI: the UNet multiplier follows te unless given.
		{"named te only", "<lora:style:te=0.4>x", "x", []scaled{{style, 0.4, 0.4}}, ""},
		{"two, subfolder, lyco", "<lora:style:1><lyco:detail:-0.5>x", "x", []scaled{{style, 1, 1}, {detail, -0.5, -0.5}}, ""},
		{"other tags stay", "<hypernet:foo:1> a", "<hypernet:foo:1> a", nil, ""},
		{"unknown name", "<lora:nothing:1>", "", nil, `LoRA "nothing": no .safetensors, .pt, .ckpt file`},
		{"ambiguous", "<lora:twin>", "", nil, "several files have that name"},
		{"bad number", "<lora:style:x>", "", nil, `multiplier "x" is not a number`},
		{"too many", "<lora:style:1:2:3>", "", nil, "at most two multipliers"},
		{"unknown argument", "<lora:style:dyn=8>", "", nil, `unknown argument "dyn"`},
		{"empty name", "<lora: :1>", "", nil, "has no name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ls, err := ParseLoRATags(tc.prompt, dir)
			if tc.err != "" {
				require.ErrorIs(t, err, ErrInvalidRequest)
				assert.Contains(t, err.Error(), tc.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
			require.Len(t, ls, len(tc.loras))
			for i, l := range ls {
				u, te := l.scales()
				assert.Equal(t, tc.loras[i], scaled{l.Path, u, te})
			}
		})
	}
	_, _, err := ParseLoRATags("<lora:style>", "")
	require.ErrorIs(t, err, ErrInvalidRequest)
	assert.Contains(t, err.Error(), "no LoRA folder")
}

// A prompt tag selects the kit's adapter from the LoRA folder: the kit's image, and the
// tag is kept in the generation parameters beside the hash.
func TestLoRAPromptTagMatchesDiffusers(t *testing.T) {
	run := kitLoRARun(t)
	p := openTiny(t, "sd1-tiny")
	req := run.request
	req.Prompt = "<lora:lora-kohya:0.8>" + req.Prompt
	req.LoRAs = nil
	req.LoRADir = filepath.Join(testutil.ConformanceDir(t), "lora")
	steps, res := runSteps(t, p, req)
	assertKitImage(t, run.golden, steps, res)
	assert.Equal(t, req.Prompt, res.Params.Prompt)
	require.Len(t, res.Params.LoRAs, 1)
	assert.Equal(t, "lora-kohya", res.Params.LoRAs[0].Name)
	assert.Contains(t, res.Params.A1111(0), "Lora hashes: \"lora-kohya: ")
}

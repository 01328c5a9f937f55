package diffusion

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/gosd/gosd/diffusion/schedule"
	"github.com/gosd/gosd/diffusion/tokenizer"
	"github.com/gosd/gosd/internal/testutil"
)

func TestPromptSyntaxNames(t *testing.T) {
	for _, s := range []PromptSyntax{PromptA1111, PromptPlain} {
		got, err := ParsePromptSyntax(s.String())
		require.NoError(t, err)
		assert.Equal(t, s, got)
	}
	assert.Equal(t, "a1111", PromptA1111.String())
	assert.Equal(t, "plain", PromptPlain.String())
	assert.Equal(t, "PromptSyntax(7)", PromptSyntax(7).String())
	_, err := ParsePromptSyntax("diffusers")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "a1111, plain")
}

// TestPromptChunksSyntax checks that plain syntax tokenizes as diffusers
// (brackets are tokens, one truncated chunk, a warning) and A1111 syntax
// reads emphasis and chunks long prompts.
func TestPromptChunksSyntax(t *testing.T) {
	tok, err := tokenizer.Default()
	require.NoError(t, err)
	var logged bytes.Buffer
	c := &conditioner{tok: tok, padID: tok.EOS(), log: slog.New(slog.NewTextHandler(&logged, nil))}
	long := strings.Repeat("word ", 80)
	tests := []struct {
		name    string
		syntax  PromptSyntax
		prompt  string
		chunks  int
		weight  float32 // of the first prompt token
		literal bool    // ids are EncodePadded's
		warns   bool
	}{
		{"a1111 emphasis", PromptA1111, "(detailed)", 1, 1.1, false, false},
		{"plain emphasis is text", PromptPlain, "(detailed)", 1, 1, true, false},
		{"a1111 chunks", PromptA1111, long, 2, 1, false, false},
		{"plain truncates", PromptPlain, long, 1, 1, true, true},
		{"plain BREAK is a word", PromptPlain, "a BREAK b", 1, 1, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			logged.Reset()
			chunks, err := c.promptChunks(tt.syntax, tt.prompt, nil)
			require.NoError(t, err)
			require.Len(t, chunks, tt.chunks)
			assert.InDelta(t, tt.weight, chunks[0].Weights[1], 1e-6)
			if tt.literal {
				for i, id := range tok.EncodePadded(tt.prompt, tok.EOS()) {
					assert.Equal(t, int32(id), chunks[0].IDs[i], "id %d", i)
				}
			}
			if tt.warns {
				assert.Contains(t, logged.String(), "prompt truncated")
			} else {
				assert.Empty(t, logged.String())
			}
		})
	}
}

// tinyWithScheduler is the kit's sd1-tiny diffusers folder with its
// scheduler_config.json replaced.
func tinyWithScheduler(t *testing.T, config string) string {
	t.Helper()
	kit := filepath.Join(testutil.ConformanceDir(t), "sd1-tiny", "diffusers")
	dir := t.TempDir()
	for _, name := range []string{"model_index.json", "text_encoder", "tokenizer", "unet", "vae"} {
		require.NoError(t, os.Symlink(filepath.Join(kit, name), filepath.Join(dir, name)))
	}
	require.NoError(t, os.Mkdir(filepath.Join(dir, "scheduler"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "scheduler", "scheduler_config.json"), []byte(config), 0o644))
	return dir
}

func openDir(t *testing.T, dir string) (*Pipeline, error) {
	t.Helper()
	testLibrary(t)
	p, err := Open(dir, WithDevice(DeviceCPU), WithThreads(2), WithLibrary(filepath.Join(testutil.RepoRoot(t), "build")))
	if err == nil {
		t.Cleanup(func() { p.Close() })
	}
	return p, err
}

// sd15Scheduler is runwayml/stable-diffusion-v1-5's scheduler_config.json:
// no timestep_spacing.
const sd15Scheduler = `{"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0",
	"beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
	"num_train_timesteps": 1000, "set_alpha_to_one": false, "skip_prk_steps": true,
	"steps_offset": 1, "trained_betas": null, "clip_sample": false}`

// TestRequestTimestepSpacing runs 4-step generations and reads the UNet's
// timesteps from Progress: a sampler switched to takes its class's spacing
// when the file has none, Request.TimestepSpacing overrides it, and Params
// records what ran.
func TestRequestTimestepSpacing(t *testing.T) {
	p, err := openDir(t, tinyWithScheduler(t, sd15Scheduler))
	require.NoError(t, err)
	tests := []struct {
		name    string
		sampler Sampler
		spacing schedule.TimestepSpacing
		syntax  PromptSyntax
		want    []float64
		params  schedule.TimestepSpacing
	}{
		{"euler on sd15: linspace", Euler, schedule.SpacingDefault, PromptA1111, []float64{999, 666, 333, 0}, schedule.SpacingLinspace},
		{"ddim on sd15: leading", DDIM, schedule.SpacingDefault, PromptPlain, []float64{751, 501, 251, 1}, schedule.SpacingLeading},
		{"pndm on sd15: no warm-up", SamplerAuto, schedule.SpacingDefault, PromptA1111, []float64{751, 501, 501, 251, 1}, schedule.SpacingLeading},
		{"euler trailing", Euler, schedule.SpacingTrailing, PromptA1111, []float64{999, 749, 499, 249}, schedule.SpacingTrailing},
		{"ddim linspace", DDIM, schedule.SpacingLinspace, PromptA1111, []float64{999, 666, 333, 0}, schedule.SpacingLinspace},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []float64
			res, err := p.Txt2Img(context.Background(), Request{
				Prompt: "(a red apple)", Width: 64, Height: 64, Steps: 4, GuidanceScale: 1,
				Sampler: tt.sampler, TimestepSpacing: tt.spacing, PromptSyntax: tt.syntax,
				Progress: func(pr Progress) { got = append(got, pr.Timestep) },
			})
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
			assert.Equal(t, tt.params, res.Params.TimestepSpacing)
			assert.Equal(t, tt.syntax, res.Params.PromptSyntax)
		})
	}
	_, err = p.Txt2Img(context.Background(), Request{Steps: 4, TimestepSpacing: schedule.TimestepSpacing(9)})
	assert.ErrorIs(t, err, ErrInvalidRequest)
	_, err = p.Txt2Img(context.Background(), Request{Steps: 4, PromptSyntax: PromptSyntax(9)})
	assert.ErrorIs(t, err, ErrInvalidRequest)
}

// TestInvertedBetasAreABadModel checks that a backwards beta range is
// reported as a broken model, when the file is read or, when a class default
// completes the range, when the scheduler is built.
func TestInvertedBetasAreABadModel(t *testing.T) {
	_, err := openDir(t, tinyWithScheduler(t, `{"_class_name": "DDIMScheduler", "beta_start": 0.012, "beta_end": 0.00085}`))
	assert.ErrorIs(t, err, ErrBadModel)

	p, err := openDir(t, tinyWithScheduler(t, `{"_class_name": "EulerDiscreteScheduler", "beta_start": 0.05}`))
	require.NoError(t, err)
	_, err = p.Txt2Img(context.Background(), Request{Width: 64, Height: 64, Steps: 2})
	assert.ErrorIs(t, err, ErrBadModel)
	assert.Contains(t, err.Error(), "beta_start")
}

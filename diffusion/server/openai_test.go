package server

import (
	"bytes"
	"context"
	"errors"
	"image"
	"image/color"
	"image/png"
	"io"
	"net/http"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func openAIClient(url string, opts ...option.RequestOption) openai.Client {
	return openai.NewClient(append([]option.RequestOption{option.WithBaseURL(url + "/v1/"), option.WithAPIKey("k"),
		option.WithMaxRetries(0)}, opts...)...)
}

func TestOpenAIGenerate(t *testing.T) {
	_, hs := testServer(t, func(c *Config) { c.APIKey = "k" })
	client := openAIClient(hs.URL)
	ctx := context.Background()

	res, err := client.Images.Generate(ctx, openai.ImageGenerateParams{Prompt: "a red apple", N: openai.Int(2), Size: "64x64",
		User: openai.String("u1")}, option.WithJSONSet("steps", 3), option.WithJSONSet("seed", 7), option.WithJSONSet("sampler", "Euler a"))
	require.NoError(t, err)
	require.Len(t, res.Data, 2)
	assert.Equal(t, "png", string(res.OutputFormat))
	img, text := decodePNG(t, res.Data[0].B64JSON)
	assert.Equal(t, image.Pt(64, 64), img.Bounds().Size())
	assert.Contains(t, text["parameters"], "Steps: 3, Sampler: Euler a")
	assert.Contains(t, text["parameters"], "Seed: 7,")
	_, text = decodePNG(t, res.Data[1].B64JSON)
	assert.Contains(t, text["parameters"], "Seed: 8,", "the second image of the batch has the next seed")

	// url, served by the server (without the key: the URL is the capability), as JPEG.
	res, err = client.Images.Generate(ctx, openai.ImageGenerateParams{Prompt: "a red apple", Size: "auto",
		ResponseFormat: "url", OutputFormat: "jpeg", Quality: "low"}, option.WithJSONSet("steps", 2))
	require.NoError(t, err)
	require.Len(t, res.Data, 1)
	resp, err := http.Get(res.Data[0].URL)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, "image/jpeg", resp.Header.Get("Content-Type"))
	assert.Equal(t, []byte{0xff, 0xd8}, body[:2])

	// Errors come back as openai.Error, with OpenAI's fields.
	_, err = client.Images.Generate(ctx, openai.ImageGenerateParams{Prompt: "x", Size: "63x64"})
	var apiErr *openai.Error
	require.True(t, errors.As(err, &apiErr), "%v", err)
	assert.Equal(t, 400, apiErr.StatusCode)
	assert.Equal(t, "size", apiErr.Param)
	assert.Equal(t, "invalid_request_error", apiErr.Type)
	_, err = client.Images.Generate(ctx, openai.ImageGenerateParams{Prompt: "x"}, option.WithJSONSet("steps", 100000))
	require.True(t, errors.As(err, &apiErr))
	assert.Equal(t, "steps", apiErr.Param)

	models, err := client.Models.List(ctx)
	require.NoError(t, err)
	require.Len(t, models.Data, 1)
	assert.Equal(t, "gosd-emoji", models.Data[0].ID)
}

func TestOpenAIStream(t *testing.T) {
	_, hs := testServer(t, nil)
	client := openAIClient(hs.URL)
	stream := client.Images.GenerateStreaming(context.Background(), openai.ImageGenerateParams{Prompt: "a red apple",
		PartialImages: openai.Int(2), Size: "64x64"}, option.WithJSONSet("steps", 6))
	var partials []int64
	var completed int
	for stream.Next() {
		ev := stream.Current()
		switch ev.Type {
		case "image_generation.partial_image":
			p := ev.AsImageGenerationPartialImage()
			partials = append(partials, p.PartialImageIndex)
			img, _ := decodePNG(t, p.B64JSON)
			assert.Equal(t, image.Pt(64, 64), img.Bounds().Size())
		case "image_generation.completed":
			c := ev.AsImageGenerationCompleted()
			_, text := decodePNG(t, c.B64JSON)
			assert.Contains(t, text["parameters"], "Steps: 6")
			assert.Equal(t, "64x64", string(c.Size))
			completed++
		default:
			t.Errorf("unexpected event %q", ev.Type)
		}
	}
	require.NoError(t, stream.Err())
	assert.Equal(t, []int64{0, 1}, partials)
	assert.Equal(t, 1, completed)
}

func TestOpenAIEdit(t *testing.T) {
	_, hs := testServer(t, nil)
	client := openAIClient(hs.URL)
	var src bytes.Buffer
	require.NoError(t, png.Encode(&src, solid(64, 64, color.NRGBA{200, 30, 30, 255})))
	// The mask: the left half transparent (edited), the right half opaque (kept).
	mask := solid(64, 64, color.NRGBA{0, 0, 0, 255})
	for y := range 64 {
		for x := range 32 {
			mask.Set(x, y, color.NRGBA{})
		}
	}
	var mb bytes.Buffer
	require.NoError(t, png.Encode(&mb, mask))
	edit := openai.ImageEditParams{
		Image:  openai.ImageEditParamsImageUnion{OfFile: openai.File(bytes.NewReader(src.Bytes()), "src.png", "image/png")},
		Mask:   openai.File(bytes.NewReader(mb.Bytes()), "mask.png", "image/png"),
		Prompt: "a green leaf",
	}
	edit.SetExtraFields(map[string]any{"steps": "3"})
	res, err := client.Images.Edit(context.Background(), edit)
	require.NoError(t, err)
	require.Len(t, res.Data, 1)
	img, text := decodePNG(t, res.Data[0].B64JSON)
	assert.Equal(t, image.Pt(64, 64), img.Bounds().Size())
	assert.Contains(t, text["parameters"], "Denoising strength: 1")

	// Without a mask, an opaque image is repainted whole (img2img at strength 0.8).
	edit = openai.ImageEditParams{
		Image:  openai.ImageEditParamsImageUnion{OfFile: openai.File(bytes.NewReader(src.Bytes()), "src.png", "image/png")},
		Prompt: "a green leaf",
	}
	edit.SetExtraFields(map[string]any{"steps": "3"})
	res, err = client.Images.Edit(context.Background(), edit)
	require.NoError(t, err)
	_, text = decodePNG(t, res.Data[0].B64JSON)
	assert.Contains(t, text["parameters"], "Denoising strength: 0.8")

	// Not an image: a 400 naming the field.
	_, err = client.Images.Edit(context.Background(), openai.ImageEditParams{
		Image:  openai.ImageEditParamsImageUnion{OfFile: openai.File(bytes.NewReader([]byte("hello")), "x.png", "image/png")},
		Prompt: "x",
	})
	var apiErr *openai.Error
	require.True(t, errors.As(err, &apiErr), "%v", err)
	assert.Equal(t, 400, apiErr.StatusCode)
	assert.Equal(t, "image", apiErr.Param)
}

package modelfile

import (
	"archive/zip"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func kitControlNetDir(t *testing.T) string {
	dir := filepath.Join(testutil.ConformanceDir(t), "controlnet-tiny")
	if _, err := os.Stat(dir); err != nil {
		t.Skipf("controlnet-tiny not in the conformance kit: %v", err)
	}
	return dir
}

func loadControlNet(t *testing.T, path string) *ControlNet {
	cn, err := LoadControlNet(path)
	require.NoError(t, err)
	t.Cleanup(func() { cn.Close() })
	return cn
}

// The kit's single file (cldm names, control_model. prefix) loads to exactly the
// diffusers folder's tensors, its config read off the shapes equal to config.json's; so
// does the same file without the prefix.
func TestControlNetSingleFileMatchesFolder(t *testing.T) {
	dir := kitControlNetDir(t)
	ref := loadControlNet(t, filepath.Join(dir, "diffusers"))
	assert.Equal(t, []int{8, 16, 32, 32}, ref.Config.ConditioningEmbeddingOutChannels)
	assert.Equal(t, "rgb", ref.Config.ChannelOrder)
	assert.Empty(t, ref.Unused)

	// The same file with the prefix dropped from every key.
	f, err := OpenSafetensors(filepath.Join(dir, "controlnet-tiny-ldm.safetensors"))
	require.NoError(t, err)
	defer f.Close()
	var bare []Tensor
	for _, ten := range f.Tensors {
		ten.Name = strings.TrimPrefix(ten.Name, cldmPrefix)
		bare = append(bare, ten)
	}
	barePath := filepath.Join(t.TempDir(), "bare.safetensors")
	require.NoError(t, WriteSafetensors(barePath, bare, nil))

	for _, path := range []string{filepath.Join(dir, "controlnet-tiny-ldm.safetensors"), barePath} {
		t.Run(filepath.Base(path), func(t *testing.T) {
			assertSameControlNet(t, ref, loadControlNet(t, path))
		})
	}
}

// assertSameControlNet checks a ControlNet loaded from a single file against its folder:
// the config read off the shapes (and base) is config.json's, the tensors the same bytes.
func assertSameControlNet(t *testing.T, ref, got *ControlNet) {
	t.Helper()
	want := ref.Config
	want.SampleSize = got.Config.SampleSize // not in the file
	assert.Equal(t, want, got.Config)
	assert.Empty(t, got.Unused)
	require.Len(t, got.Tensors, len(ref.Tensors))
	for name, r := range ref.Tensors {
		g, ok := got.Tensors[name]
		require.True(t, ok, name)
		assert.Equal(t, r.Shape, g.Shape, name)
		assert.Equal(t, r.Data, g.Data, name)
	}
}

// SDXL ControlNets as single files (the diffusion package's test ControlNet, from_unet of
// the kit's sdxl-tiny): its folder's weights file on its own (diffusers' names, as
// lllyasviel's diffusers_xl_* files) and the same weights in the original layout
// (control_model. + the UNet's LDM names, the added embedding as label_emb) load to the
// folder's config and tensors, given the UNet they run beside for the heads (2, 2, 4, which
// no rule gives; without it the load says so). So does the kit's SD 1.x ControlNet's
// weights file on its own, where SD's 8 heads are right without a base.
func TestControlNetSingleFilesWithDiffusersNames(t *testing.T) {
	dir := filepath.Join("..", "testdata", "sdxl-controlnet", "controlnet")
	ref := loadControlNet(t, dir)
	require.Equal(t, AdditionTextTime, ref.Config.AdditionEmbedType)
	base := ref.Config.UNetConfig
	weights := filepath.Join(dir, "diffusion_pytorch_model.safetensors")

	f, err := OpenSafetensors(weights)
	require.NoError(t, err)
	defer f.Close()
	resolve := cldmModules(ref.Config).resolver(cldmPrefix)
	var ldm []Tensor
	for _, ten := range f.Tensors {
		ten.Name = resolve(ten.Name).name
		ldm = append(ldm, ten)
	}
	ldmPath := filepath.Join(t.TempDir(), "controlnet-xl-ldm.safetensors")
	require.NoError(t, WriteSafetensors(ldmPath, ldm, nil))

	for _, path := range []string{weights, ldmPath} {
		t.Run(filepath.Base(path), func(t *testing.T) {
			got, err := LoadControlNetFor(path, &base)
			require.NoError(t, err)
			defer got.Close()
			assertSameControlNet(t, ref, got)
			_, err = LoadControlNet(path)
			require.ErrorIs(t, err, ErrUnsupported)
			assert.ErrorContains(t, err, "64-wide heads")
		})
	}
	t.Run("sd1", func(t *testing.T) {
		kit := kitControlNetDir(t)
		ref := loadControlNet(t, filepath.Join(kit, "diffusers"))
		assertSameControlNet(t, ref, loadControlNet(t, filepath.Join(kit, "diffusers", "diffusion_pytorch_model.safetensors")))
	})
}

func TestControlNetLoadErrors(t *testing.T) {
	dir := kitControlNetDir(t)
	tmp := t.TempDir()
	writeConfig := func(name, cfg string) string {
		d := filepath.Join(tmp, name)
		require.NoError(t, os.MkdirAll(d, 0o755))
		b, err := os.ReadFile(filepath.Join(dir, "diffusers", "diffusion_pytorch_model.safetensors"))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(d, "diffusion_pytorch_model.safetensors"), b, 0o644))
		orig, err := os.ReadFile(filepath.Join(dir, "diffusers", "config.json"))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(d, "config.json"), []byte(strings.Replace(string(orig), cfg[:strings.Index(cfg, "=")], cfg[strings.Index(cfg, "=")+1:], 1)), 0o644))
		return d
	}
	cases := []struct {
		name, path string
		kind       error
	}{
		{"a base model is no ControlNet", filepath.Join(testutil.ConformanceDir(t), "sd1-tiny", "sd1-tiny-ldm.safetensors"), ErrBadModel},
		{"global pooling", writeConfig("pool", `"global_pool_conditions": false=`+`"global_pool_conditions": true`), ErrUnsupported},
		{"another class", writeConfig("class", `"ControlNetModel"=`+`"UNet2DConditionModel"`), ErrUnsupported},
		{"hint widths that the weights do not have", writeConfig("widths", "\"conditioning_embedding_out_channels\": [\n    8,=\"conditioning_embedding_out_channels\": [\n    12,"), ErrBadModel},
		{"missing", filepath.Join(tmp, "nothing"), os.ErrNotExist},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadControlNet(tc.path)
			require.ErrorIs(t, err, tc.kind)
		})
	}
}

// A random ControlNet written in the single-file layout loads back with the config it was
// written from.
func TestWriteRandomControlNetLoadsBack(t *testing.T) {
	c := SD15ControlNetConfig()
	// SD 1.5's layout at a tenth of the width, so that the test stays small.
	c.BlockOutChannels = []int{32, 64, 128, 128}
	c.CrossAttentionDim = 64
	c.TimeEmbeddingDim = 128
	path := filepath.Join(t.TempDir(), "control_random.safetensors")
	require.NoError(t, WriteRandomControlNet(context.Background(), path, c, F16, 3))
	got := loadControlNet(t, path)
	assert.Equal(t, c, got.Config)
	assert.Empty(t, got.Unused)
	specs, err := c.TensorSpecs()
	require.NoError(t, err)
	assert.Len(t, got.Tensors, len(specs))
	for name, x := range got.Tensors {
		assert.Equal(t, F16, x.DType, name)
	}
	assert.Error(t, WriteRandomControlNet(context.Background(), path, c, I64, 3))
}

// lllyasviel's .pth files are torch.save'd state dicts (zip), here without the prefix.
func TestControlNetPthSingleFile(t *testing.T) {
	dir := kitControlNetDir(t)
	ref := loadControlNet(t, filepath.Join(dir, "diffusers"))
	f, err := OpenSafetensors(filepath.Join(dir, "controlnet-tiny-ldm.safetensors"))
	require.NoError(t, err)
	defer f.Close()
	var specs []ckptTensor
	storages := map[string][]byte{}
	for i, x := range f.Tensors {
		key := fmt.Sprint(i)
		stride := make([]int64, len(x.Shape))
		n := int64(1)
		for d := len(x.Shape) - 1; d >= 0; d-- {
			stride[d] = n
			n *= x.Shape[d]
		}
		specs = append(specs, ckptTensor{name: strings.TrimPrefix(x.Name, cldmPrefix), storage: "HalfStorage", key: key, numel: n, shape: x.Shape, stride: stride})
		storages[key] = x.Data
	}
	path := filepath.Join(t.TempDir(), "control_v11p_sd15_tiny.pth")
	writeFile(t, path, torchZip(t, stateDictPickle(specs, false, false), storages, zip.Store))
	got := loadControlNet(t, path)
	assert.Equal(t, FormatPyTorch, got.Format)
	assertSameWeights(t, ref.Tensors, got.Tensors)
}

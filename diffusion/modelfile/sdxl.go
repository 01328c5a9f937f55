package modelfile

import (
	"fmt"
	"slices"

	"github.com/gosd/gosd/diffusion/schedule"
)

// SDXL's original (SGM, generative-models) single files keep the UNet and VAE under the
// LDM prefixes and the text encoders as conditioner embedders: CLIP ViT-L/14 in
// Hugging Face's layout, OpenCLIP ViT-bigG/14 in its own (fused in_proj, text_projection
// stored as the matrix the pooled output is multiplied by).
const (
	sgmEmbedders = "conditioner.embedders."
	sgmCLIP      = sgmEmbedders + "0.transformer."
	sgmOpenCLIP  = sgmEmbedders + "1.model."
	// The refiner's one encoder, OpenCLIP ViT-bigG.
	sgmRefinerOpenCLIP = sgmEmbedders + "0.model."
)

// isSGMRefiner reports SDXL refiner's layout: one OpenCLIP encoder, first.
func (ts ldmTensors) isSGMRefiner() bool {
	return ts.hasPrefix(sgmRefinerOpenCLIP+"transformer.resblocks.") && !ts.hasPrefix(sgmEmbedders+"1.")
}

// detectSGMFamily recognises SDXL base and refiner by the parts they are made of, not by
// one flag: the text encoders in their layouts (base: CLIP and OpenCLIP; refiner:
// OpenCLIP alone) and a UNet with the added text_time embedding (label_emb) and linear
// transformer projections.
func (ts ldmTensors) detectSGMFamily() (Family, error) {
	base := ts.hasPrefix(sgmCLIP) && ts.hasPrefix(sgmOpenCLIP+"transformer.resblocks.")
	switch {
	case !base && !ts.isSGMRefiner():
		return 0, unsupportedf("a checkpoint with conditioner.embedders.* other than SDXL base's (CLIP under %s*, OpenCLIP under %s*) or refiner's (OpenCLIP under %s*) is not supported", sgmCLIP, sgmOpenCLIP, sgmRefinerOpenCLIP)
	case !ts.hasPrefix(ldmUNet + "label_emb.0.0."):
		return 0, unsupportedf("SDXL text encoders without the UNet's added embedding (%slabel_emb.0.0.*)", ldmUNet)
	}
	if t, ok := ts[ldmUNet+"middle_block.1.proj_in.weight"]; !ok || len(t.Shape) != 2 {
		return 0, unsupportedf("SDXL text encoders with a UNet without linear transformer projections")
	}
	return FamilySDXL, nil
}

// fromSGM maps an SDXL base or refiner single file onto diffusers names. Configs are
// SDXL's, with the sizes read off the shapes: levels, channels, depths, widths, the added
// embedding's time-id width (its inputs less the projection, over the six ids; five for
// the refiner, whose last is the aesthetic score).
func (m *Model) fromSGM(ts ldmTensors, o *options) error {
	refiner := ts.isSGMRefiner()
	openCLIPPrefix, ids := sgmOpenCLIP, 6
	var text CLIPConfig
	var textSource func(string) source
	var err error
	if refiner {
		openCLIPPrefix, ids = sgmRefinerOpenCLIP, 5
	} else if text, textSource, err = ts.inferHFCLIP(SDXLTextEncoderConfig(), sgmCLIP, o.textHeads); err != nil {
		return fmt.Errorf("text_encoder: %w", err)
	}
	// The refiner's one encoder takes --text-heads' first count, the base's second its own.
	heads2 := o.textHeads2
	if refiner {
		heads2 = o.textHeads
	}
	text2, text2Source, err := ts.inferOpenCLIP(SDXLTextEncoder2Config(), openCLIPPrefix, heads2)
	if err != nil {
		return fmt.Errorf("text_encoder_2: %w", err)
	}
	if _, err := ts.shape(openCLIPPrefix+"text_projection", 2); err != nil {
		return fmt.Errorf("text_encoder_2: %w", err)
	}
	pred := o.predictionFor(FamilySDXL)
	unet, err := ts.inferUNet(FamilySDXL, pred, o.unetHeads)
	if err != nil {
		return fmt.Errorf("unet: %w", err)
	}
	add, err := ts.shape(ldmUNet+"label_emb.0.0.weight", 2)
	if err != nil {
		return fmt.Errorf("unet: %w", err)
	}
	unet.AdditionEmbedType = AdditionTextTime
	unet.ProjectionClassEmbeddingsInputDim = int(add[1])
	if n := unet.ProjectionClassEmbeddingsInputDim - text2.ProjectionDim; n <= 0 || n%ids != 0 {
		return fmt.Errorf("unet: label_emb.0.0 takes %d inputs, not text_embeds %d + %d time ids", add[1], text2.ProjectionDim, ids)
	}
	unet.AdditionTimeEmbedDim = (unet.ProjectionClassEmbeddingsInputDim - text2.ProjectionDim) / ids
	unet.SampleSize = SDXLUNetConfig().SampleSize
	vae, err := ts.inferVAE()
	if err != nil {
		return fmt.Errorf("vae: %w", err)
	}
	sdxlVAE := SDXLVAEConfig()
	vae.ScalingFactor, vae.SampleSize = sdxlVAE.ScalingFactor, sdxlVAE.SampleSize

	encoders := []struct {
		name     string
		openCLIP bool
		cfg      CLIPConfig
	}{{"text_encoder", false, text}, {"text_encoder_2", true, text2}}
	if refiner {
		encoders = encoders[1:]
	}
	for _, c := range encoders {
		warning, err := checkDepth(c.name, textLayout{openCLIP: c.openCLIP, width: c.cfg.HiddenSize}, c.cfg.NumHiddenLayers)
		if err != nil {
			return fmt.Errorf("%s: %w", c.name, err)
		}
		if warning != "" {
			m.Warnings = append(m.Warnings, warning)
		}
	}
	used := map[string]bool{}
	if m.UNet, err = bindComponent("unet", unet, len(ts), unetModules(unet).resolver(ldmUNet), ts.find, used); err != nil {
		return err
	}
	if m.VAE, err = bindComponent("vae", vae, len(ts), vaeModules(vae).resolver(ldmVAE), ts.find, used); err != nil {
		return err
	}
	te2 := NamedTextEncoder{Name: "text_encoder_2"}
	if te2.Component, err = bindComponent("text_encoder_2", text2, len(ts), text2Source, ts.find, used); err != nil {
		return err
	}
	if refiner {
		// As a refiner folder reads: its one encoder is the model's text encoder.
		m.TextEncoder, m.RequiresAestheticsScore = te2.Component, true
	} else {
		if m.TextEncoder, err = bindComponent("text_encoder", text, len(ts), textSource, ts.find, used); err != nil {
			return err
		}
		m.ExtraTextEncoders = []NamedTextEncoder{te2}
		m.ForceZerosForEmptyPrompt = true // the base's model_index.json; the refiner's says false
	}
	m.Family = FamilySDXL
	m.Scheduler = defaultScheduler(FamilySDXL, pred)
	for name := range ts {
		if !used[name] {
			m.Unused = append(m.Unused, name)
		}
	}
	slices.Sort(m.Unused)
	return nil
}

// SDXLUNetConfig mirrors stabilityai/stable-diffusion-xl-base-1.0 unet/config.json:
// three levels, 64-wide heads, 1, 2 and 10 transformer blocks, a 2048-wide context (768 +
// 1280) and the text_time added embedding (1280 + 6 x 256 inputs).
func SDXLUNetConfig() UNetConfig {
	c := SD15UNetConfig()
	c.SampleSize = 128
	c.BlockOutChannels = []int{320, 640, 1280}
	c.LayersPerBlock = []int{2, 2, 2}
	c.DownBlockTypes = []string{plainDown, crossAttnDown, crossAttnDown}
	c.UpBlockTypes = []string{crossAttnUp, crossAttnUp, plainUp}
	c.AttentionHeads = []int{5, 10, 20}
	c.TransformerLayersPerBlock = []int{1, 2, 10}
	c.CrossAttentionDim = 2048
	c.UseLinearProjection = true
	c.AdditionEmbedType = AdditionTextTime
	c.AdditionTimeEmbedDim = 256
	c.ProjectionClassEmbeddingsInputDim = 2816
	return c
}

// SDXLVAEConfig mirrors stabilityai/stable-diffusion-xl-base-1.0 vae/config.json: SD's
// autoencoder with latents scaled by 0.13025, decoded in float32 (force_upcast).
func SDXLVAEConfig() VAEConfig {
	c := SD15VAEConfig()
	c.ScalingFactor = 0.13025
	c.SampleSize = 1024
	c.ForceUpcast = true
	return c
}

// SDXLTextEncoderConfig mirrors stabilityai/stable-diffusion-xl-base-1.0
// text_encoder/config.json: CLIP ViT-L/14's text tower with the legacy token ids.
func SDXLTextEncoderConfig() CLIPConfig {
	c := SD15TextEncoderConfig()
	c.BOSTokenID, c.EOSTokenID, c.ProjectionDim = 0, 2, 768
	return c
}

// SDXLTextEncoder2Config mirrors stabilityai/stable-diffusion-xl-base-1.0
// text_encoder_2/config.json: OpenCLIP ViT-bigG/14's text tower with its projection.
func SDXLTextEncoder2Config() CLIPConfig {
	return CLIPConfig{
		VocabSize: 49408, HiddenSize: 1280, IntermediateSize: 5120,
		NumHiddenLayers: 32, NumAttentionHeads: 20, MaxPositionEmbeddings: 77,
		HiddenAct: "gelu", LayerNormEps: 1e-5,
		BOSTokenID: 0, EOSTokenID: 2, PadTokenID: 1, ProjectionDim: 1280, WithProjection: true,
	}
}

// SDXLSchedulerConfig mirrors stabilityai/stable-diffusion-xl-base-1.0
// scheduler/scheduler_config.json: Euler, leading spacing.
func SDXLSchedulerConfig() SchedulerConfig {
	c := SD15SchedulerConfig()
	c.ClassName = "EulerDiscreteScheduler"
	c.TimestepSpacing = "leading"
	c.SkipPRKSteps = true
	c.PredictionType = schedule.PredictEpsilon
	return c.withRaw()
}

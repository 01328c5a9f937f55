// Package diffusion generates images with Stable Diffusion 1.x and 2.x models from Go.
//
//	p, err := diffusion.Open("v1-5-pruned-emaonly.safetensors") // or a diffusers folder
//	if err != nil {
//		return err
//	}
//	defer p.Close()
//	res, err := p.Txt2Img(ctx, diffusion.Request{
//		Prompt:  "a red apple on a wooden table, studio light",
//		Steps:   20,
//		Sampler: diffusion.DPMPP2M,
//		Seed:    42,
//	})
//	if err != nil {
//		return err
//	}
//	return png.Encode(w, res.Images[0])
//
// The networks run in the native runtime (C kernels, or CUDA kernels on a GPU), loaded
// with package binding; tokenization, samplers, random numbers and file formats are pure
// Go (packages tokenizer, schedule, rng, modelfile). Results follow diffusers: with the
// same model, prompt, seed (rng.CPU generator), sampler and steps, images match
// diffusers' StableDiffusionPipeline.
//
// ControlNets (Pipeline.LoadControlNet, Request.Controls) condition any request on
// control images as diffusers' StableDiffusionControlNetPipeline does; package control
// makes control images (Canny edges, inverted line art, the inpainting condition).
//
// Requests are plain structs whose zero values are documented defaults. Every call takes
// a context: cancelling it stops the work within one network operation and the call
// returns ctx.Err(). A Pipeline is safe for concurrent use; its calls are serialised.
package diffusion

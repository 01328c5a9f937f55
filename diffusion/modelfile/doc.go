// Package modelfile reads and writes Stable Diffusion weights and configs
// in pure Go: safetensors, PyTorch checkpoints (.ckpt/.pt/.bin) and
// diffusers folders, the key mapping of original (CompVis/LDM) single-file
// checkpoints onto diffusers names, and the configs of the networks.
//
// Load is the entry point. It returns a Model whose three components (UNet,
// VAE, text encoder) each hold a config and a table of named tensors: the
// name, dtype, shape and bytes the native runtime uploads.
//
//	m, err := modelfile.Load("v1-5-pruned-emaonly.safetensors")
//	if err != nil { ... }
//	defer m.Close()
//	w := m.UNet.Tensors["conv_in.weight"] // F16 [320 4 3 3], a view of the file
//
// # Memory and lifetime
//
// Files are memory-mapped read-only and tensors are views of the mapping:
// no weight is copied or converted, so loading SD 1.5 costs milliseconds of
// CPU whatever its size. Tensor.Data is valid until the Model (or File) is
// closed and must never be written to. The exceptions are pickled tensors
// that are not contiguous or sit in compressed zip entries, which torch
// does not write: those are copied, within bounds set by the file's size.
//
// # Names
//
// Tensors are keyed by the names diffusers (UNet2DConditionModel,
// AutoencoderKL) and transformers (CLIPTextModel) use. Text encoder names
// always carry the "text_model." prefix, as real SD checkpoints and the
// diffusers conversion write them; folders saved by transformers releases
// that drop it are accepted and renamed. Single files are mapped per
// module: the UNet's input_blocks/middle_block/output_blocks, the VAE's
// down/mid/up (whose mid-block attention 1×1 convs serve as linear
// weights, by shape), and either the Hugging Face CLIP text model (SD 1.x)
// or the OpenCLIP text tower (SD 2.x), whose fused attention in_proj is
// split into q, k and v views and whose last residual block, projection
// and logit scale are left out: SD 2.x conditions on the penultimate
// layer, so its diffusers text encoder has one layer fewer. File tensors
// that no component needs are listed in Model.Unused.
//
// # Configs
//
// UNetConfig, VAEConfig and CLIPConfig mirror config.json with defaults
// resolved; their TensorSpecs list every tensor they imply, which both
// validates loaded weights (a missing or mis-shaped tensor is an error
// naming it) and drives WriteRandom. For single files the configs are
// inferred from tensor shapes; what shapes cannot tell comes from the
// family (see WithPredictionType, WithUNetHeads, WithTextHeads).
//
// # Errors
//
// Load's errors are ErrUnsupported for a model of a kind this package does
// not read (SDXL, an F8 tensor, another activation) and ErrBadModel for any
// other fault of the files: malformed or truncated, a missing file or
// tensor, a shape, dtype or layer count the rest contradicts. They are the
// values of diffusion.ErrUnsupported and diffusion.ErrBadModel. What loads
// but looks wrong for a real model (a single file's text encoder of
// non-standard width, as tiny test models have) is listed in Model.Warnings.
//
// # Pickles
//
// PyTorch checkpoints are read by a restricted unpickler that never imports
// or calls anything. It rebuilds tensors and plain containers by its own
// rules; every other global it meets becomes an inert placeholder that is
// never constructed. Placeholders are tolerated outside the weights (PyTorch
// Lightning keeps callbacks and hyper-parameters there) and refused, with
// the class named, where a tensor is expected.
package modelfile

// Package lora reads low-rank adapters (LoRA and the LyCORIS family) and
// textual-inversion embeddings, and merges adapters into a model's weights.
//
// # Formats
//
// Load reads .safetensors files and torch.save checkpoints (.pt, .ckpt)
// holding a flat dict of tensors. A key is a module key followed by one of
// the suffixes below; module keys come in two namings:
//
//   - kohya-ss / AUTOMATIC1111 / LyCORIS: "lora_unet_" (UNet), "lora_te_"
//     or "lora_te1_" (first text encoder) or "lora_te2_" (second, SDXL),
//     followed by the module's path with every "." written as "_"
//     ("lora_unet_down_blocks_0_attentions_0_proj_in"). Since module names
//     contain "_" themselves, Apply maps them back by writing the target
//     model's own module paths the same way and comparing. kohya's SDXL
//     trainer names UNet modules as the original checkpoint does
//     ("lora_unet_input_blocks_4_1_proj_in"): PlanAliased matches those
//     through a second name of each target (modelfile.UNetConfig.LDMNames).
//   - diffusers / PEFT: the module path itself, prefixed by "unet.",
//     "text_encoder." or "text_encoder_2." (peft's own "base_model.model."
//     prefix is dropped). A key without a component prefix belongs to the
//     UNet, unless it starts with "text_model." (a bare CLIP text model).
//
// # Weight updates
//
// W is the target weight viewed as a matrix [out, in·kh·kw] (a convolution's
// kernel is flattened row-major, as torch's reshape does), s is the scale the
// caller gives, and a is the alpha of the module (a 0-dim ".alpha" tensor).
// Every update is W' = W + s · c · ΔW with c = a / r, where r is the rank
// named below; without an alpha, c = 1 (alpha = rank, what diffusers and
// AUTOMATIC1111 assume). All arithmetic is float64, rounded once into the
// weight's own dtype (or the one MergeAs is given).
//
//   - LoRA / LoCon: up [out, r] (or [out, r, 1, 1]), down [r, in] (or
//     [r, in, kh, kw], the base conv's kernel): ΔW = up @ down; r =
//     down.shape[0]. PEFT's lora_B is up and lora_A is down. With LoCon's
//     Tucker core "lora_mid" [r, r, kh, kw] and down [r, in, 1, 1]:
//     ΔW[o, i, y, x] = Σ_{n,m} up[o, n] · mid[n, m, y, x] · down[m, i].
//   - LoHa (hada_*): ΔW = (w1_a @ w1_b) ⊙ (w2_a @ w2_b), r = w1_b.shape[0].
//     With Tucker cores hada_t1/hada_t2 [r, r, kh, kw] the factors w?_a are
//     [r, out] and w?_b [r, in], and each Hadamard operand is
//     F[o, i, y, x] = Σ_{p,q} t[p, q, y, x] · w_a[p, o] · w_b[q, i].
//   - LoKr (lokr_*): ΔW = kron(w1, w2), w1 = lokr_w1 [o1, i1] or
//     lokr_w1_a @ lokr_w1_b, w2 = lokr_w2 [o2, i2(, kh, kw)] or
//     lokr_w2_a @ lokr_w2_b or, with the Tucker core lokr_t2, the
//     operand above built from (lokr_t2, lokr_w2_a, lokr_w2_b); out = o1·o2,
//     in = i1·i2. r = lokr_w1_b.shape[0], else lokr_w2_b.shape[0]; when
//     neither factor is decomposed there is no rank and c = 1 whatever the
//     alpha (LyCORIS sets alpha = rank then).
//   - DoRA (a "dora_scale" magnitude of LyCORIS, or PEFT's
//     "lora_magnitude_vector"): with V = W + c·ΔW, the decomposed weight is
//     W_d = m · V / (‖V‖ + ε), ε = float32 epsilon, where the norm is taken
//     per output row when m has out elements (LyCORIS wd_on_out, PEFT) and
//     per input channel (over out, kh, kw) when m is [1, in, 1, 1]. The scale
//     interpolates between the base weight and W_d: W' = W + s · (W_d − W),
//     so s = 0 leaves W and s = 1 gives W_d (ComfyUI's convention).
//
// Several adapters merge into one tensor by summing their updates, each
// computed against the same base weight, before the single rounding.
//
// # Textual inversion
//
// LoadEmbedding reads AUTOMATIC1111 embeddings ("emb_params", SDXL's
// "clip_l"/"clip_g", or a file of one tensor) into vectors bound to the
// file's base name as the token.
package lora

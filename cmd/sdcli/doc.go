// Sdcli generates images with Stable Diffusion 1.x, 2.x and SDXL models from the command line,
// with flags in the style of stable-diffusion.cpp, and measures the runtime.
//
//	sdcli txt2img -p "a red apple on a wooden table" -o apple.png
//	sdcli img2img -i photo.jpg -p "an oil painting" --strength 0.6 -o painting.png
//	sdcli inpaint -i photo.png --mask mask.png -p "a straw hat" -o hat.png
//	sdcli inpaint -i photo.png --outpaint 0,0,256,0 -o wider.png
//	sdcli upscale -m stable-diffusion-x4-upscaler -i small.png -p "a cat" -o large.png
//	sdcli preprocess canny -i photo.png -o edges.png
//	sdcli info v1-5-pruned-emaonly.safetensors
//	sdcli bench --arch sd15 --size 512
//	sdcli serve --addr 127.0.0.1:7860
//
// Progress goes to stderr (one line redrawn on a terminal, plain lines otherwise) and
// the paths of the images written to stdout, one per line. Ctrl-C cancels cleanly:
// nothing is written. Exit codes: 0 success, 1 error, 2 invalid command line or
// request, 130 cancelled.
//
// Flags are given as -name or --name; sdcli help COMMAND and sdcli COMMAND -h print
// them with their defaults.
//
// # sdcli txt2img
//
// Generates images from a prompt. Each image is a PNG carrying its generation
// parameters in a "parameters" text chunk, as AUTOMATIC1111's web UI writes it, so that
// web UIs and image viewers show (and can reproduce) how it was made.
//
//	-m path               model file (.safetensors, .ckpt) or diffusers folder; default: the
//	                      demo model, the diffusers folder models/gosd-emoji looked for beside
//	                      the executable's folder, in its parent, then in the working
//	                      directory and its parents
//	-p text               prompt (default empty)
//	-n text               negative prompt (default empty)
//	--prompt-2 text       SDXL: the second text encoder's prompt (default: the prompt)
//	--negative-prompt-2 text  SDXL: the second text encoder's negative prompt (default: the
//	                      negative prompt). SDXL models with force_zeros_for_empty_prompt
//	                      condition on zeros when both negative prompts are empty.
//	--original-size WxH, --target-size WxH, --crop X,Y  SDXL's micro-conditioning: the
//	                      original image size, target size and crop corner (left,top) the
//	                      model is told (default: the output size, twice, and 0,0)
//	--negative-original-size WxH, --negative-target-size WxH, --negative-crop X,Y
//	                      the negative row's, used only when both negative sizes are
//	                      given (default: the positive row's)
//	--aesthetic-score x, --negative-aesthetic-score x  the SDXL refiner's last time id
//	                      (default 6 and 2.5, as diffusers)
//	--refiner path        txt2img: a second model (SDXL's refiner, or any model with the same
//	                      latents) that takes the schedule over from --refiner-start on, as
//	                      diffusers' denoising_end / denoising_start (default: none)
//	--refiner-start x     the fraction of the schedule the first model runs, in (0, 1)
//	                      (default 0.8)
//	-W px, -H px          width and height, multiples of 8 (default: the model's native size)
//	--steps N             sampling steps (default 20)
//	--cfg scale           classifier-free guidance scale, 1 to 100; 1 turns it off (default 7.5)
//	--sampler NAME        auto ddpm ddim pndm euler euler_a heun dpm2 dpmpp_2m dpmpp_2s_a lms
//	                      unipc lcm (default auto: the scheduler the model's config names)
//	--schedule NAME       sigma spacing of sigma-based samplers: default, karras or
//	                      exponential (default "default": the scheduler config's)
//	--timestep-spacing NAME  leading, trailing or linspace: how the steps' timesteps are
//	                      spread (default: the scheduler config's timestep_spacing, else the
//	                      sampler's diffusers default: leading for ddim and pndm, linspace
//	                      for euler and most others)
//	--prompt-syntax NAME  a1111: AUTOMATIC1111's (emphasis:1.2), [less] and BREAK, prompts
//	                      past 75 tokens in chunks (default); plain: the prompt as diffusers
//	                      reads it, brackets literal, cut at 75 tokens
//	--seed N              seed; -1 picks a random 32-bit seed (default -1). The seed used is
//	                      printed on stderr and recorded in the PNG.
//	--rng NAME            cpu: torch's CPU generator, as diffusers (default); cuda: torch's
//	                      CUDA generator, to reproduce seeds of web UIs that draw noise on the GPU
//	--batch N             images generated together (default 1)
//	-o path               output PNG (default output.png); with --batch N > 1 the files are
//	                      name-1.png ... name-N.png. Existing files are replaced, never left
//	                      half-written: each image is written to a temporary file in the same
//	                      folder and renamed. The folder is checked (it exists and a file can
//	                      be created in it) before anything is generated.
//	--clip-skip N         text encoder layers to skip, AUTOMATIC1111's numbering (default 0)
//	--guidance-rescale x  diffusers' guidance_rescale in [0, 1] (default 0)
//	--eta x               DDIM's eta in [0, 1] (default 0)
//	--controlnet path     a ControlNet: a diffusers ControlNetModel folder or an original
//	                      single file (control_v11*_sd15_*.safetensors or .pth); repeatable
//	                      for several (their residuals are summed). The flags below apply to
//	                      the latest --controlnet before them.
//	--control-image path  its control image, PNG or JPEG (required), resized to the output
//	                      size (Lanczos, as diffusers)
//	--control-scale x     its conditioning scale, >= 0 (default 1.0; 0 leaves it out)
//	--control-start x     fraction of the steps before it starts acting (default 0)
//	--control-end x       fraction of the steps after which it stops (default 1); it is not
//	                      run outside [start, end]
//	--guess-mode          diffusers' guess mode: it sees the prompt's half of the guidance
//	                      batch only, its residuals scaled from 0.1 to 1 (default off)
//	--control-preprocess NAME  none (the image is the control map, default), canny (edges,
//	                      as cv2.Canny), invert (line art on white to lines on black) or,
//	                      for inpaint, inpaint: the inpainting ControlNet's condition made
//	                      from -i and the mask (-1 where masked; no --control-image)
//	--canny LOW,HIGH      thresholds of canny (default 100,200)
//	                      The PNG records each ControlNet as AUTOMATIC1111's ControlNet
//	                      extension does: ControlNet 0: "Module: canny, Model: name [hash], ..."
//	--text-heads N[,N2]   the text encoder's attention head count, and N2 SDXL's second
//	                      encoder's, for single-file checkpoints whose text width is not SD's
//	                      (default: the folder's config, else the width / 64)
//	--unet-heads N,N,...  the UNet's attention heads per level, for single files whose heads
//	                      are not SD's (default: the folder's config, else 8 per level for
//	                      SD 1.x, the width / 64 for SD 2.x and SDXL)
//	--vae-decoder NAME    what decodes the image: vae, the model's own (default), or
//	                      taesd:PATH, a TAESD (diffusers AutoencoderTiny folder, the original
//	                      taesd_encoder / taesd_decoder files or a folder of them): a fraction
//	                      of the VAE's time, less detail
//	--vae-tiling          run the VAE in overlapping tiles blended as diffusers'
//	                      enable_tiling, memory of one tile for any image size;
//	                      --vae-tiling=off never, =auto (default) when the untiled pass would
//	                      need more than about 4 GiB of activations (SD 1.5 at 2048x2048)
//	--scheduler-config path  a diffusers scheduler_config.json used instead of the model's
//	                      (default: the folder's, else the family's): the sampler, spacing and
//	                      prediction type of a distilled model's single file, e.g. SD-Turbo's
//	                      (Euler, trailing) for sd_turbo.safetensors with --steps 1 --cfg 1
//	--hires-scale x       hires fix (AUTOMATIC1111's): after the first pass, repaint the image
//	                      at x times its size, x in (1, 4] (default 0: none)
//	--hires-upscaler NAME how the first pass is enlarged: latent (its latents, bilinear) or
//	                      esrgan:PATH (the decoded image through an ESRGAN, resized with
//	                      Lanczos and encoded again) (default latent)
//	--hires-steps N       steps of the hires pass, as img2img counts them (default 0: --steps)
//	--hires-strength x    denoising strength of the hires pass, in (0, 1] (default 0.7); the
//	                      PNG records "Hires upscale", "Hires steps", "Hires upscaler" and
//	                      "Denoising strength" as the web UI does
//	--lora PATH[:SCALE]   merge a LoRA / LyCORIS adapter (kohya or PEFT keys; LoRA, LoCon,
//	                      LoHa, LoKr, DoRA) into the UNet and text encoder at SCALE (default 1);
//	                      repeatable. The PNG records "Lora hashes" as AUTOMATIC1111 does.
//	--lora-dir DIR        folder (with subfolders) in which prompt tags <lora:NAME>,
//	                      <lora:NAME:w> and <lora:NAME:te:unet> find NAME.safetensors (.pt,
//	                      .ckpt); the tags are removed from the prompt (default: none, a tag
//	                      is then an error)
//	--embedding-dir DIR   folder (with subfolders) of textual-inversion embeddings (.safetensors,
//	                      .pt, .bin): a file's name in the prompt or negative prompt stands for
//	                      its vectors, as in AUTOMATIC1111; the PNG records "TI hashes"
//	--threads N           CPU threads (default 0: one per core)
//	--device NAME         auto, cpu or cuda (default auto: a CUDA GPU when the GPU build of the
//	                      runtime and a usable GPU are present)
//	--precision NAME      fp32 or bf16: what the matrix products compute in; bf16 needs a CPU
//	                      with AVX512_BF16 and is refused elsewhere (default fp32, exact)
//	--lib path            the runtime library, a file or a folder holding it (default: search
//	                      SD_LIB, the executable's folder, lib/ beside it, build/, the system
//	                      path)
//	-v                    log the runtime's and the pipeline's messages on stderr (default off)
//
// # sdcli img2img
//
// Repaints an image guided by a prompt. It takes the flags of txt2img and:
//
//	-i path               the init image, PNG or JPEG (required)
//	--strength x          how much is repainted, in (0, 1] (default 0.8)
//
// -W and -H default to the init image's size rounded down to a multiple of 8; another
// size resizes it (Lanczos). Images (and masks) of more than 4096 pixels a side are
// refused, from the size their header declares, before they are decoded.
//
// # sdcli inpaint
//
// Repaints the white part of a mask over an image, or extends the image (outpainting).
// It takes the flags of txt2img and:
//
//	-i path               the image, PNG or JPEG (required)
//	--mask path           the mask, PNG or JPEG: white is repainted, black kept (required
//	                      unless --outpaint)
//	--outpaint L,T,R,B    extend the canvas by these many pixels left, top, right and bottom
//	                      (rounded up to keep it a multiple of 8) and paint the new area; the
//	                      mask is made from the margins
//	--strength x          how much is repainted, in (0, 1] (default 1)
//
// # sdcli upscale
//
// Upscales an image 4x with a Stable Diffusion x4 upscaler (a diffusers
// StableDiffusionUpscalePipeline folder such as stabilityai/stable-diffusion-x4-upscaler,
// or its original x4-upscaler-ema single file),
// the detail generated under the prompt's guidance, as diffusers does: --seed S with
// --rng cpu reproduces diffusers' image for torch.Generator().manual_seed(S). It takes
// the flags of txt2img except -W and -H (the output is the image's size, rounded down to
// a multiple of 4, times 4), and:
//
//	-m path               the upscaler (required)
//	-i path               the low-resolution image, PNG or JPEG (required)
//	--noise-level N       noise added to the low-resolution image first, in [0, the model's
//	                      max_noise_level] (350 for the released model): more lets the model
//	                      change more (default 20)
//	--tile PX             images wider or taller than PX run in overlapping tiles of at most
//	                      PX x PX input pixels, the UNet's predictions blended across the
//	                      overlaps at every step, the VAE decoding tiles of half (>= 64):
//	                      memory follows the tile, not the image (default 0: twice the
//	                      model's sample size, 256 for the released model; a tile covering
//	                      the image runs it whole, as diffusers)
//
// The PNG's parameters carry "Noise level".
//
// A -m file holding an ESRGAN generator under Real-ESRGAN's names (RealESRGAN_x4plus.pth,
// RealESRGAN_x4plus_anime_6B.pth, RealESRGAN_x2plus.pth, or the same as safetensors) is
// detected and upscales without prompt or sampling, by the model's own factor, in tiles
// of --tile input pixels (default 256); its PNG carries "Postprocess upscale by" and
// "Postprocess upscaler", as AUTOMATIC1111's extras tab writes them.
//
// # sdcli info
//
//	sdcli info [MODEL]
//
// Describes a model file or diffusers folder (default: the demo model) without the
// runtime library: family, format, prediction type, and per network (UNet, VAE, text
// encoder) its configuration, a histogram of its tensors' types, its parameter count
// and size; then its tokenizer, native image size and the scheduler that --sampler auto
// uses.
//
//	--text-heads N[,N2], --unet-heads N,N,..., --scheduler-config path  as for txt2img
//
// # sdcli preprocess
//
//	sdcli preprocess KIND -i IMAGE -o OUTPUT.png
//
// Makes a ControlNet control image from an image, for the kinds of control that need
// no model (package diffusion/control), and writes it as an 8-bit gray PNG, which
// pipelines read as RGB with three equal channels. Flags may come before or after KIND.
//
//	canny                 edges, white on black, exactly as OpenCV's cv2.Canny(image, LOW,
//	                      HIGH) on the image's RGB, as ControlNet's canny annotator and
//	                      diffusers' ControlNet example compute them (neither blurs first)
//	gray                  the luma, as OpenCV's cv2.cvtColor(image, COLOR_RGB2GRAY)
//	invert                255 minus the luma: black lines drawn on white become the white
//	                      lines on black that scribble and lineart ControlNets expect
//
//	-i path               the image, PNG or JPEG (required); its alpha is dropped, not
//	                      composited, as PIL's convert("RGB")
//	-o path               the output PNG (required), replaced atomically as by txt2img
//	--canny LOW,HIGH      canny's hysteresis thresholds on the L1 gradient magnitude, 0
//	                      to 2040 (default 100,200); swapped when LOW > HIGH, as OpenCV
//
// # sdcli bench
//
// Measures a txt2img run on random weights of a full-size architecture, so that speed
// and memory can be compared without downloading a model. The weights (fp16) are
// written once, by modelfile.WriteRandom, into a sub-folder of the cache per
// architecture and type (a few GB, under a minute); later runs reuse them. The run
// uses the DDIM sampler and classifier-free guidance (a UNet batch of 2 per step) unless
// --cfg turns it off.
// The report gives the load time (Open), text encoding, the median step time, VAE
// decoding, the total of the call, the peak resident memory of the process and the
// runtime's peak activation memory. With -m it times that model instead, at its native
// size unless --size is given; an x4 upscaler is timed upscaling a gray image of a
// quarter of the size to the size (in its default tiles).
//
//	--arch NAME           sd15, sd21, sdxl (SDXL base 1.0: UNet 2.57 B parameters, both text
//	                      encoders) or x4-upscaler (timed upscaling a gray --size/4 image to
//	                      --size) (default sd15)
//	-m path               a model file or diffusers folder to time instead (not with --arch)
//	--size px             image width and height, a multiple of 8 (default 512, 1024 for
//	                      sdxl; with -m the model's native size)
//	--steps N             sampling steps whose median is reported (default 3)
//	--cache dir           folder of the random weights (default $XDG_CACHE_HOME/gosd, else
//	                      ~/.cache/gosd)
//	--json                print the report as JSON instead of a table (default off)
//	--profile             also print the runtime's time per op kind on stderr (default off)
//	--controlnet path     also run this ControlNet at every step (a ring pattern as its
//	                      control image); random: random weights of an SD 1.5-style
//	                      ControlNet for --arch, written once to the cache as a single file
//	                      (default: none). Compare the step time with a run without it.
//	--taesd path          decode the image with this TAESD (folder or file) instead of the
//	                      VAE; random: random weights of TAESD's architecture, written once
//	                      to the cache (default: the model's VAE)
//	--cfg scale           guidance scale; at most 1 turns guidance off, as SD-Turbo runs
//	                      (default 7.5)
//	--compare-precision   run fp32, then bf16, and report both and the PSNR of bf16's image
//	                      against fp32's (default off)
//	--threads N, --device NAME, --precision NAME, --lib path, -v, --text-heads N[,N2],
//	                      --unet-heads N,N,..., --scheduler-config path (with -m) as for txt2img
//
// # sdcli serve
//
//	sdcli serve [--addr 127.0.0.1:7860] [-m MODEL] [--workers N] [--queue N] ...
//
// Serves image generation over HTTP (package diffusion/server) until SIGINT or SIGTERM:
// OpenAI's Images API (POST /v1/images/generations and /v1/images/edits, with streaming,
// GET /v1/models), AUTOMATIC1111's API (/sdapi/v1/txt2img, img2img, progress, interrupt,
// skip, options, sd-models, samplers, schedulers, upscalers, loras, png-info; the
// ControlNet extension's alwayson_scripts and /controlnet/model_list), queued jobs
// (POST /v1/jobs, GET /v1/jobs/ID and its /events, DELETE to cancel), a web page at /,
// /healthz, /readyz and Prometheus metrics at /metrics. It logs one JSON line per request
// on stderr. On a signal it stops taking work, lets the running work finish for --grace,
// cancels what is left and exits 0.
//
//	--addr host:port      address to listen on (default 127.0.0.1:7860, this machine only)
//	-m path               the model (default: the demo model, as for txt2img)
//	--workers N           generations run at once, each on a pipeline of its own (default 1)
//	--queue N             generations that may wait for a worker; more are answered 429 with
//	                      Retry-After (default 16)
//	--max-size px         largest image side a request may ask for (default 1024)
//	--max-steps N         most sampling steps a request may ask for (default 150)
//	--api-key KEY         require "Authorization: Bearer KEY" of API requests (default none)
//	--cors ORIGIN         origin allowed to call the API from a browser, or * (default none)
//	--timeout duration    deadline of a generation from its submission (default 10m)
//	--grace duration      how long running work may finish on shutdown (default 30s)
//	--lora-dir DIR        folder (with subfolders) whose adapters prompt tags <lora:NAME:w>
//	                      may name; GET /sdapi/v1/loras lists them (default none: a tag
//	                      is an error)
//	--embedding-dir DIR   folder (with subfolders) of textual-inversion embeddings that
//	                      prompts use by file name (default none)
//	--controlnet-dir DIR  folder (with subfolders) of ControlNets for AUTOMATIC1111's
//	                      alwayson_scripts.controlnet; GET /controlnet/model_list lists
//	                      them (default none)
//	--taesd path          a TAESD (as for txt2img's --vae-decoder taesd:PATH): every live
//	                      preview is its decoding at full size, at some time per step
//	                      (default none: the linear approximation at latent size)
//	--threads N, --device NAME, --precision NAME, --lib path, -v, --text-heads N[,N2],
//	                      --unet-heads N,N,..., --scheduler-config path
//	                      as for txt2img
//
// # sdcli version
//
// Prints the version of sdcli and the runtime library it finds. When none loads it exits
// with status 1 and says why on stderr, having printed sdcli's own version.
//
//	--lib path            the runtime library to report on (default: the usual search)
package main

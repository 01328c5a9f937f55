"""Stable Diffusion networks in plain PyTorch, state-dict compatible with diffusers/transformers.

Three models (and a ControlNet for the UNet), each built from the same config.json a diffusers SD folder carries and owning
parameters under exactly the names the reference libraries use, so a state dict loads into
(and comes out of) a diffusers `UNet2DConditionModel` / `AutoencoderKL` or a transformers
`CLIPTextModel` unchanged:

  UNet2DConditionModel   unet/config.json          -> unet/diffusion_pytorch_model.safetensors
  AutoencoderKL          vae/config.json           -> vae/diffusion_pytorch_model.safetensors
  CLIPTextModel          text_encoder/config.json  -> text_encoder/model.safetensors ("text_model." keys)
  ControlNetModel        config.json               -> diffusion_pytorch_model.safetensors (a folder of its own)

Only the options Stable Diffusion 1.x/2.x use are implemented; any other config value raises
NotImplementedError instead of being ignored. Runs on torch >= 1.13 (no SDPA required).
test_parity.py checks all four against the diffusers reference outputs of the conformance kit.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# --------------------------------------------------------------------------------------------
# shared pieces


def _attention(q, k, v, heads):
    """Multi-head scaled dot-product attention. q: (B, Lq, H*D), k/v: (B, Lk, H*D) -> (B, Lq, H*D).

    Softmax in float32 (what diffusers' upcast_softmax / torch SDPA do under autocast)."""
    b, lq, inner = q.shape
    d = inner // heads
    q = q.reshape(b, lq, heads, d).transpose(1, 2)
    k = k.reshape(b, k.shape[1], heads, d).transpose(1, 2)
    v = v.reshape(b, v.shape[1], heads, d).transpose(1, 2)
    if hasattr(F, "scaled_dot_product_attention"):  # torch >= 2.0: fused kernels on GPU
        out = F.scaled_dot_product_attention(q, k, v)
    else:
        scores = torch.matmul(q, k.transpose(-1, -2)) * (d**-0.5)
        out = torch.matmul(scores.float().softmax(dim=-1).to(v.dtype), v)
    return out.transpose(1, 2).reshape(b, lq, inner)


def _check(cfg, key, allowed, default=None):
    value = cfg.get(key, default)
    if value not in allowed:
        raise NotImplementedError(f"config {key}={value!r} is not supported (supported: {allowed})")
    return value


def _per_block(value, n, name):
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"config {name} has {len(value)} entries, expected {n}")
        return list(value)
    return [value] * n


class ResnetBlock2D(nn.Module):
    """diffusers ResnetBlock2D, time_embedding_norm="default" (temb added after conv1).

    x: (B, Cin, H, W), temb: (B, T) or None -> (B, Cout, H, W)."""

    def __init__(self, in_channels, out_channels, temb_channels, groups, eps, output_scale_factor=1.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps, affine=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels) if temb_channels else None
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps, affine=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.output_scale_factor = output_scale_factor

    def forward(self, x, temb=None):
        h = self.conv1(F.silu(self.norm1(x)))
        if self.time_emb_proj is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return (x + h) / self.output_scale_factor


class Downsample2D(nn.Module):
    """3x3 stride-2 conv. padding=0 means diffusers' asymmetric (0,1,0,1) zero pad (VAE encoder)."""

    def __init__(self, channels, padding):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x):
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample2D(nn.Module):
    """Nearest 2x (or to an explicit size, for odd skip shapes) then a 3x3 conv."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, size=None):
        dtype = x.dtype
        if dtype == torch.bfloat16:  # nearest upsampling in bf16 is unsupported on older torch
            x = x.float()
        x = F.interpolate(x, size=size, mode="nearest") if size is not None else F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x.to(dtype))


# --------------------------------------------------------------------------------------------
# UNet


def timestep_embedding(t, dim, flip_sin_to_cos, freq_shift, max_period=10000):
    """Sinusoidal embedding of (float) timesteps t: (B,) -> (B, dim), as diffusers' Timesteps."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - freq_shift)
    args = t.float()[:, None] * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    def __init__(self, in_dim, dim):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


class Attention(nn.Module):
    """diffusers Attention as used in BasicTransformerBlock: bias-free q/k/v, biased output."""

    def __init__(self, query_dim, context_dim, heads, head_dim):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim)])  # index 1 is dropout in diffusers

    def forward(self, x, context=None):
        context = x if context is None else context
        out = _attention(self.to_q(x), self.to_k(context), self.to_v(context), self.heads)
        return self.to_out[0](out)


class GEGLU(nn.Module):
    def __init__(self, dim, inner):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x):
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim, mult=4):
        super().__init__()
        # Keys ff.net.0.proj / ff.net.2; net.1 is a parameter-free dropout in diffusers.
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim)])

    def forward(self, x):
        return self.net[2](self.net[0](x))


class BasicTransformerBlock(nn.Module):
    """Pre-LN self-attention, cross-attention and GEGLU feed-forward, each residual."""

    def __init__(self, dim, heads, head_dim, context_dim):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn1 = Attention(dim, dim, heads, head_dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.attn2 = Attention(dim, context_dim, heads, head_dim)
        self.norm3 = nn.LayerNorm(dim, eps=1e-5)
        self.ff = FeedForward(dim)

    def forward(self, x, context):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class Transformer2DModel(nn.Module):
    """GroupNorm, proj_in (1x1 conv, or linear when use_linear_projection), transformer blocks, proj_out, residual.

    x: (B, C, H, W), context: (B, L, context_dim) -> (B, C, H, W)."""

    def __init__(self, heads, head_dim, in_channels, num_layers, context_dim, groups, use_linear_projection):
        super().__init__()
        inner = heads * head_dim
        self.use_linear = use_linear_projection
        self.norm = nn.GroupNorm(groups, in_channels, eps=1e-6, affine=True)
        if use_linear_projection:
            self.proj_in = nn.Linear(in_channels, inner)
            self.proj_out = nn.Linear(inner, in_channels)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner, 1)
            self.proj_out = nn.Conv2d(inner, in_channels, 1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(inner, heads, head_dim, context_dim) for _ in range(num_layers)]
        )

    def forward(self, x, context):
        b, _, h, w = x.shape
        residual = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = x.permute(0, 2, 3, 1).reshape(b, h * w, -1)
        if self.use_linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context)
        if self.use_linear:
            x = self.proj_out(x)
        x = x.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
        if not self.use_linear:
            x = self.proj_out(x)
        return x + residual


class UNetDownBlock(nn.Module):
    """CrossAttnDownBlock2D (with attentions) or DownBlock2D (without)."""

    def __init__(self, in_ch, out_ch, temb_ch, layers, groups, eps, add_downsample, downsample_padding,
                 attn=None, output_scale_factor=1.0):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(in_ch if i == 0 else out_ch, out_ch, temb_ch, groups, eps, output_scale_factor) for i in range(layers)]
        )
        if attn is not None:
            heads, t_layers, context_dim, linear = attn
            self.attentions = nn.ModuleList(
                [Transformer2DModel(heads, out_ch // heads, out_ch, t_layers, context_dim, groups, linear) for _ in range(layers)]
            )
        else:
            self.attentions = None
        self.downsamplers = nn.ModuleList([Downsample2D(out_ch, downsample_padding)]) if add_downsample else None

    def forward(self, x, temb, context):
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class UNetUpBlock(nn.Module):
    """CrossAttnUpBlock2D or UpBlock2D: each resnet eats one skip connection (concatenated on channels)."""

    def __init__(self, in_ch, prev_out_ch, out_ch, temb_ch, layers, groups, eps, add_upsample,
                 attn=None, output_scale_factor=1.0):
        super().__init__()
        resnets = []
        for i in range(layers):
            skip_ch = in_ch if i == layers - 1 else out_ch
            res_in = prev_out_ch if i == 0 else out_ch
            resnets.append(ResnetBlock2D(res_in + skip_ch, out_ch, temb_ch, groups, eps, output_scale_factor))
        self.resnets = nn.ModuleList(resnets)
        if attn is not None:
            heads, t_layers, context_dim, linear = attn
            self.attentions = nn.ModuleList(
                [Transformer2DModel(heads, out_ch // heads, out_ch, t_layers, context_dim, groups, linear) for _ in range(layers)]
            )
        else:
            self.attentions = None
        self.upsamplers = nn.ModuleList([Upsample2D(out_ch)]) if add_upsample else None

    def forward(self, x, skips, temb, context, upsample_size=None):
        for i, resnet in enumerate(self.resnets):
            x = torch.cat([x, skips.pop()], dim=1)
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x


class UNetMidBlock2DCrossAttn(nn.Module):
    def __init__(self, ch, temb_ch, groups, eps, heads, t_layers, context_dim, linear, output_scale_factor):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(ch, ch, temb_ch, groups, eps, output_scale_factor) for _ in range(2)])
        self.attentions = nn.ModuleList([Transformer2DModel(heads, ch // heads, ch, t_layers, context_dim, groups, linear)])

    def forward(self, x, temb, context):
        x = self.resnets[0](x, temb)
        x = self.attentions[0](x, context)
        return self.resnets[1](x, temb)


_UNET_FIXED_OPTIONS = [
    ("act_fn", ["silu"], "silu"),
    ("time_embedding_type", ["positional"], "positional"),
    ("resnet_time_scale_shift", ["default"], "default"),
    ("mid_block_type", ["UNetMidBlock2DCrossAttn"], "UNetMidBlock2DCrossAttn"),
    ("class_embed_type", [None], None),
    ("addition_embed_type", [None], None),
    ("encoder_hid_dim_type", [None], None),
    ("time_cond_proj_dim", [None], None),
    ("time_embedding_dim", [None], None),
    ("time_embedding_act_fn", [None], None),
    ("timestep_post_act", [None], None),
    ("num_class_embeds", [None], None),
    ("only_cross_attention", [False], False),
    ("dual_cross_attention", [False], False),
    ("attention_type", ["default"], "default"),
    ("center_input_sample", [False], False),
    ("conv_in_kernel", [3], 3),
    ("conv_out_kernel", [3], 3),
    ("resnet_skip_time_act", [False], False),
]


def _encoder_arch(cfg):
    """The per-level settings of a UNet config that its encoder half (and a ControlNet) uses."""
    for key, allowed, default in _UNET_FIXED_OPTIONS:
        _check(cfg, key, allowed, default)
    down_types = list(cfg["down_block_types"])
    channels = list(cfg["block_out_channels"])
    n = len(channels)
    if len(down_types) != n:
        raise ValueError("down_block_types and block_out_channels must have the same length")
    for t in down_types:
        if t not in ("CrossAttnDownBlock2D", "DownBlock2D"):
            raise NotImplementedError(f"down block type {t}")
    # diffusers' historical naming: "attention_head_dim" in SD configs is the number of heads
    # (num_attention_heads, when set, takes precedence).
    heads_cfg = cfg.get("num_attention_heads") or cfg.get("attention_head_dim", 8)
    return {
        "down_types": down_types,
        "channels": channels,
        "heads": _per_block(heads_cfg, n, "attention_head_dim"),
        "layers": _per_block(cfg.get("layers_per_block", 2), n, "layers_per_block"),
        "t_layers": _per_block(cfg.get("transformer_layers_per_block", 1), n, "transformer_layers_per_block"),
        "context_dim": _per_block(cfg["cross_attention_dim"], n, "cross_attention_dim"),
        "linear": bool(cfg.get("use_linear_projection", False)),
        "groups": cfg.get("norm_num_groups", 32),
        "eps": cfg.get("norm_eps", 1e-5),
        "res_scale": cfg.get("resnet_out_scale_factor", 1.0),
    }


def _add_encoder(model, cfg, a):
    """Gives model (a UNet or a ControlNet) conv_in, time_embedding, down_blocks and mid_block,
    created in this order (the order fixes what a seeded initialisation draws)."""
    channels, n = a["channels"], len(a["channels"])
    model.flip_sin_to_cos = cfg.get("flip_sin_to_cos", True)
    model.freq_shift = cfg.get("freq_shift", 0)
    temb_ch = channels[0] * 4
    model.conv_in = nn.Conv2d(cfg.get("in_channels", 4), channels[0], 3, padding=1)
    model.time_embedding = TimestepEmbedding(channels[0], temb_ch)
    model.down_blocks = nn.ModuleList()
    out_ch = channels[0]
    for i, btype in enumerate(a["down_types"]):
        in_ch, out_ch = out_ch, channels[i]
        attn = (a["heads"][i], a["t_layers"][i], a["context_dim"][i], a["linear"]) if btype == "CrossAttnDownBlock2D" else None
        model.down_blocks.append(
            UNetDownBlock(in_ch, out_ch, temb_ch, a["layers"][i], a["groups"], a["eps"], i < n - 1,
                          cfg.get("downsample_padding", 1), attn, a["res_scale"])
        )
    model.mid_block = UNetMidBlock2DCrossAttn(channels[-1], temb_ch, a["groups"], a["eps"], a["heads"][-1], a["t_layers"][-1],
                                              a["context_dim"][-1], a["linear"], cfg.get("mid_block_scale_factor", 1))
    return temb_ch


def _run_encoder(model, sample, timestep, context, hint=None):
    """The encoder half of a UNet or ControlNet: -> (mid-block output, skips, time embedding).

    hint, when given, is added to conv_in's output (the ControlNet's control-image embedding).
    skips: conv_in's output (with the hint), every resnet/attention output and every
    downsampler output, in order: what the up blocks consume and the ControlNet's zero convs take."""
    if not torch.is_tensor(timestep):
        timestep = torch.tensor([timestep], dtype=torch.float32, device=sample.device)
    timestep = timestep.reshape(-1).to(sample.device).expand(sample.shape[0])
    t_emb = timestep_embedding(timestep, model.conv_in.out_channels, model.flip_sin_to_cos, model.freq_shift)
    temb = model.time_embedding(t_emb.to(sample.dtype))

    x = model.conv_in(sample)
    if hint is not None:
        x = x + hint
    skips = [x]
    for block in model.down_blocks:
        x, s = block(x, temb, context)
        skips.extend(s)
    return model.mid_block(x, temb, context), skips, temb


class UNet2DConditionModel(nn.Module):
    """The SD 1.x/2.x UNet from a diffusers unet/config.json dict.

    forward(sample (B, C, H, W), timestep (B,) or scalar, encoder_hidden_states (B, L, D),
    down_block_additional_residuals=None, mid_block_additional_residual=None) -> (B, Cout, H, W).
    The residuals are a ControlNet's outputs (ControlNetModel.forward): one per encoder skip,
    added to it before the up blocks use it, and one added to the mid block's output, as
    diffusers does; without them the forward is the plain UNet's."""

    def __init__(self, config):
        super().__init__()
        cfg = dict(config)
        self.config = cfg
        a = _encoder_arch(cfg)
        up_types = list(cfg["up_block_types"])
        channels = a["channels"]
        n = len(channels)
        if len(up_types) != n:
            raise ValueError("down_block_types, up_block_types and block_out_channels must have the same length")
        for t in up_types:
            if t not in ("CrossAttnUpBlock2D", "UpBlock2D"):
                raise NotImplementedError(f"up block type {t}")
        temb_ch = _add_encoder(self, cfg, a)
        groups, eps, linear = a["groups"], a["eps"], a["linear"]

        rev_ch = channels[::-1]
        rev_heads, rev_layers, rev_t_layers, rev_ctx = a["heads"][::-1], a["layers"][::-1], a["t_layers"][::-1], a["context_dim"][::-1]
        self.up_blocks = nn.ModuleList()
        out_ch = rev_ch[0]
        for i, btype in enumerate(up_types):
            prev_out, out_ch = out_ch, rev_ch[i]
            in_ch = rev_ch[min(i + 1, n - 1)]
            attn = (rev_heads[i], rev_t_layers[i], rev_ctx[i], linear) if btype == "CrossAttnUpBlock2D" else None
            self.up_blocks.append(
                UNetUpBlock(in_ch, prev_out, out_ch, temb_ch, rev_layers[i] + 1, groups, eps, i < n - 1, attn, a["res_scale"])
            )

        self.conv_norm_out = nn.GroupNorm(groups, channels[0], eps=eps)
        self.conv_out = nn.Conv2d(channels[0], cfg.get("out_channels", 4), 3, padding=1)

    def forward(self, sample, timestep, encoder_hidden_states, down_block_additional_residuals=None,
                mid_block_additional_residual=None):
        x, skips, temb = _run_encoder(self, sample, timestep, encoder_hidden_states)
        if (down_block_additional_residuals is None) != (mid_block_additional_residual is None):
            raise ValueError("ControlNet residuals: give both the down-block and the mid-block residuals, or neither")
        if down_block_additional_residuals is not None:
            if len(down_block_additional_residuals) != len(skips):
                raise ValueError(f"{len(down_block_additional_residuals)} down-block residuals for {len(skips)} skips")
            skips = [s + r for s, r in zip(skips, down_block_additional_residuals)]
            x = x + mid_block_additional_residual
        for block in self.up_blocks:
            n = len(block.resnets)
            block_skips = skips[-n:]
            del skips[-n:]
            # Upsample to the next skip's size, which also handles latents not divisible by 2^levels.
            size = skips[-1].shape[2:] if (block.upsamplers is not None and skips) else None
            x = block(x, block_skips, temb, encoder_hidden_states, size)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


# --------------------------------------------------------------------------------------------
# ControlNet


class ControlNetConditioningEmbedding(nn.Module):
    """The control image's encoder (diffusers ControlNetConditioningEmbedding): conv_in
    cond_ch -> c[0], then per further width a 3x3 conv c[i] -> c[i] and a 3x3 stride-2 conv
    c[i] -> c[i+1], SiLU after each, and conv_out c[-1] -> out_ch (no activation), zero at
    initialisation. len(c) - 1 stride-2 steps: (B, cond_ch, H, W) -> (B, out_ch, H / 2^(len(c)-1), ...)."""

    def __init__(self, out_ch, cond_ch, channels):
        super().__init__()
        self.conv_in = nn.Conv2d(cond_ch, channels[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for ci, cn in zip(channels[:-1], channels[1:]):
            self.blocks.append(nn.Conv2d(ci, ci, 3, padding=1))
            self.blocks.append(nn.Conv2d(ci, cn, 3, padding=1, stride=2))
        self.conv_out = nn.Conv2d(channels[-1], out_ch, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x):
        x = F.silu(self.conv_in(x))
        for block in self.blocks:
            x = F.silu(block(x))
        return self.conv_out(x)


class ControlNetModel(nn.Module):
    """diffusers ControlNetModel from its config.json dict: the UNet's encoder half (conv_in,
    time embedding, down blocks, mid block) with the control image's embedding added after
    conv_in, and a zero-initialised 1x1 conv on every encoder skip (controlnet_down_blocks)
    and on the mid block's output (controlnet_mid_block).

    forward(sample, timestep, encoder_hidden_states, controlnet_cond (B, 3, 2^k H, 2^k W) in [0, 1],
    conditioning_scale=1.0, guess_mode=False) -> (down residuals [per skip], mid residual),
    which UNet2DConditionModel.forward takes as down_block_additional_residuals /
    mid_block_additional_residual. from_unet(unet) starts one from a UNet's encoder weights."""

    def __init__(self, config):
        super().__init__()
        cfg = dict(config)
        self.config = cfg
        if cfg.get("_class_name", "ControlNetModel") != "ControlNetModel":
            raise NotImplementedError(f"class {cfg['_class_name']} is not a ControlNetModel")
        _check(cfg, "global_pool_conditions", [False], False)
        _check(cfg, "controlnet_conditioning_channel_order", ["rgb", "bgr"], "rgb")
        a = _encoder_arch(cfg)
        _add_encoder(self, cfg, a)
        channels = a["channels"]
        self.controlnet_cond_embedding = ControlNetConditioningEmbedding(
            channels[0], cfg.get("conditioning_channels", 3), list(cfg.get("conditioning_embedding_out_channels", (16, 32, 96, 256))))
        skip_ch = [channels[0]]
        for i, ch in enumerate(channels):
            skip_ch += [ch] * a["layers"][i] + ([ch] if i < len(channels) - 1 else [])
        self.controlnet_down_blocks = nn.ModuleList([nn.Conv2d(ch, ch, 1) for ch in skip_ch])
        self.controlnet_mid_block = nn.Conv2d(channels[-1], channels[-1], 1)
        for conv in list(self.controlnet_down_blocks) + [self.controlnet_mid_block]:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale=1.0, guess_mode=False):
        if self.config.get("controlnet_conditioning_channel_order", "rgb") == "bgr":
            controlnet_cond = controlnet_cond.flip(1)
        hint = self.controlnet_cond_embedding(controlnet_cond)
        x, skips, _ = _run_encoder(self, sample, timestep, encoder_hidden_states, hint)
        down = [conv(s) for conv, s in zip(self.controlnet_down_blocks, skips)]
        mid = self.controlnet_mid_block(x)
        if guess_mode:
            # Guess mode: the shallow residuals are damped, 0.1 for the first skip up to 1.0 for the mid block.
            scales = torch.logspace(-1, 0, len(down) + 1, device=x.device) * conditioning_scale
            return [d * s for d, s in zip(down, scales)], mid * scales[-1]
        return [d * conditioning_scale for d in down], mid * conditioning_scale

    @classmethod
    def from_unet(cls, unet, conditioning_embedding_out_channels=(16, 32, 96, 256), conditioning_channels=3,
                  channel_order="rgb"):
        """A ControlNet for `unet` whose encoder starts as a copy of the UNet's (conv_in, time
        embedding, down blocks, mid block), as diffusers' ControlNetModel.from_unet; the control
        embedding gets torch's default initialisation except its zero conv_out, and the zero
        convs are zero, so it adds nothing until trained."""
        cfg = controlnet_config(unet.config, conditioning_embedding_out_channels, conditioning_channels, channel_order)
        cn = cls(cfg)
        for name in ("conv_in", "time_embedding", "down_blocks", "mid_block"):
            getattr(cn, name).load_state_dict(getattr(unet, name).state_dict())
        return cn.to(next(unet.parameters()).dtype)


# --------------------------------------------------------------------------------------------
# VAE


class VAEAttention(nn.Module):
    """Single-head spatial self-attention of the VAE mid block (diffusers Attention with group_norm,
    residual_connection=True, biased q/k/v). x: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, ch, groups, eps):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, ch, eps=eps, affine=True)
        self.to_q = nn.Linear(ch, ch)
        self.to_k = nn.Linear(ch, ch)
        self.to_v = nn.Linear(ch, ch)
        self.to_out = nn.ModuleList([nn.Linear(ch, ch)])

    def forward(self, x):
        b, c, h, w = x.shape
        y = self.group_norm(x).reshape(b, c, h * w).transpose(1, 2)
        y = _attention(self.to_q(y), self.to_k(y), self.to_v(y), 1)
        y = self.to_out[0](y).transpose(1, 2).reshape(b, c, h, w)
        return y + x


class VAEMidBlock(nn.Module):
    def __init__(self, ch, groups, eps, add_attention):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(ch, ch, None, groups, eps) for _ in range(2)])
        self.attentions = nn.ModuleList([VAEAttention(ch, groups, eps)]) if add_attention else None

    def forward(self, x):
        x = self.resnets[0](x)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class DownEncoderBlock2D(nn.Module):
    def __init__(self, in_ch, out_ch, layers, groups, eps, add_downsample):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(in_ch if i == 0 else out_ch, out_ch, None, groups, eps) for i in range(layers)])
        self.downsamplers = nn.ModuleList([Downsample2D(out_ch, 0)]) if add_downsample else None

    def forward(self, x):
        for r in self.resnets:
            x = r(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class UpDecoderBlock2D(nn.Module):
    def __init__(self, in_ch, out_ch, layers, groups, eps, add_upsample):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(in_ch if i == 0 else out_ch, out_ch, None, groups, eps) for i in range(layers)])
        self.upsamplers = nn.ModuleList([Upsample2D(out_ch)]) if add_upsample else None

    def forward(self, x):
        for r in self.resnets:
            x = r(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class Encoder(nn.Module):
    def __init__(self, in_ch, latent_ch, channels, layers, groups, add_attention):
        super().__init__()
        eps = 1e-6
        self.conv_in = nn.Conv2d(in_ch, channels[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        out_ch = channels[0]
        for i, ch in enumerate(channels):
            prev, out_ch = out_ch, ch
            self.down_blocks.append(DownEncoderBlock2D(prev, out_ch, layers, groups, eps, i < len(channels) - 1))
        self.mid_block = VAEMidBlock(channels[-1], groups, eps, add_attention)
        self.conv_norm_out = nn.GroupNorm(groups, channels[-1], eps=eps)
        self.conv_out = nn.Conv2d(channels[-1], 2 * latent_ch, 3, padding=1)

    def forward(self, x):
        x = self.conv_in(x)
        for b in self.down_blocks:
            x = b(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, latent_ch, out_ch, channels, layers, groups, add_attention):
        super().__init__()
        eps = 1e-6
        rev = channels[::-1]
        self.conv_in = nn.Conv2d(latent_ch, rev[0], 3, padding=1)
        self.mid_block = VAEMidBlock(rev[0], groups, eps, add_attention)
        self.up_blocks = nn.ModuleList()
        ch = rev[0]
        for i, c in enumerate(rev):
            prev, ch = ch, c
            self.up_blocks.append(UpDecoderBlock2D(prev, ch, layers + 1, groups, eps, i < len(rev) - 1))
        self.conv_norm_out = nn.GroupNorm(groups, channels[0], eps=eps)
        self.conv_out = nn.Conv2d(channels[0], out_ch, 3, padding=1)

    def forward(self, z):
        x = self.conv_in(z)
        x = self.mid_block(x)
        for b in self.up_blocks:
            x = b(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class AutoencoderKL(nn.Module):
    """SD VAE from a diffusers vae/config.json dict. Spatial factor 2^(len(block_out_channels)-1).

    encode(x in [-1, 1]) -> (mean, logvar) of the latent Gaussian (logvar clamped to [-30, 20]);
    decode(z) -> image in about [-1, 1]. Neither applies scaling_factor; callers do."""

    def __init__(self, config):
        super().__init__()
        cfg = dict(config)
        self.config = cfg
        _check(cfg, "act_fn", ["silu"], "silu")
        for t in cfg.get("down_block_types", []):
            if t != "DownEncoderBlock2D":
                raise NotImplementedError(f"VAE down block type {t}")
        for t in cfg.get("up_block_types", []):
            if t != "UpDecoderBlock2D":
                raise NotImplementedError(f"VAE up block type {t}")
        if cfg.get("shift_factor") not in (None, 0, 0.0) or cfg.get("latents_mean") is not None:
            raise NotImplementedError("shift_factor / latents_mean are not SD 1.x/2.x options")
        channels = list(cfg["block_out_channels"])
        latent = cfg.get("latent_channels", 4)
        layers = cfg.get("layers_per_block", 1)
        groups = cfg.get("norm_num_groups", 32)
        add_attn = cfg.get("mid_block_add_attention", True)
        self.encoder = Encoder(cfg.get("in_channels", 3), latent, channels, layers, groups, add_attn)
        self.decoder = Decoder(latent, cfg.get("out_channels", 3), channels, layers, groups, add_attn)
        self.quant_conv = nn.Conv2d(2 * latent, 2 * latent, 1) if cfg.get("use_quant_conv", True) else None
        self.post_quant_conv = nn.Conv2d(latent, latent, 1) if cfg.get("use_post_quant_conv", True) else None

    @property
    def scale_factor(self):
        return 2 ** (len(self.config["block_out_channels"]) - 1)

    def encode(self, x):
        m = self.encoder(x)
        if self.quant_conv is not None:
            m = self.quant_conv(m)
        mean, logvar = m.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z):
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def forward(self, x, generator=None):
        """Reconstruction through a latent sample; returns (image, mean, logvar), the latter two float32."""
        mean, logvar = (t.float() for t in self.encode(x))
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=generator, device=mean.device)
        return self.decode(z), mean, logvar


# --------------------------------------------------------------------------------------------
# CLIP text encoder


def _act(name):
    if name == "quick_gelu":
        return lambda x: x * torch.sigmoid(1.702 * x)
    if name == "gelu":
        return F.gelu
    raise NotImplementedError(f"hidden_act {name}")


class CLIPAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x, mask):
        b, n, dim = x.shape
        d = dim // self.heads

        def split(t):
            return t.reshape(b, n, self.heads, d).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) * (d**-0.5) + mask
        out = torch.matmul(scores.float().softmax(dim=-1).to(v.dtype), v)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, dim))


class CLIPMLP(nn.Module):
    def __init__(self, dim, hidden, act):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = _act(act)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    def __init__(self, dim, heads, hidden, act, eps):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(dim, eps=eps)
        self.self_attn = CLIPAttention(dim, heads)
        self.layer_norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = CLIPMLP(dim, hidden, act)

    def forward(self, x, mask):
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEmbeddings(nn.Module):
    def __init__(self, vocab, dim, positions):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, dim)
        self.position_embedding = nn.Embedding(positions, dim)

    def forward(self, ids):
        pos = torch.arange(ids.shape[1], device=ids.device)
        return self.token_embedding(ids) + self.position_embedding(pos)[None]


class CLIPEncoder(nn.Module):
    def __init__(self, n, dim, heads, hidden, act, eps):
        super().__init__()
        self.layers = nn.ModuleList([CLIPEncoderLayer(dim, heads, hidden, act, eps) for _ in range(n)])


class CLIPTextTransformer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        dim = cfg["hidden_size"]
        eps = cfg.get("layer_norm_eps", 1e-5)
        self.embeddings = CLIPEmbeddings(cfg.get("vocab_size", 49408), dim, cfg.get("max_position_embeddings", 77))
        self.encoder = CLIPEncoder(cfg["num_hidden_layers"], dim, cfg["num_attention_heads"], cfg["intermediate_size"],
                                   cfg.get("hidden_act", "quick_gelu"), eps)
        self.final_layer_norm = nn.LayerNorm(dim, eps=eps)


class CLIPTextModel(nn.Module):
    """transformers CLIPTextModel from a text_encoder/config.json dict; parameters under "text_model.".

    forward(ids (B, L) int64) -> dict(last_hidden_state (B, L, D) after the final LayerNorm,
    hidden_states: [embeddings, layer 1, ..., layer N] before it, pooler_output (B, D) at the first EOS).
    No padding mask: SD pipelines pass none, so padding tokens are seen through the causal mask only."""

    def __init__(self, config):
        super().__init__()
        cfg = dict(config)
        self.config = cfg
        self.eos_token_id = cfg.get("eos_token_id", 49407)
        self.text_model = CLIPTextTransformer(cfg)

    def forward(self, ids):
        tm = self.text_model
        x = tm.embeddings(ids)
        n = ids.shape[1]
        mask = torch.full((n, n), float("-inf"), device=ids.device, dtype=x.dtype).triu(1)
        hidden = [x]
        for layer in tm.encoder.layers:
            x = layer(x, mask)
            hidden.append(x)
        last = tm.final_layer_norm(x)
        if self.eos_token_id == 2:
            # Configs from before transformers knew the real EOS id: the highest id is the EOS.
            eos_pos = ids.argmax(dim=-1)
        else:
            eos_pos = (ids == self.eos_token_id).int().argmax(dim=-1)
        pooled = last[torch.arange(ids.shape[0], device=ids.device), eos_pos]
        return {"last_hidden_state": last, "hidden_states": hidden, "pooler_output": pooled}


# --------------------------------------------------------------------------------------------
# loading


def load_state_dict_strict(model, state, what=""):
    """load_state_dict(strict=True) with a readable error listing missing/unexpected/mismatched keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shape:
        raise ValueError(
            f"{what}: state dict does not match the model: missing {missing[:8]}{'...' if len(missing) > 8 else ''}"
            f" unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
            f" shape mismatch {[(k, tuple(state[k].shape), tuple(own[k].shape)) for k in shape[:8]]}"
        )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


def text_encoder_state(state):
    """Accepts text-encoder keys with or without the "text_model." prefix (recent transformers drop it)."""
    out = {}
    for k, v in state.items():
        if k.endswith("position_ids"):
            continue  # a buffer older transformers versions saved
        out[k if k.startswith("text_model.") else "text_model." + k] = v
    return out


def param_count(model):
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# full configs: the keys a diffusers / transformers folder carries, SD 1.x values by default.
# full_config(kind, arch) overlays the architecture choices of a training config on these.

UNET_DEFAULTS = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "addition_embed_type": None,
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": None,
    "attention_head_dim": 8,
    "attention_type": "default",
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 768,
    "cross_attention_norm": None,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "dropout": 0.0,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": None,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "reverse_transformer_layers_per_block": None,
    "sample_size": 64,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": 1,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "upcast_attention": False,
    "use_linear_projection": False,
}

VAE_DEFAULTS = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 4,
    "latents_mean": None,
    "latents_std": None,
    "layers_per_block": 2,
    "mid_block_add_attention": True,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "shift_factor": None,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "use_post_quant_conv": True,
    "use_quant_conv": True,
}

CLIP_DEFAULTS = {
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 49406,
    "dropout": 0.0,
    "eos_token_id": 49407,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 49407,
    "projection_dim": 768,
    "vocab_size": 49408,
}

# A diffusers ControlNetModel config.json: its own keys and the UNet keys it shares.
CONTROLNET_DEFAULTS = {
    "_class_name": "ControlNetModel",
    "act_fn": "silu",
    "addition_embed_type": None,
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": None,
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "class_embed_type": None,
    "conditioning_channels": 3,
    "conditioning_embedding_out_channels": [16, 32, 96, 256],
    "controlnet_conditioning_channel_order": "rgb",
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "global_pool_conditions": False,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "projection_class_embeddings_input_dim": None,
    "resnet_time_scale_shift": "default",
    "transformer_layers_per_block": 1,
    "upcast_attention": False,
    "use_linear_projection": False,
}


def controlnet_config(unet_config, conditioning_embedding_out_channels=(16, 32, 96, 256), conditioning_channels=3,
                      channel_order="rgb"):
    """The ControlNetModel config.json of a ControlNet for a UNet of config unet_config (a dict):
    every shared key copied from the UNet's, as diffusers' ControlNetModel.from_unet does.
    conditioning_embedding_out_channels: k + 1 widths take the control image down 2^k times,
    which must be the VAE's factor (SD: 4 widths for 8x; the 4x demo VAE: 3)."""
    unet = full_config("unet", unet_config)
    cfg = {k: json_copy(unet[k]) if k in unet and not k.startswith("_") else json_copy(v) for k, v in CONTROLNET_DEFAULTS.items()}
    cfg.update(conditioning_embedding_out_channels=list(conditioning_embedding_out_channels),
               conditioning_channels=conditioning_channels, controlnet_conditioning_channel_order=channel_order)
    return cfg


_DEFAULTS = {"unet": UNET_DEFAULTS, "vae": VAE_DEFAULTS, "text_encoder": CLIP_DEFAULTS}
_CLASSES = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel}


def full_config(kind, arch):
    """Defaults of `kind` ("unet", "vae", "text_encoder") overlaid with the dict arch; a new dict."""
    cfg = json_copy(_DEFAULTS[kind])
    cfg.update(json_copy(arch))
    if kind != "text_encoder" and len(cfg["block_out_channels"]) != len(cfg["down_block_types"]):
        raise ValueError(f"{kind}: block_out_channels and down_block_types differ in length")
    return cfg


def build(kind, arch):
    """A freshly initialised model of `kind` from a (partial) architecture dict."""
    model = _CLASSES[kind](full_config(kind, arch))
    init_weights(model)
    return model


def init_weights(model):
    """Initialisation for training from scratch. Convs/linears keep torch's defaults; CLIP
    embeddings use N(0, 0.02) as in transformers; the UNet's and VAE's final convs and every
    residual branch's last layer start at zero so each block begins as the identity
    (a common trick that makes small diffusion models train faster)."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
        elif isinstance(m, nn.LayerNorm) or isinstance(m, nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if isinstance(model, UNet2DConditionModel):
        for m in model.modules():
            if isinstance(m, ResnetBlock2D):
                nn.init.zeros_(m.conv2.weight)
                nn.init.zeros_(m.conv2.bias)
            elif isinstance(m, Transformer2DModel):
                nn.init.zeros_(m.proj_out.weight)
                nn.init.zeros_(m.proj_out.bias)
        nn.init.zeros_(model.conv_out.weight)
        nn.init.zeros_(model.conv_out.bias)


def json_copy(x):
    import json

    return json.loads(json.dumps(x))

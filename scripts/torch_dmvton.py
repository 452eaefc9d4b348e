#!/usr/bin/env python3
"""DM-VTON in PyTorch: a speed baseline for the candle port in `src/models/dmvton/`.

The modules mirror the Rust port (and the reference KiseKloset/DM-VTON networks) layer for layer,
with parameter names equal to the keys of the official checkpoints `dmvton_pf_warp.pt` and
`dmvton_pf_gen.pt`, so that `load_state_dict(strict=True)` accepts them. The reference's CUDA
correlation kernel is replaced by a plain PyTorch 7×7 cost volume with the same definition
(`correlation()`: 49 shifted products), or with `--fused-correlation` by a single kernel.

    python3 scripts/torch_dmvton.py --model-dir DIR [--parity parity.safetensors] \
        [--device cuda] [--batch-sizes 1,8,32] [--iterations 30] [--json OUT] \
        [--tf32] [--cudnn-benchmark] [--channels-last] [--amp bf16|f16] [--cuda-graphs] \
        [--fused-correlation]
    python3 scripts/torch_dmvton.py --self-test [--model-dir DIR] [--device cpu|cuda]

With `--parity`, the script runs the fixture's inputs (under the same flags as the timing) and
prints ‖out − ref‖ / ‖ref‖ for every output the file holds. Then it times the forward pass on
random inputs at each batch size (3 warm-up runs, median over `--iterations` runs, synchronised
around each run).

Without any of the flags below this is plain eager mode in strict float32. The flags, each of
which a deployed PyTorch service would use:

  --tf32               TF32 in cuDNN convolutions and cuBLAS matmuls (CUDA; no effect on CPU).
  --cudnn-benchmark    cuDNN picks its kernels by timing them (CUDA; no effect on CPU).
  --channels-last      the model's weights and the inputs in `torch.channels_last` (NHWC) memory
                       format (CPU and CUDA).
  --amp bf16|f16       `torch.autocast` to bfloat16 or float16 around the forward pass. CUDA
                       takes both; CPU autocast takes bf16 only (f16 is refused there, exit 2).
                       The sampling grids are built in float32 (`apply_offset`), as a deployment
                       would: in half precision they put the flow off by pixels.
  --cuda-graphs        the forward pass captured once per batch size in a `torch.cuda.CUDAGraph`
                       (static input buffers, warm-up on a side stream, then capture) and
                       replayed; each timed run copies its inputs into the static buffers, and
                       that copy counts in the time. CUDA only: refused on CPU (exit 2). With
                       `--parity`, the fixture also runs through a captured graph.
  --fused-correlation  the 7×7 cost volume as a single kernel instead of 49 products. On CUDA a
                       Triton kernel (`triton` >= 2.1, as torch 2.1.2's CUDA wheels ship:
                       triton 2.1.0) that reads both maps through their strides (any memory
                       format) and accumulates in float32; where Triton or CUDA is missing (CPU),
                       one einsum over a strided 7×7 window view of the zero-padded second map
                       (it gathers the 49 windows into one buffer, so on CPU it is no faster than
                       the 49 products; it is there so the flag runs everywhere). The script
                       prints which one runs.

`--self-test` compares the fused correlation against `correlation()` on random inputs of
several shapes (batch > 1, odd sizes, channels-last and non-contiguous inputs; on CUDA both the
Triton and the einsum forms; float32 with a bfloat16 second map as under autocast), then the
whole network's outputs on smooth random images with and without `--fused-correlation` (and, on
CUDA, a CUDA graph replay against eager), in float32 without TF32; it prints the max abs errors
and exits 1 if one exceeds 1e-4. It uses the checkpoints of `--model-dir`
when given, random weights otherwise.

The JSON output (`--json`) holds the device, the torch version, `tf32`, the parity figures and
the timings as before, plus `config` (every flag above and the correlation in use) and `label`
(the same as one short string), so that each row of a comparison says what it ran.

Needs only torch, safetensors and numpy (and triton for the CUDA fused correlation).
"""

import argparse
import contextlib
import json
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

HEIGHT = 256
WIDTH = 192
FPN_DIM = 256
LEVELS = 5
MAX_DISPLACEMENT = 3


# --------------------------------------------------------------------------------------------
# Custom ops
# --------------------------------------------------------------------------------------------


def correlation(first, second, max_disp=MAX_DISPLACEMENT):
    """The 7×7 cost volume: channel `(dy + 3)·7 + (dx + 3)` is the channel mean of
    `first[y, x] · second[y + dy, x + dx]`, zero where the displaced pixel falls outside."""
    _, _, h, w = first.shape
    padded = F.pad(second, (max_disp, max_disp, max_disp, max_disp))
    size = 2 * max_disp + 1
    out = [
        (first * padded[:, :, dy : dy + h, dx : dx + w]).mean(1)
        for dy in range(size)
        for dx in range(size)
    ]
    return torch.stack(out, 1)


def correlation_einsum(first, second, max_disp=MAX_DISPLACEMENT):
    """`correlation()` as one einsum: the zero-padded second map seen through a strided
    `N×C×7×7×H×W` window view (no copy), contracted over channels with the first map."""
    dtype = torch.result_type(first, second)
    first, second = first.to(dtype), second.to(dtype)
    n, c, h, w = first.shape
    size = 2 * max_disp + 1
    padded = F.pad(second, (max_disp, max_disp, max_disp, max_disp))
    # windows[n, c, i, j, y, x] = padded[n, c, y + i, x + j]
    windows = padded.unfold(2, h, 1).unfold(3, w, 1)
    out = torch.einsum("nchw,ncijhw->nijhw", first, windows) / c
    return out.reshape(n, size * size, h, w)


try:  # Triton: only for the CUDA fused correlation
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - CPU-only installs
    triton = None

if triton is not None:

    @triton.jit
    def _correlation_kernel(
        a_ptr, b_ptr, out_ptr, C, H, W,
        sa_n, sa_c, sa_h, sa_w,
        sb_n, sb_c, sb_h, sb_w,
        so_n, so_c, so_h, so_w,
        MAX_DISP: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
    ):
        """One program: one image, one displacement, BLOCK_P pixels; loops over channels."""
        SIZE: tl.constexpr = 2 * MAX_DISP + 1
        pid_nd = tl.program_id(0)
        pid_p = tl.program_id(1)
        n = pid_nd // (SIZE * SIZE)
        d = pid_nd % (SIZE * SIZE)
        dy = d // SIZE - MAX_DISP
        dx = d % SIZE - MAX_DISP
        p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        inside = p < H * W
        y = p // W
        x = p % W
        y2 = y + dy
        x2 = x + dx
        valid = inside & (y2 >= 0) & (y2 < H) & (x2 >= 0) & (x2 < W)
        a_pix = a_ptr + n * sa_n + y * sa_h + x * sa_w
        b_pix = b_ptr + n * sb_n + y2 * sb_h + x2 * sb_w
        acc = tl.zeros([BLOCK_P], dtype=tl.float32)
        for c0 in range(0, C, BLOCK_C):
            ch = c0 + tl.arange(0, BLOCK_C)
            ch_ok = ch < C
            a = tl.load(a_pix[None, :] + ch[:, None] * sa_c, mask=ch_ok[:, None] & inside[None, :], other=0.0)
            b = tl.load(b_pix[None, :] + ch[:, None] * sb_c, mask=ch_ok[:, None] & valid[None, :], other=0.0)
            acc += tl.sum(a.to(tl.float32) * b.to(tl.float32), axis=0)
        # `tl.store` casts to the output's element type (float32, bfloat16 or float16).
        tl.store(out_ptr + n * so_n + d * so_c + y * so_h + x * so_w, acc / C, mask=inside)


def correlation_triton(first, second, max_disp=MAX_DISPLACEMENT):
    """`correlation()` as one Triton kernel (CUDA): float32 accumulation, the output in the
    inputs' promoted dtype and in the first map's memory format."""
    dtype = torch.result_type(first, second)
    n, c, h, w = first.shape
    size = 2 * max_disp + 1
    channels_last = first.is_contiguous(memory_format=torch.channels_last) and not first.is_contiguous()
    out = torch.empty(
        (n, size * size, h, w),
        device=first.device,
        dtype=dtype,
        memory_format=torch.channels_last if channels_last else torch.contiguous_format,
    )
    block_p = 64
    grid = (n * size * size, triton.cdiv(h * w, block_p))
    _correlation_kernel[grid](
        first, second, out, c, h, w,
        *first.stride(), *second.stride(), *out.stride(),
        MAX_DISP=max_disp, BLOCK_C=32, BLOCK_P=block_p,
    )
    return out


def fused_correlation_for(device):
    """The single-kernel correlation for `device` and its name: Triton on CUDA where triton
    imports, the einsum form otherwise."""
    if device.type == "cuda" and triton is not None:
        return correlation_triton, f"triton {triton.__version__} kernel"
    return correlation_einsum, "einsum over a strided window view"


def grid_sample(x, grid, padding_mode):
    """Bilinear `grid_sample` with aligned corners; `grid` is `N×Ho×Wo×2` (x then y)."""
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)


def resize_bilinear(x, h, w):
    """Bilinear resize with half-pixel centres (`align_corners=False`)."""
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)


def apply_offset(offset):
    """A pixel offset field (`N×2×H×W`, x then y) as a sampling grid (`N×H×W×2`, in [-1, 1]
    with aligned corners): `(index + offset) / ((size − 1) / 2) − 1`. Always in float32: under
    `--amp` the flow heads' output is half precision, whose 8 (bf16) or 11 (f16) bits cannot hold
    pixel coordinates up to 191 finely enough (bf16 steps by 0.5 px above 64)."""
    offset = offset.float()  # a no-op in float32
    _, _, h, w = offset.shape
    xs = torch.arange(w, device=offset.device, dtype=offset.dtype).view(1, 1, w)
    ys = torch.arange(h, device=offset.device, dtype=offset.dtype).view(1, h, 1)
    gx = (xs + offset[:, 0]) / ((w - 1.0) / 2.0) - 1.0
    gy = (ys + offset[:, 1]) / ((h - 1.0) / 2.0) - 1.0
    return torch.stack([gx, gy], dim=-1)


# --------------------------------------------------------------------------------------------
# Shared layers (layers.rs)
# --------------------------------------------------------------------------------------------


class InvertedResidual(nn.Module):
    """MobileNetV2's inverted residual block under `conv.N.*`: 1×1 expansion (optional),
    depthwise 3×3, 1×1 projection, each with BatchNorm; ReLU6 after the first two; a skip when
    shapes allow. With `pointwise_expand` the block has the 1×1 expansion even at ratio 1 (the
    FPN encoder); without it, ratio 1 means no expansion (the generator)."""

    def __init__(self, c_in, c_out, stride, expand_ratio, pointwise_expand):
        super().__init__()
        hidden = c_in * expand_ratio
        layers = []
        if pointwise_expand or expand_ratio != 1:
            layers += [
                nn.Conv2d(c_in, hidden, 1, 1, 0, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU6(inplace=True),
            ]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, c_out, 1, 1, 0, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        h = self.conv(x)
        return x + h if self.residual else h


def conv_bn_relu6(c_in, c_out, kernel, stride, padding):
    """A bias-free convolution, BatchNorm and ReLU6 (`.0`, `.1`, `.2`)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU6(inplace=True),
    )


# --------------------------------------------------------------------------------------------
# Feature pyramid (fpn.rs)
# --------------------------------------------------------------------------------------------

# (expansion, output channels, stride) of the seven inverted residual blocks.
FPN_BLOCKS = [(1, 16, 1), (6, 24, 2), (6, 32, 2), (6, 64, 2), (6, 96, 2), (6, 160, 2), (6, 320, 1)]


class MobileFpn(nn.Module):
    """`MobileNetV2_dynamicFPN`: a MobileNetV2 encoder with a five-level pyramid of 256
    channels per level."""

    def __init__(self, c_in):
        super().__init__()
        self.first_layer = conv_bn_relu6(c_in, 32, 3, 1, 1)
        blocks = []
        laterals = []
        self.lateral_at = []
        channels = 32
        for i, (t, c, s) in enumerate(FPN_BLOCKS):
            blocks.append(nn.Sequential(InvertedResidual(channels, c, s, t, True)))
            channels = c
            # A lateral 1×1 convolution after each block that halves the resolution, but the last.
            if s > 1 and i + 1 < len(FPN_BLOCKS):
                laterals.append(nn.Conv2d(c, FPN_DIM, 1, 1, 0))
                self.lateral_at.append(i)
        self.inverted_residual_blocks = nn.ModuleList(blocks)
        self.top_layer = nn.Conv2d(channels, FPN_DIM, 1, 1, 0)
        self.lateral_layers = nn.ModuleList(laterals)
        self.smooth_layers = nn.ModuleList(
            [nn.Conv2d(FPN_DIM, FPN_DIM, 3, 1, 1) for _ in laterals]
        )

    def forward(self, x):
        """The pyramid of `x`, fine to coarse: `H/2, H/4, H/8, H/16, H/32`."""
        x = self.first_layer(x)
        lateral_out = []
        next_lateral = 0
        for i, block in enumerate(self.inverted_residual_blocks):
            x = block(x)
            if next_lateral < len(self.lateral_at) and self.lateral_at[next_lateral] == i:
                lateral_out.append(self.lateral_layers[next_lateral](x))
                next_lateral += 1
        m = self.top_layer(x.mean(dim=(2, 3), keepdim=True))
        merged = []
        for lateral in reversed(lateral_out):
            m = resize_bilinear(m, lateral.shape[2], lateral.shape[3]) + lateral
            merged.append(m)
        # `merged` runs coarse to fine; smooth layer i goes with merged level i.
        out = [smooth(m) for m, smooth in zip(merged, self.smooth_layers)]
        return out[::-1]


# --------------------------------------------------------------------------------------------
# Warp module (afwm.rs)
# --------------------------------------------------------------------------------------------


def flow_head(c_in):
    """Four 3×3 convolutions (`c_in`→128→64→32→2) with LeakyReLU(0.1) between them."""
    return nn.Sequential(
        nn.Conv2d(c_in, 128, 3, 1, 1),
        nn.LeakyReLU(0.1),
        nn.Conv2d(128, 64, 3, 1, 1),
        nn.LeakyReLU(0.1),
        nn.Conv2d(64, 32, 3, 1, 1),
        nn.LeakyReLU(0.1),
        nn.Conv2d(32, 2, 3, 1, 1),
    )


class AFlowNet(nn.Module):
    """`aflow_net`: per level a correlation → `netMain` → flow composition → `netRefine`."""

    def __init__(self):
        super().__init__()
        self.netMain = nn.ModuleList([flow_head(49) for _ in range(LEVELS)])
        self.netRefine = nn.ModuleList([flow_head(2 * FPN_DIM) for _ in range(LEVELS)])
        # The cost volume's implementation (`--fused-correlation` swaps it); not a parameter.
        self.correlation = correlation

    def forward(self, warps, conds):
        """The flow from the garment pyramid `warps` to the person pyramid `conds` (both fine
        to coarse), as the final sampling grid `N×2×2H×2W` (x then y)."""
        last_flow = None
        for i in range(len(warps)):
            level = len(warps) - 1 - i
            x_warp, x_cond = warps[level], conds[level]
            if last_flow is not None:
                warped = grid_sample(x_warp, last_flow.permute(0, 2, 3, 1), "border")
            else:
                warped = x_warp
            corr = F.leaky_relu(self.correlation(warped, x_cond), 0.1)
            grid = apply_offset(self.netMain[i](corr))
            if last_flow is not None:
                flow = grid_sample(last_flow, grid, "border")
            else:
                flow = grid.permute(0, 3, 1, 2)
            warped = grid_sample(x_warp, flow.permute(0, 2, 3, 1), "border")
            concat = torch.cat([warped, x_cond], 1)
            grid = apply_offset(self.netRefine[i](concat))
            flow = grid_sample(flow, grid, "border")
            last_flow = resize_bilinear(flow, 2 * flow.shape[2], 2 * flow.shape[3])
        return last_flow


class MobileAfwm(nn.Module):
    """`MobileAFWM`: the garment (`image_mobile`) and person (`cond_mobile`) pyramids and
    `aflow_net`."""

    def __init__(self):
        super().__init__()
        self.image_mobile = MobileFpn(3)
        self.cond_mobile = MobileFpn(3)
        self.aflow_net = AFlowNet()

    def pyramids(self, person, cloth):
        return self.cond_mobile(person), self.image_mobile(cloth)

    def forward(self, person, cloth):
        conds, warps = self.pyramids(person, cloth)
        flow = self.aflow_net(warps, conds)
        warped_cloth = grid_sample(cloth, flow.permute(0, 2, 3, 1), "border")
        return warped_cloth, flow


# --------------------------------------------------------------------------------------------
# Generator (unet.rs)
# --------------------------------------------------------------------------------------------

# (expansion, output channels, stride) of the encoder's inverted residual blocks.
UNET_BLOCKS = [(1, 16, 1), (6, 24, 2), (6, 32, 2), (6, 64, 2), (6, 96, 1), (6, 160, 2), (6, 320, 1)]


class Backbone(nn.Module):
    """`backbone.features.0..=8`: stem, seven inverted residual blocks, 1×1 head."""

    def __init__(self, c_in):
        super().__init__()
        features = [conv_bn_relu6(c_in, 32, 3, 2, 1)]
        channels = 32
        for t, c, s in UNET_BLOCKS:
            features.append(InvertedResidual(channels, c, s, t, False))
            channels = c
        features.append(conv_bn_relu6(channels, 512, 1, 1, 0))
        self.features = nn.Sequential(*features)


class MobileUnet(nn.Module):
    """`MobileNetV2_unet(c_in, c_out)`: a MobileNetV2 encoder at half resolution and a decoder
    of transposed convolutions and inverted residual blocks with skip connections."""

    def __init__(self, c_in=7, c_out=4):
        super().__init__()
        self.backbone = Backbone(c_in)
        self.dconv1 = nn.ConvTranspose2d(512, 96, 4, stride=2, padding=1)
        self.invres1 = InvertedResidual(192, 96, 1, 6, False)
        self.dconv2 = nn.ConvTranspose2d(96, 32, 4, stride=2, padding=1)
        self.invres2 = InvertedResidual(64, 32, 1, 6, False)
        self.dconv3 = nn.ConvTranspose2d(32, 24, 4, stride=2, padding=1)
        self.invres3 = InvertedResidual(48, 24, 1, 6, False)
        self.dconv4 = nn.ConvTranspose2d(24, 16, 4, stride=2, padding=1)
        self.invres4 = InvertedResidual(32, 16, 1, 6, False)
        self.conv_last = nn.Conv2d(16, c_out, 3, 1, 1, bias=False)

    def forward(self, x):
        f = self.backbone.features
        x = f[0](x)
        x1 = f[1](x)
        x2 = f[2](x1)
        x3 = f[3](x2)
        x4 = f[5](f[4](x3))
        x = f[8](f[7](f[6](x4)))
        up = self.invres1(torch.cat([x4, self.dconv1(x)], 1))
        up = self.invres2(torch.cat([x3, self.dconv2(up)], 1))
        up = self.invres3(torch.cat([x2, self.dconv3(up)], 1))
        up = self.invres4(torch.cat([x1, self.dconv4(up)], 1))
        up = F.interpolate(up, scale_factor=2, mode="nearest")
        return self.conv_last(up)


# --------------------------------------------------------------------------------------------
# Composition (mod.rs)
# --------------------------------------------------------------------------------------------


class DmVton(nn.Module):
    """The full pipeline: mask threshold, warp, generator, composite."""

    def __init__(self):
        super().__init__()
        self.warp = MobileAfwm()
        self.gen = MobileUnet(7, 4)

    def run(self, person, cloth, cloth_mask):
        """Every stage's output: tryon, warped_cloth, warped_mask, flow, gen_raw."""
        mask = (cloth_mask > 0.5).to(cloth.dtype)
        cloth = cloth * mask
        warped_cloth, flow = self.warp(person, cloth)
        warped_mask = grid_sample(mask, flow.permute(0, 2, 3, 1), "zeros")
        gen_raw = self.gen(torch.cat([person, warped_cloth, warped_mask], 1))
        rendered = torch.tanh(gen_raw[:, :3])
        composite = torch.sigmoid(gen_raw[:, 3:4]) * warped_mask
        tryon = warped_cloth * composite + rendered * (1 - composite)
        return {
            "tryon": tryon,
            "warped_cloth": warped_cloth,
            "warped_mask": warped_mask,
            "flow": flow,
            "gen_raw": gen_raw,
        }

    def forward(self, person, cloth, cloth_mask):
        return self.run(person, cloth, cloth_mask)["tryon"]


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

STATE_DICT_KEY = "model"


def load_checkpoint(path):
    """The state_dict of an official checkpoint (a dict with it under `model`), or of a
    safetensors file with the same tensor names."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # older files with globals outside the weights-only allow list
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    state = ckpt[STATE_DICT_KEY] if isinstance(ckpt, dict) and STATE_DICT_KEY in ckpt else ckpt
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}


def checkpoint_path(model_dir, stem):
    """`DIR/STEM.pt`, or `DIR/STEM.safetensors` when only that exists."""
    pt = os.path.join(model_dir, stem + ".pt")
    st = os.path.join(model_dir, stem + ".safetensors")
    return st if not os.path.exists(pt) and os.path.exists(st) else pt


def load_model(model_dir, device):
    model = DmVton()
    model.warp.load_state_dict(load_checkpoint(checkpoint_path(model_dir, "dmvton_pf_warp")), strict=True)
    model.gen.load_state_dict(load_checkpoint(checkpoint_path(model_dir, "dmvton_pf_gen")), strict=True)
    return model.to(device).eval()


# --------------------------------------------------------------------------------------------
# Parity and timing
# --------------------------------------------------------------------------------------------

OUTPUTS = ["tryon", "warped_cloth", "warped_mask", "flow", "gen_raw"]


def rel_l2(out, ref):
    out = out.detach().double().cpu()
    ref = ref.double().cpu()
    if out.shape != ref.shape:
        raise ValueError(f"shape {tuple(out.shape)} against reference {tuple(ref.shape)}")
    denom = ref.norm().item()
    return (out - ref).norm().item() / denom if denom > 0 else (out - ref).norm().item()


class Runner:
    """The network under one configuration: the memory format of the inputs, autocast, and
    (CUDA) one captured graph per input shape."""

    def __init__(self, model, device, channels_last=False, amp=None, cuda_graphs=False):
        self.model = model
        self.device = device
        self.channels_last = channels_last
        self.amp_dtype = {None: None, "bf16": torch.bfloat16, "f16": torch.float16}[amp]
        self.cuda_graphs = cuda_graphs
        self.graphs = {}  # input shape -> (graph, static inputs, static outputs)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        # The weight cast cache must be off while capturing CUDA graphs.
        return torch.autocast(self.device.type, dtype=self.amp_dtype, cache_enabled=not self.cuda_graphs)

    def prepare(self, x):
        """`x` on the device, in the configured memory format."""
        x = x.to(self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()

    def eager(self, person, cloth, mask):
        with torch.no_grad(), self.autocast():
            return self.model.run(person, cloth, mask)

    def capture(self, person, cloth, mask):
        """A graph of `run` on static copies of the inputs: 3 warm-up runs on a side stream (which
        also compiles Triton and lets cuDNN benchmark), then the capture."""
        static = [torch.empty_like(t) for t in (person, cloth, mask)]  # keeps the memory format
        for buf, t in zip(static, (person, cloth, mask)):
            buf.copy_(t)
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(3):
                self.eager(*static)
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad(), self.autocast():
            outputs = self.model.run(*static)
        return graph, static, outputs

    def run(self, person, cloth, mask):
        """Every output. With CUDA graphs: the inputs copied into the shape's static buffers and
        the graph replayed; the returned tensors are the graph's own, overwritten by the next
        replay."""
        if not self.cuda_graphs:
            return self.eager(person, cloth, mask)
        key = tuple(person.shape)
        if key not in self.graphs:
            self.graphs[key] = self.capture(person, cloth, mask)
        graph, static, outputs = self.graphs[key]
        for buf, t in zip(static, (person, cloth, mask)):
            buf.copy_(t)
        graph.replay()
        return outputs

    def release(self):
        """Drops the captured graphs (and their memory pools)."""
        self.graphs.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def check_parity(runner, path):
    from safetensors.torch import load_file

    device = runner.device
    tensors = load_file(path)
    person = runner.prepare(tensors["input.person"].float())
    cloth = runner.prepare(tensors["input.cloth"].float())
    mask = runner.prepare(tensors["input.cloth_mask"].float())
    results = {}
    with torch.no_grad():
        outputs = runner.run(person, cloth, mask)
        how = " through a CUDA graph" if runner.cuda_graphs else ""
        print(f"parity on {path} (batch {person.shape[0]}{how}): ‖out − ref‖ / ‖ref‖")
        for name in OUTPUTS:
            key = "output." + name
            if key in tensors:
                ref = tensors[key]
                err = rel_l2(outputs[name], ref)
                max_abs = (outputs[name].double().cpu() - ref.double()).abs().max().item()
                results[name] = err
                print(f"  {name:<14} rel_l2 {err:.3e}  max_abs {max_abs:.3e}")
        # Pyramid intermediates of the first pair, where the file holds them.
        if any(k.startswith("cond_fpn.") or k.startswith("image_fpn.") for k in tensors):
            with runner.autocast():
                conds, warps = runner.model.warp.pyramids(person[:1], cloth[:1] * (mask[:1] > 0.5).float())
            for prefix, pyramid in (("cond_fpn", conds), ("image_fpn", warps)):
                for level, feat in enumerate(pyramid):
                    key = f"{prefix}.{level}"
                    if key in tensors:
                        err = rel_l2(feat, tensors[key])
                        results[key] = err
                        print(f"  {key:<14} rel_l2 {err:.3e}")
    runner.release()
    return results


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_inputs(batch_size, seed):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    person = torch.rand(batch_size, 3, HEIGHT, WIDTH, generator=gen) * 2 - 1
    cloth = torch.rand(batch_size, 3, HEIGHT, WIDTH, generator=gen) * 2 - 1
    mask = torch.rand(batch_size, 1, HEIGHT, WIDTH, generator=gen)
    return person, cloth, mask


def time_forward(runner, batch_size, iterations, warmup=3):
    """Median time of one forward pass; with CUDA graphs each run includes copying the inputs
    into the graph's static buffers."""
    device = runner.device
    person, cloth, mask = (runner.prepare(t) for t in random_inputs(batch_size, batch_size))
    times = []
    with torch.no_grad():
        for _ in range(warmup):
            runner.run(person, cloth, mask)
        synchronize(device)
        for _ in range(iterations):
            synchronize(device)
            start = time.perf_counter()
            runner.run(person, cloth, mask)
            synchronize(device)
            times.append((time.perf_counter() - start) * 1000.0)
    runner.release()
    median_ms = statistics.median(times)
    return {
        "batch_size": batch_size,
        "median_batch_ms": median_ms,
        "images_per_s": batch_size * 1000.0 / median_ms,
    }


# --------------------------------------------------------------------------------------------
# Self-test
# --------------------------------------------------------------------------------------------

SELF_TEST_TOLERANCE = 1e-4


def self_test(model, device):
    """The fused correlation(s) against `correlation()`, then the network with and without it
    (and on CUDA a graph replay against eager), all in float32. Returns the exit status."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    fused, fused_name = fused_correlation_for(device)
    impls = [(fused_name, fused)]
    if fused is not correlation_einsum:
        impls.append(("einsum over a strided window view", correlation_einsum))
    worst = 0.0
    gen = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(device)

    print(f"self-test on {device}: max abs error against correlation() (tolerance {SELF_TEST_TOLERANCE:g})")
    shapes = [(1, 256, 8, 6), (2, 16, 13, 11), (3, 7, 5, 9), (2, 33, 1, 4), (2, 256, 32, 24), (1, 5, 2, 2)]
    for n, c, h, w in shapes:
        cases = {
            "contiguous": (rand(n, c, h, w), rand(n, c, h, w)),
            "channels-last": tuple(
                rand(n, c, h, w).contiguous(memory_format=torch.channels_last) for _ in range(2)
            ),
            "transposed view": (rand(n, c, w, h).transpose(2, 3), rand(n, c, w, h).transpose(2, 3)),
            "f32 × bf16": (rand(n, c, h, w), rand(n, c, h, w).to(torch.bfloat16)),
        }
        for layout, (a, b) in cases.items():
            ref = correlation(a, b)
            for name, f in impls:
                out = f(a, b)
                if out.shape != ref.shape or out.dtype != ref.dtype:
                    print(f"  {name}: {tuple(out.shape)} {out.dtype} against {tuple(ref.shape)} {ref.dtype}")
                    return 1
                err = (out.float() - ref.float()).abs().max().item()
                worst = max(worst, err)
                print(f"  {name:<34} {str((n, c, h, w)):<18} {layout:<16} {err:.3e}")

    # Smooth random images (white noise would turn the flow's float rounding, ~1e-6, into
    # larger differences of the sampled pixels).
    print("self-test: the network (smooth random inputs, batch 2), every output, max abs error")
    person, cloth, mask = (
        resize_bilinear(t[:, :, :: HEIGHT // 16, :: WIDTH // 12], HEIGHT, WIDTH).to(device)
        for t in random_inputs(2, 12345)
    )
    plain = Runner(model, device)
    model.warp.aflow_net.correlation = correlation
    ref = {k: v.clone() for k, v in plain.run(person, cloth, mask).items()}
    model.warp.aflow_net.correlation = fused
    out = plain.run(person, cloth, mask)
    for name in OUTPUTS:
        err = (out[name] - ref[name]).abs().max().item()
        worst = max(worst, err)
        print(f"  fused correlation vs 49 products  {name:<14} {err:.3e}  (|ref| max {ref[name].abs().max().item():.2f})")
    if device.type == "cuda":
        graphed = Runner(model, device, cuda_graphs=True)
        out = graphed.run(person, cloth, mask)
        out = graphed.run(person, cloth, mask)  # a second replay, on the same buffers
        for name in OUTPUTS:
            err = (out[name] - ref[name]).abs().max().item()
            worst = max(worst, err)
            print(f"  CUDA graph (fused) vs eager       {name:<14} {err:.3e}")
        graphed.release()
    ok = worst <= SELF_TEST_TOLERANCE
    print(f"self-test {'passed' if ok else 'FAILED'}: worst max abs error {worst:.3e}")
    return 0 if ok else 1


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def refuse(message):
    print(f"torch_dmvton.py: {message}", file=sys.stderr)
    sys.exit(2)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", help="folder with dmvton_pf_warp.pt and dmvton_pf_gen.pt")
    parser.add_argument("--parity", help="parity fixture (.safetensors) to compare against")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument(
        "--tf32",
        action="store_true",
        help="allow TF32 in convolutions and matmuls (off by default: strict float32)",
    )
    parser.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN pick kernels by timing")
    parser.add_argument("--channels-last", action="store_true", help="model and inputs in channels_last")
    parser.add_argument("--amp", choices=["bf16", "f16"], help="autocast the forward pass to this dtype")
    parser.add_argument(
        "--cuda-graphs", action="store_true", help="capture the forward pass per batch size and replay it (CUDA)"
    )
    parser.add_argument(
        "--fused-correlation",
        action="store_true",
        help="the cost volume as one kernel (Triton on CUDA, one einsum elsewhere)",
    )
    parser.add_argument(
        "--self-test",
        action="store_true",
        help="check the fused correlation and the CUDA graph path against the plain ones, then exit",
    )
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("CUDA is not available")
    if args.cuda_graphs and device.type != "cuda":
        refuse(f"--cuda-graphs needs a CUDA device (got --device {args.device})")
    if args.amp == "f16" and device.type == "cpu":
        refuse("--amp f16: CPU autocast supports bf16 only")
    if not args.model_dir and not args.self_test:
        parser.error("--model-dir is required (optional only with --self-test)")

    if args.self_test:
        if args.model_dir:
            model = load_model(args.model_dir, device)
            weights = args.model_dir
        else:
            torch.manual_seed(0)
            model = DmVton().to(device).eval()
            weights = "random weights"
        print(f"torch {torch.__version__}, weights: {weights}")
        sys.exit(self_test(model, device))

    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.benchmark = args.cudnn_benchmark

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__} on {device_name} (tf32 {'on' if args.tf32 else 'off'})")

    model = load_model(args.model_dir, device)
    correlation_name = "49 shifted products"
    if args.fused_correlation:
        model.warp.aflow_net.correlation, correlation_name = fused_correlation_for(device)
    runner = Runner(model, device, channels_last=args.channels_last, amp=args.amp, cuda_graphs=args.cuda_graphs)
    config = {
        "tf32": args.tf32,
        "cudnn_benchmark": args.cudnn_benchmark,
        "channels_last": args.channels_last,
        "amp": args.amp,
        "cuda_graphs": args.cuda_graphs,
        "fused_correlation": args.fused_correlation,
        "correlation": correlation_name,
    }
    parts = [f"amp {args.amp}" if args.amp else "f32"]
    parts += [flag for flag, on in (
        ("tf32", args.tf32),
        ("cudnn-benchmark", args.cudnn_benchmark),
        ("channels-last", args.channels_last),
        ("cuda-graphs", args.cuda_graphs),
        ("fused-correlation", args.fused_correlation),
    ) if on]
    label = "eager f32" if parts == ["f32"] else " ".join(parts)
    print(f"config: {label}; correlation: {correlation_name}")

    parity = {}
    if args.parity:
        parity = check_parity(runner, args.parity)

    timings = []
    for bs in [int(b) for b in args.batch_sizes.split(",") if b.strip()]:
        t = time_forward(runner, bs, args.iterations)
        timings.append(t)
        print(f"batch {bs:>4}: {t['median_batch_ms']:9.3f} ms/batch  {t['images_per_s']:9.1f} images/s")

    if args.json:
        result = {
            "device": device_name,
            "torch": torch.__version__,
            "tf32": args.tf32,
            "label": label,
            "config": config,
            "parity": parity,
            "timings": timings,
        }
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

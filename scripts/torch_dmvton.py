#!/usr/bin/env python3
"""DM-VTON in PyTorch eager mode: a speed baseline for the candle port in `src/models/dmvton/`.

The modules mirror the Rust port (and the reference KiseKloset/DM-VTON networks) layer for layer,
with parameter names equal to the keys of the official checkpoints `dmvton_pf_warp.pt` and
`dmvton_pf_gen.pt`, so that `load_state_dict(strict=True)` accepts them. The reference's CUDA
correlation kernel is replaced by a plain PyTorch 7×7 cost volume with the same definition.

    python3 scripts/torch_dmvton.py --model-dir DIR [--parity parity.safetensors] \
        [--device cuda] [--batch-sizes 1,8,32] [--iterations 30] [--json OUT]

With `--parity`, the script runs the fixture's inputs and prints ‖out − ref‖ / ‖ref‖ for every
output the file holds. Then it times the forward pass on random inputs at each batch size
(3 warm-up runs, median over `--iterations` runs, synchronised around each run).

Needs only torch, safetensors and numpy.
"""

import argparse
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


def grid_sample(x, grid, padding_mode):
    """Bilinear `grid_sample` with aligned corners; `grid` is `N×Ho×Wo×2` (x then y)."""
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)


def resize_bilinear(x, h, w):
    """Bilinear resize with half-pixel centres (`align_corners=False`)."""
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)


def apply_offset(offset):
    """A pixel offset field (`N×2×H×W`, x then y) as a sampling grid (`N×H×W×2`, in [-1, 1]
    with aligned corners): `(index + offset) / ((size − 1) / 2) − 1`."""
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
            corr = F.leaky_relu(correlation(warped, x_cond), 0.1)
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


def check_parity(model, path, device):
    from safetensors.torch import load_file

    tensors = load_file(path)
    person = tensors["input.person"].float().to(device)
    cloth = tensors["input.cloth"].float().to(device)
    mask = tensors["input.cloth_mask"].float().to(device)
    results = {}
    with torch.no_grad():
        outputs = model.run(person, cloth, mask)
        print(f"parity on {path} (batch {person.shape[0]}): ‖out − ref‖ / ‖ref‖")
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
            conds, warps = model.warp.pyramids(person[:1], cloth[:1] * (mask[:1] > 0.5).float())
            for prefix, pyramid in (("cond_fpn", conds), ("image_fpn", warps)):
                for level, feat in enumerate(pyramid):
                    key = f"{prefix}.{level}"
                    if key in tensors:
                        err = rel_l2(feat, tensors[key])
                        results[key] = err
                        print(f"  {key:<14} rel_l2 {err:.3e}")
    return results


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(model, device, batch_size, iterations, warmup=3):
    gen = torch.Generator(device="cpu").manual_seed(batch_size)
    person = (torch.rand(batch_size, 3, HEIGHT, WIDTH, generator=gen) * 2 - 1).to(device)
    cloth = (torch.rand(batch_size, 3, HEIGHT, WIDTH, generator=gen) * 2 - 1).to(device)
    mask = torch.rand(batch_size, 1, HEIGHT, WIDTH, generator=gen).to(device)
    times = []
    with torch.no_grad():
        for _ in range(warmup):
            model(person, cloth, mask)
        synchronize(device)
        for _ in range(iterations):
            synchronize(device)
            start = time.perf_counter()
            model(person, cloth, mask)
            synchronize(device)
            times.append((time.perf_counter() - start) * 1000.0)
    median_ms = statistics.median(times)
    return {
        "batch_size": batch_size,
        "median_batch_ms": median_ms,
        "images_per_s": batch_size * 1000.0 / median_ms,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", required=True, help="folder with dmvton_pf_warp.pt and dmvton_pf_gen.pt")
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
    args = parser.parse_args()

    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.benchmark = args.cudnn_benchmark

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("CUDA is not available")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__} on {device_name} (tf32 {'on' if args.tf32 else 'off'})")

    model = load_model(args.model_dir, device)

    parity = {}
    if args.parity:
        parity = check_parity(model, args.parity, device)

    timings = []
    for bs in [int(b) for b in args.batch_sizes.split(",") if b.strip()]:
        t = time_forward(model, device, bs, args.iterations)
        timings.append(t)
        print(f"batch {bs:>4}: {t['median_batch_ms']:9.3f} ms/batch  {t['images_per_s']:9.1f} images/s")

    if args.json:
        result = {
            "device": device_name,
            "torch": torch.__version__,
            "tf32": args.tf32,
            "parity": parity,
            "timings": timings,
        }
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

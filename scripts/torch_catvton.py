#!/usr/bin/env python3
"""The honest baseline for CatVTON's GPU timings: the official `CatVTONPipeline`
(Zheng-Chong/CatVTON, run unmodified from its own files) on diffusers' default attention (SDPA on
torch 2), with and without DeepCache (`DeepCacheSDHelper`), on random full-size networks.
`scripts/gpu-check.sh` runs it where torch is installed; it needs nothing downloaded:

    python3 scripts/torch_catvton.py --reference DIR --configs UNET.json VAE.json SCHEDULER.json \\
        --device cuda --dtype bf16 --resolution 1024x768 --json OUT.json

`--reference` is a folder with CatVTON's `model/pipeline.py`, `model/attn_processor.py`,
`model/utils.py` and `utils.py`; `--configs` the diffusers configurations of the UNet, the VAE and
the scheduler (ours: `models/catvton/config/`). It needs diffusers 0.29.2, transformers 4.27.3,
accelerate and DeepCache 0.1.1 (the pins of CatVTON; the GPU bundle carries their wheels).

How the pipeline gets random networks: its constructor runs as written, with the loaders it calls
(`from_pretrained` of `DDIMScheduler`, `AutoencoderKL`, `UNet2DConditionModel`, and the attention
checkpoint's `auto_attn_ckpt_load`) answering networks built from the configurations with
random initial values, made directly on the device. The safety checker is skipped, as CatVTON's
own demo allows. `__call__` is untouched.

Rows (`--rows`, each at every batch size unless it says `@N`):
- `quality`: DDIM, 50 steps (CatVTON's default);
- `deepcache`: DDIM, 50 steps, DeepCache interval 3 at branch 0;
- `balanced`: DPM-Solver++ 2M, 25 steps;
- `fast`: DPM-Solver++ 2M, 20 steps, DeepCache interval 3 at branch 0.
Each row is timed at `--measure-steps` steps (a multiple of the cache interval, default 6) and
extrapolated to its own step count: the UNet's time per call is measured by a forward hook
(the device synchronised), and everything else (VAE, scheduler, copies) counts once. So every
figure is `fixed + steps × per_step`, stated as extrapolated. One untimed warm-up call per batch
size comes first. Peak memory is torch's allocator peak (`max_memory_reserved`) per row.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

# Nothing from the network: the loaders are answered locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import torch

ROWS = {
    "quality": ("ddim", 50, 1),
    "deepcache": ("ddim", 50, 3),
    "balanced": ("dpmpp_2m", 25, 1),
    "fast": ("dpmpp_2m", 20, 3),
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", required=True, type=Path)
    p.add_argument("--configs", required=True, nargs=3, type=Path, metavar=("UNET", "VAE", "SCHEDULER"))
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "f16", "f32"])
    p.add_argument("--resolution", default="1024x768")
    p.add_argument("--batch-sizes", default="1,4")
    p.add_argument("--rows", default="quality@1,fast@1,deepcache@1,balanced@1,quality@4",
                   help="comma-separated row names, each optionally @BATCH")
    p.add_argument("--measure-steps", type=int, default=6)
    p.add_argument("--guidance", type=float, default=2.5)
    p.add_argument("--json", type=Path)
    return p.parse_args()


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def make_pipeline(args, dtype):
    sys.path.insert(0, str(args.reference.resolve()))
    import diffusers
    import model.pipeline as official

    unet_cfg, vae_cfg, sched_cfg = (json.loads(p.read_text()) for p in args.configs)
    device = args.device

    def random_network(cls, config):
        def load(*_args, **_kwargs):
            with torch.device(device):
                return cls.from_config(config)
        return load

    official.DDIMScheduler.from_pretrained = lambda *a, **k: diffusers.DDIMScheduler.from_config(sched_cfg)
    official.AutoencoderKL.from_pretrained = random_network(diffusers.AutoencoderKL, vae_cfg)
    official.UNet2DConditionModel.from_pretrained = random_network(diffusers.UNet2DConditionModel, unet_cfg)
    official.CatVTONPipeline.auto_attn_ckpt_load = lambda self, *a, **k: None
    pipe = official.CatVTONPipeline(
        base_ckpt="random", attn_ckpt="random", attn_ckpt_version="mix", weight_dtype=dtype,
        device=device, compile=False, skip_safety_check=True, use_tf32=True)
    # DeepCacheSDHelper reads `pipe.scheduler`; CatVTON names it `noise_scheduler`.
    pipe.scheduler = pipe.noise_scheduler
    return pipe, diffusers


def inputs(batch, h, w, device, seed):
    g = torch.Generator().manual_seed(seed)
    person = torch.rand((batch, 3, h, w), generator=g) * 2 - 1
    cloth = torch.rand((batch, 3, h, w), generator=g) * 2 - 1
    mask = torch.zeros((batch, 1, h, w))
    mask[:, :, h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 1.0
    return person, cloth, mask


class UnetTimer:
    """Forward hooks on the UNet: the time of its calls, the device synchronised around each."""

    def __init__(self, unet, device):
        self.device, self.calls, self.seconds, self.start = device, 0, 0.0, None
        unet.register_forward_pre_hook(self.pre)
        unet.register_forward_hook(self.post)

    def pre(self, *_):
        sync(self.device)
        self.start = time.perf_counter()

    def post(self, *_):
        sync(self.device)
        self.seconds += time.perf_counter() - self.start
        self.calls += 1

    def reset(self):
        self.calls, self.seconds = 0, 0.0


def main():
    args = parse_args()
    dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[args.dtype]
    h, w = (int(v) for v in args.resolution.lower().split("x"))
    batches = [int(b) for b in args.batch_sizes.split(",") if b]
    wanted = []
    for item in (r.strip() for r in args.rows.split(",") if r.strip()):
        name, _, only = item.partition("@")
        if name not in ROWS:
            sys.exit(f"unknown row {name!r}: use {', '.join(ROWS)}")
        for b in ([int(only)] if only else batches):
            wanted.append((name, b))
    if any(ROWS[n][2] > 1 and args.measure_steps % ROWS[n][2] for n, _ in wanted):
        sys.exit("--measure-steps must be a multiple of the cache interval")

    t0 = time.perf_counter()
    pipe, diffusers = make_pipeline(args, dtype)
    from DeepCache import DeepCacheSDHelper

    ddim = pipe.noise_scheduler
    dpm = diffusers.DPMSolverMultistepScheduler.from_config(ddim.config)
    timer = UnetTimer(pipe.unet, args.device)
    helper = DeepCacheSDHelper(pipe=pipe)
    sync(args.device)
    print(f"pipeline with random weights built in {time.perf_counter() - t0:.1f} s "
          f"(UNet {sum(p.numel() for p in pipe.unet.parameters()) / 1e6:.1f} M parameters)", flush=True)

    rows, warmed = [], set()
    report = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
        "torch": torch.__version__, "diffusers": diffusers.__version__, "dtype": args.dtype,
        "resolution": args.resolution,
        "attention_processors": sorted({type(p).__name__ for p in pipe.unet.attn_processors.values()}),
        "rows": rows,
    }
    for name, batch in wanted:
        scheduler, steps, interval = ROWS[name]
        pipe.noise_scheduler = pipe.scheduler = ddim if scheduler == "ddim" else dpm
        person, cloth, mask = inputs(batch, h, w, args.device, seed=batch)
        call = dict(image=person, condition_image=cloth, mask=mask, guidance_scale=args.guidance,
                    height=h, width=w, generator=torch.Generator(device=args.device).manual_seed(0))
        if batch not in warmed:
            pipe(num_inference_steps=2, **call)
            warmed.add(batch)
        if interval > 1:
            helper.set_params(cache_interval=interval, cache_branch_id=0)
            helper.enable()
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        timer.reset()
        sync(args.device)
        start = time.perf_counter()
        pipe(num_inference_steps=args.measure_steps, **call)
        sync(args.device)
        total = time.perf_counter() - start
        if interval > 1:
            helper.disable()
        per_step = timer.seconds / max(timer.calls, 1)
        fixed = total - timer.seconds
        extrapolated = fixed + steps * per_step
        row = {
            "name": name, "batch_size": batch, "scheduler": scheduler, "steps": steps,
            "cache_interval": interval, "measured_steps": args.measure_steps,
            "measured_s": total, "unet_calls": timer.calls, "per_step_s": per_step,
            "fixed_s": fixed, "extrapolated_s": extrapolated,
            "per_image_s": extrapolated / batch,
            "peak_reserved_mib": (torch.cuda.max_memory_reserved() / 2**20
                                  if args.device.startswith("cuda") else None),
        }
        rows.append(row)
        print(f"torch {name:<9} batch {batch}: {args.measure_steps} steps in {total:.2f} s "
              f"({per_step:.3f} s a UNet call, {fixed:.2f} s besides) -> {steps} steps "
              f"extrapolated {extrapolated:.2f} s, {extrapolated / batch:.2f} s per image"
              + (f", peak {row['peak_reserved_mib']:.0f} MiB" if row["peak_reserved_mib"] else ""),
              flush=True)
        # Written after every row: a run cut short by the check's budget keeps what it measured.
        if args.json:
            args.json.write_text(json.dumps(report, indent=1))



if __name__ == "__main__":
    main()

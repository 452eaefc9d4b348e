#!/usr/bin/env python3
"""CatVTON's networks side by side on the CPU: ours (`virtualfit bench stages`) and the
official pipeline's (diffusers' `UNet2DConditionModel` with CatVTON's `init_adapter`, and
`AutoencoderKL`, as `model/pipeline.py` calls them), on the same random full-size weights, at
512×384 in float32.

    /tmp/solvers-venv/bin/python scripts/bench/catvton_side_by_side.py \\
        --reference /tmp/CatVTON --binary target/release/virtualfit

It needs the reference's pins (torch 2.1.2, diffusers 0.29.2; see scripts/fixtures/catvton.py)
and a release build. Nothing is downloaded.

What it does:
- unless `--weights` (default `target/catvton-bench-weights`) already holds them, builds the
  SD 1.5 inpainting UNet and `sd-vae-ft-mse` from the committed configurations
  (`models/catvton/config/`) with torch's default random initialisation (`--seed`), and
  writes them in the layout our `--model-dir` reads: `base/unet/`, `base/scheduler/`, `vae/`
  (diffusers' `save_pretrained`, safetensors) and `attention/model.safetensors` (the UNet's own
  `attn1` weights, in CatVTON's checkpoint naming). Both sides load these files;
- starts our stage runner once (`bench stages --stdin`) and keeps the official
  networks in this process;
- times, per stage, each side once untimed, then `--rounds` rounds in which the two sides
  alternate stage by stage (the side that goes first alternates too), so both see the same
  machine load; it reports the best and the median of each side and their ratio.

Stages (512×384, latents 64×48):
- `unet`: one UNet call of a request with guidance, 2 rows × 9 × 128 × 48 (person over garment);
  ours uses the fused CPU attention, the official its `AttnProcessor2_0` (SDPA);
- `encode`: the VAE encoder over the masked person and the garment. The official pipeline
  encodes them in two calls of one image (`compute_vae_encodings`), ours in one batch of two;
- `decode`: the VAE decoder over one 64×48 latent (the person half);
- `unet-cached` (ours only, with `--cached`): the same UNet call as a DeepCache shallow pass at
  `--branch`.

`--json PATH` writes every timing. `--profile STAGE` instead runs the official network's stage
once under `torch.profiler` and prints its time per operator (our side's profile comes from
`perf record` on `bench stages`; see benches/README.md).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "models" / "catvton" / "config"
HEIGHT, WIDTH = 512, 384
TIMESTEP = 501


def attn1_paths(config):
    """The `attn1` modules in the order our loader numbers them (`unet::attn1_paths`)."""
    layers = config["layers_per_block"]
    paths = []
    for i, kind in enumerate(config["down_block_types"]):
        if kind.startswith("CrossAttn"):
            paths += [f"down_blocks.{i}.attentions.{j}" for j in range(layers)]
    for i, kind in enumerate(config["up_block_types"]):
        if kind.startswith("CrossAttn"):
            paths += [f"up_blocks.{i}.attentions.{j}" for j in range(layers + 1)]
    paths.append("mid_block.attentions.0")
    return [p + ".transformer_blocks.0.attn1" for p in paths]


def write_weights(folder: Path, seed: int):
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    unet_config = json.loads((CONFIG / "unet.json").read_text())
    unet = UNet2DConditionModel.from_config(unet_config)
    vae = AutoencoderKL.from_config(json.loads((CONFIG / "vae.json").read_text()))
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    unet.save_pretrained(tmp / "base" / "unet", safe_serialization=True)
    vae.save_pretrained(tmp / "vae", safe_serialization=True)
    (tmp / "base" / "scheduler").mkdir(parents=True)
    shutil.copy(CONFIG / "scheduler.json", tmp / "base" / "scheduler" / "scheduler_config.json")
    state = unet.state_dict()
    attention = {}
    for m, path in enumerate(attn1_paths(unet_config)):
        for name in ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight", "to_out.0.bias"):
            attention[f"{8 * m}.{name}"] = state[f"{path}.{name}"].contiguous()
    (tmp / "attention").mkdir()
    save_file(attention, str(tmp / "attention" / "model.safetensors"), metadata={"format": "pt"})
    tmp.rename(folder)


class Official:
    """The official networks, called as `CatVTONPipeline` calls them."""

    def __init__(self, folder: Path, reference: Path):
        import torch
        from diffusers import AutoencoderKL, UNet2DConditionModel

        sys.path.insert(0, str(reference))
        from model.attn_processor import SkipAttnProcessor
        from model.utils import init_adapter

        self.torch = torch
        torch.set_grad_enabled(False)
        self.unet = UNet2DConditionModel.from_pretrained(folder / "base" / "unet").eval()
        init_adapter(self.unet, cross_attn_cls=SkipAttnProcessor)
        self.vae = AutoencoderKL.from_pretrained(folder / "vae").eval()
        g = torch.Generator().manual_seed(0)
        lh, lw = HEIGHT // 8, WIDTH // 8
        self.unet_input = torch.randn(2, 9, 2 * lh, lw, generator=g)
        self.images = torch.rand(2, 3, HEIGHT, WIDTH, generator=g) * 2 - 1
        self.latents = torch.randn(1, 4, lh, lw, generator=g)

    def run(self, stage: str) -> float:
        start = time.perf_counter()
        if stage == "unet":
            self.unet(self.unet_input, self.torch.tensor(TIMESTEP), encoder_hidden_states=None,
                      return_dict=False)
        elif stage == "encode":
            for i in range(2):
                self.vae.encode(self.images[i:i + 1]).latent_dist.sample()
        elif stage == "decode":
            self.vae.decode(self.latents)
        else:
            raise ValueError(stage)
        return time.perf_counter() - start


class Ours:
    """`virtualfit bench stages --stdin`, one process for the whole run."""

    def __init__(self, binary: Path, folder: Path, branch: int):
        self.proc = subprocess.Popen(
            [str(binary), "bench", "stages", "--model-dir", str(folder), "--stdin",
             "--branch", str(branch)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def run(self, stage: str) -> float:
        self.proc.stdin.write(stage + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"our stage runner stopped (exit {self.proc.wait()})")
        answer = json.loads(line)
        assert answer["stage"] == stage, answer
        return answer["seconds"]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reference", type=Path, default=Path("/tmp/CatVTON"))
    ap.add_argument("--binary", type=Path, default=REPO / "target" / "release" / "virtualfit")
    ap.add_argument("--weights", type=Path, default=REPO / "target" / "catvton-bench-weights")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--stages", default="unet,encode,decode")
    ap.add_argument("--cached", action="store_true", help="also time our DeepCache shallow pass")
    ap.add_argument("--branch", type=int, default=0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--profile", metavar="STAGE", help="profile the official STAGE and exit")
    args = ap.parse_args()

    if not (args.weights / "attention" / "model.safetensors").is_file():
        t = time.perf_counter()
        write_weights(args.weights, args.seed)
        print(f"wrote random full-size weights to {args.weights} in {time.perf_counter() - t:.0f} s",
              flush=True)
    import torch
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    official = Official(args.weights, args.reference)
    if args.profile:
        official.run(args.profile)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            t = official.run(args.profile)
        print(f"official {args.profile}: {t:.2f} s")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
        return
    ours = Ours(args.binary, args.weights, args.branch)
    stages = args.stages.split(",")
    times = {s: {"ours": [], "official": []} for s in stages}
    if args.cached:
        times["unet-cached"] = {"ours": [], "official": []}
    sides = {"ours": ours.run, "official": official.run}
    for stage in stages:  # untimed first runs
        for side in sides.values():
            side(stage)
    if args.cached:
        ours.run("unet-cached")
    loads = []
    for r in range(args.rounds):
        order = ["ours", "official"] if r % 2 == 0 else ["official", "ours"]
        for stage in stages:
            for side in order:
                t = sides[side](stage)
                times[stage][side].append(t)
                print(f"round {r + 1} {stage:<11} {side:<8} {t:7.2f} s", flush=True)
        if args.cached:
            t = ours.run("unet-cached")
            times["unet-cached"]["ours"].append(t)
            print(f"round {r + 1} unet-cached ours     {t:7.2f} s", flush=True)
        loads.append(os.getloadavg()[0])
    ours.close()

    print(f"\nload average after each round: {', '.join(f'{x:.2f}' for x in loads)}")
    print("| stage | ours best (median) | official best (median) | ours / official |")
    print("|---|---|---|---|")
    for stage, t in times.items():
        o = sorted(t["ours"])
        f = sorted(t["official"])
        cell = lambda v: f"{v[0]:.2f} s ({v[len(v) // 2]:.2f})" if v else "—"
        ratio = f"{o[0] / f[0]:.2f}×" if o and f else "—"
        print(f"| {stage} | {cell(o)} | {cell(f)} | {ratio} |")
    if args.json:
        args.json.write_text(json.dumps({"times": times, "load_average": loads}, indent=2) + "\n")


if __name__ == "__main__":
    main()

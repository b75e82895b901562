"""txt2img with one ControlNet on a CUDA GPU: ours against diffusers' StableDiffusion(XL)ControlNetPipeline.

SD1.5 at 512x512 and SDXL at 1024x1024, random weights at real sizes (fp16), a full-size ControlNet made from
each UNet (`ControlNetModel.from_unet`, random weights), written as a diffusers-layout `.safetensors` into
`<workdir>/models/ControlNet` and listed by our model scan. 30 steps, CFG 7, Euler, batch 1, module "none" (the
control picture given as it is, so no preprocessor time on either side), weight 1. Ours: `process_images` with
the built-in ControlNet script's unit (CUDA graphs on: the UNet and the ControlNet are both replayed; and off).
Theirs: the ControlNet pipeline built from the same components and the same ControlNet weights. Alternating
runs after a warm-up; medians.

Switching: two ControlNets (A, B) both in our cache; the time to prepare a job's unit for B after a job with A
(`runtime.prepare`: model lookup in the cache and the control picture), and a whole job after a switch against
a job without one.

    python bench/bench_controlnet.py --workdir /tmp/bench --out bench/results/controlnet-h200.json
    python bench/bench_controlnet.py --small     # a smoke test on any machine (tiny SD1 model, 64x64, 4 steps)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.timing import timed  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from controlnet_files import controlnet_runner  # noqa: E402  (runs the ControlNet script without the page)

from modules import cmd_args, devices, processing, shared  # noqa: E402

SIZES = {"sd15": 512, "sdxl": 1024}
PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed"
NEGATIVE = "blurry, low quality"


def control_picture(size: int) -> Image.Image:
    """White outlines on black, like a canny map."""
    picture = Image.new("RGB", (size, size), "black")
    draw = ImageDraw.Draw(picture)
    for i in range(4):
        inset = size // 10 * (i + 1)
        draw.rectangle([inset, inset, size - inset, size - inset], outline="white", width=max(1, size // 256))
    draw.ellipse([size // 3, size // 3, 2 * size // 3, 2 * size // 3], outline="white", width=max(1, size // 256))
    return picture


def write_controlnets(unet: torch.nn.Module, folder: str, prefix: str) -> list[str]:
    from diffusers import ControlNetModel
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    names = []
    for seed, name in ((1, f"{prefix}_cn_a"), (2, f"{prefix}_cn_b")):
        path = os.path.join(folder, f"{name}.safetensors")
        if not os.path.exists(path):
            controlnet = ControlNetModel.from_unet(unet)
            generator = torch.Generator(device=next(controlnet.parameters()).device).manual_seed(seed)
            with torch.no_grad():
                for p in controlnet.parameters():
                    p.normal_(0, 0.02, generator=generator)
            save_file({k: v.detach().to("cpu", torch.float16).contiguous()
                       for k, v in controlnet.state_dict().items()}, path)
            del controlnet
        names.append(name)
    return names


def unit(model: str, picture: Image.Image) -> dict:
    return {"enabled": True, "module": "none", "model": model, "weight": 1.0, "image": np.asarray(picture),
            "resize_mode": "Just Resize"}


def ours_runner(model, size: int, steps: int, units: list[dict], graphs: bool):
    def run():
        shared.opts.data["cuda_graphs"] = graphs
        p = processing.StableDiffusionProcessingTxt2Img(
            prompt=PROMPT, negative_prompt=NEGATIVE, steps=steps, cfg_scale=7.0, width=size, height=size,
            sampler_name="Euler", seed=1234, do_not_save_samples=True, do_not_save_grid=True)
        p.sd_model = model
        p.scripts, p.script_args = controlnet_runner(units)
        out = processing.process_images(p)
        assert "ControlNet 0" in out.infotexts[0]

    return run


def diffusers_runner(model, controlnet_path: str, family: str, size: int, steps: int, picture: Image.Image,
                     text_pipe):
    from diffusers import (
        ControlNetModel,
        EulerDiscreteScheduler,
        StableDiffusionControlNetPipeline,
        StableDiffusionXLControlNetPipeline,
    )
    from safetensors.torch import load_file

    config = {k: v for k, v in model.unet.config.items() if not k.startswith("_")}
    controlnet = ControlNetModel.from_unet(type(model.unet).from_config(config).to("meta"), load_weights_from_unet=False)
    controlnet.load_state_dict(load_file(controlnet_path), assign=True)
    controlnet = controlnet.to("cuda", torch.float16).eval()
    cls = StableDiffusionControlNetPipeline if family == "sd15" else StableDiffusionXLControlNetPipeline
    components = {k: v for k, v in text_pipe.components.items()
                  if k in cls.__init__.__code__.co_varnames and k != "controlnet"}
    pipe = cls(**components, controlnet=controlnet)
    pipe.scheduler = EulerDiscreteScheduler.from_config(text_pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)

    def run():
        generator = torch.Generator("cuda").manual_seed(1234)
        pipe(PROMPT, negative_prompt=NEGATIVE, image=picture, num_inference_steps=steps, guidance_scale=7.0,
             width=size, height=size, generator=generator)

    return run


def switching(model, size: int, names: list[str], picture: Image.Image, repeats: int) -> dict:
    """Preparing a unit for B right after one for A (both cached): the switch a job pays."""
    from modules.controlnet import runtime
    from modules.controlnet.units import ControlNetUnit

    p = processing.StableDiffusionProcessingTxt2Img(prompt=PROMPT, width=size, height=size)
    units = {name: ControlNetUnit.from_api(unit(name, picture)) for name in names}
    for name in names:  # both loaded and cached
        runtime.prepare([units[name]], p, model)
    times = []
    for i in range(repeats * 2):
        name = names[i % 2]
        times.append(timed(lambda name=name: runtime.prepare([units[name]], p, model)))
    return {"switch_ms_median": statistics.median(times) * 1000, "switch_ms_max": max(times) * 1000,
            "switch_all_ms": [t * 1000 for t in times]}


def bench_family(family: str, args: argparse.Namespace) -> dict:
    from bench.full_size import diffusers_pipeline, write_checkpoint_and_config
    from modules.controlnet import files
    from modules.models.loader import load_model

    path = os.path.join(args.workdir, f"{family}.safetensors")
    config_dir = os.path.join(args.workdir, f"{family}-config")
    if not os.path.exists(path):
        write_checkpoint_and_config(family, path, config_dir)
    model = load_model(path, devices.choose_precision(torch.device("cuda")))
    names = write_controlnets(model.unet, os.path.join(args.workdir, "models", "ControlNet"), family)
    files.refresh()
    size = SIZES[family]
    picture = control_picture(size)
    ours = ours_runner(model, size, args.steps, [unit(names[0], picture)], graphs=True)
    eager = ours_runner(model, size, args.steps, [unit(names[0], picture)], graphs=False)
    text_pipe = diffusers_pipeline(family, path, config_dir)
    theirs = diffusers_runner(model, os.path.join(args.workdir, "models", "ControlNet", f"{names[0]}.safetensors"),
                              family, size, args.steps, picture, text_pipe)
    ours(), eager(), theirs()  # warm-up: kernels, allocator, cuDNN autotune, graph capture
    ours_t, eager_t, theirs_t = [], [], []
    for _ in range(args.repeats):
        ours_t.append(timed(ours))
        eager_t.append(timed(eager))
        theirs_t.append(timed(theirs))
    o, e, t = statistics.median(ours_t), statistics.median(eager_t), statistics.median(theirs_t)
    result = {"size": size, "ours_s_per_image": o, "ours_eager_s_per_image": e, "diffusers_s_per_image": t,
              "ratio": t / o, "ratio_eager": t / e, "ours_all": ours_t, "ours_eager_all": eager_t,
              "diffusers_all": theirs_t}
    result.update(switching(model, size, names, picture, args.repeats))
    # a whole job right after switching A -> B (B's ControlNet graphed once already in the warm-up below)
    job_b = ours_runner(model, size, args.steps, [unit(names[1], picture)], graphs=True)
    job_b()
    after_switch = [(timed(job_b), timed(ours))[0] for _ in range(args.repeats)]
    result["job_after_switch_s"] = statistics.median(after_switch)
    result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    del ours, eager, theirs, text_pipe, model
    torch.cuda.empty_cache()
    return result


def smoke(args: argparse.Namespace) -> None:
    from controlnet_files import write_controlnet
    from tiny_models import write_tiny_checkpoint

    from modules.controlnet import files
    from modules.models.loader import load_model

    os.makedirs(os.path.join(args.workdir, "models", "ControlNet"), exist_ok=True)
    path = os.path.join(args.workdir, "tiny-sd1.safetensors")
    write_tiny_checkpoint(path, family="sd1", seed=3)
    write_controlnet(os.path.join(args.workdir, "models", "ControlNet", "tiny_cn.safetensors"), "sd1", "original",
                     seed=1)
    files.refresh()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(path, devices.choose_precision(device))
    run = ours_runner(model, 64, 4, [unit("tiny_cn", control_picture(64))], graphs=True)
    run()
    print(f"smoke: ours {timed(run):.2f} s for a 64x64 picture with one ControlNet")
    print(json.dumps(switching(model, 64, ["tiny_cn", "tiny_cn"], control_picture(64), 2)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="/tmp/bench-models")
    parser.add_argument("--out", default="bench-controlnet.json")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--families", default="sd15,sdxl")
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    # our model folders follow --data-dir, as in a real start; nothing is written to the repository
    shared.set_cmd_opts(cmd_args.parse_args(["--data-dir", args.workdir], environ={}))
    devices.configure(devices.precision_from_cmd_opts(shared.cmd_opts))
    shared.opts.data["live_previews_enable"] = False
    if args.small:
        smoke(args)
        return
    assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU (or --small)"
    results: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "steps": args.steps}
    for family in args.families.split(","):
        results[family] = bench_family(family, args)
        print(family, json.dumps({k: v for k, v in results[family].items() if not k.endswith("_all")}), flush=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    print("\n| model, one ControlNet | ours s/image | ours, no CUDA graphs | diffusers ControlNet pipeline | "
          "ratio (graphs / eager) | switch A->B, both cached (ms) |\n|---|---|---|---|---|---|")
    for family in args.families.split(","):
        r = results[family]
        print(f"| {family} {r['size']}x{r['size']} | {r['ours_s_per_image']:.2f} | {r['ours_eager_s_per_image']:.2f} "
              f"| {r['diffusers_s_per_image']:.2f} | {r['ratio']:.2f} / {r['ratio_eager']:.2f} "
              f"| {r['switch_ms_median']:.1f} (max {r['switch_ms_max']:.1f}) |")


if __name__ == "__main__":
    main()

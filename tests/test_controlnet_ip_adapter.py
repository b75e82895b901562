"""IP-Adapter units on tiny models (CPU): CLIP vision encoders read from their files, the same latents as diffusers'
StableDiffusionPipeline with the same adapter loaded by diffusers itself, weight 0 and the UNet after the job bit
for bit, the guidance window, SDXL, refusals by name, memory handles, and a unit over the HTTP API.

Adapters and encoders come from tests/ip_adapter_files.py (h94's original key layout, tencent-ailab's shapes);
ours are read back through modules.controlnet, diffusers' reference loads the same nested state dict with
`unet._load_ip_adapter_weights`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from controlnet_files import write_controlnet, write_ip_adapter
from generation_capture import capture_run
from ip_adapter_files import CLIP_HIDDEN, CLIP_PROJECTION, ip_adapter_state, save_ip_adapter, write_clip_vision
from PIL import Image, ImageDraw
from safetensors.torch import save_file
from tiny_models import build_unet

from modules import processing, scripts, sd_models, shared
from modules.controlnet import clip_vision, files, ip_adapter, loading, preprocessors, runtime
from modules.engine import generate, unet_graph
from modules.models import memory

STEPS = 4
WEIGHT = 0.7
EXTENSION_CLIP = ("extensions", "sd-webui-controlnet", "annotator", "downloads", "clip_vision")
WIDE_PROJECTION = 48  # the encoder in the extension's folder: a projection no other encoder has


@pytest.fixture(scope="module")
def env(tmp_path_factory, isolated_data_dir):
    checkpoints = {"sd1.safetensors": {"family": "sd1", "seed": 3}, "xl.safetensors": {"family": "sdxl", "seed": 5}}
    settings = {"live_previews_enable": False, "cuda_graphs": False}
    with isolated_data_dir(tmp_path_factory.mktemp("ip"), checkpoints, settings) as root:
        cn = root / "models" / "ControlNet"
        sd1_unet, xl_unet = build_unet("sd1"), build_unet("sdxl")
        states = {
            "ip_base": ip_adapter_state(sd1_unet, "base", CLIP_PROJECTION, seed=1),
            "ip_plus": ip_adapter_state(sd1_unet, "plus", CLIP_HIDDEN, seed=2),
            "ip_full": ip_adapter_state(sd1_unet, "full", CLIP_HIDDEN, seed=3),
            "ip_wide": ip_adapter_state(sd1_unet, "base", WIDE_PROJECTION, seed=4),
            "ip_no_encoder": ip_adapter_state(sd1_unet, "base", 40, seed=5),
            "ip_xl": ip_adapter_state(xl_unet, "base", CLIP_PROJECTION, seed=6),
            "ip_xl_plus": ip_adapter_state(xl_unet, "plus", CLIP_HIDDEN, seed=7),
        }
        # one file in fp16, as many releases are: the reference reads the same fp16 tensors
        states["ip_full"] = {group: {k: v.half() for k, v in d.items()} for group, d in states["ip_full"].items()}
        for name, state in states.items():
            save_ip_adapter(cn / (f"{name}.bin" if name != "ip_plus" else f"{name}.safetensors"), state)
        faceid = {"image_proj": {"proj.0.weight": torch.randn(1024, 512), "proj.2.weight": torch.randn(3072, 1024),
                                 "norm.weight": torch.ones(768)},
                  "ip_adapter": {"1.to_k_ip.weight": torch.randn(320, 768), "1.to_v_ip.weight": torch.randn(320, 768),
                                 "1.to_k_lora.down.weight": torch.randn(128, 320)}}
        save_ip_adapter(cn / "ip-adapter-faceid_sd15.bin", faceid)
        huge = ip_adapter_state(sd1_unet, "plus", CLIP_HIDDEN, seed=9)
        huge["image_proj"]["latents"] = torch.zeros(1, 4, 100_000)  # promises a Resampler of ~10^11 weights
        save_ip_adapter(cn / "ip_huge.safetensors", huge)
        write_ip_adapter(cn / "ip_real_sd15.safetensors", "sd1")  # 768-wide context: an SD1.5 file
        write_controlnet(cn / "cn_a.safetensors", "sd1", "original", seed=1)
        encoders = {"tiny_vit": write_clip_vision(root / "models" / "clip_vision" / "tiny_vit.safetensors", seed=2),
                    "clip_h": write_clip_vision(root.joinpath(*EXTENSION_CLIP, "clip_h.pth"), seed=8,
                                                projection=WIDE_PROJECTION)}
        save_file({"visual.transformer.resblocks.0.attn.in_proj_weight": torch.zeros(3, 3),
                   "visual.conv1.weight": torch.zeros(4, 3, 2, 2)},
                  str(root / "models" / "clip_vision" / "open_clip_style.safetensors"))
        files.refresh()
        scripts.load_scripts()
        yield root, states, encoders
    ip_adapter.unload_all()
    loading.unload_all()


def use(name: str):
    return sd_models.load_model(sd_models.get_closet_checkpoint_match(name))


def picture() -> np.ndarray:
    """A non-square picture (CLIP crops it to its centre square), with colours the encoder can tell apart."""
    image = Image.new("RGB", (96, 64), (200, 30, 30))
    ImageDraw.Draw(image).ellipse([30, 10, 70, 50], fill=(20, 40, 220))
    return np.asarray(image)


def unit(model: str = "ip_base", **kw) -> dict:
    return {"enabled": True, "module": "ip-adapter_clip_sd15", "model": model, "weight": WEIGHT,
            "image": picture(), **kw}


def txt2img(*units, **kw) -> processing.Processed:
    args = {"prompt": "a red circle", "negative_prompt": "blurry", "steps": STEPS, "width": 64, "height": 64,
            "sampler_name": "Euler", "seed": 11, "cfg_scale": 7.0, "do_not_save_samples": True,
            "do_not_save_grid": True, **kw}
    p = processing.StableDiffusionProcessingTxt2Img(**args)
    runner = scripts.runner_for(p)
    runner.ensure_inputs()
    script = runner.script("ControlNet")
    values = list(runner.default_args())
    for i, value in enumerate(units):
        values[script.args_from + i] = value
    p.scripts, p.script_args = runner, tuple(values)
    return processing.process_images(p)


def pixels(result: processing.Processed) -> np.ndarray:
    return np.asarray(result.images[0].convert("RGB"), dtype=np.int16)


@pytest.fixture
def unet_calls(monkeypatch):
    """(UNetInput, output) of every UNet evaluation, in order."""
    seen = []
    real = generate.unet_call

    def spy(unet, inp, **kwargs):
        out = real(unet, inp, **kwargs)
        seen.append((inp, out.clone()))
        return out

    monkeypatch.setattr(generate, "unet_call", spy)
    return seen


def copy_of(unet):
    """A separate UNet with the same config and weights (the loaded one carries locks deepcopy cannot copy)."""
    from diffusers import UNet2DConditionModel

    other = UNet2DConditionModel.from_config(unet.config)
    other.load_state_dict(unet.state_dict())
    return other.eval()


def unet_state(unet) -> tuple:
    """What must be the same after a job as before it: the processors (the very objects), no encoder_hid_proj,
    the weights' names."""
    return (dict(unet.attn_processors), unet.encoder_hid_proj, unet.config.encoder_hid_dim_type,
            "encoder_hid_proj" in unet._modules, tuple(unet.state_dict()))


# --- the CLIP vision encoder -------------------------------------------------------------------------------------


def test_encoders_are_found_in_both_folders_and_read_from_their_shapes(env):
    root, _, references = env
    found = {e.name: e for e in clip_vision.list_encoders()}
    assert set(found) == {"tiny_vit", "clip_h"}
    assert (found["tiny_vit"].hidden_size, found["tiny_vit"].projection_dim, found["tiny_vit"].image_size) == \
        (CLIP_HIDDEN, CLIP_PROJECTION, 224)
    assert found["clip_h"].projection_dim == WIDE_PROJECTION and found["clip_h"].kind is None
    assert "open_clip" in clip_vision.refused()["open_clip_style.safetensors"]
    for name in ("tiny_vit", "clip_h"):  # .safetensors, and a pickle with the old position_ids buffer
        loaded = clip_vision.load(found[name], torch.device("cpu"), torch.float32)
        pixels_in = torch.randn(1, 3, 224, 224)
        with torch.no_grad():
            ours = loaded.model(pixels_in, output_hidden_states=True)
            theirs = references[name](pixels_in, output_hidden_states=True)
        # the same weights; CPU kernels take other paths on the file's unaligned tensors: float32 rounding only
        torch.testing.assert_close(ours.image_embeds, theirs.image_embeds, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours.hidden_states[-2], theirs.hidden_states[-2], rtol=1e-5, atol=1e-6)


def test_the_picture_is_prepared_as_clip_image_processor_does(env):
    from transformers import CLIPImageProcessor

    ours = clip_vision.pixel_values(picture())
    theirs = CLIPImageProcessor()(images=Image.fromarray(picture()), return_tensors="pt").pixel_values
    assert ours.shape == (1, 3, 224, 224)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_negative_embeddings_follow_diffusers(env):
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPImageProcessor

    _, _, references = env
    encoder = clip_vision.load(next(e for e in clip_vision.list_encoders() if e.name == "tiny_vit"),
                               torch.device("cpu"), torch.float32)
    # diffusers' own encode_image, called on an object that has just what it reads
    holder = type("Holder", (), {"image_encoder": references["tiny_vit"], "feature_extractor": CLIPImageProcessor()})()
    image = Image.fromarray(picture())
    for hidden in (False, True):
        cond, uncond = clip_vision.encode(encoder, picture(), hidden)
        ref_cond, ref_uncond = StableDiffusionPipeline.encode_image(holder, image, "cpu", 1, hidden)
        torch.testing.assert_close(cond[:, 0], ref_cond, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(uncond[:, 0], ref_uncond, rtol=1e-5, atol=1e-6)
        assert cond.abs().max() > 0 and (uncond.abs().max() == 0) == (not hidden)


# --- generations --------------------------------------------------------------------------------------------------


@pytest.fixture
def capture(monkeypatch):
    """The run's first noise, sigmas and text contexts, and the final latents."""
    return capture_run(monkeypatch)


@pytest.mark.parametrize("names", [("ip_base",), ("ip_plus",), ("ip_full",), ("ip_base", "ip_plus")])
def test_same_latents_as_diffusers_pipeline_with_the_adapter(env, capture, names):
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
    from transformers import CLIPImageProcessor

    _, states, references = env
    model = use("sd1.safetensors")
    weights = [WEIGHT, 0.45][: len(names)]
    ours = txt2img(*[unit(name, weight=w) for name, w in zip(names, weights, strict=True)])
    assert len(ours.images) == 1  # IP-Adapter draws no detected map, as in the extension

    cond, uncond = capture["contexts"][0][:1], capture["contexts"][0][1:]
    reference_unet = copy_of(model.unet)
    reference_unet._load_ip_adapter_weights([states[n] for n in names], low_cpu_mem_usage=False)
    pipe = StableDiffusionPipeline(
        vae=model.vae, text_encoder=model.text_encoders[0], tokenizer=model.tokenizers[0], unet=reference_unet,
        safety_checker=None, feature_extractor=CLIPImageProcessor(), image_encoder=references["tiny_vit"],
        requires_safety_checker=False,
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                         timestep_spacing="linspace"))
    pipe.set_progress_bar_config(disable=True)
    pipe.set_ip_adapter_scale(weights)
    with torch.no_grad():
        theirs = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, height=64, width=64,
                      ip_adapter_image=[Image.fromarray(picture())] * len(names),
                      sigmas=capture["sigmas"][0].tolist(), latents=capture["noise"].clone(), guidance_scale=7.0,
                      output_type="latent").images
    # Stated tolerance: float32 on the CPU, 4 Euler steps, latents of magnitude up to ~6: 1e-4 relative + 1e-4
    # absolute (the fp16 full-face file is widened to the UNet's float32 on both sides).
    torch.testing.assert_close(capture["latents"], theirs, rtol=1e-4, atol=1e-4)


def test_weight_zero_and_the_unet_after_the_job_are_bit_for_bit_the_same(env):
    model = use("sd1.safetensors")
    before = unet_state(model.unet)
    version = unet_graph.structure_version(model.unet)
    plain = pixels(txt2img())
    zero = txt2img(unit(weight=0.0))
    assert np.array_equal(plain, pixels(zero))
    assert 'ControlNet 0: "Module: ip-adapter_clip_sd15, Model: ip_base [' in zero.infotexts[0]
    assert unet_graph.structure_version(model.unet) == version  # weight 0 installed nothing
    adapted = pixels(txt2img(unit()))
    assert np.abs(adapted - plain).mean() > 1  # the adapter changes the picture
    assert unet_graph.structure_version(model.unet) == version + 2  # installed, then removed
    after = unet_state(model.unet)
    assert after[1:] == before[1:]
    assert after[0].keys() == before[0].keys() and all(after[0][k] is before[0][k] for k in before[0])
    assert np.array_equal(plain, pixels(txt2img()))


def test_a_failed_job_leaves_the_unet_as_it_was(env, monkeypatch):
    model = use("sd1.safetensors")
    before = unet_state(model.unet)
    real = generate.unet_call
    calls = []

    def failing(unet, inp, **kwargs):
        calls.append(isinstance(unet.encoder_hid_proj, torch.nn.Module))
        if len(calls) == 2:
            raise RuntimeError("the GPU fell over")
        return real(unet, inp, **kwargs)

    monkeypatch.setattr(generate, "unet_call", failing)
    with pytest.raises(RuntimeError, match="fell over"):
        txt2img(unit())
    assert calls == [True, True]  # the adapter was on the UNet when the job failed
    after = unet_state(model.unet)
    assert after[1:] == before[1:] and all(after[0][k] is before[0][k] for k in before[0])


def test_guidance_window_scales_and_negative_rows(env, unet_calls):
    model = use("sd1.safetensors")
    txt2img(unit(guidance_start=0.5, guidance_end=1.0))
    # progress = step / steps: 0, 0.25, 0.5, 0.75; nothing installed before the window opens
    assert [(inp.added or {}).get(ip_adapter.SCALES_KEY) for inp, _ in unet_calls] == [None, None, (WEIGHT,),
                                                                                       (WEIGHT,)]
    embeds = unet_calls[2][0].added["image_embeds"][0]
    assert embeds.shape == (2, 1, CLIP_PROJECTION)  # the prompt's row, then the negative prompt's
    assert embeds[0].abs().max() > 0 and embeds[1].abs().max() == 0  # a base adapter's negative: zeros
    unet_calls.clear()
    late = pixels(txt2img(unit(guidance_start=0.0, guidance_end=0.3)))
    assert [inp.added[ip_adapter.SCALES_KEY] for inp, _ in unet_calls] == [(WEIGHT,), (WEIGHT,), (0.0,), (0.0,)]
    assert not np.array_equal(late, pixels(txt2img(unit())))
    assert model.unet.encoder_hid_proj is None


def test_with_a_controlnet_unit_both_act(env, unet_calls):
    use("sd1.safetensors")
    canny = {"enabled": True, "module": "none", "model": "cn_a", "weight": 1.0, "image": picture(),
             "resize_mode": "Just Resize"}
    both = pixels(txt2img(unit(), canny))
    assert unet_calls[0][0].down_residuals is not None and "image_embeds" in unet_calls[0][0].added
    assert not np.array_equal(both, pixels(txt2img(unit())))
    assert not np.array_equal(both, pixels(txt2img(canny)))


def test_encoder_from_the_extension_folder(env):
    use("sd1.safetensors")
    result = txt2img(unit("ip_wide", module="ip-adapter-auto"))
    assert 'Module: ip-adapter-auto, Model: ip_wide [' in result.infotexts[0]
    names = {h.name for h in memory.owner.handles(group=clip_vision.MEMORY_GROUP)}
    assert any(n.endswith("clip_h.pth") and ":clip_vision:" in n for n in names)
    assert any(n.endswith("ip_wide.bin") for n in {h.name for h in memory.owner.handles(group=loading.MEMORY_GROUP)})


def test_sdxl_unit_equals_diffusers_for_every_evaluation(env, unet_calls):
    _, states, references = env
    model = use("xl.safetensors")
    adapted = pixels(txt2img(unit("ip_xl_plus", module="ip-adapter_clip_sdxl_plus_vith")))
    reference = copy_of(model.unet)  # the job is over: this is the UNet without the adapter
    reference._load_ip_adapter_weights([states["ip_xl_plus"]], low_cpu_mem_usage=False)
    for processor in reference.attn_processors.values():
        if hasattr(processor, "scale"):
            processor.scale = [WEIGHT]
    pixels_in = clip_vision.pixel_values(picture())
    with torch.no_grad():
        hidden = references["tiny_vit"](pixels_in, output_hidden_states=True).hidden_states[-2]
        negative = references["tiny_vit"](torch.zeros_like(pixels_in), output_hidden_states=True).hidden_states[-2]
    assert len(unet_calls) == STEPS
    for inp, out in unet_calls:
        embeds = inp.added["image_embeds"][0]
        torch.testing.assert_close(embeds[0, 0], hidden[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(embeds[1, 0], negative[0], rtol=1e-5, atol=1e-5)
        added = {k: v for k, v in inp.added.items() if k != ip_adapter.SCALES_KEY}
        with torch.no_grad():
            theirs = reference(inp.x, inp.t, encoder_hidden_states=inp.context, added_cond_kwargs=added).sample
        torch.testing.assert_close(out, theirs, rtol=1e-5, atol=1e-5)
    assert not np.array_equal(adapted, pixels(txt2img()))
    assert np.array_equal(pixels(txt2img(unit("ip_xl", module="ip-adapter_clip_sdxl", weight=0))), pixels(txt2img()))


# --- refusals -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("checkpoint", "values", "message"), [
    ("xl.safetensors", {"model": "ip_real_sd15"},
     "ControlNet 0: IP-Adapter ip_real_sd15: made for SD1, the loaded model is SDXL"),
    ("xl.safetensors", {"model": "ip_base", "module": "ip-adapter_clip_sdxl"},
     "ControlNet 0: IP-Adapter ip_base: made for a UNet with 7 cross-attention layers; the loaded model's UNet "
     "has 8"),
    ("sd1.safetensors", {"model": "ip_no_encoder"},
     "ControlNet 0: IP-Adapter ip_no_encoder: no CLIP vision encoder with 40-wide image embeddings in "
     "models/clip_vision, " + "/".join(EXTENSION_CLIP)),
    ("sd1.safetensors", {"model": "ip-adapter-faceid_sd15"},
     "ControlNet 0: IP-Adapter ip-adapter-faceid_sd15: does not fit an IP-Adapter: an IP-Adapter FaceID model "
     "(insightface face embeddings), which is not supported"),
])
def test_units_that_cannot_run_are_refused_by_name(env, checkpoint, values, message):
    model = use(checkpoint)
    before = unet_state(model.unet)
    with pytest.raises(runtime.ControlUnitError) as refused:
        txt2img(unit(**values))
    assert str(refused.value) == message
    assert unet_state(model.unet)[1:] == before[1:]


def test_a_file_promising_a_huge_projection_is_refused_before_anything_is_allocated(env, monkeypatch):
    import diffusers.loaders.unet as diffusers_unet

    real = diffusers_unet.IPAdapterPlusImageProjection
    built_on = []

    class Spy(real):
        def __init__(self, *args, **kwargs):
            built_on.append(torch.get_default_device().type)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(diffusers_unet, "IPAdapterPlusImageProjection", Spy)
    use("sd1.safetensors")
    with pytest.raises(runtime.ControlUnitError, match=r"^ControlNet 0: IP-Adapter ip_huge: does not fit an "
                       r"IP-Adapter: Error\(s\) in loading state_dict for"):
        txt2img(unit("ip_huge", module="ip-adapter-auto"))
    assert built_on == ["meta"]


def test_encoder_choice_follows_the_preprocessor(env, monkeypatch):
    vit_h = clip_vision.EncoderFile("clip_h", "/x/clip_h.pth", 1280, 1024, 224)
    vit_g = clip_vision.EncoderFile("clip_g", "/x/clip_g.pth", 1664, 1280, 224)
    monkeypatch.setattr(clip_vision, "list_encoders", lambda: [vit_h, vit_g])
    file = files.ControlModelFile("ip-adapter_sdxl", "/x/ip-adapter_sdxl.bin", "ip_adapter", "sdxl")

    def adapter(variant: str, width: int) -> ip_adapter.LoadedIPAdapter:
        spec = ip_adapter.AdapterSpec(variant, width, 2048, 70, 4 if variant == "base" else 16)
        return ip_adapter.LoadedIPAdapter(file, spec, None, torch.device("cpu"), torch.float32, ("", 0, 0))

    assert ip_adapter.choose_encoder(adapter("base", 1280), "ip-adapter_clip_sdxl") is vit_g
    assert ip_adapter.choose_encoder(adapter("base", 1280), "ip-adapter-auto") is vit_g
    assert ip_adapter.choose_encoder(adapter("plus", 1280), "ip-adapter_clip_sdxl_plus_vith") is vit_h
    assert ip_adapter.choose_encoder(adapter("base", 1024), "ip-adapter_clip_sd15") is vit_h
    with pytest.raises(loading.ControlModelError, match=r"^IP-Adapter ip-adapter_sdxl: reads image embeddings of "
                       r"ViT-bigG/14 \(1280 wide\), but the preprocessor ip-adapter_clip_sd15 encodes with ViT-H/14; "
                       r"choose ip-adapter_clip_sdxl or ip-adapter-auto$"):
        ip_adapter.choose_encoder(adapter("base", 1280), "ip-adapter_clip_sd15")
    monkeypatch.setattr(clip_vision, "list_encoders", lambda: [vit_h])
    with pytest.raises(loading.ControlModelError, match=r"ViT-bigG/14; the extension names it clip_g.pth"):
        ip_adapter.choose_encoder(adapter("base", 1280), "ip-adapter_clip_sdxl")


def test_the_extensions_preprocessor_names(env):
    assert preprocessors.get("ip-adapter_clip_h").name == "ip-adapter_clip_sd15"
    assert preprocessors.get("ip-adapter_clip_g").name == "ip-adapter_clip_sdxl"
    assert preprocessors.get("ip-adapter_clip_sd15").api_name == "ip-adapter_clip_sd15"
    image = picture()
    assert np.array_equal(preprocessors.run("ip-adapter-auto", image), image)
    assert shared.opts.data.get("cuda_graphs") is False  # these CPU tests run the UNet eagerly


# --- over the API -------------------------------------------------------------------------------------------------


def test_a_unit_through_the_api(env):
    from test_api_support import b64_png, client, decode, serving

    from modules import infotext_utils
    from modules.api.server import create_app

    use("sd1.safetensors")
    title = files.find("ip_base").title
    unit_ = {"input_image": b64_png(Image.fromarray(picture())), "module": "ip-adapter_clip_sd15", "model": title,
             "weight": WEIGHT}
    body = {"prompt": "a red circle", "steps": STEPS, "width": 64, "height": 64, "sampler_name": "Euler", "seed": 42,
            "alwayson_scripts": {"controlnet": {"args": [unit_]}}}
    with serving(create_app(auth=None)) as running, client(running) as http:
        adapted = http.post("/sdapi/v1/txt2img", json=body)
        plain = http.post("/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {}})
    assert adapted.status_code == 200, adapted.text
    images = adapted.json()["images"]
    assert len(images) == 1  # no detected map for IP-Adapter
    text = decode(images[0]).info["parameters"]
    assert f'ControlNet 0: "Module: ip-adapter_clip_sd15, Model: {title}, Weight: {WEIGHT}' in text
    params = infotext_utils.parse_generation_parameters(text)
    assert params["ControlNet 0"].startswith(f"Module: ip-adapter_clip_sd15, Model: {title}")
    assert images[0] != plain.json()["images"][0]

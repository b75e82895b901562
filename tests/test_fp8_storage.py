"""A1111's "FP8 weight" setting (fp8_storage) on tiny random-weight models: 8-bit UNet weights (half the bytes)
that still make a close picture, "Enable for SDXL" only for SDXL, the infotext key, turning it off reloads the
file's 16/32-bit weights (the picture bit for bit as before), LoRA on 8-bit weights added and removed exactly, and
the API's override_settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lora_files import kohya_lora, write

from modules import infotext_utils, processing, sd_models, shared
from modules.models import fp8_storage
from modules.networks import files, networks


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, isolated_data_dir):
    checkpoints = {"sd1.safetensors": {"family": "sd1", "seed": 3}, "xl.safetensors": {"family": "sdxl", "seed": 5}}
    with isolated_data_dir(tmp_path_factory.mktemp("data"), checkpoints, {"live_previews_enable": False}) as root:
        yield root


@pytest.fixture
def fp8(data_dir, monkeypatch):
    """Set the setting for one test; the models go back to the file's weights afterwards."""
    def choose(value: str) -> None:
        monkeypatch.setitem(shared.opts.data, "fp8_storage", value)
    yield choose
    shared.opts.data["fp8_storage"] = "Disable"
    sd_models.apply_weight_storage()


def use(name: str):
    return sd_models.load_model(sd_models.get_closet_checkpoint_match(name))


def txt2img(prompt: str = "a red circle", **kw) -> processing.Processed:
    args = {"prompt": prompt, "negative_prompt": "blurry", "steps": 3, "width": 64, "height": 64,
            "sampler_name": "Euler", "seed": 11, "cfg_scale": 7.0, "do_not_save_samples": True,
            "do_not_save_grid": True, **kw}
    return processing.process_images(processing.StableDiffusionProcessingTxt2Img(**args))


def pixels(result: processing.Processed) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def eight_bit_layers(model) -> list[str]:
    return [name for name, p in model.unet.named_parameters() if p.dtype == torch.float8_e4m3fn]


def test_enable_stores_the_unet_in_8_bits_and_the_picture_stays_close(fp8):
    use("sd1.safetensors")
    plain = txt2img()
    compute_dtype = shared.sd_model.unet.dtype
    bytes_before = sum(p.numel() * p.element_size() for p in shared.sd_model.unet.parameters())
    fp8("Enable")
    result = txt2img()
    model = shared.sd_model
    converted = eight_bit_layers(model)
    assert converted and all(not name.startswith(fp8_storage.KEEP_PREFIXES) for name in converted)
    assert model.unet.dtype == compute_dtype  # inputs are still cast to the compute dtype
    bytes_after = sum(p.numel() * p.element_size() for p in model.unet.parameters())
    assert bytes_after < 0.4 * bytes_before  # float32 here: most bytes go from 4 to 1
    assert not np.array_equal(pixels(result), pixels(plain))
    assert psnr(pixels(result), pixels(plain)) > 35  # measured 42.9 dB on this random-weight model
    params = infotext_utils.parse_generation_parameters(result.infotexts[0])
    assert params["FP8 weight"] == "Enable"
    assert "FP8 weight" not in plain.infotexts[0]


def test_turning_it_off_reloads_the_files_weights_and_the_picture_comes_back_bit_for_bit(fp8):
    use("sd1.safetensors")
    plain = txt2img()
    fp8("Enable")
    txt2img()
    fp8("Disable")
    again = txt2img()
    assert not eight_bit_layers(shared.sd_model) and not shared.sd_model.fp8_storage
    assert np.array_equal(pixels(plain), pixels(again))


def test_enable_for_sdxl_leaves_sd1_alone(fp8):
    fp8("Enable for SDXL")
    use("sd1.safetensors")
    sd1 = txt2img()
    assert not eight_bit_layers(shared.sd_model)
    assert "FP8 weight" not in sd1.infotexts[0]
    use("xl.safetensors")
    xl = txt2img()
    assert eight_bit_layers(shared.sd_model)
    assert infotext_utils.parse_generation_parameters(xl.infotexts[0])["FP8 weight"] == "Enable for SDXL"


def test_lora_on_8_bit_weights_takes_effect_and_is_removed_exactly(fp8, data_dir):
    fp8("Enable")
    model = use("sd1.safetensors")
    plain = txt2img()
    weights = {k: v.clone() for k, v in model.unet.state_dict().items()}
    lora_dir = data_dir / "models" / "Lora"
    lora_dir.mkdir(parents=True, exist_ok=True)
    write(lora_dir / "style.safetensors", kohya_lora(model, seed=1))
    files.list_available_networks()
    try:
        with_lora = txt2img("a red circle <lora:style:1>")
        assert np.abs(pixels(with_lora) - pixels(plain)).max() > 10
        assert any(p.dtype == torch.float8_e4m3fn for p in model.unet.parameters())
        again = txt2img()
        assert np.array_equal(pixels(plain), pixels(again))
        after = model.unet.state_dict()
        assert all(torch.equal(after[k].float(), v.float()) for k, v in weights.items())
    finally:
        networks.unload(shared.sd_model)
        (lora_dir / "style.safetensors").unlink()
        files.list_available_networks()


def test_cache_fp16_weight_adds_lora_to_the_16_bit_values(fp8, data_dir, monkeypatch):
    model = use("sd1.safetensors")
    lora_dir = data_dir / "models" / "Lora"
    lora_dir.mkdir(parents=True, exist_ok=True)
    write(lora_dir / "style.safetensors", kohya_lora(model, seed=1))
    files.list_available_networks()
    prompt = "a red circle <lora:style:1>"
    try:
        full = pixels(txt2img(prompt))  # LoRA on the file's weights
        fp8("Enable")
        txt2img()  # converted without the LoRA: its originals are now the 8-bit values
        rounded_twice = pixels(txt2img(prompt))
        monkeypatch.setitem(shared.opts.data, "cache_fp16_weight", True)
        plain = txt2img()  # the changed choice reloads and converts again, keeping the 16-bit values
        assert infotext_utils.parse_generation_parameters(plain.infotexts[0])["Cache FP16 weight for LoRA"] == "True"
        weights = {k: v.clone() for k, v in shared.sd_model.unet.state_dict().items()}
        rounded_once = pixels(txt2img(prompt))
        assert psnr(rounded_once, full) > psnr(rounded_twice, full)
        assert np.array_equal(pixels(txt2img()), pixels(plain))
        after = shared.sd_model.unet.state_dict()
        assert all(torch.equal(after[k].float(), v.float()) for k, v in weights.items())
    finally:
        networks.unload(shared.sd_model)
        (lora_dir / "style.safetensors").unlink()
        files.list_available_networks()


def test_override_settings_over_the_api_take_effect_for_one_request(fp8, data_dir):
    from fastapi.testclient import TestClient

    from modules.api.server import create_app

    use("sd1.safetensors")
    client = TestClient(create_app(auth=None), base_url="http://127.0.0.1:7861")
    body = {"prompt": "a red circle", "steps": 3, "width": 64, "height": 64, "seed": 11, "sampler_name": "Euler"}
    r = client.post("/sdapi/v1/txt2img", json={**body, "override_settings": {"fp8_storage": "Enable"}})
    assert r.status_code == 200, r.text
    assert "FP8 weight: Enable" in r.json()["info"]
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200 and "FP8 weight" not in r.json()["info"]
    assert not eight_bit_layers(shared.sd_model)
    bad = client.post("/sdapi/v1/txt2img", json={**body, "override_settings": {"fp8_storage": "Sometimes"}})
    assert bad.status_code == 422 and "fp8_storage" in bad.text

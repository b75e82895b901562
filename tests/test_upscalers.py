"""The upscaler registry: model files found in A1111's folders, loaded with spandrel, tiled without seams, held
by the memory owner; bad files refused by name; the API routes and the settings that name upscalers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_api_support import client, serving
from upscaler_files import (
    write_corrupt,
    write_esrgan,
    write_evil_pickle,
    write_face_model,
    write_grayscale_esrgan,
    write_swinir,
    write_unknown_weights,
)

from modules import cmd_args, images, shared, upscaler_models, upscaler_tiling, upscalers
from modules.models import memory
from modules.models.checkpoint_files import ModelFileError
from modules.options import SettingValueError

MODEL_NAMES = ["2x_Tiny", "4x_tiny", "RealESRGAN_x2plus_tiny", "SwinIR_2x_tiny"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, isolated_data_dir):
    root = tmp_path_factory.mktemp("upscalers")
    models = root / "models"
    write_esrgan(models / "ESRGAN" / "4x_tiny.pth", scale=4)
    write_esrgan(models / "ESRGAN" / "2x_Tiny.safetensors", scale=2, seed=1)
    write_esrgan(models / "RealESRGAN" / "RealESRGAN_x2plus_tiny.pth", scale=2, nested="params_ema")
    write_swinir(models / "SwinIR" / "SwinIR_2x_tiny.safetensors", scale=2)
    (models / "ESRGAN" / "notes.txt").write_text("not a model")
    saved = list(shared.sd_upscalers)
    with isolated_data_dir(root, settings={"ESRGAN_tile": 192, "ESRGAN_tile_overlap": 8}):
        upscalers.refresh()
        yield root
    upscaler_models.unload_all()
    shared.sd_upscalers = saved


def _image(w: int = 20, h: int = 14, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _data(name: str):
    found = upscalers.find(name)
    assert found is not None, name
    return found


# --- the registry ----------------------------------------------------------------------------------------------

def test_registry_lists_built_ins_then_model_files_sorted_by_name(data_dir):
    assert upscalers.names() == ["None", "Lanczos", "Nearest", *MODEL_NAMES]
    assert [d.scale for d in shared.sd_upscalers[3:]] == [2, 4, 2, 2]
    assert type(_data("4x_tiny").scaler).__name__ == "UpscalerESRGAN"
    assert type(_data("RealESRGAN_x2plus_tiny").scaler).__name__ == "UpscalerRealESRGAN"
    assert type(_data("SwinIR_2x_tiny").scaler).__name__ == "UpscalerSwinIR"
    assert _data("2x_Tiny").data_path == str(data_dir / "models" / "ESRGAN" / "2x_Tiny.safetensors")


def test_folder_flags_follow_data_dir_and_add_their_folder(data_dir, tmp_path):
    ns = cmd_args.parse_args(["--data-dir", str(tmp_path)], environ={})
    for dest, folder in (("swinir_models_path", "SwinIR"), ("scunet_models_path", "ScuNET"),
                         ("hat_models_path", "HAT"), ("dat_models_path", "DAT")):
        assert getattr(ns, dest) == str(tmp_path / "models" / folder)
    extra = tmp_path / "more-esrgan"
    write_esrgan(extra / "4x_extra.safetensors", scale=4, seed=3)
    saved = shared.cmd_opts
    shared.cmd_opts = cmd_args.parse_args(["--data-dir", str(data_dir), "--esrgan-models-path", str(extra)],
                                          environ={})
    try:
        names = [d.name for d in upscalers.refresh()]
    finally:
        shared.cmd_opts = saved
        upscalers.refresh()
    assert "4x_extra" in names and "4x_tiny" in names
    assert "--esrgan-models-path" in cmd_args.EFFECTIVE_FLAGS and "--hat-models-path" in cmd_args.EFFECTIVE_FLAGS


def test_scale_comes_from_the_name_until_the_model_says(tmp_path):
    assert upscaler_models.scale_from_name("4x_UltraSharp") == 4
    assert upscaler_models.scale_from_name("RealESRGAN_x2plus") == 2
    assert upscaler_models.scale_from_name("DAT_x3") == 3
    assert upscaler_models.scale_from_name("SwinIR") == 4  # says nothing: A1111's default
    path = write_swinir(tmp_path / "SwinIR" / "my_swinir.safetensors", scale=2)
    assert upscaler_models.known_scale(str(path)) == 4
    upscaler_models.get_model(str(path))
    upscaler_models._remember_scale(str(path), 2)
    assert upscaler_models.known_scale(str(path)) == 2


# --- upscaling -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "scale", "passes"), [
    ("4x_tiny", 2, 1),  # one 4x pass, then Lanczos down to the exact size
    ("4x_tiny", 4, 1),
    ("2x_Tiny", 3.5, 2),  # 2x twice, then Lanczos down
    ("4x_tiny", 8, 2),  # 4x twice
    ("SwinIR_2x_tiny", 2, 1),
    ("RealESRGAN_x2plus_tiny", 2, 1),
])
def test_upscale_gives_the_exact_size_running_the_model_as_often_as_needed(data_dir, monkeypatch, name, scale,
                                                                          passes):
    calls = []
    real = upscaler_models.upscale_with_model
    monkeypatch.setattr(upscaler_models, "upscale_with_model", lambda m, im: calls.append(im.size) or real(m, im))
    data = _data(name)
    img = _image(20, 14)
    out = data.scaler.upscale(img, scale, data.data_path)
    assert out.size == (int(20 * scale), int(14 * scale))
    assert len(calls) == passes
    lanczos = img.resize(out.size, Image.Resampling.LANCZOS)
    assert np.abs(np.asarray(out, np.int16) - np.asarray(lanczos, np.int16)).mean() > 2  # the network ran


def test_rgba_keeps_its_alpha(data_dir):
    data = _data("2x_Tiny")
    img = _image(12, 10).convert("RGBA")
    img.putalpha(Image.new("L", img.size, 77))
    out = data.scaler.upscale(img, 2, data.data_path)
    assert out.mode == "RGBA" and out.size == (24, 20) and out.getchannel("A").getextrema() == (77, 77)


def test_resize_image_with_a_model_upscaler_and_with_nearest(data_dir):
    img = _image(16, 12)
    out = images.resize_image(0, img, 64, 48, upscaler_name="4x_tiny")
    assert out.size == (64, 48)
    lanczos = images.resize_image(0, img, 64, 48, upscaler_name="Lanczos")
    assert not np.array_equal(np.asarray(out), np.asarray(lanczos))
    nearest = images.resize_image(0, img, 64, 48, upscaler_name="Nearest")
    assert np.array_equal(np.asarray(nearest), np.asarray(img.resize((64, 48), Image.Resampling.NEAREST)))


def test_img2img_upscaler_setting_takes_registry_names(data_dir):
    assert shared.opts.validate("upscaler_for_img2img", "4x_tiny") == "4x_tiny"
    assert shared.opts.data_labels["upscaler_for_img2img"].default == "None"
    with pytest.raises(SettingValueError, match="upscaler_for_img2img"):
        shared.opts.validate("upscaler_for_img2img", "No Such Upscaler")
    img = _image(16, 12)
    shared.opts.data["upscaler_for_img2img"] = "Nearest"
    try:
        out = images.resize_image(0, img, 64, 48)
    finally:
        shared.opts.data["upscaler_for_img2img"] = "None"
    assert np.array_equal(np.asarray(out), np.asarray(img.resize((64, 48), Image.Resampling.NEAREST)))


# --- tiling ----------------------------------------------------------------------------------------------------

def test_tiles_of_a_pointwise_model_equal_the_untiled_result_exactly():
    def nearest4(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=4, mode="nearest") * 0.5 + 0.25

    image = torch.rand(1, 3, 37, 53)  # odd sizes, not a multiple of the tile
    whole = nearest4(image)
    tiled = upscaler_tiling.upscale_tiled(nearest4, image, 4, tile=16, overlap=4)
    assert tiled.shape == whole.shape
    assert torch.allclose(tiled, whole, atol=1e-6)


def test_tiled_equals_untiled_within_tolerance_for_a_real_network(data_dir):
    """Stated tolerance: mean absolute difference under 1/255 and maximum under 0.1 (tile 32, overlap 8)."""
    loaded = upscaler_models.get_model(_data("4x_tiny").data_path)
    image = torch.rand(1, 3, 45, 70)
    with torch.inference_mode():
        whole = loaded.descriptor(image)
        tiled = upscaler_tiling.upscale_tiled(loaded.descriptor, image, 4, tile=32, overlap=8)
    assert tiled.shape == whole.shape == (1, 3, 180, 280)
    diff = (tiled - whole).abs()
    assert diff.mean() < 1 / 255 and diff.max() < 0.1
    assert whole.std() > 0.01  # the comparison is not between two flat pictures


def test_small_image_is_one_tile_and_tiling_setting_is_used(data_dir, monkeypatch):
    seen = []
    real = upscaler_tiling.upscale_tiled

    def spy(model, image, scale, tile, overlap, interrupted):
        seen.append((tuple(image.shape[2:]), tile, overlap))
        return real(model, image, scale, tile, overlap, interrupted)

    monkeypatch.setattr(upscaler_tiling, "upscale_tiled", spy)
    monkeypatch.setitem(shared.opts.data, "ESRGAN_tile", 16)
    monkeypatch.setitem(shared.opts.data, "ESRGAN_tile_overlap", 4)
    data = _data("2x_Tiny")
    out = data.scaler.upscale(_image(40, 30), 2, data.data_path)
    assert out.size == (80, 60) and seen == [((30, 40), 16, 4)]
    assert upscaler_tiling.tile_starts(10, 16, 4) == [0]
    assert upscaler_tiling.tile_starts(40, 16, 4) == [0, 12, 24]


def test_interrupt_stops_between_tiles_and_keeps_the_size(data_dir, monkeypatch):
    monkeypatch.setitem(shared.opts.data, "ESRGAN_tile", 16)
    calls = []
    real = upscaler_models.get_model

    def counting(path, device=None):
        loaded = real(path, device)
        descriptor = loaded.descriptor

        class Counting:
            def __getattr__(self, name):
                return getattr(descriptor, name)

            def __call__(self, x):
                calls.append(x.shape)
                shared.state.interrupted = True  # the person presses Interrupt during the first tile
                return descriptor(x)

        return upscaler_models.LoadedModel(Counting(), loaded.device, loaded.dtype, loaded.file_key)

    monkeypatch.setattr(upscaler_models, "get_model", counting)
    data = _data("2x_Tiny")
    try:
        out = data.scaler.upscale(_image(48, 48), 2, data.data_path)
    finally:
        shared.state.interrupted = False
    assert len(calls) == 1 and out.size == (96, 96)


# --- refused files ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("writer", "filename", "reason"), [
    (write_corrupt, "4x_broken.pth", "corrupt"),
    (write_corrupt, "4x_broken.safetensors", "safetensors"),
    (write_unknown_weights, "4x_mystery.safetensors", "not a model of a known upscaler"),
    (write_face_model, "face.safetensors", "face restoration model"),
    (write_grayscale_esrgan, "2x_gray.safetensors", "only RGB"),
])
def test_a_file_that_is_not_an_upscaler_is_refused_by_name(data_dir, tmp_path, writer, filename, reason):
    path = writer(tmp_path / "ESRGAN" / filename)
    with pytest.raises(ModelFileError, match=reason) as caught:
        upscaler_models.get_model(str(path))
    assert filename in str(caught.value)
    # the same refusal reaches the person who picks it in a dropdown
    scaler = upscaler_models.UpscalerESRGAN(str(tmp_path / "ESRGAN"))
    data = next(d for d in scaler.scalers if d.data_path == str(path))
    with pytest.raises(ModelFileError, match=filename):
        scaler.upscale(_image(), 2, data.data_path)


def test_an_evil_pickle_is_refused_and_never_runs(data_dir, tmp_path):
    marker = tmp_path / "pwned"
    path = write_evil_pickle(tmp_path / "4x_evil.pth", marker)
    with pytest.raises(ModelFileError, match="4x_evil.pth") as caught:
        upscaler_models.get_model(str(path))
    assert "refused" in str(caught.value) and not marker.exists()


# --- memory ----------------------------------------------------------------------------------------------------

def test_upscaler_models_are_an_lru_of_the_memory_owner(data_dir, monkeypatch):
    upscaler_models.unload_all()
    monkeypatch.setitem(shared.opts.data, "upscaler_models_in_memory", 1)
    a, b = _data("4x_tiny"), _data("2x_Tiny")
    first = upscaler_models.get_model(a.data_path)
    assert upscaler_models.get_model(a.data_path) is first  # cached
    upscaler_models.get_model(b.data_path)
    held = [h.name for h in memory.owner.handles(group=upscaler_models.MEMORY_GROUP)]
    assert len(held) == 1 and held[0].endswith("2x_Tiny.safetensors")
    assert upscaler_models.get_model(a.data_path) is not first  # it was unloaded, so it loads again

    monkeypatch.setitem(shared.opts.data, "upscaler_models_in_memory", 0)
    a.scaler.upscale(_image(), 4, a.data_path)
    assert memory.owner.handles(group=upscaler_models.MEMORY_GROUP) == []  # 0: nothing stays loaded after use


def test_memory_owner_lru_make_room_and_unload():
    free = {"bytes": 100}
    unloaded = []
    owner = memory.MemoryOwner(free_bytes=lambda device: free["bytes"], empty_cache=lambda: None)

    def unloader(name, size):
        def unload():
            unloaded.append(name)
            free["bytes"] += size
        return unload

    for name, size in (("a", 300), ("b", 200), ("c", 100)):
        owner.register(name, size, unloader(name, size), "cuda:0", group="g")
    owner.touch("a")  # a is now the most recently used
    assert [h.name for h in owner.handles()] == ["b", "c", "a"]
    assert owner.make_room(350, "cuda") == ["b", "c"]  # least recently used first, only what is needed
    assert free["bytes"] == 400 and "a" in owner
    assert owner.make_room(10_000, "cuda", keep=["a"]) == []  # a kept, nothing else to free
    assert owner.make_room(10, "cpu") == []  # other devices are not touched
    owner.register("d", 5, unloader("d", 5), "cuda", group="g")
    assert owner.trim_group("g", 1) == ["a"] and [h.name for h in owner.handles()] == ["d"]
    assert owner.unload("d") and not owner.unload("d") and unloaded == ["b", "c", "a", "d"]


def test_memory_owner_retries_once_after_out_of_memory():
    unloaded = []
    owner = memory.MemoryOwner(free_bytes=lambda device: 0, empty_cache=lambda: None)
    owner.register("big", 10, lambda: unloaded.append("big"), "cuda")
    owner.register("mine", 10, lambda: unloaded.append("mine"), "cuda")
    attempts = []

    def job():
        attempts.append(1)
        if len(attempts) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return "done"

    assert owner.run_with_oom_retry(job, "cuda", keep=["mine"]) == "done"
    assert len(attempts) == 2 and unloaded == ["big"] and "mine" in owner

    def always_oom():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.cuda.OutOfMemoryError):  # a second failure is the caller's to report
        owner.run_with_oom_retry(always_oom, "cuda")

    def other_error():
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        owner.run_with_oom_retry(other_error, "cuda")
    assert "mine" not in owner  # freed by the second OOM, not by the unrelated error


# --- API -------------------------------------------------------------------------------------------------------

def test_api_lists_upscalers_and_realesrgan_models(data_dir):
    from modules.api.server import create_app

    with serving(create_app(auth=None)) as server, client(server) as http:
        items = http.get("/sdapi/v1/upscalers").json()
        realesrgan = http.get("/sdapi/v1/realesrgan-models").json()
    assert [i["name"] for i in items] == ["None", "Lanczos", "Nearest", *MODEL_NAMES]
    assert items[0] == {"name": "None", "model_name": None, "model_path": None, "model_url": None, "scale": 1}
    tiny = next(i for i in items if i["name"] == "4x_tiny")
    assert tiny == {"name": "4x_tiny", "model_name": "ESRGAN", "model_url": None, "scale": 4,
                    "model_path": str(data_dir / "models" / "ESRGAN" / "4x_tiny.pth")}
    assert realesrgan == [{"name": "RealESRGAN_x2plus_tiny", "scale": 2,
                           "path": str(data_dir / "models" / "RealESRGAN" / "RealESRGAN_x2plus_tiny.pth")}]


def test_half_precision_on_cuda_where_the_architecture_allows(monkeypatch):
    from types import SimpleNamespace

    from modules import devices

    cuda, cpu = torch.device("cuda"), torch.device("cpu")

    def dtype(half: bool, bf16: bool, device: torch.device = cuda) -> torch.dtype:
        return upscaler_models.inference_dtype(SimpleNamespace(supports_half=half, supports_bfloat16=bf16), device)

    monkeypatch.setattr(devices, "dtype_unet", torch.float16)
    assert dtype(True, True) == torch.float16
    assert dtype(False, True) == torch.bfloat16
    assert dtype(False, False) == torch.float32
    assert dtype(True, True, cpu) == torch.float32
    monkeypatch.setattr(devices, "dtype_unet", torch.float32)  # --no-half / --precision full
    assert dtype(True, True) == torch.float32


def test_a_model_that_fails_in_reduced_precision_falls_back_to_float32(data_dir):
    """SwinIR says it supports bfloat16, but at sizes other than its training size it mixes in float32."""
    data = _data("SwinIR_2x_tiny")
    loaded = upscaler_models.get_model(data.data_path)
    loaded.descriptor.model.to(torch.bfloat16)
    loaded.dtype = torch.bfloat16
    try:
        out = upscaler_models.upscale_with_model(loaded, _image(22, 18))
    finally:
        upscaler_models.unload_all()
    assert out.size == (44, 36) and loaded.dtype == torch.float32

"""--medvram, --medvram-sdxl and --lowvram on tiny models (CPU), and the out-of-memory retry of a job.

On the CPU no memory can be saved, so these check the structure (which hooks and groups sit on which component,
and that they come off again) and the result: pictures bit for bit equal to plain placement, LoRA included.
tests/test_offload_cuda.py checks memory on a GPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lora_files import kohya_lora, write

from modules import call_queue, devices, processing, sd_models, shared
from modules.engine import generate, unet_compile
from modules.models import memory, offload
from modules.networks import files, networks


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, isolated_data_dir):
    checkpoints = {"sd1.safetensors": {"family": "sd1", "seed": 3}, "xl.safetensors": {"family": "sdxl", "seed": 5}}
    settings = {"live_previews_enable": False, "sd_checkpoints_limit": 2, "lora_in_memory_limit": 4}
    with isolated_data_dir(tmp_path_factory.mktemp("data"), checkpoints, settings) as root:
        yield root


@pytest.fixture
def flags(data_dir, monkeypatch):
    """Set offload flags for one test; every loaded model is placed plainly again afterwards."""
    def set_flags(*names: str) -> None:
        for name in ("medvram", "medvram_sdxl", "lowvram"):
            monkeypatch.setattr(shared.cmd_opts, name, name in names)
    set_flags()
    yield set_flags
    set_flags()
    for model in (shared.sd_model,):
        if model is not None:
            networks.unload(model)
            offload.place(model, model.device, "none")


def use(name: str):
    return sd_models.load_model(sd_models.get_closet_checkpoint_match(name))


def generate_image(prompt: str = "a red circle", **kw) -> np.ndarray:
    args = {"prompt": prompt, "negative_prompt": "blurry", "steps": 3, "width": 64, "height": 64,
            "sampler_name": "Euler", "seed": 11, "cfg_scale": 7.0, "do_not_save_samples": True,
            "do_not_save_grid": True}
    args.update(kw)
    result = processing.process_images(processing.StableDiffusionProcessingTxt2Img(**args))
    return np.asarray(result.images[0].convert("RGB"), dtype=np.int16)


def img2img_image(init: np.ndarray) -> np.ndarray:
    from PIL import Image

    p = processing.StableDiffusionProcessingImg2Img(
        init_images=[Image.fromarray(init.astype(np.uint8))], prompt="a blue square", steps=3, width=64, height=64,
        sampler_name="Euler", seed=12, denoising_strength=0.6, do_not_save_samples=True, do_not_save_grid=True)
    return np.asarray(processing.process_images(p).images[0].convert("RGB"), dtype=np.int16)


def accelerate_hooked(module: torch.nn.Module) -> bool:
    return isinstance(getattr(module, "_hf_hook", None), offload._OneAtATime)


def grouped_layers(module: torch.nn.Module) -> int:
    return len(offload._group_hooks(module))


def assert_plain(model) -> None:
    assert model.offload is None
    for component in model.modules():
        for sub in component.modules():
            assert not hasattr(sub, "_hf_hook") and "forward" not in sub.__dict__
            registry = getattr(sub, "_diffusers_hook", None)
            assert registry is None or registry.get_hook("group_offloading") is None
        assert not component._forward_pre_hooks


# --- which hooks on which components -------------------------------------------------------------------------


@pytest.mark.parametrize(("flag_names", "checkpoint", "expected"), [
    ((), "sd1", "none"),
    (("medvram",), "sd1", "medvram"),
    (("medvram",), "xl", "medvram"),
    (("medvram_sdxl",), "sd1", "none"),
    (("medvram_sdxl",), "xl", "medvram"),
    (("lowvram",), "sd1", "lowvram"),
    (("lowvram",), "xl", "lowvram"),
    (("lowvram", "medvram"), "xl", "lowvram"),
])
def test_each_flag_installs_its_hooks(flags, flag_names, checkpoint, expected):
    flags(*flag_names)
    model = use(checkpoint)
    assert offload.mode_of(model) == expected
    if expected == "none":
        assert_plain(model)
        return
    state = model.offload
    for component in [*model.text_encoders, model.vae]:
        assert accelerate_hooked(component)
    assert model.device == state.device
    handle = [h for h in memory.owner.handles(group="offload") if h.name == state.handle]
    assert len(handle) == 1 and handle[0].size_bytes == offload.resident_bytes(model)
    if expected == "medvram":
        assert accelerate_hooked(model.unet) and grouped_layers(model.unet) == 0
        assert handle[0].size_bytes == max(memory.module_size_bytes(m) for m in model.modules())
    else:
        leaves = [m for m in model.unet.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
        assert not hasattr(model.unet, "_hf_hook") and grouped_layers(model.unet) > len(leaves)
        assert handle[0].size_bytes < model.parameter_bytes()


def test_medvram_keeps_one_component_at_a_time(flags):
    """With a fake device the hooks' moves show: only the component that runs is 'on the device'."""
    flags("medvram")
    model = use("sd1")
    state = model.offload
    moves: list[tuple[str, str]] = []
    names = {id(m): n for n, m in (("te", model.text_encoders[0]), ("unet", model.unet), ("vae", model.vae))}
    resident: set[int] = set()

    def fake_move(modules, target, keep_ram_copy=False):
        for m in modules:
            (resident.discard if target.type == "cpu" else resident.add)(id(m))
            moves.append((names[id(m)], target.type))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(offload.devices, "move_modules", fake_move)
        mp.setattr(offload, "_resident", lambda m, device: id(m) in resident)
        state.device = torch.device("meta")  # never touched: the fake move only records
        try:
            for component in ("te", "unet", "vae", "te"):
                module = next(m for m in model.modules() if names[id(m)] == component)
                offload._bring(state, module)
                assert resident == {id(module)}
            offload.settle(model)
            assert resident == set()
        finally:
            state.device = torch.device("cpu")
    assert moves[:4] == [("te", "meta"), ("te", "cpu"), ("unet", "meta"), ("unet", "cpu")]


def test_medvram_keeps_what_fits_and_evicts_when_the_device_is_full(flags, monkeypatch):
    """With room on the device (as CUDA reports it, under a per-process cap) a component comes in next to the
    resident ones and they stay after the job; when the room runs out its siblings leave first. A failed job
    sends everything back to RAM."""
    flags("medvram")
    model = use("sd1")
    state = model.offload
    te, unet, vae = model.text_encoders[0], model.unet, model.vae
    resident: set[int] = set()
    room = {"bytes": 10 * 2**30}

    def fake_move(modules, target, keep_ram_copy=False):
        for m in modules:
            (resident.discard if target.type == "cpu" else resident.add)(id(m))

    monkeypatch.setattr(offload.devices, "move_modules", fake_move)
    monkeypatch.setattr(offload, "_resident", lambda m, device: id(m) in resident)
    monkeypatch.setattr(offload.memory, "available_bytes", lambda device: room["bytes"])
    state.device = torch.device("meta")
    try:
        offload._bring(state, unet)
        offload._bring(state, vae)
        assert resident == {id(unet), id(vae)}  # room enough: the UNet stayed while the VAE came in
        offload.run_job(lambda: None, lambda: model)
        assert resident == {id(unet), id(vae)}  # and both stay after a job that succeeded
        room["bytes"] = offload.WORKING_ROOM  # now the text encoder's weights do not fit beside them
        offload._bring(state, te)
        assert resident == {id(te)}
        offload._bring(state, unet)
        with pytest.raises(ValueError):
            offload.run_job(lambda: (_ for _ in ()).throw(ValueError("bad")), lambda: model)
        assert resident == set()  # a failed job leaves nothing on the device
    finally:
        state.device = torch.device("cpu")


def test_available_bytes_respects_the_per_process_cap(monkeypatch):
    from modules.models import memory

    gib = 2**30
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (100 * gib, 140 * gib))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 3 * gib)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 4 * gib)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)

    def fraction(value):  # as torch's: a device index, not a device without one (which it refuses)
        def get(device):
            assert isinstance(device, int), device
            return value
        return get

    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", fraction(1.0))
    assert memory.available_bytes(torch.device("cuda")) == 101 * gib  # free + cached but unused
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", fraction(4 / 140))
    assert memory.available_bytes(torch.device("cuda")) == 1 * gib  # a 4 GiB cap with 3 GiB allocated
    assert memory.available_bytes(torch.device("cpu")) is None


# --- same pictures ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("checkpoint", ["sd1", "xl"])
def test_pictures_are_bit_identical_in_every_mode(flags, checkpoint):
    use(checkpoint)
    plain = generate_image()
    plain_i2i = img2img_image(plain)
    for mode in ("medvram", "lowvram"):
        flags(mode)
        model = use(checkpoint)
        assert offload.mode_of(model) == mode
        np.testing.assert_array_equal(generate_image(), plain)
        np.testing.assert_array_equal(img2img_image(plain), plain_i2i)  # VAE encode goes through the hook too
    flags()
    np.testing.assert_array_equal(generate_image(), plain)


def test_lora_on_offloaded_weights_gives_the_same_picture(flags):
    lora_dir = shared.cmd_opts.lora_dir
    model = use("sd1")
    write(Path(lora_dir) / "offl.safetensors", kohya_lora(model, seed=7))
    files.list_available_networks()
    try:
        plain = generate_image()
        with_lora = generate_image("a red circle <lora:offl:0.8>")
        assert np.abs(with_lora - plain).max() > 0  # the LoRA does change the picture
        for mode in ("medvram", "lowvram"):
            flags(mode)
            use("sd1")
            np.testing.assert_array_equal(generate_image("a red circle <lora:offl:0.8>"), with_lora)
            np.testing.assert_array_equal(generate_image(), plain)  # patches come off the offloaded weights exactly
            np.testing.assert_array_equal(generate_image("a red circle <lora:offl:0.8>"), with_lora)
        # patched while offloaded, then placed plainly: the weights keep the patch, and removing it restores them
        flags()
        use("sd1")
        np.testing.assert_array_equal(generate_image("a red circle <lora:offl:0.8>"), with_lora)
        np.testing.assert_array_equal(generate_image(), plain)
    finally:
        networks.unload(shared.sd_model)
        (Path(lora_dir) / "offl.safetensors").unlink()
        networks.networks_in_memory.clear()
        files.list_available_networks()


# --- switching removes hooks ----------------------------------------------------------------------------------


def test_switching_flags_and_models_removes_hooks(flags):
    flags("lowvram")
    low = use("sd1")
    assert offload.mode_of(low) == "lowvram"
    handle = low.offload.handle
    flags()
    assert use("sd1") is low
    assert_plain(low)
    assert handle not in memory.owner
    flags("medvram_sdxl")
    xl = use("xl")
    assert offload.mode_of(xl) == "medvram"
    assert offload.mode_of(use("sd1")) == "none"
    assert offload.mode_of(use("xl")) == "medvram"  # back from the cache, placed again
    flags()
    use("sd1")
    assert use("xl") is xl
    assert_plain(xl)


def test_place_validates_and_is_idempotent(flags):
    model = use("sd1")
    with pytest.raises(ValueError, match="unknown offload mode"):
        offload.place(model, "cpu", "ultravram")
    offload.place(model, "cpu", "medvram")
    state = model.offload
    offload.place(model, "cpu", "medvram")
    assert model.offload is state
    offload.place(model, "cpu", "none")
    assert_plain(model)


# --- CUDA graphs ----------------------------------------------------------------------------------------------


def test_cuda_graphs_follow_the_offload_mode(flags, monkeypatch):
    """Plain placement: graphs and the compiled forward. medvram: graphs (the UNet moves whole, only between its
    calls), no compiling. lowvram: neither (its layers move within each call)."""
    seen: list[tuple[bool, bool]] = []
    real = generate.unet_call

    def recording(unet, inp, use_graphs=False, **kw):
        seen.append((use_graphs, kw.get("compiled", False)))
        return real(unet, inp, use_graphs=use_graphs)  # nothing compiles on this CPU run

    monkeypatch.setattr(generate, "unet_call", recording)
    monkeypatch.setitem(shared.opts.data, "cuda_graphs", True)
    monkeypatch.setitem(shared.opts.data, "compile_unet", True)  # a compiled forward also replays in graphs
    monkeypatch.setattr(unet_compile, "BACKEND", "eager")  # the VAE decoder compiles too: no kernels on this CPU
    use("sd1")
    generate_image()
    assert seen and set(seen) == {(True, True)}
    for mode, expected in (("medvram", (True, False)), ("lowvram", (False, False))):
        seen.clear()
        flags(mode)
        use("sd1")
        generate_image()
        assert seen and set(seen) == {expected}, mode


def test_medvram_holds_the_unet_in_place_during_its_calls(flags, monkeypatch):
    """While a UNet call runs (a CUDA graph may be recorded or replayed) its hook moves nothing and a sibling
    brought meanwhile does not evict it; after the call it leaves as before, and its graphs go with it."""
    from modules.engine import unet_graph

    flags("medvram")
    model = use("sd1")
    state = model.offload
    te, unet, vae = model.text_encoders[0], model.unet, model.vae
    resident: set[int] = set()
    moves: list[tuple[int, str]] = []

    def fake_move(modules, target, keep_ram_copy=False):  # the real one's bookkeeping, no real move
        for m in modules:
            moves.append((id(m), target.type))
            (resident.discard if target.type == "cpu" else resident.add)(id(m))
            devices.mark_moved(m)

    monkeypatch.setattr(offload.devices, "move_modules", fake_move)
    monkeypatch.setattr(offload, "_resident", lambda m, device: id(m) in resident)
    monkeypatch.setattr(offload.memory, "available_bytes", lambda device: 0)  # a full card: one at a time
    state.device = torch.device("meta")
    try:
        offload._bring(state, te)
        with offload.unet_in_place(model):
            assert resident == {id(unet)}  # the text encoder made room before the call
            unet_graph._cache_for(unet)  # a graph recorded during the call
            moves.clear()
            offload._bring(state, unet)  # the UNet's own hook, inside the call
            offload._bring(state, vae)  # e.g. a live preview's decode
            assert moves == [(id(vae), "meta")] and resident == {id(unet), id(vae)}
            assert "_sd_graph_caches" in unet.__dict__
        offload._bring(state, te)
        assert resident == {id(te)} and "_sd_graph_caches" not in unet.__dict__
    finally:
        state.device = torch.device("cpu")


def test_offloading_drops_every_graph_set_and_its_memory(flags, monkeypatch):
    """Graphs captured while the model sat on the device (the plain set and a token-merging variant's) hold memory
    pools; placing the model in an offload mode (the flag, or the out-of-memory retry) must let them go."""
    from modules.engine import unet_graph

    model = use("sd1")
    with unet_graph.graph_variant(model.unet, ("tome", 0.5)):
        unet_graph._cache_for(model.unet)
    unet_graph._cache_for(model.unet)
    assert len(model.unet.__dict__["_sd_graph_caches"]) == 2
    offload.place(model, torch.device("cpu"), "medvram")
    assert "_sd_graph_caches" not in model.unet.__dict__ and "_sd_graph_cache" not in model.unet.__dict__


def test_graphs_of_a_model_that_moved_are_not_replayed(monkeypatch):
    """Plain placement to RAM and back (a test, an unload and reload): the caching allocator may give the first weight
    its old address while the others land elsewhere, so the graphs' check of that address alone is not enough (a GPU
    run replayed such graphs and drew a black picture). A move that changed nothing keeps them."""
    from modules.engine import unet_graph

    module = torch.nn.Linear(2, 2)
    fixed = torch.zeros(1)
    monkeypatch.setattr(unet_graph, "_first_parameter", lambda m: fixed)  # the address the allocator gave back
    first = unet_graph._cache_for(module)
    devices.move_modules([module], torch.device("cpu"))  # already there: nothing moved
    assert unet_graph._cache_for(module) is first
    devices.move_modules([module], torch.device("meta"))
    assert unet_graph._cache_for(module) is not first


def test_a_model_parked_in_ram_leaves_no_graphs_on_the_gpu(flags, monkeypatch):
    """Switching checkpoints with two cached (A1111's sd_checkpoints_limit 2, keep in CPU): the model that waits
    in RAM lets its graphs (and their GPU memory pools) go."""
    import dataclasses

    from modules.engine import unet_graph
    from modules.models.manager import CachePolicy, ModelManager

    model = use("sd1")
    unet_graph._cache_for(model.unet)
    moved: list[torch.device] = []
    monkeypatch.setattr(devices, "move_modules", lambda modules, target: moved.append(target))
    manager = ModelManager(lambda: devices.choose_precision(torch.device("cpu")), lambda: CachePolicy(2, True))
    on_gpu = dataclasses.replace(devices.choose_precision(torch.device("cpu")), device=torch.device("cuda"))
    manager._park(model, on_gpu)
    assert moved == [devices.cpu] and "_sd_graph_caches" not in model.unet.__dict__


# --- out of memory during a job -------------------------------------------------------------------------------


def _failing_unet(monkeypatch, failures: int, modes: list[str]) -> None:
    """The first `failures` UNet calls raise CUDA's out-of-memory error; every call records the model's mode."""
    real = generate.unet_call
    count = {"n": 0}

    def flaky(unet, inp, use_graphs=False, **kw):
        modes.append(offload.mode_of(shared.sd_model))
        count["n"] += 1
        if count["n"] <= failures:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
        return real(unet, inp, use_graphs=use_graphs, **kw)

    monkeypatch.setattr(generate, "unet_call", flaky)


def test_oom_frees_memory_and_retries_once_at_a_lower_setting(flags, monkeypatch):
    use("sd1")
    plain = generate_image()
    unloaded: list[str] = []
    memory.owner.register("test:other-network", 10, lambda: unloaded.append("other"), "cpu")
    modes: list[str] = []
    _failing_unet(monkeypatch, 1, modes)
    np.testing.assert_array_equal(generate_image(), plain)
    assert modes[0] == "none" and set(modes[1:]) == {"medvram"}
    assert unloaded == ["other"]  # the memory owner freed the device
    assert offload.mode_of(shared.sd_model) == "none"  # the lower setting was for that retry only

    flags("medvram")
    use("sd1")
    modes.clear()
    _failing_unet(monkeypatch, 1, modes)
    np.testing.assert_array_equal(generate_image(), plain)
    assert modes[0] == "medvram" and set(modes[1:]) == {"lowvram"}
    assert offload.mode_of(shared.sd_model) == "medvram"


def test_oom_twice_fails_the_job_with_a_clear_message_and_the_next_job_works(flags, monkeypatch):
    use("sd1")
    plain = generate_image()
    modes: list[str] = []
    _failing_unet(monkeypatch, 2, modes)
    with pytest.raises(offload.JobOutOfMemoryError) as info:
        generate_image()
    message = call_queue.error_message(info.value)
    assert message == ("Out of GPU memory, even after freeing memory and retrying with medvram offloading: try a "
                       "smaller size or batch, or start with --lowvram")
    assert call_queue.is_out_of_memory(info.value)
    assert modes == ["none", "medvram"]
    assert offload.mode_of(shared.sd_model) == "none"
    np.testing.assert_array_equal(generate_image(), plain)  # the failing patch is spent: the next job works


def test_a_job_that_saved_pictures_is_not_run_again(flags, monkeypatch, data_dir, tmp_path):
    use("sd1")
    modes: list[str] = []
    _failing_unet(monkeypatch, 0, modes)
    real = generate.unet_call
    calls = {"n": 0}

    def fails_in_the_second_batch(unet, inp, use_graphs=False, **kw):
        calls["n"] += 1
        if calls["n"] == 4:  # 3 steps per batch: the first call of the second batch
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
        return real(unet, inp, use_graphs=use_graphs, **kw)

    monkeypatch.setattr(generate, "unet_call", fails_in_the_second_batch)
    with pytest.raises(offload.JobOutOfMemoryError) as info:
        generate_image(n_iter=2, do_not_save_samples=False, outpath_samples=str(tmp_path))
    assert "were saved" in call_queue.error_message(info.value) and "not run again" in str(info.value)
    assert len(list(tmp_path.rglob("*.png"))) == 1  # the first batch's picture, once
    assert calls["n"] == 4  # no second attempt


def test_other_errors_are_not_retried(flags, monkeypatch):
    use("sd1")
    calls: list[int] = []

    def broken(unet, inp, use_graphs=False, **kw):
        calls.append(1)
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(generate, "unet_call", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        generate_image()
    assert calls == [1]


def test_oom_in_the_queue_reaches_the_client_and_the_queue_keeps_serving(flags, monkeypatch):
    use("sd1")
    plain = generate_image()
    q = call_queue.JobQueue()
    monkeypatch.setattr(call_queue, "queue", q)
    try:
        _failing_unet(monkeypatch, 2, [])
        with pytest.raises(call_queue.JobFailed, match="even after freeing memory and retrying with medvram"):
            q.submit("txt2img", generate_image).wait(120)
        np.testing.assert_array_equal(q.submit("txt2img", generate_image).wait(120), plain)
    finally:
        q.shutdown(timeout=10)

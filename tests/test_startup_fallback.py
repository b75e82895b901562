"""The checkpoint that starts, and a checkpoint that vanished.

A corrupt file that sorts first must not leave the server without a model: start-up skips it, says which file
and why (console and `sd_models.startup_notices()`), and runs with the next usable checkpoint (the bundled one
last). A checkpoint deleted after it was listed is a 4xx naming it (no absolute path) on every route that can
ask for it, and the model in use stays in use.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
from test_api_support import FAST, assert_error_json, client, decode, serving
from tiny_models import write_tiny_checkpoint

import webui
from modules import call_queue, paths, sd_models, shared
from modules.api.server import create_app
from modules.models import registry

QUIET = {"samples_save": False, "grid_save": False, "live_previews_enable": False}
GONE = os.path.join("sub", "gone.safetensors")  # a checkpoint's name is its path under the models folder


@pytest.fixture(scope="module")
def good_file(tmp_path_factory) -> Path:
    """One tiny SD1 checkpoint, copied wherever a test needs a good one (building it is the slow part)."""
    path = tmp_path_factory.mktemp("good") / "good.safetensors"
    write_tiny_checkpoint(path, "sd1", seed=3)
    return path


def truncated(good: Path) -> bytes:
    """An interrupted download: the header is whole, the tensors are not."""
    data = good.read_bytes()
    return data[: len(data) // 2]


def lora(good: Path) -> bytes:
    """The wrong kind of file in the checkpoint folder."""
    import torch
    from safetensors.torch import save

    return save({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8)})


# (contents, what the notice must say about it)
CORRUPT = {
    "truncated": (truncated, "truncated or corrupt"),
    "html-page": (lambda good: b"<!DOCTYPE html><html>404 Not Found</html>", "not a valid .safetensors file"),
    "lora": (lora, "looks like a LoRA"),
}


def _write_data_dir(root: Path, files: dict[str, bytes], settings: dict | None = None) -> Path:
    folder = root / "models" / "Stable-diffusion"
    folder.mkdir(parents=True, exist_ok=True)
    (root / "models" / "VAE").mkdir(exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (root / "config.json").write_text(json.dumps({**QUIET, **(settings or {})}))
    return folder


def _start_like_webui() -> bool:
    """webui.start() up to serving: settings and folders, then the first load as the first job on the queue."""
    webui.initialize()
    return call_queue.queue.submit("load-model", webui.load_first_model).wait(timeout=300)


def _current_file() -> str:
    return Path(shared.sd_model.sd_checkpoint_info.filename).name


def _no_paths(text: str, root: Path) -> None:
    assert str(root) not in text and str(root.resolve()) not in text


@pytest.fixture
def data_root(tmp_path, isolated_data_dir):
    """An empty --data-dir (model list, settings and the loaded model restored afterwards)."""
    with isolated_data_dir(tmp_path) as root:
        yield root


def test_corrupt_first_checkpoint_is_skipped_and_generate_works(data_root, good_file, caplog):
    _write_data_dir(data_root, {"aaa.safetensors": truncated(good_file), "good.safetensors": good_file.read_bytes()})
    with caplog.at_level(logging.WARNING):
        assert _start_like_webui() is True
    assert _current_file() == "good.safetensors"

    notices = sd_models.startup_notices()
    assert any("aaa.safetensors" in n and "truncated or corrupt" in n for n in notices), notices
    assert "Loaded good.safetensors" in notices[-1]
    _no_paths(" ".join(notices), data_root)
    console = caplog.text
    assert "Could not load the checkpoint: aaa.safetensors: truncated or corrupt" in console
    _no_paths(console, data_root)

    with serving(create_app(auth=None)) as server, client(server) as http:
        r = http.post("/sdapi/v1/txt2img", json=FAST)
        assert r.status_code == 200, r.text
        assert decode(r.json()["images"][0]).size == (64, 64)
        assert json.loads(r.json()["info"])["sd_model_name"] == "good"


@pytest.mark.parametrize("kind", list(CORRUPT))
def test_every_kind_of_unusable_file_is_skipped_with_its_reason(data_root, good_file, kind):
    contents, reason = CORRUPT[kind]
    _write_data_dir(data_root, {"aaa.safetensors": contents(good_file), "good.safetensors": good_file.read_bytes()})
    registry.list_models()
    model = sd_models.load_model()
    assert _current_file() == "good.safetensors" and shared.sd_model is model
    assert any("aaa.safetensors" in n and reason in n for n in sd_models.startup_notices())


def test_configured_checkpoint_that_fails_falls_back_and_config_json_keeps_it(data_root, good_file):
    _write_data_dir(data_root, {"good.safetensors": good_file.read_bytes(), "zzz.safetensors": truncated(good_file)},
                    settings={"sd_model_checkpoint": "zzz.safetensors"})
    assert _start_like_webui() is True
    assert _current_file() == "good.safetensors"
    assert any(n.startswith("Could not load the checkpoint: zzz.safetensors:") for n in sd_models.startup_notices())
    # In memory the setting names the model in use (the UI, infotext and job restores read it) ...
    assert shared.opts.sd_model_checkpoint == shared.sd_model.sd_checkpoint_info.title
    # ... but start-up writes nothing: fix zzz and restart, and it is the one that loads.
    assert json.loads((data_root / "config.json").read_text())["sd_model_checkpoint"] == "zzz.safetensors"


def test_configured_checkpoint_that_is_gone_is_reported(data_root, good_file):
    _write_data_dir(data_root, {"good.safetensors": good_file.read_bytes()},
                    settings={"sd_model_checkpoint": "deleted.safetensors [0123456789]"})
    assert _start_like_webui() is True
    assert _current_file() == "good.safetensors"
    assert "deleted.safetensors [0123456789]" in sd_models.startup_notices()[0]


def test_first_choice_loading_leaves_no_notices(data_root, good_file):
    _write_data_dir(data_root, {"good.safetensors": good_file.read_bytes()})
    assert _start_like_webui() is True
    assert sd_models.startup_notices() == []


def test_bundled_model_is_tried_last(data_root, good_file, tmp_path_factory, monkeypatch):
    bundled = tmp_path_factory.mktemp("bundled") / "default-shapes-v1.safetensors"
    shutil.copy(good_file, bundled)
    monkeypatch.setattr(paths, "bundled_checkpoint", str(bundled))
    folder = _write_data_dir(data_root, {"aaa.safetensors": b"\x05", "mine.safetensors": good_file.read_bytes()})
    assert _start_like_webui() is True
    assert _current_file() == "mine.safetensors"  # the user's own checkpoint comes before the bundled one

    (folder / "mine.safetensors").write_bytes(truncated(good_file))
    sd_models.unload_model_weights()
    shared.opts.data["sd_model_checkpoint"] = None
    registry.list_models()
    sd_models.load_model()
    assert shared.sd_model.sd_checkpoint_info.filename == str(bundled)
    notices = sd_models.startup_notices()
    assert [n.split(":")[1].strip() for n in notices[:2]] == ["aaa.safetensors", "mine.safetensors"]
    assert "Loaded default-shapes-v1.safetensors" in notices[-1]
    _no_paths(" ".join(notices), bundled.parent)


def test_when_nothing_loads_start_up_says_why_and_generate_is_a_503(data_root, good_file, capsys):
    _write_data_dir(data_root, {"aaa.safetensors": truncated(good_file), "bbb.safetensors": b""})
    assert _start_like_webui() is False
    assert shared.sd_model is None
    assert "No checkpoint could be loaded: aaa.safetensors (truncated" in capsys.readouterr().out
    notices = sd_models.startup_notices()
    assert [n.split(":")[1].strip() for n in notices[:2]] == ["aaa.safetensors", "bbb.safetensors"]
    assert notices[-1].startswith("No checkpoint could be loaded")

    with serving(create_app(auth=None)) as server, client(server) as http:
        body = assert_error_json(http.post("/sdapi/v1/txt2img", json=FAST), 503)
        assert "aaa.safetensors" in body["errors"]
        _no_paths(json.dumps(body), data_root)


def test_a_vae_setting_naming_nothing_is_not_blamed_on_the_checkpoints(data_root, good_file):
    _write_data_dir(data_root, {"good.safetensors": good_file.read_bytes()}, settings={"sd_vae": "missing.vae.pt"})
    webui.initialize()
    with pytest.raises(ValueError, match="unknown VAE 'missing.vae.pt'"):
        sd_models.load_model()
    assert not any("good.safetensors" in n for n in sd_models.startup_notices())


# --- a checkpoint deleted after it was listed -----------------------------------------------------------------


@pytest.fixture(scope="module")
def api_server(tmp_path_factory, isolated_data_dir, good_file):
    root = tmp_path_factory.mktemp("deleted")
    with isolated_data_dir(root, settings=QUIET):
        shutil.copy(good_file, root / "models" / "Stable-diffusion" / "tiny.safetensors")
        registry.list_models()
        sd_models.load_model(sd_models.get_closet_checkpoint_match("tiny.safetensors"))
        with serving(create_app(auth=None)) as running:
            yield running, root


@pytest.fixture
def gone(api_server, good_file):
    """A checkpoint that is listed (through the API's refresh), then deleted from disk."""
    server, root = api_server
    path = root / "models" / "Stable-diffusion" / "sub" / "gone.safetensors"
    path.parent.mkdir(exist_ok=True)
    shutil.copy(good_file, path)
    with client(server) as http:
        assert http.post("/sdapi/v1/refresh-checkpoints").status_code == 200
        titles = [m["title"] for m in http.get("/sdapi/v1/sd-models").json()]
        assert GONE in titles
        path.unlink()
        yield http, root


def _assert_still_serving_tiny(http) -> None:
    assert http.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("tiny.safetensors")
    r = http.post("/sdapi/v1/txt2img", json=FAST)
    assert r.status_code == 200, r.text
    assert json.loads(r.json()["info"])["sd_model_name"] == "tiny"


REQUESTS = {
    "options": ("/sdapi/v1/options", {"sd_model_checkpoint": GONE}),
    "override_settings": ("/sdapi/v1/txt2img", {**FAST, "override_settings": {"sd_model_checkpoint": "gone"}}),
    "refiner": ("/sdapi/v1/txt2img", {**FAST, "refiner_checkpoint": GONE, "refiner_switch_at": 0.5}),
}


@pytest.mark.parametrize("route", list(REQUESTS))
def test_deleted_checkpoint_is_a_4xx_naming_it_and_the_model_stays(gone, route):
    http, root = gone
    url, payload = REQUESTS[route]
    r = http.post(url, json=payload)
    assert 400 <= r.status_code < 500, r.text
    body = assert_error_json(r, r.status_code)
    assert GONE in body["errors"] and "no longer on disk" in body["errors"]
    _no_paths(r.text, root)
    _assert_still_serving_tiny(http)


def test_deleted_checkpoint_in_the_quicksettings(gone):
    pytest.importorskip("gradio")
    from modules.ui import quicksettings

    http, root = gone
    value, message = quicksettings.switch_checkpoint(GONE)
    assert value.startswith("tiny.safetensors")
    assert GONE in message and "no longer on disk" in message
    _no_paths(message, root)
    _assert_still_serving_tiny(http)


def test_a_vae_that_does_not_fit_keeps_the_checkpoint_that_loaded(data_root, good_file):
    _write_data_dir(data_root, {"good.safetensors": good_file.read_bytes(), "other.safetensors": b"\x05"},
                    settings={"sd_vae": "broken.safetensors"})
    (data_root / "models" / "VAE" / "broken.safetensors").write_bytes(b"\x05")
    assert _start_like_webui() is True
    assert _current_file() == "good.safetensors"  # not skipped for its VAE, and other.safetensors never tried
    assert sd_models.startup_notices() == [
        "Loaded good.safetensors, but broken.safetensors: not a valid .safetensors file: only 1 bytes long "
        "(empty or truncated)."]


def test_candidates_settings_first_then_the_list_with_ckpt_first_and_bundled_last(tmp_path, good_file):
    models, elsewhere = tmp_path / "models", tmp_path / "elsewhere"
    models.mkdir()
    elsewhere.mkdir()
    for name in ("b.safetensors", "a.safetensors", "c.ckpt"):
        (models / name).write_bytes(b"")
    for name in ("flag.safetensors", "bundled.safetensors"):
        (elsewhere / name).write_bytes(b"")
    try:
        registry.list_models(model_dir=str(models), ckpt_dir="", ckpt_file=str(elsewhere / "flag.safetensors"),
                             bundled=str(elsewhere / "bundled.safetensors"))
        names = [i.name for i in registry.checkpoint_candidates("c.ckpt")]
        assert names == ["c.ckpt", "flag.safetensors", "a.safetensors", "b.safetensors", "bundled.safetensors"]
        assert [i.name for i in registry.checkpoint_candidates("nothing")] == names[1:3] + ["b.safetensors", "c.ckpt",
                                                                                           "bundled.safetensors"]
    finally:
        registry.list_models()

"""LoRA through the HTTP API, with the field names and shapes A1111 clients use."""

from __future__ import annotations

import pytest
from lora_files import kohya_lora, write
from test_api_support import CHECKPOINTS, FAST, SETTINGS, client, decode, serving

from modules import sd_models
from modules.api.server import create_app
from modules.networks import files, networks


@pytest.fixture(scope="module")
def http(tmp_path_factory, isolated_data_dir):
    with isolated_data_dir(tmp_path_factory.mktemp("api-lora"), CHECKPOINTS, SETTINGS) as root:
        model = sd_models.load_model(sd_models.get_closet_checkpoint_match("tiny.safetensors"))
        write(root / "models" / "Lora" / "sub" / "style.safetensors", kohya_lora(model, seed=1),
              {"ss_output_name": "nice-style", "ss_base_model_version": "sd_v1"})
        files.list_available_networks()
        with serving(create_app(auth=None)) as running, client(running) as c:
            c.root = root
            yield c
        networks.unload(model)


def test_loras_route_lists_name_alias_path_and_metadata(http):
    listed = http.get("/sdapi/v1/loras").json()
    assert [(x["name"], x["alias"]) for x in listed] == [("style", "nice-style")]
    assert listed[0]["path"].endswith("style.safetensors")
    assert listed[0]["metadata"]["ss_base_model_version"] == "sd_v1"


def test_refresh_loras_finds_a_new_file(http):
    model = sd_models.model_data.sd_model if hasattr(sd_models, "model_data") else None
    model = model or sd_models.load_model(sd_models.get_closet_checkpoint_match("tiny.safetensors"))
    path = write(http.root / "models" / "Lora" / "late.safetensors", kohya_lora(model, seed=2))
    try:
        assert "late" not in [x["name"] for x in http.get("/sdapi/v1/loras").json()]
        assert http.post("/sdapi/v1/refresh-loras").status_code == 200
        assert "late" in [x["name"] for x in http.get("/sdapi/v1/loras").json()]
    finally:
        path.unlink()
        http.post("/sdapi/v1/refresh-loras")


def test_txt2img_with_a_lora_tag_changes_the_picture_and_writes_lora_hashes(http):
    plain = http.post("/sdapi/v1/txt2img", json=FAST).json()
    styled = http.post("/sdapi/v1/txt2img", json={**FAST, "prompt": "a red circle <lora:nice-style:0.8>"}).json()
    assert decode(plain["images"][0]).tobytes() != decode(styled["images"][0]).tobytes()
    info = styled["info"]
    assert 'Lora hashes: \\"nice-style: ' in info or 'Lora hashes: "nice-style: ' in info
    again = http.post("/sdapi/v1/txt2img", json=FAST).json()
    assert decode(plain["images"][0]).tobytes() == decode(again["images"][0]).tobytes()


def test_a_lora_that_does_not_fit_is_named_in_the_comments(http):
    sdxl_tagged = http.root / "models" / "Lora" / "xl-only.safetensors"
    model = sd_models.load_model(sd_models.get_closet_checkpoint_match("tiny.safetensors"))
    write(sdxl_tagged, kohya_lora(model, seed=3), {"ss_base_model_version": "sdxl_base_v1-0"})
    http.post("/sdapi/v1/refresh-loras")
    try:
        answer = http.post("/sdapi/v1/txt2img", json={**FAST, "prompt": "x <lora:xl-only:1>"})
        assert answer.status_code == 200
        assert "LoRA not applied: xl-only: made for SDXL, the loaded model is SD1" in answer.text
    finally:
        sdxl_tagged.unlink()
        http.post("/sdapi/v1/refresh-loras")


def test_sd_lora_setting_accepts_only_listed_networks(http):
    assert http.post("/sdapi/v1/options", json={"sd_lora": "not-there"}).status_code == 422
    assert http.post("/sdapi/v1/options", json={"sd_lora": "style"}).status_code == 200
    try:
        answer = http.post("/sdapi/v1/txt2img", json=FAST).json()
        assert "Lora hashes" in answer["info"]
    finally:
        assert http.post("/sdapi/v1/options", json={"sd_lora": "None"}).status_code == 200


def test_embeddings_routes_list_loaded_and_skipped_and_the_infotext_names_them(http):
    import torch
    from safetensors.torch import save_file

    folder = http.root / "embeddings"
    folder.mkdir(exist_ok=True)
    save_file({"emb_params": torch.randn(2, 64)}, str(folder / "shiny.safetensors"))
    save_file({"clip_l": torch.randn(1, 768), "clip_g": torch.randn(1, 1280)}, str(folder / "xl-only.safetensors"))
    try:
        assert http.post("/sdapi/v1/refresh-embeddings").status_code == 200
        listed = http.get("/sdapi/v1/embeddings").json()
        assert listed["loaded"]["shiny"]["vectors"] == 2 and listed["loaded"]["shiny"]["shape"] == 64
        assert "xl-only" in listed["skipped"]
        answer = http.post("/sdapi/v1/txt2img", json={**FAST, "prompt": "a shiny circle"}).json()
        assert "TI hashes: " in answer["info"] and "shiny: " in answer["info"]
        plain = http.post("/sdapi/v1/txt2img", json={**FAST, "prompt": "a circle"}).json()
        assert "TI hashes" not in plain["info"]
    finally:
        for path in folder.iterdir():
            path.unlink()
        http.post("/sdapi/v1/refresh-embeddings")

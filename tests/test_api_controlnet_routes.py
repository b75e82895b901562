"""sd-webui-controlnet's /controlnet/* routes over real HTTP, with the field names its client scripts send."""

from __future__ import annotations

import base64
import json
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from controlnet_files import write_controlnet, write_ip_adapter, write_t2i_adapter
from depth_files import scene, write_estimator
from PIL import Image
from test_api_support import assert_error_json, b64_png, client, decode, serving

from modules import call_queue, hashes, paths, shared
from modules.api import auth
from modules.api.server import create_app
from modules.controlnet import files
from modules.depth import estimators
from modules.models import memory

USERS = [("alice", "s3cret")]
CANNY_11 = "control_v11p_sd15_canny"
DEPTH_10 = "control_sd15_depth"
ADAPTER = "t2iadapter_color_sd14v1"
IP_ADAPTER = "ip-adapter_sd15"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, isolated_data_dir):
    root = tmp_path_factory.mktemp("controlnet-api")
    with isolated_data_dir(root, {}, {}):
        paths.models_path = str(root / "models")
        folder = root / "models" / "ControlNet"
        folder.mkdir(parents=True)
        write_controlnet(folder / f"{CANNY_11}.safetensors", seed=1)
        write_controlnet(folder / f"{DEPTH_10}.safetensors", seed=2)
        write_t2i_adapter(folder / f"{ADAPTER}.safetensors", seed=3)
        write_ip_adapter(folder / f"{IP_ADAPTER}.safetensors", seed=4)
        (folder / "readme_canny.safetensors").write_bytes(b"not a model")  # never listed
        write_estimator(root / "models", "midas_dpt_hybrid", seed=1)
        files.refresh()
        yield root
    estimators.unload_all()
    files.refresh()  # the list no longer names this data dir's files


@pytest.fixture(scope="module")
def server(data_dir):
    with serving(create_app(auth=None)) as running:
        yield running


@pytest.fixture(scope="module")
def http(server):
    with client(server) as c:
        yield c


def title(name: str, root: Path) -> str:
    return f"{name} [{hashes.model_hash(str(root / 'models' / 'ControlNet' / f'{name}.safetensors'))}]"


def square_png(width: int = 64, height: int = 64) -> str:
    picture = np.zeros((height, width, 3), np.uint8)
    picture[16:48, 20:44] = 255
    return b64_png(Image.fromarray(picture))


def detect(http, **fields) -> dict:
    r = http.post("/controlnet/detect", json=fields)
    assert r.status_code == 200, r.text
    return r.json()


# --- lists ---------------------------------------------------------------------------------------------------------


def test_version_is_the_extensions_api_version(http):
    r = http.get("/controlnet/version")
    assert r.status_code == 200 and r.json() == {"version": 2}


def test_settings_give_the_unit_count_from_the_option(http, monkeypatch):
    assert http.get("/controlnet/settings").json() == {"control_net_unit_count": 3}
    monkeypatch.setitem(shared.opts.data, "control_net_unit_count", 5)
    assert http.get("/controlnet/settings").json() == {"control_net_unit_count": 5}


def test_model_list_has_every_control_model_title_and_update_rescans(http, data_dir):
    r = http.get("/controlnet/model_list")
    assert r.status_code == 200, r.text
    expected = [title(n, data_dir) for n in (CANNY_11, DEPTH_10, IP_ADAPTER, ADAPTER)]
    assert sorted(r.json()["model_list"]) == sorted(expected)
    assert all(len(t.split("[")[1]) == 9 for t in expected)  # "name [8 hex]", as the extension writes titles

    new = data_dir / "models" / "ControlNet" / "control_v11f1e_sd15_tile.safetensors"
    write_controlnet(new, seed=5)
    try:
        assert title(new.stem, data_dir) not in http.get("/controlnet/model_list?update=false").json()["model_list"]
        assert title(new.stem, data_dir) in http.get("/controlnet/model_list?update=true").json()["model_list"]
    finally:
        new.unlink()
        files.refresh()
    assert title(new.stem, data_dir) not in http.get("/controlnet/model_list").json()["model_list"]
    assert_error_json(http.get("/controlnet/model_list?update=maybe"), 422, "update")


def test_module_list_internal_keys_by_default_labels_with_alias_names(http):
    plain = http.get("/controlnet/module_list").json()
    aliased = http.get("/controlnet/module_list?alias_names=true").json()
    assert plain["module_list"][:2] == ["none", "invert"]
    assert "depth" in plain["module_list"] and "depth_midas" not in plain["module_list"]
    assert aliased["module_list"][:2] == ["none", "invert (from white bg & black line)"]
    assert "depth_midas" in aliased["module_list"] and "canny" in aliased["module_list"]
    assert len(plain["module_list"]) == len(aliased["module_list"])
    canny = aliased["module_detail"]["canny"]
    assert canny["model_free"] is False
    assert [s["name"] for s in canny["sliders"]] == ["Preprocessor Resolution", "Canny Low Threshold",
                                                     "Canny High Threshold"]
    assert set(plain["module_detail"]) == set(plain["module_list"])


def test_control_types_fill_model_lists_by_the_types_keywords(http, data_dir):
    r = http.get("/controlnet/control_types")
    assert r.status_code == 200, r.text
    types = r.json()["control_types"]
    canny, depth = title(CANNY_11, data_dir), title(DEPTH_10, data_dir)
    adapter, ip = title(ADAPTER, data_dir), title(IP_ADAPTER, data_dir)
    assert types["All"]["model_list"][0] == "None" and sorted(types["All"]["model_list"][1:]) == sorted(
        [canny, depth, adapter, ip])
    assert types["All"]["default_model"] == "None" and types["All"]["default_option"] == "none"
    assert types["Canny"]["model_list"] == ["None", canny]
    assert types["Canny"]["default_model"] == canny and types["Canny"]["default_option"] == "canny"
    assert "canny" in types["Canny"]["module_list"] and types["Canny"]["module_list"][0] == "none"
    assert types["Depth"]["model_list"] == ["None", depth] and types["Depth"]["default_model"] == depth
    assert types["T2I-Adapter"]["model_list"] == ["None", adapter]  # by the keyword "t2iadapter"
    assert types["IP-Adapter"]["model_list"] == ["None", ip]
    assert types["OpenPose"]["model_list"] == ["None"] and types["OpenPose"]["default_model"] == "None"
    for entry in types.values():
        assert set(entry) == {"module_list", "model_list", "default_option", "default_model"}


def test_default_model_prefers_controlnet_1_1(data_dir):
    from modules.controlnet import control_types

    assert control_types._default_model(["None", "control_sd15_canny [aa]", "control_v11p_sd15_canny [bb]"]) == \
        "control_v11p_sd15_canny [bb]"
    assert control_types._default_model(["None", "control_sd15_canny [aa]"]) == "control_sd15_canny [aa]"
    assert control_types._default_model(["None"]) == "None"


# --- detect --------------------------------------------------------------------------------------------------------


def test_detect_canny_gives_opencvs_edges_as_png(http):
    picture = np.zeros((64, 64, 3), np.uint8)
    picture[16:48, 20:44] = 255
    body = detect(http, controlnet_module="canny", controlnet_input_images=[b64_png(Image.fromarray(picture))],
                  controlnet_processor_res=64, controlnet_threshold_a=100, controlnet_threshold_b=200)
    assert body["info"] == "Success" and "poses" not in body and len(body["images"]) == 1
    result = decode(body["images"][0])
    assert result.format == "PNG" and result.size == (64, 64)
    edges = cv2.Canny(picture, 100, 200)
    assert np.array_equal(np.asarray(result.convert("L")), edges)
    assert edges[15, 30] == 255 and edges[30, 19] == 255 and edges[30, 30] == 0  # the border, not the inside


def test_detect_defaults_at_minus_one_and_several_images(http):
    small, wide = square_png(64, 64), square_png(96, 64)
    body = detect(http, controlnet_module="canny", controlnet_input_images=[small, wide],
                  controlnet_processor_res=-1, controlnet_threshold_a=-1, controlnet_threshold_b=-1)
    sizes = [decode(b).size for b in body["images"]]
    assert sizes == [(512, 512), (768, 512)]  # the default resolution 512 on the short side, aspect kept
    defaults = detect(http, controlnet_module="canny", controlnet_input_images=[small])  # fields left out
    assert decode(defaults["images"][0]).size == (512, 512)


def test_detect_takes_labels_and_internal_keys(http):
    image = square_png()
    by_key = detect(http, controlnet_module="invert", controlnet_input_images=[image])
    by_label = detect(http, controlnet_module="invert (from white bg & black line)",
                      controlnet_input_images=[image])
    assert by_key["images"] == by_label["images"]
    inverted = np.asarray(decode(by_key["images"][0]).convert("RGB"))
    assert inverted[30, 30].tolist() == [0, 0, 0] and inverted[2, 2].tolist() == [255, 255, 255]


def test_detect_depth_with_weights_and_low_vram_unloads_them(http):
    estimators.unload_all()
    image = b64_png(scene(96, 64))
    kept = detect(http, controlnet_module="depth", controlnet_input_images=[image], controlnet_processor_res=64)
    depth_map = np.asarray(decode(kept["images"][0]).convert("RGB"))
    assert depth_map.shape == (64, 96, 3) and depth_map.max() > depth_map.min()
    assert memory.owner.handles(group=estimators.MEMORY_GROUP)  # cached for the next request
    estimators.unload_all()
    freed = detect(http, controlnet_module="depth_midas", controlnet_input_images=[image],
                   controlnet_processor_res=64, low_vram=True)
    assert freed["images"] == kept["images"]
    assert not memory.owner.handles(group=estimators.MEMORY_GROUP)


def test_detect_missing_weights_is_a_422_naming_where_they_belong(http, data_dir):
    r = http.post("/controlnet/detect", json={"controlnet_module": "depth_anything_v2",
                                              "controlnet_input_images": [square_png()]})
    body = assert_error_json(r, 422, "controlnet_module")
    text = json.dumps(body).replace("\\\\", "/")
    assert "depth_anything_v2" in text and "models/" in text and "missing" in text
    assert str(data_dir).replace("\\", "/") not in text


def test_detect_inpaint_shows_the_masked_area_half_transparent(http):
    picture = np.full((48, 64, 3), 90, np.uint8)
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 5:25] = 255
    body = detect(http, controlnet_module="inpaint_only", controlnet_input_images=[b64_png(Image.fromarray(picture))],
                  controlnet_masks=[b64_png(Image.fromarray(mask))])
    shown = np.asarray(decode(body["images"][0]))
    assert shown.shape == (48, 64, 4)
    assert (shown[:, :, :3] == 90).all()
    assert shown[20, 10, 3] == 128 and shown[40, 60, 3] == 255


@pytest.mark.parametrize("fields, field", [
    ({"controlnet_module": "no_such_module"}, "controlnet_module"),
    ({"controlnet_input_images": []}, "controlnet_input_images"),
    ({"controlnet_input_images": ["not base64!"]}, "controlnet_input_images.0"),
    ({"controlnet_input_images": [base64.b64encode(b"GIF89a junk").decode()]}, "controlnet_input_images.0"),
    ({"controlnet_input_images": ["http://example.com/a.png"]}, "controlnet_input_images.0"),
    ({"controlnet_input_images": "one string"}, "controlnet_input_images"),
    ({"controlnet_processor_res": "high"}, "controlnet_processor_res"),
    ({"controlnet_masks": ["x"]}, "controlnet_masks"),
    ({"controlnet_module": "inpaint_only"}, "controlnet_masks"),
], ids=["unknown module", "no images", "bad base64", "not an image", "url", "not a list", "resolution type",
        "mask for canny", "inpaint without mask"])
def test_detect_bad_input_is_a_422_naming_the_field(http, fields, field):
    body = {"controlnet_module": "canny", "controlnet_input_images": [square_png()], **fields}
    assert_error_json(http.post("/controlnet/detect", json=body), 422, field)


def test_detect_unknown_module_is_named(http):
    r = http.post("/controlnet/detect", json={"controlnet_module": "openpose_hand_x",
                                              "controlnet_input_images": [square_png()]})
    assert "openpose_hand_x" in assert_error_json(r, 422, "controlnet_module")["errors"]


def test_detect_refuses_non_finite_thresholds_and_wrong_mask_sizes(http):
    raw = '{"controlnet_module": "canny", "controlnet_input_images": ["%s"], "controlnet_threshold_a": NaN}'
    r = http.post("/controlnet/detect", content=raw % square_png(), headers={"content-type": "application/json"})
    assert_error_json(r, 422, "controlnet_threshold_a")
    r = http.post("/controlnet/detect", json={"controlnet_module": "inpaint_only",
                                              "controlnet_input_images": [square_png(64, 64)],
                                              "controlnet_masks": [square_png(32, 32)]})
    assert "32x32" in assert_error_json(r, 422, "controlnet_masks.0")["errors"]


def test_detect_limits_count_and_pixels(http, monkeypatch):
    monkeypatch.setitem(shared.opts.data, "api_max_init_images", 2)
    r = http.post("/controlnet/detect", json={"controlnet_module": "canny",
                                              "controlnet_input_images": [square_png()] * 3})
    assert "api_max_init_images" in assert_error_json(r, 422, "controlnet_input_images")["errors"]
    monkeypatch.setitem(shared.opts.data, "api_max_input_pixels", 1000)
    r = http.post("/controlnet/detect", json={"controlnet_module": "canny",
                                              "controlnet_input_images": [square_png(64, 64)]})
    assert "api_max_input_pixels" in assert_error_json(r, 422, "controlnet_input_images.0")["errors"]


def test_detect_refuses_form_posts(http):
    r = http.post("/controlnet/detect", content=b"controlnet_module=canny",
                  headers={"content-type": "application/x-www-form-urlencoded"})
    assert_error_json(r, 415)


def test_detect_waits_for_the_job_queue(data_dir):
    queue = call_queue.JobQueue()
    release = threading.Event()
    with serving(create_app(queue, auth=None)) as running, client(running) as c:
        queue.submit("generation", lambda: release.wait(30))
        answer: dict = {}
        sender = threading.Thread(target=lambda: answer.update(r=c.post(
            "/controlnet/detect", json={"controlnet_module": "canny", "controlnet_input_images": [square_png()]})))
        sender.start()
        deadline = time.monotonic() + 10
        while not any(j.kind == "controlnet-detect" for j in queue.pending()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert any(j.kind == "controlnet-detect" for j in queue.pending())  # behind the running job
        assert "r" not in answer
        release.set()
        sender.join(30)
        assert answer["r"].status_code == 200, answer["r"].text
    queue.shutdown()


# --- auth ----------------------------------------------------------------------------------------------------------

ROUTES = [("GET", "/controlnet/version", None), ("GET", "/controlnet/model_list", None),
          ("GET", "/controlnet/module_list", None), ("GET", "/controlnet/control_types", None),
          ("GET", "/controlnet/settings", None), ("POST", "/controlnet/detect", "detect")]


def test_every_route_honours_api_auth(data_dir):
    token = base64.b64encode(b"alice:s3cret").decode()
    wrong = base64.b64encode(b"alice:nope").decode()
    body = {"controlnet_module": "canny", "controlnet_input_images": [square_png()]}
    with serving(create_app(auth=auth.BasicAuth(USERS))) as running, client(running) as c:
        for method, path, payload in ROUTES:
            json_body = body if payload else None
            for headers in ({}, {"Authorization": f"Basic {wrong}"}):
                r = c.request(method, path, json=json_body, headers=headers)
                assert_error_json(r, 401)
                assert r.headers["www-authenticate"] == "Basic"
            r = c.request(method, path, json=json_body, headers={"Authorization": f"Basic {token}"})
            assert r.status_code == 200, (path, r.text)


def test_detect_unusable_weight_file_is_a_422_naming_the_file(http, data_dir):
    folder = data_dir / "models" / "depth" / "depth_anything_v2_small"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    try:
        r = http.post("/controlnet/detect", json={"controlnet_module": "depth_anything_v2",
                                                  "controlnet_input_images": [square_png()]})
        body = assert_error_json(r, 422, "controlnet_module")
        assert "model.safetensors" in body["errors"] and str(data_dir) not in json.dumps(body)
    finally:
        for item in folder.iterdir():
            item.unlink()
        folder.rmdir()

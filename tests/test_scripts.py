"""Scripts and callbacks of an extension in A1111's layout (tests/extensions_for_tests), loaded the way the app
loads them: each Script method at its stage, a rewrite of p.all_prompts / p.all_seeds taking effect, selectable
scripts, CFG callbacks, a broken extension reported by name while the rest works; the API's script routes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_api_support import CHECKPOINTS, FAST, SETTINGS, assert_error_json, client, decode, serving

from modules import extensions, processing, script_callbacks, scripts, sd_models, shared

EXTENSIONS = Path(__file__).parent / "extensions_for_tests"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, isolated_data_dir):
    root = tmp_path_factory.mktemp("ext")
    with isolated_data_dir(root, CHECKPOINTS, SETTINGS):
        shutil.copytree(EXTENSIONS, root / "extensions")
        from modules import paths

        saved = paths.extensions_dir
        paths.extensions_dir = str(root / "extensions")
        extensions.list_extensions()
        scripts.load_scripts()
        try:
            yield root
        finally:
            paths.extensions_dir = saved
            extensions.list_extensions()
            scripts.load_scripts()


def calls() -> list:
    return shared.test_extension_calls


def txt2img(runner_args: dict, **kw) -> processing.Processed:
    args = {"prompt": "a red circle", "steps": 3, "width": 64, "height": 64, "sampler_name": "Euler", "seed": 7,
            "do_not_save_samples": True, "do_not_save_grid": True}
    args.update(kw)
    p = processing.StableDiffusionProcessingTxt2Img(**args)
    p.scripts = scripts.scripts_txt2img
    p.script_args = tuple(scripts.scripts_txt2img.args_for_api(**runner_args))
    return scripts.process_request(p)


def test_the_extension_scripts_load_and_the_broken_one_is_named(data_dir):
    titles = [s.title() for s in scripts.scripts_txt2img.scripts]
    assert {"Test always on", "Test selectable", "Test failing always on"} <= set(titles)
    assert any("broken-ext" in e and "SyntaxError" in e for e in scripts.load_errors)


def test_every_script_method_runs_at_its_stage(data_dir):
    sd_models.load_model()
    calls().clear()
    result = txt2img({"script_name": None, "script_args": None, "alwayson": {}}, n_iter=2)
    names = [c[0] for c in calls() if not c[0].startswith("cfg_")]
    assert names == ["before_process", "process",
                     "before_process_batch", "process_batch", "postprocess_batch", "postprocess_batch_list",
                     "postprocess_image",
                     "before_process_batch", "process_batch", "postprocess_batch", "postprocess_batch_list",
                     "postprocess_image", "postprocess"]
    assert ("postprocess_batch", (1, 3, 64, 64)) in calls()
    assert len(result.images) == 2
    # The CFG callbacks ran on every step with the step numbers A1111 gives.
    assert [c for c in calls() if c[0] == "cfg_denoiser"][:3] == [("cfg_denoiser", i, 3) for i in range(3)]
    assert any(c[0] == "cfg_after_cfg" for c in calls()) and any(c[0] == "cfg_denoised" for c in calls())
    # The failing script is reported by name; the job went on.
    assert any("Test failing always on" in e for e in script_callbacks.errors)


def test_a_script_rewriting_prompts_and_seeds_in_process_changes_the_picture_and_infotext(data_dir):
    sd_models.load_model()
    on = {"script_name": None, "script_args": None, "alwayson": {"test always on": {"args": [True, ", blue"]}}}
    rewritten = txt2img(on)
    assert rewritten.infotexts[0].startswith("a red circle, blue\n")
    assert "Seed: 1007," in rewritten.infotexts[0]
    plain = txt2img({"script_name": None, "script_args": None, "alwayson": {}},
                    prompt="a red circle, blue", seed=1007)
    # Same prompt and seed as the rewrite: the same picture, mirrored by the script's postprocess_image.
    assert np.array_equal(np.asarray(rewritten.images[0]), np.asarray(plain.images[0].transpose(Image.FLIP_LEFT_RIGHT)))


def test_a_selectable_script_replaces_the_generation(data_dir):
    sd_models.load_model()
    calls().clear()
    result = txt2img({"script_name": "test SELECTABLE", "script_args": [4], "alwayson": {}}, steps=9)
    assert ("run", 4) in calls() and "Steps: 4," in result.infotexts[0]


def test_model_loaded_callbacks_run_and_a_broken_one_is_reported(data_dir):
    calls().clear()
    sd_models.load_model(sd_models.get_closet_checkpoint_match("other.safetensors"))
    assert ("model_loaded", "other.safetensors") in calls()
    assert any("model_loaded" in e for e in script_callbacks.errors)


def test_api_lists_runs_and_refuses_scripts(data_dir):
    from modules.api.server import create_app

    with serving(create_app(auth=None)) as running, client(running) as http:
        listed = http.get("/sdapi/v1/scripts").json()
        assert "test selectable" in listed["txt2img"] and "test always on" in listed["img2img"]
        info = {(s["name"], s["is_img2img"]): s for s in http.get("/sdapi/v1/script-info").json()}
        assert info[("test selectable", False)]["args"][0]["label"] == "Steps instead"
        assert info[("test always on", False)]["is_alwayson"] is True

        body = {**FAST, "prompt": "a red circle", "seed": 5, "script_name": "Test Selectable", "script_args": [3],
                "alwayson_scripts": {"TEST ALWAYS ON": {"args": [True, ", green"]}}}
        response = http.post("/sdapi/v1/txt2img", json=body)
        assert response.status_code == 200, response.text
        image = decode(response.json()["images"][0])
        assert image.info["parameters"].startswith("a red circle, green\n") and "Steps: 3," in image.info["parameters"]

        assert_error_json(http.post("/sdapi/v1/txt2img", json={**FAST, "script_name": "no such script"}), 422,
                          "script_name")


def test_reloading_scripts_calls_on_script_unloaded_first(data_dir):
    seen = []
    script_callbacks.on_script_unloaded(lambda: seen.append("unloaded"))
    scripts.reload_scripts()
    assert seen == ["unloaded"]
    assert "Test selectable" in [s.title() for s in scripts.scripts_txt2img.scripts]  # loaded again

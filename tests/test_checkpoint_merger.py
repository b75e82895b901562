"""The Checkpoint Merger (modules/models/merge.py and its tab) on tiny checkpoints in the real single-file layout:
the merge arithmetic tensor by tensor, float16 / discard / baked VAE / inpainting A, refusals by name (other
family, bad regex, hostile or taken names, a full disk), .ckpt and safetensors output with A1111's metadata, and a
merged file that loads and generates."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
import torch
from safetensors.torch import save_file
from tiny_models import build_family

from modules import call_queue, hashes, processing, sd_models
from modules.models import merge, registry, vae_registry
from modules.models.checkpoint_files import read_pickle, read_safetensors_metadata, read_state_dict
from modules.models.ldm_export import vae_to_ldm
from modules.ui import checkpoint_merger

UNET_INPUT = merge.UNET_INPUT


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, isolated_data_dir):
    checkpoints = {
        "a.safetensors": {"family": "sd1", "seed": 1},
        "b.safetensors": {"family": "sd1", "seed": 2},
        "c.ckpt": {"family": "sd1", "seed": 3},
        "inpaint.safetensors": {"family": "sd1", "variant": "inpaint", "seed": 4},
        "xl.safetensors": {"family": "sdxl", "seed": 5},
    }
    with isolated_data_dir(tmp_path_factory.mktemp("merge"), checkpoints, {"live_previews_enable": False}) as root:
        yield root


def folder(root: Path) -> Path:
    return root / "models" / "Stable-diffusion"


def weights(root: Path, name: str) -> dict[str, torch.Tensor]:
    return read_state_dict(str(folder(root) / name))


def run(**kw) -> merge.MergeResult:
    return merge.merge(merge.MergeRequest(**kw))


def mergeable(key: str, tensor: torch.Tensor, other: dict[str, torch.Tensor]) -> bool:
    return tensor.is_floating_point() and "model" in key and key in other and other[key].shape == tensor.shape


def test_weighted_sum_is_a_times_1_minus_m_plus_b_times_m(data_dir):
    result = run(primary="a.safetensors", secondary="b.safetensors", multiplier=0.3)
    assert result.path == str(folder(data_dir) / "a_0.7-b_0.3.safetensors")
    out, a, b = read_state_dict(result.path), weights(data_dir, "a.safetensors"), weights(data_dir, "b.safetensors")
    assert set(out) == set(a)
    merged = 0
    for key, ta in a.items():
        if mergeable(key, ta, b):
            torch.testing.assert_close(out[key], ta * 0.7 + b[key] * 0.3)
            merged += 1
        else:
            assert torch.equal(out[key], ta), key  # the schedule buffers, position ids: A's
    assert merged > 100 and not torch.equal(out[UNET_INPUT], a[UNET_INPUT])
    assert result.title in registry.checkpoint_tiles()  # listed (and hashed) at once


def test_add_difference_with_pickled_a_and_c_leaves_their_files_as_they_were(data_dir):
    c_path = str(folder(data_dir) / "c.ckpt")
    before = hashes.calculate_sha256(c_path)
    result = run(primary="c.ckpt", secondary="b.safetensors", tertiary="a.safetensors",
                 interp_method=merge.ADD_DIFFERENCE, multiplier=0.5)
    assert os.path.basename(result.path) == "c+0.5(b-a).safetensors"
    out, a, b, c = (read_state_dict(result.path), weights(data_dir, "a.safetensors"),
                    weights(data_dir, "b.safetensors"), weights(data_dir, "c.ckpt"))
    for key, tc in c.items():
        if mergeable(key, tc, b):
            torch.testing.assert_close(out[key], tc + (b[key] - a[key]) * 0.5)
        else:
            assert torch.equal(out[key], tc), key
    assert hashes.calculate_sha256(c_path) == before  # A is memory-mapped: changed in RAM only


def test_no_interpolation_float16_and_discard(data_dir):
    result = run(primary="a.safetensors", interp_method=merge.NO_INTERPOLATION, save_as_half=True,
                 discard_weights=r"^first_stage_model\.decoder\.", custom_name="a-half")
    out, a = read_state_dict(result.path), weights(data_dir, "a.safetensors")
    gone = {k for k in a if k.startswith("first_stage_model.decoder.")}
    assert gone and set(out) == set(a) - gone
    for key, tensor in out.items():
        if a[key].dtype == torch.float32:
            assert tensor.dtype == torch.float16 and torch.equal(tensor, a[key].half()), key
        else:
            assert torch.equal(tensor, a[key]), key


def test_bake_in_vae_replaces_first_stage_model(data_dir):
    vae = build_family("sd1", seed=9).vae
    ldm = vae_to_ldm(vae.state_dict())
    save_file({k.removeprefix("first_stage_model."): v.contiguous() for k, v in ldm.items()},
              str(data_dir / "models" / "VAE" / "other.safetensors"))
    vae_registry.refresh_vae_list()
    result = run(primary="a.safetensors", secondary="b.safetensors", multiplier=0.5, bake_in_vae="other.safetensors",
                 custom_name="baked")
    out, a, b = read_state_dict(result.path), weights(data_dir, "a.safetensors"), weights(data_dir, "b.safetensors")
    vae_keys = [k for k in a if k.startswith("first_stage_model.")]
    assert vae_keys and set(vae_keys) == set(ldm)
    for key in vae_keys:
        torch.testing.assert_close(out[key], ldm[key].float())
    torch.testing.assert_close(out[UNET_INPUT], (a[UNET_INPUT] + b[UNET_INPUT]) * 0.5)
    with pytest.raises(merge.MergeError, match="Bake in VAE: unknown VAE 'nope'"):
        run(primary="a.safetensors", secondary="b.safetensors", bake_in_vae="nope")


def test_inpainting_a_keeps_its_extra_channels_and_a_normal_a_is_refused(data_dir):
    result = run(primary="inpaint.safetensors", secondary="b.safetensors", multiplier=0.5)
    assert os.path.basename(result.path) == "inpaint_0.5-b_0.5-inpainting.safetensors"
    out, a, b = read_state_dict(result.path), weights(data_dir, "inpaint.safetensors"), weights(data_dir, "b.safetensors")
    assert a[UNET_INPUT].shape[1] == 9 and out[UNET_INPUT].shape == a[UNET_INPUT].shape
    torch.testing.assert_close(out[UNET_INPUT][:, :4], (a[UNET_INPUT][:, :4] + b[UNET_INPUT]) * 0.5)
    assert torch.equal(out[UNET_INPUT][:, 4:], a[UNET_INPUT][:, 4:])
    key = "model.diffusion_model.out.2.weight"
    torch.testing.assert_close(out[key], (a[key] + b[key]) * 0.5)
    recipe = json.loads(read_safetensors_metadata(result.path)["sd_merge_recipe"])
    assert recipe["is_inpainting"] is True and recipe["is_instruct_pix2pix"] is False
    with pytest.raises(merge.MergeError, match="A must be the inpainting model"):
        run(primary="b.safetensors", secondary="inpaint.safetensors", custom_name="never")
    assert not (folder(data_dir) / "never.safetensors").exists()


def test_models_of_different_families_are_refused_by_name(data_dir):
    before = set(os.listdir(folder(data_dir)))
    with pytest.raises(merge.MergeError) as e:
        run(primary="a.safetensors", secondary="xl.safetensors")
    assert "a.safetensors is SD1.x and xl.safetensors is SDXL" in str(e.value)
    assert set(os.listdir(folder(data_dir))) == before


def test_a_bad_regex_and_missing_models_are_refused_before_anything_is_read(data_dir):
    with pytest.raises(merge.MergeError, match=r"Discard weights with matching name: '\(\[' is not a valid regular"):
        run(primary="a.safetensors", secondary="b.safetensors", discard_weights="([")
    with pytest.raises(merge.MergeError, match="requires a primary model"):
        run(primary=None)
    with pytest.raises(merge.MergeError, match=r"Weighted sum requires a secondary model \(B\)"):
        run(primary="a.safetensors")
    with pytest.raises(merge.MergeError, match=r"Add difference requires a tertiary model \(C\)"):
        run(primary="a.safetensors", secondary="b.safetensors", interp_method=merge.ADD_DIFFERENCE)
    with pytest.raises(merge.MergeError, match="Secondary model \\(B\\): checkpoint not found: gone.safetensors"):
        run(primary="a.safetensors", secondary="gone.safetensors")


def _files_outside(root: Path, inside: Path) -> set[str]:
    found = set()
    for base, _, files in os.walk(root):
        if Path(base) != inside:
            found |= {os.path.join(base, f) for f in files if f != "cache.json"}
    return found


@pytest.mark.parametrize(("custom", "written"), [
    ("../x", "_x"), ("a/b", "a_b"), ("con", "con_"), ("", "a-converted"), ("..", "_"), ("/abs/evil", "_abs_evil"),
    ("x\\..\\y", "x_.._y"), ("evil.vae", "evil.vae_"), ("named.safetensors", "named"),
])
def test_hostile_custom_names_stay_one_file_in_the_checkpoint_folder(data_dir, custom, written):
    outside = _files_outside(data_dir.parent, folder(data_dir))
    result = run(primary="a.safetensors", interp_method=merge.NO_INTERPOLATION, custom_name=custom,
                 save_metadata=False)
    assert result.path == str(folder(data_dir) / f"{written}.safetensors")
    assert os.path.isfile(result.path) and result.title.startswith(f"{written}.safetensors")
    assert _files_outside(data_dir.parent, folder(data_dir)) == outside


def test_an_existing_file_is_never_overwritten(data_dir):
    taken = folder(data_dir) / "taken.safetensors"
    taken.write_bytes(b"keep me")
    for name in ("taken", "taken.safetensors"):
        with pytest.raises(merge.MergeError, match="taken.safetensors already exists in the checkpoint folder"):
            run(primary="a.safetensors", secondary="b.safetensors", custom_name=name)
    assert taken.read_bytes() == b"keep me"


def test_a_full_disk_leaves_nothing_behind(data_dir, monkeypatch):
    def full(file, tensors, metadata):
        file.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(merge, "write_safetensors", full)
    with pytest.raises(merge.MergeError, match="could not write full.safetensors: No space left on device"):
        run(primary="a.safetensors", secondary="b.safetensors", custom_name="full")
    assert not [f for f in os.listdir(folder(data_dir)) if f.startswith(("full", "."))]


def test_ckpt_output_loads_through_the_restricted_loader_and_the_config_is_copied(data_dir):
    yaml = folder(data_dir) / "b.yaml"
    yaml.write_text("model: {}\n")
    try:
        result = run(primary="a.safetensors", secondary="b.safetensors", multiplier=0.25, checkpoint_format="ckpt",
                     custom_name="pickled", config_source="B")
    finally:
        yaml.unlink()
    assert result.path.endswith("pickled.ckpt")
    raw = read_pickle(result.path)  # torch.load(weights_only=True) with the allow-list
    assert list(raw) == ["state_dict"]
    a, b = weights(data_dir, "a.safetensors"), weights(data_dir, "b.safetensors")
    torch.testing.assert_close(raw["state_dict"][UNET_INPUT], a[UNET_INPUT] * 0.75 + b[UNET_INPUT] * 0.25)
    assert result.config == str(folder(data_dir) / "pickled.yaml")
    assert Path(result.config).read_text() == "model: {}\n"


def test_metadata_recipe_hashes_and_copied_fields(data_dir):
    own = {"modelspec.title": "meta A", "sd_merge_recipe": json.dumps({"type": "webui", "x": 1}),
           "sd_merge_models": json.dumps({"deadbeef": {"name": "grandparent.safetensors"}})}
    meta_path = folder(data_dir) / "meta.safetensors"
    save_file(weights(data_dir, "a.safetensors"), str(meta_path), metadata=own)
    registry.list_models()
    result = run(primary="meta.safetensors", secondary="b.safetensors", custom_name="with-meta")
    meta = read_safetensors_metadata(result.path)
    assert meta["format"] == "pt" and meta["modelspec.title"] == "meta A"
    recipe = json.loads(meta["sd_merge_recipe"])
    sha_a, sha_b = hashes.calculate_sha256(str(meta_path)), hashes.calculate_sha256(str(folder(data_dir) / "b.safetensors"))
    assert recipe["type"] == "webui" and recipe["primary_model_hash"] == sha_a and recipe["secondary_model_hash"] == sha_b
    assert recipe["tertiary_model_hash"] is None and recipe["primary_model_name"] == "meta.safetensors"
    assert (recipe["interp_method"], recipe["multiplier"], recipe["save_as_half"]) == ("Weighted sum", 0.3, False)
    assert (recipe["custom_name"], recipe["bake_in_vae"], recipe["discard_weights"]) == ("with-meta", "None", "")
    assert recipe["config_source"] == "A, B or C" and recipe["is_inpainting"] is False
    models = json.loads(meta["sd_merge_models"])
    assert set(models) == {sha_a, sha_b, "deadbeef"}
    assert models[sha_a]["name"] == "meta.safetensors" and models[sha_a]["sd_merge_recipe"] == {"type": "webui", "x": 1}
    assert models[sha_b]["sd_merge_recipe"] is None

    plain = read_safetensors_metadata(run(primary="meta.safetensors", secondary="b.safetensors", custom_name="no-copy",
                                          copy_metadata_fields=False).path)
    assert "modelspec.title" not in plain and "sd_merge_recipe" in plain
    assert read_safetensors_metadata(run(primary="meta.safetensors", secondary="b.safetensors", custom_name="no-meta",
                                         save_metadata=False).path) == {}


def test_the_merged_file_loads_and_generates(data_dir):
    result = run(primary="a.safetensors", secondary="b.safetensors", multiplier=0.5, custom_name="gen-merged")
    model = sd_models.load_model(registry.find_checkpoint(result.title))
    a = weights(data_dir, "a.safetensors")
    assert model.sd_checkpoint_info.filename == result.path and "conv_in.weight" in model.unet.state_dict()
    processed = processing.process_images(processing.StableDiffusionProcessingTxt2Img(
        prompt="a red circle", steps=2, width=64, height=64, sampler_name="Euler", seed=1, do_not_save_samples=True,
        do_not_save_grid=True))
    assert processed.images[0].size == (64, 64)
    assert "Model: gen-merged," in processed.infotexts[0]
    assert not torch.equal(model.unet.state_dict()["conv_in.weight"].float().cpu(), a[UNET_INPUT])


def _click(**fields) -> list[str]:
    values = {"primary": "a.safetensors", "secondary": "b.safetensors", "tertiary": None,
              "interp_method": merge.WEIGHTED_SUM, "multiplier": 0.3, "save_as_half": False, "custom_name": "",
              "checkpoint_format": "safetensors", "config_method": "A, B or C", "bake_in_vae": "None",
              "discard_weights": "", "save_metadata": True, "add_recipe": True, "copy_metadata": True}
    values.update(fields)
    request = SimpleNamespace(session_hash="merger-test", username=None)
    return list(checkpoint_merger.run(*values.values(), request=request))


def test_the_merge_button_runs_one_queued_job_and_says_where_the_file_went(data_dir):
    lines = _click(custom_name="from-the-tab")
    assert "Waiting" in lines[0]
    path = folder(data_dir) / "from-the-tab.safetensors"
    assert path.is_file() and f"Checkpoint saved to {path}." in lines[-1]
    job = call_queue.queue.recent()[-1]
    assert job.kind == "modelmerger" and job.status == "done"

    assert "Merge refused: Merging requires a primary model (A)." in _click(primary=None)[-1]
    assert "Add difference requires a tertiary model (C)" in _click(interp_method=merge.ADD_DIFFERENCE)[-1]
    failed = _click(secondary="xl.safetensors")[-1]
    assert "class='error'" in failed and "Merge failed: a.safetensors is SD1.x and xl.safetensors is SDXL" in failed
    assert call_queue.queue.recent()[-1].status == "failed"
    assert "Checkpoint saved" in _click(custom_name="<b>after")[-1]  # the queue goes on; the name is escaped
    assert (folder(data_dir) / "_b_after.safetensors").is_file()


def test_the_tab_has_a1111s_fields(data_dir):
    with gr.Blocks():
        tab = checkpoint_merger.build()
    assert tab.primary.elem_id == "modelmerger_primary_model_name" and tab.primary.label == "Primary model (A)"
    assert tab.tertiary.label == "Tertiary model (C)" and tab.custom_name.label == "Custom Name (Optional)"
    assert any(value.startswith("a.safetensors") for value, _ in tab.secondary.choices)  # the registry's titles
    slider = tab.interp_amount
    assert (slider.minimum, slider.maximum, slider.step, slider.value) == (0, 1, 0.05, 0.3)
    assert slider.label == "Multiplier (M) - set to 0 to get model A"
    assert tab.interp_method.value == "Weighted sum" and tab.checkpoint_format.value == "safetensors"
    assert [c[0] for c in tab.config_method.choices] == ["A, B or C", "B", "C", "Don't"]
    assert tab.bake_in_vae.value == "None" and tab.save_as_half.value is False
    assert tab.save_metadata.value and tab.add_recipe.value and tab.copy_metadata.value
    assert (tab.button.elem_id, tab.result.elem_id) == ("modelmerger_merge", "modelmerger_result")

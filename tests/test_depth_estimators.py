"""The depth estimator registry on tiny random-weight networks written as users keep them (models/depth/<name>/)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from depth_files import TINY_CONFIGS, build_estimator, scene, write_estimator, write_marigold
from safetensors.torch import save_file

from modules import paths
from modules.depth import estimators, transformers_depth
from modules.models import memory
from modules.models.checkpoint_files import ModelFileError

ALL = ["midas_dpt_hybrid", "midas_dpt_large", "depth_anything_v2_small", "depth_anything_v2_base",
       "depth_anything_v2_large", "marigold"]


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "models_path", str(tmp_path))
    estimators.unload_all()
    yield tmp_path
    estimators.unload_all()


def test_names_are_the_working_estimators():
    assert estimators.names()[: len(ALL)] == ALL
    assert estimators.DEFAULT == "midas_dpt_hybrid"


@pytest.mark.parametrize("name", ["midas_dpt_hybrid", "midas_dpt_large", "depth_anything_v2_small"])
def test_estimate_is_normalised_at_the_image_size(models_dir, name):
    write_estimator(models_dir, name)
    depth = estimators.estimate(name, scene(96, 64), 64)
    assert depth.shape == (64, 96) and depth.dtype == np.float32
    assert depth.min() == 0.0 and depth.max() == 1.0
    assert np.std(depth) > 0.01  # a real map, not a constant


@pytest.mark.parametrize("name", ["midas_dpt_hybrid", "depth_anything_v2_small"])
def test_prediction_is_the_transformers_network_on_its_weights(models_dir, name):
    """What we load from disk computes what the same network computes in memory (a key mix-up would not)."""
    write_estimator(models_dir, name, seed=3)
    image = scene(80, 60)
    ours = estimators.predict(name, image, 64)
    reference = build_estimator(name, seed=3)
    loaded = estimators.get(name)
    pixels = loaded.pixel_values(image, 64)
    emb = getattr(getattr(reference, "dpt", None), "embeddings", None)
    if emb is not None and hasattr(emb, "image_size"):
        emb.image_size = tuple(pixels.shape[-2:])
    with torch.no_grad():
        expected = reference(pixel_values=pixels).predicted_depth[0]
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    other = write_estimator(models_dir, name, seed=4)  # another file under the same name: loaded afresh
    assert other.exists()
    assert not torch.allclose(estimators.predict(name, image, 64), expected)


def test_processing_sizes():
    assert transformers_depth.processing_size(1024, 768, 384, transformers_depth.MIDAS) == (384, 384)
    w, h = transformers_depth.processing_size(1024, 768, 518, transformers_depth.DEPTH_ANYTHING)
    assert h == 518 and w % 14 == 0 and abs(w / h - 1024 / 768) < 0.03


def test_missing_weights_name_the_estimator_and_the_path(models_dir):
    with pytest.raises(estimators.MissingDepthWeights) as caught:
        estimators.estimate("midas_dpt_large", scene())
    error = caught.value
    assert isinstance(error, FileNotFoundError)
    expected = str(models_dir / "depth" / "midas_dpt_large")
    assert "midas_dpt_large" in str(error) and expected in str(error)
    assert error.filename == expected and error.path == expected


def test_unknown_estimator_is_refused_by_name(models_dir):
    with pytest.raises(ValueError, match="unknown depth estimator 'zoe'"):
        estimators.estimate("zoe", scene())
    with pytest.raises(ValueError):
        estimators.estimate("../midas_dpt_large", scene())


def test_controlnet_preprocessor_folder_is_searched(models_dir):
    write_estimator(models_dir, "depth_anything_v2_small", root="ControlNetPreprocessor/depth")
    assert estimators.estimate("depth_anything_v2_small", scene(), 56).shape == (64, 96)


def test_loaded_estimator_is_a_memory_owner_handle(models_dir):
    write_estimator(models_dir, "midas_dpt_large")
    estimators.estimate("midas_dpt_large", scene(), 64)
    handles = [h.name for h in memory.owner.handles(group="depth")]
    assert handles == ["depth:midas_dpt_large"]
    memory.owner.unload("depth:midas_dpt_large")  # the owner frees it; the next call loads it again
    assert estimators._cache == {}
    assert estimators.estimate("midas_dpt_large", scene(), 64).shape == (64, 96)


def test_weights_of_another_model_are_refused_naming_the_file(models_dir):
    folder = write_estimator(models_dir, "midas_dpt_hybrid", with_config=False)  # tiny weights, real-size config
    with pytest.raises(ModelFileError, match="model.safetensors") as caught:
        estimators.estimate("midas_dpt_hybrid", scene())
    assert "config.json" in str(caught.value)
    (folder / "config.json").write_text('{"model_type": "depth_anything"}')
    with pytest.raises(ModelFileError, match="not 'dpt'"):
        estimators.estimate("midas_dpt_hybrid", scene())


def test_wrong_shape_is_refused(models_dir):
    folder = write_estimator(models_dir, "midas_dpt_large")
    state = build_estimator("midas_dpt_large").state_dict()
    state["dpt.embeddings.cls_token"] = torch.zeros(1, 1, 7)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    with pytest.raises(ModelFileError, match="cls_token has shape"):
        estimators.estimate("midas_dpt_large", scene())


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_that_runs_code_is_refused(models_dir):
    folder = models_dir / "depth" / "midas_dpt_large"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(__import__("json").dumps(TINY_CONFIGS["dpt_large"]))
    torch.save({"x": _Evil()}, folder / "pytorch_model.bin", pickle_protocol=2)
    with pytest.raises(ModelFileError, match="pytorch_model.bin"):
        estimators.estimate("midas_dpt_large", scene())


def test_hostile_config_is_refused(models_dir):
    folder = write_estimator(models_dir, "midas_dpt_large")
    (folder / "config.json").write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(ModelFileError, match="nests too deep"):
        estimators.estimate("midas_dpt_large", scene())
    (folder / "config.json").write_text('{"model_type": "dpt", "hidden_size": "big"}')
    with pytest.raises(ModelFileError, match="config rejected"):
        estimators.estimate("midas_dpt_large", scene())
    (folder / "config.json").write_text('{"model_type": "dpt", "num_hidden_layers": 10000000}')
    with pytest.raises(ModelFileError, match="beyond any real model"):
        estimators.estimate("midas_dpt_large", scene())


def test_marigold_is_diffusers_pipeline_turned_to_inverse_depth(models_dir):
    from diffusers import MarigoldDepthPipeline

    folder = write_marigold(models_dir)
    image = scene(96, 64)
    depth = estimators.estimate("marigold", image, 64)
    assert depth.shape == (64, 96) and depth.min() == 0.0 and depth.max() == 1.0
    assert np.array_equal(depth, estimators.estimate("marigold", image, 64))  # seeded: one picture, one map
    pipe = MarigoldDepthPipeline.from_pretrained(str(folder), local_files_only=True)
    theirs = pipe(image, processing_resolution=64, match_input_resolution=False, ensemble_size=1, output_type="pt",
                  generator=torch.Generator().manual_seed(2024)).prediction[0, 0]
    torch.testing.assert_close(estimators.predict("marigold", image, 64), 1.0 - theirs, rtol=1e-5, atol=1e-5)


def test_marigold_folder_of_another_pipeline_or_with_pickles_is_refused(models_dir):
    folder = write_marigold(models_dir)
    index = folder / "model_index.json"
    original = index.read_text()
    index.write_text(original.replace("MarigoldDepthPipeline", "MarigoldNormalsPipeline"))
    with pytest.raises(ModelFileError, match="not MarigoldDepthPipeline"):
        estimators.estimate("marigold", scene(), 64)
    index.write_text(original)
    for weights in (folder / "unet").glob("*.safetensors"):
        weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(ModelFileError, match="pickled weights are not read"):
        estimators.estimate("marigold", scene(), 64)

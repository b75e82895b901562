"""The model-based ControlNet preprocessors with random-weight networks written in the published file layouts.

With random weights only the plumbing can be checked (files found and read through the restricted loader, maps
of the right size and type); each preprocessor's own post-processing is checked with the network's output
patched to a known one (a pose heatmap, a line centre, a constant normal, a segmentation).
"""

from __future__ import annotations

import os
import pickle
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from preprocessor_files import WRITERS, write

from modules import paths
from modules.controlnet import preprocessors
from modules.controlnet.nets import loading, pose, segmentation  # importing the package registers them
from modules.models import memory
from modules.models.checkpoint_files import ModelFileError

NETWORK_PREPROCESSORS = [
    "openpose", "openpose_hand", "openpose_face", "openpose_faceonly", "openpose_full",
    "lineart_realistic", "lineart_coarse", "lineart_anime",
    "softedge_hed", "softedge_hedsafe", "softedge_pidinet", "softedge_pidisafe",
    "scribble_hed", "scribble_pidinet", "t2ia_sketch_pidi", "normal_bae", "mlsd", "seg_ofade20k", "seg_ofcoco",
]


def _image(height: int = 100, width: int = 150) -> np.ndarray:
    rng = np.random.default_rng(0)
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[:, width // 3:] = 200  # an edge, so edge detectors have something
    return np.clip(image + rng.integers(0, 40, image.shape), 0, 255).astype(np.uint8)


def _point_paths(models: Path, extensions: Path):
    patcher = pytest.MonkeyPatch()
    patcher.setattr(paths, "models_path", str(models))
    patcher.setattr(paths, "extensions_dir", str(extensions))
    return patcher


@pytest.fixture(scope="module")
def weights_root(tmp_path_factory) -> Path:
    """Every preprocessor's weights, written once, under models/ControlNetPreprocessor."""
    root = tmp_path_factory.mktemp("preprocessor_weights")
    folder = root / "models" / preprocessors.PREPROCESSOR_MODELS_FOLDER
    for relative in WRITERS:
        write(folder, relative)
    patcher = _point_paths(root / "models", root / "extensions")
    loading.unload_all()
    yield folder
    loading.unload_all()
    patcher.undo()
    shutil.rmtree(root, ignore_errors=True)  # 1.1 GB of full-size networks: gone before the next file's tests


@pytest.fixture
def empty_models(tmp_path: Path):
    """A data dir without preprocessor weights (networks loaded from elsewhere are dropped first)."""
    loading.unload_all()
    patcher = _point_paths(tmp_path / "models", tmp_path / "extensions")
    yield tmp_path
    loading.unload_all()
    patcher.undo()


# --- the registry ---------------------------------------------------------------------------------------------

def test_registered_under_the_extension_labels_and_keys():
    for name in NETWORK_PREPROCESSORS:
        p = preprocessors.get(name)
        assert p.name == name and not p.model_free
    # the extension's internal module keys, as its API and old client scripts send them
    for alias, name in [("hed", "softedge_hed"), ("hed_safe", "softedge_hedsafe"), ("pidinet", "softedge_pidinet"),
                        ("pidinet_safe", "softedge_pidisafe"), ("lineart", "lineart_realistic"),
                        ("pidinet_scribble", "scribble_pidinet"), ("pidinet_sketch", "t2ia_sketch_pidi"),
                        ("oneformer_ade20k", "seg_ofade20k"), ("oneformer_coco", "seg_ofcoco")]:
        assert preprocessors.get(alias).name == name
    mlsd = preprocessors.get("mlsd")
    assert (mlsd.slider_a.label, mlsd.slider_a.value) == ("MLSD Value Threshold", 0.1)
    assert (mlsd.slider_b.label, mlsd.slider_b.maximum) == ("MLSD Distance Threshold", 20.0)
    assert "seg_ufade20k" not in preprocessors.names()  # no transformers class for UniFormer: absent, not faked


# --- plumbing with random weights -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NETWORK_PREPROCESSORS)
def test_runs_at_the_processor_resolution(weights_root, name):
    result = preprocessors.run(name, _image(100, 150), resolution=64)
    # short side at the processor resolution, aspect kept (100x150 -> 64x96), RGB uint8
    assert result.shape == (64, 96, 3) and result.dtype == np.uint8


def test_resolution_changes_the_map_size(weights_root):
    assert preprocessors.run("softedge_pidinet", _image(100, 150), resolution=96).shape == (96, 144, 3)
    assert preprocessors.run("softedge_pidinet", _image(150, 100), resolution=72).shape == (108, 72, 3)


@pytest.mark.parametrize("name, levels", [("softedge_hedsafe", {0, 127, 255}), ("softedge_pidisafe", {0, 127, 255}),
                                          ("scribble_hed", {0, 255}), ("scribble_pidinet", {0, 255}),
                                          ("t2ia_sketch_pidi", {0, 255})])
def test_safe_and_scribble_maps_are_quantised(weights_root, name, levels):
    result = preprocessors.run(name, _image(), resolution=64)
    assert set(np.unique(result)) <= levels
    assert np.array_equal(result[..., 0], result[..., 2])  # grey


def test_soft_edges_are_the_sigmoid_of_the_mean_projection(weights_root, monkeypatch):
    from controlnet_aux.hed import ControlNetHED_Apache2

    def projections(self, x):
        # five side outputs averaging to log(3): sigmoid = 0.75 -> 191
        return tuple(torch.full((1, 1, x.shape[2] >> i, x.shape[3] >> i), np.log(3.0) * (0.5 + 0.25 * i))
                     for i in range(5))

    monkeypatch.setattr(ControlNetHED_Apache2, "__call__", projections)
    result = preprocessors.run("softedge_hed", _image(), resolution=64)
    assert np.all(result == 191)


def test_lineart_is_black_lines_on_white(weights_root, monkeypatch):
    from controlnet_aux.lineart import Generator
    from controlnet_aux.lineart_anime import UnetGenerator

    def one_line(self, x):  # the networks draw white lines on black: a vertical line at a quarter of the width
        out = torch.zeros(1, 1, *x.shape[2:])
        out[..., x.shape[3] // 4] = 1.0
        return out

    monkeypatch.setattr(Generator, "forward", one_line)
    monkeypatch.setattr(UnetGenerator, "forward", lambda self, x: one_line(self, x) * 2 - 1)  # tanh output
    for name in ("lineart_realistic", "lineart_coarse"):
        result = preprocessors.run(name, _image(128, 128), resolution=128)
        assert np.all(result[:, 32] == 0) and np.all(result[:, 40:] == 255)
    anime = preprocessors.run("lineart_anime", _image(128, 128), resolution=128)
    assert anime[:, 30:35].min() < 128 and np.all(anime[:, 60:] >= 250)  # cubic resizing softens the line


def test_normal_bae_maps_the_unit_normal_to_colour(weights_root, monkeypatch):
    from controlnet_aux.normalbae.nets.NNET import NNET

    def facing_camera(self, x, **kwargs):
        normal = torch.zeros(1, 4, *x.shape[2:])
        normal[:, 2] = 1.0  # (0, 0, 1) plus the uncertainty channel
        return [normal], None  # (predictions from coarse to fine, sampled points)

    monkeypatch.setattr(NNET, "forward", facing_camera)
    result = preprocessors.run("normal_bae", _image(), resolution=64)
    assert np.all(result == np.array([127, 127, 255], dtype=np.uint8))


# --- mlsd thresholds -----------------------------------------------------------------------------------------

@pytest.fixture
def one_line_mlsd(weights_root, monkeypatch):
    """M-LSD's output patched to one centre at map (x=32, y=20), score sigmoid(0) = 0.5, running 5 map pixels
    left and right: a horizontal line from x=54 to x=74 at y=40 in a 128x128 image (the map is half size)."""
    from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large

    def forward(self, x):
        out = torch.zeros(1, 9, x.shape[2] // 2, x.shape[3] // 2)
        out[0, 0] = -10.0
        out[0, 0, 20, 32] = 0.0
        out[0, 1:5, 20, 32] = torch.tensor([-5.0, 0.0, 5.0, 0.0])
        return out

    monkeypatch.setattr(MobileV2_MLSD_Large, "forward", forward)


def test_mlsd_draws_the_line_where_the_network_puts_it(one_line_mlsd):
    result = preprocessors.run("mlsd", _image(128, 128), resolution=128, threshold_a=0.1, threshold_b=0.1)
    white = np.argwhere(result[..., 0] == 255)
    assert set(white[:, 0]) == {40}
    assert white[:, 1].min() == 54 and white[:, 1].max() == 74


def test_mlsd_thresholds_take_effect(one_line_mlsd):
    def drawn(a: float, b: float) -> int:
        return int((preprocessors.run("mlsd", _image(128, 128), 128, a, b) == 255).sum())

    assert drawn(0.4, 9.0) > 0
    assert drawn(0.6, 9.0) == 0  # the centre's score 0.5 is under the value threshold
    assert drawn(0.4, 11.0) == 0  # the line is 10 map pixels long, shorter than the distance threshold


# --- openpose ---------------------------------------------------------------------------------------------------

# neck, right shoulder, right elbow, right wrist as fractions of (x, y); OpenPose part numbers 1..4
ARM = {1: (0.5, 0.3), 2: (0.3, 0.3), 3: (0.3, 0.55), 4: (0.3, 0.8)}
# the limbs between them and their part-affinity channels (OpenPose's mapIdx - 19)
ARM_LIMBS = [((1, 2), (12, 13)), ((2, 3), (14, 15)), ((3, 4), (16, 17))]


def _pose_heatmaps(self, x):
    height, width = x.shape[2] // 8, x.shape[3] // 8
    ys, xs = np.mgrid[0:height, 0:width]
    heat = np.zeros((19, height, width), dtype=np.float32)
    for part, (fx, fy) in ARM.items():
        heat[part] = np.exp(-((xs - fx * width) ** 2 + (ys - fy * height) ** 2) / 2.0)
    paf = np.zeros((38, height, width), dtype=np.float32)
    for (a, b), (cx, cy) in ARM_LIMBS:
        direction = np.subtract(ARM[b], ARM[a])
        paf[cx], paf[cy] = direction / np.linalg.norm(direction)
    return torch.from_numpy(paf)[None], torch.from_numpy(heat)[None]


def test_openpose_draws_the_limbs_of_the_heatmaps(weights_root, monkeypatch):
    from controlnet_aux.open_pose.model import bodypose_model

    monkeypatch.setattr(bodypose_model, "forward", _pose_heatmaps)
    result = preprocessors.run("openpose", _image(128, 128), resolution=128)
    size = 128

    def at(fx: float, fy: float) -> np.ndarray:
        return result[int(fy * size), int(fx * size)]

    assert at(0.4, 0.3).any()  # neck -> right shoulder
    assert at(0.3, 0.42).any() and at(0.3, 0.68).any()  # upper and lower arm
    assert not at(0.7, 0.3).any() and not at(0.7, 0.7).any()  # nothing where no limb is
    # OpenPose's colours: the neck-shoulder limb is drawn in its own colour, not the upper arm's
    assert not np.array_equal(at(0.4, 0.3), at(0.3, 0.42))


def test_openpose_without_a_person_draws_nothing(weights_root):
    # the fixture's networks find nobody; openpose_full still loads and runs all three
    assert not preprocessors.run("openpose_full", _image(), resolution=64).any()
    names = [h.name for h in memory.owner.handles(group=loading.MEMORY_GROUP)]
    assert any(n.endswith("body_pose_model.pth") for n in names)


def test_hand_drawing_puts_bones_between_the_joints():
    from controlnet_aux.open_pose.body import Keypoint

    joints = [Keypoint(0.5, 0.9)] + [Keypoint(0.5, 0.9 - 0.04 * i) for i in range(1, 21)]
    canvas = pose.draw_hand(np.zeros((100, 100, 3), dtype=np.uint8), joints)
    assert canvas[70, 50].any()  # on the finger
    assert not canvas[50, 20].any() and not canvas[10, 90].any()
    assert tuple(canvas[90, 50]) == (0, 0, 255)  # joints in OpenPose's colour


# --- segmentation -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dataset", [segmentation.ADE20K, segmentation.COCO], ids=lambda d: d.preprocessor)
def test_segmentation_colours_classes_with_the_dataset_palette(weights_root, monkeypatch, dataset):
    from transformers import OneFormerForUniversalSegmentation

    classes_count = len(dataset.palette)

    def two_regions(self, pixel_values, task_inputs, **kwargs):
        assert task_inputs[0, 0] == 0 and task_inputs[0, 5] == 1  # "<start> the task is semantic <end>"
        queries, height, width = 8, pixel_values.shape[2] // 4, pixel_values.shape[3] // 4
        classes = torch.full((1, queries, classes_count + 1), -20.0)
        classes[0, :, classes_count] = 20.0  # "no object"
        classes[0, 0, classes_count], classes[0, 0, 2] = -20.0, 20.0  # query 0: class 2
        classes[0, 1, classes_count], classes[0, 1, 4] = -20.0, 20.0  # query 1: class 4
        masks = torch.full((1, queries, height, width), -20.0)
        masks[0, 0, :, : width // 2] = 20.0
        masks[0, 1, :, width // 2:] = 20.0
        return types.SimpleNamespace(class_queries_logits=classes, masks_queries_logits=masks)

    monkeypatch.setattr(OneFormerForUniversalSegmentation, "forward", two_regions)
    result = preprocessors.run(dataset.preprocessor, _image(128, 128), resolution=128)
    assert np.all(result[:, :60] == dataset.palette[2]) and np.all(result[:, 68:] == dataset.palette[4])


def test_palettes_are_the_datasets():
    assert segmentation.ADE20K_PALETTE.shape == (150, 3) and segmentation.COCO_PALETTE.shape == (133, 3)
    assert tuple(segmentation.ADE20K_PALETTE[2]) == (6, 230, 230)  # sky
    assert tuple(segmentation.ADE20K_PALETTE[149]) == (92, 0, 255)  # flag
    assert tuple(segmentation.COCO_PALETTE[0]) == (220, 20, 60)  # person
    assert tuple(segmentation.COCO_PALETTE[132]) == (250, 141, 255)  # rug-merged


def test_a_oneformer_for_another_dataset_is_refused(empty_models):
    folder = empty_models / "models" / "ControlNetPreprocessor"
    WRITERS["oneformer_coco_swin_large"](folder / "oneformer_ade20k_swin_large")
    with pytest.raises(ModelFileError, match="has 133 classes; ADE20K has 150"):
        preprocessors.run("seg_ofade20k", _image())
    config = folder / "oneformer_ade20k_swin_large" / "config.json"
    config.write_text('{"model_type": "llama"}', encoding="utf-8")
    with pytest.raises(ModelFileError, match="config.json: is not a OneFormer config"):
        preprocessors.run("seg_ofade20k", _image())


# --- files: missing, refused, elsewhere, cached ------------------------------------------------------------------

def test_missing_weights_name_the_preprocessor_and_path(empty_models):
    with pytest.raises(preprocessors.MissingWeights) as e:
        preprocessors.run("softedge_hed", _image())
    expected = os.path.join(str(empty_models / "models"), "ControlNetPreprocessor", "hed", "ControlNetHED.pth")
    assert '"softedge_hed"' in str(e.value) and expected in str(e.value)
    with pytest.raises(preprocessors.MissingWeights, match="oneformer_ade20k_swin_large"):
        preprocessors.run("seg_ofade20k", _image())


def test_openpose_full_without_the_face_network_names_its_file(empty_models):
    folder = empty_models / "models" / "ControlNetPreprocessor" / "openpose"
    folder.mkdir(parents=True)
    for name in ("body_pose_model.pth", "hand_pose_model.pth"):
        (folder / name).write_bytes(b"never read")  # all paths are checked before any file is loaded
    with pytest.raises(preprocessors.MissingWeights, match=r"openpose_full.*facenet\.pth"):
        preprocessors.run("openpose_full", _image(), 64)
    with pytest.raises(ModelFileError, match="body_pose_model.pth"):
        preprocessors.run("openpose_hand", _image(), 64)  # and a broken file is named


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused_by_name(empty_models):
    path = empty_models / "models" / "ControlNetPreprocessor" / "hed" / "ControlNetHED.pth"
    path.parent.mkdir(parents=True)
    marker = empty_models / "pwned"
    torch.save({"norm": torch.zeros(1, 3, 1, 1), "payload": _Evil(marker)}, path, pickle_protocol=2)
    with pytest.raises(ModelFileError) as e:
        preprocessors.run("softedge_hed", _image())
    assert "ControlNetHED.pth" in str(e.value) and "refused" in str(e.value)
    assert not marker.exists()


def test_the_wrong_network_is_refused_by_name(empty_models):
    folder = empty_models / "models" / "ControlNetPreprocessor"
    os.makedirs(folder / "hed")
    WRITERS["mlsd/mlsd_large_512_fp32.pth"](folder / "hed" / "ControlNetHED.pth")
    with pytest.raises(ModelFileError, match=r"ControlNetHED\.pth: not the ControlNet HED weights"):
        preprocessors.run("softedge_hed", _image())


def test_a_plain_pickle_is_refused(empty_models):
    path = empty_models / "models" / "ControlNetPreprocessor" / "mlsd" / "mlsd_large_512_fp32.pth"
    path.parent.mkdir(parents=True)
    path.write_bytes(pickle.dumps({"x": [1, 2, 3]}))
    with pytest.raises(ModelFileError, match="mlsd_large_512_fp32.pth"):
        preprocessors.run("mlsd", _image())


def test_weights_in_the_extension_folder_are_found_and_cached(empty_models):
    downloads = empty_models / "extensions" / "sd-webui-controlnet" / "annotator" / "downloads"
    path = write(downloads, "mlsd/mlsd_large_512_fp32.pth")
    assert preprocessors.run("mlsd", _image(), 64).shape == (64, 96, 3)
    handle = f"{loading.MEMORY_GROUP}:{os.path.realpath(path)}"
    assert handle in memory.owner
    network = loading._cache[os.path.realpath(path)].network
    preprocessors.run("mlsd", _image(), 64)
    assert loading._cache[os.path.realpath(path)].network is network  # cached, not loaded again
    memory.owner.unload(handle)  # the memory owner frees it
    assert os.path.realpath(path) not in loading._cache
    preprocessors.run("mlsd", _image(), 64)
    assert handle in memory.owner

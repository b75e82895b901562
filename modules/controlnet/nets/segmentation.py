"""seg_ofade20k and seg_ofcoco: semantic segmentation by OneFormer (Swin-L) trained on ADE20K (150 classes) or
COCO panoptic (133), each class painted flat in its dataset's colour (the ADE20K palette ControlNet's seg model
was trained on; COCO's panopticapi colours, as the extension's detectron2 metadata has them).

The extension runs these networks through a vendored detectron2 from `oneformer/250_16_swin_l_oneformer_ade20k_160k
.pth` and `oneformer/150_16_swin_l_oneformer_coco_100ep.pth`. We run the same models with transformers'
`OneFormerForUniversalSegmentation`, so we read their transformers format: the folders
`oneformer_ade20k_swin_large/` and `oneformer_coco_swin_large/` (as the OneFormer authors, shi-labs, publish them)
with config.json, model.safetensors (or pytorch_model.bin through the restricted loader) and the CLIP tokenizer
files vocab.json + merges.txt (OneFormer is told its task in words: "the task is semantic"). The detectron2 .pth
files are not read (there is no converter here), and the extension's matplotlib rendering (anti-aliased region
borders) is not copied: regions are flat colours.

Not provided: seg_ufade20k (UniFormer + UperNet from mmseg: transformers has no UniFormer backbone) and
seg_anime_face.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from modules.controlnet.nets import loading
from modules.controlnet.preprocessor_images import hwc3, resize_image_with_pad
from modules.controlnet.preprocessor_registry import Preprocessor, weights_path
from modules.models.checkpoint_files import ModelFileError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
MAX_JSON_BYTES = 8 * 1024 * 1024  # config.json is a few kB, vocab.json about 1 MB
TASK_TEXT = "the task is semantic"
# ImageNet statistics, OneFormer's image normalisation
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

# ADE20K's 150-class palette (class i has colour i), the colours of ControlNet's segmentation conditioning
ADE20K_PALETTE = np.array([
    [120, 120, 120], [180, 120, 120], [6, 230, 230], [80, 50, 50], [4, 200, 3], [120, 120, 80], [140, 140, 140],
    [204, 5, 255], [230, 230, 230], [4, 250, 7], [224, 5, 255], [235, 255, 7], [150, 5, 61], [120, 120, 70],
    [8, 255, 51], [255, 6, 82], [143, 255, 140], [204, 255, 4], [255, 51, 7], [204, 70, 3], [0, 102, 200],
    [61, 230, 250], [255, 6, 51], [11, 102, 255], [255, 7, 71], [255, 9, 224], [9, 7, 230], [220, 220, 220],
    [255, 9, 92], [112, 9, 255], [8, 255, 214], [7, 255, 224], [255, 184, 6], [10, 255, 71], [255, 41, 10],
    [7, 255, 255], [224, 255, 8], [102, 8, 255], [255, 61, 6], [255, 194, 7], [255, 122, 8], [0, 255, 20],
    [255, 8, 41], [255, 5, 153], [6, 51, 255], [235, 12, 255], [160, 150, 20], [0, 163, 255], [140, 140, 140],
    [250, 10, 15], [20, 255, 0], [31, 255, 0], [255, 31, 0], [255, 224, 0], [153, 255, 0], [0, 0, 255],
    [255, 71, 0], [0, 235, 255], [0, 173, 255], [31, 0, 255], [11, 200, 200], [255, 82, 0], [0, 255, 245],
    [0, 61, 255], [0, 255, 112], [0, 255, 133], [255, 0, 0], [255, 163, 0], [255, 102, 0], [194, 255, 0],
    [0, 143, 255], [51, 255, 0], [0, 82, 255], [0, 255, 41], [0, 255, 173], [10, 0, 255], [173, 255, 0],
    [0, 255, 153], [255, 92, 0], [255, 0, 255], [255, 0, 245], [255, 0, 102], [255, 173, 0], [255, 0, 20],
    [255, 184, 184], [0, 31, 255], [0, 255, 61], [0, 71, 255], [255, 0, 204], [0, 255, 194], [0, 255, 82],
    [0, 10, 255], [0, 112, 255], [51, 0, 255], [0, 194, 255], [0, 122, 255], [0, 255, 163], [255, 153, 0],
    [0, 255, 10], [255, 112, 0], [143, 255, 0], [82, 0, 255], [163, 255, 0], [255, 235, 0], [8, 184, 170],
    [133, 0, 255], [0, 255, 92], [184, 0, 255], [255, 0, 31], [0, 184, 255], [0, 214, 255], [255, 0, 112],
    [92, 255, 0], [0, 224, 255], [112, 224, 255], [70, 184, 160], [163, 0, 255], [153, 0, 255], [71, 255, 0],
    [255, 0, 163], [255, 204, 0], [255, 0, 143], [0, 255, 235], [133, 255, 0], [255, 0, 235], [245, 0, 255],
    [255, 0, 122], [255, 245, 0], [10, 190, 212], [214, 255, 0], [0, 204, 255], [20, 0, 255], [255, 255, 0],
    [0, 153, 255], [0, 41, 255], [0, 255, 204], [41, 0, 255], [41, 255, 0], [173, 0, 255], [0, 245, 255],
    [71, 0, 255], [122, 0, 255], [0, 255, 184], [0, 92, 255], [184, 255, 0], [0, 133, 255], [255, 214, 0],
    [25, 194, 194], [102, 255, 0], [92, 0, 255]], dtype=np.uint8)

# COCO panoptic's 133 classes (80 things, then 53 stuff) in OneFormer's contiguous order, panopticapi's colours
COCO_PALETTE = np.array([
    [220, 20, 60], [119, 11, 32], [0, 0, 142], [0, 0, 230], [106, 0, 228], [0, 60, 100], [0, 80, 100], [0, 0, 70],
    [0, 0, 192], [250, 170, 30], [100, 170, 30], [220, 220, 0], [175, 116, 175], [250, 0, 30], [165, 42, 42],
    [255, 77, 255], [0, 226, 252], [182, 182, 255], [0, 82, 0], [120, 166, 157], [110, 76, 0], [174, 57, 255],
    [199, 100, 0], [72, 0, 118], [255, 179, 240], [0, 125, 92], [209, 0, 151], [188, 208, 182], [0, 220, 176],
    [255, 99, 164], [92, 0, 73], [133, 129, 255], [78, 180, 255], [0, 228, 0], [174, 255, 243], [45, 89, 255],
    [134, 134, 103], [145, 148, 174], [255, 208, 186], [197, 226, 255], [171, 134, 1], [109, 63, 54],
    [207, 138, 255], [151, 0, 95], [9, 80, 61], [84, 105, 51], [74, 65, 105], [166, 196, 102], [208, 195, 210],
    [255, 109, 65], [0, 143, 149], [179, 0, 194], [209, 99, 106], [5, 121, 0], [227, 255, 205], [147, 186, 208],
    [153, 69, 1], [3, 95, 161], [163, 255, 0], [119, 0, 170], [0, 182, 199], [0, 165, 120], [183, 130, 88],
    [95, 32, 0], [130, 114, 135], [110, 129, 133], [166, 74, 118], [219, 142, 185], [79, 210, 114], [178, 90, 62],
    [65, 70, 15], [127, 167, 115], [59, 105, 106], [142, 108, 45], [196, 172, 0], [95, 54, 80], [128, 76, 255],
    [201, 57, 1], [246, 0, 122], [191, 162, 208], [255, 255, 128], [147, 211, 203], [150, 100, 100], [168, 171, 172],
    [146, 112, 198], [210, 170, 100], [92, 136, 89], [218, 88, 184], [241, 129, 0], [217, 17, 255], [124, 74, 181],
    [70, 70, 70], [255, 228, 255], [154, 208, 0], [193, 0, 92], [76, 91, 113], [255, 180, 195], [106, 154, 176],
    [230, 150, 140], [60, 143, 255], [128, 64, 128], [92, 82, 55], [254, 212, 124], [73, 77, 174], [255, 160, 98],
    [255, 255, 255], [104, 84, 109], [169, 164, 131], [225, 199, 255], [137, 54, 74], [135, 158, 223], [7, 246, 231],
    [107, 255, 200], [58, 41, 149], [183, 121, 142], [255, 73, 97], [107, 142, 35], [190, 153, 153], [146, 139, 141],
    [70, 130, 180], [134, 199, 156], [209, 226, 140], [96, 36, 108], [96, 96, 96], [64, 170, 64], [152, 251, 152],
    [208, 229, 228], [206, 186, 171], [152, 161, 64], [116, 112, 0], [0, 114, 143], [102, 102, 156], [250, 141, 255]], dtype=np.uint8)


@dataclass(frozen=True)
class Dataset:
    preprocessor: str
    alias: str  # the extension's internal module key
    folder: str  # the transformers-format model folder
    label: str
    palette: np.ndarray


ADE20K = Dataset("seg_ofade20k", "oneformer_ade20k", "oneformer_ade20k_swin_large", "ADE20K", ADE20K_PALETTE)
COCO = Dataset("seg_ofcoco", "oneformer_coco", "oneformer_coco_swin_large", "COCO panoptic", COCO_PALETTE)


def _read_json(path: str) -> object:
    if not os.path.isfile(path):
        raise ModelFileError(path, "file not found")
    if os.path.getsize(path) > MAX_JSON_BYTES:
        raise ModelFileError(path, f"is larger than {MAX_JSON_BYTES // (1024 * 1024)} MB; not a config")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelFileError(path, f"is not valid JSON ({e})") from e


def _weight_file(folder: str) -> str:
    for name in WEIGHT_FILES:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise ModelFileError(folder, f"holds none of {', '.join(WEIGHT_FILES)}")


def _config(config_path: str, dataset: Dataset):
    from transformers import OneFormerConfig

    data = _read_json(config_path)
    if not isinstance(data, dict) or data.get("model_type") != "oneformer":
        raise ModelFileError(config_path, "is not a OneFormer config (model_type must be \"oneformer\")")
    try:
        config = OneFormerConfig.from_dict(data)
    except (TypeError, ValueError, KeyError) as e:
        raise ModelFileError(config_path, f"is not a usable OneFormer config ({e})") from e
    if config.num_labels != len(dataset.palette):
        raise ModelFileError(config_path, f"has {config.num_labels} classes; {dataset.label} has "
                                          f"{len(dataset.palette)}")
    config.is_training = False  # inference: no text mapper (it only trains the contrastive loss)
    config.use_pretrained_backbone = False  # never fetch a backbone: the weights come from the file
    return config


class _OneFormerSemantic(torch.nn.Module):
    """OneFormer with its task tokens: image in, per-pixel class scores out."""

    def __init__(self, model: torch.nn.Module, task_tokens: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("task_tokens", task_tokens, persistent=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixel_values, task_inputs=self.task_tokens)
        # MaskFormer's semantic inference: class probabilities (without "no object") weighted by the query masks
        classes = out.class_queries_logits.softmax(dim=-1)[..., :-1]
        masks = out.masks_queries_logits.sigmoid()
        scores = torch.einsum("bqc,bqhw->bchw", classes, masks)
        return F.interpolate(scores, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)


def _task_tokens(folder: str, length: int) -> torch.Tensor:
    from transformers import CLIPTokenizer

    vocab = _read_json(os.path.join(folder, "vocab.json"))
    merges_path = os.path.join(folder, "merges.txt")
    if not isinstance(vocab, dict) or not os.path.isfile(merges_path):
        raise ModelFileError(folder, "needs the CLIP tokenizer files vocab.json and merges.txt")
    if os.path.getsize(merges_path) > MAX_JSON_BYTES:
        raise ModelFileError(merges_path, "is too large for a merges file")
    with open(merges_path, encoding="utf-8") as f:
        merges = [tuple(line.split()) for line in f if line.strip() and not line.startswith("#version")]
    if any(len(pair) != 2 for pair in merges):
        raise ModelFileError(merges_path, "is not a BPE merges file (a line is not one pair)")
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    encoded = tokenizer(TASK_TEXT, padding="max_length", max_length=length, truncation=True)
    ids = torch.tensor(encoded["input_ids"]) * torch.tensor(encoded["attention_mask"])
    return ids[None]


def _builder(folder: str, dataset: Dataset):
    def build(path: str, state: loading.StateDict) -> torch.nn.Module:
        from transformers import OneFormerForUniversalSegmentation

        config = _config(os.path.join(folder, "config.json"), dataset)
        state = {k: v for k, v in state.items() if ".text_mapper." not in f".{k}"}  # training-only part
        # sizes from a hostile config are checked against the file on the meta device before anything is built
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in OneFormerForUniversalSegmentation(config).state_dict().items()}
        wrong = [k for k, shape in shapes.items() if k not in state or tuple(state[k].shape) != shape]
        if wrong or set(state) - set(shapes):
            first = wrong[0] if wrong else sorted(set(state) - set(shapes))[0]
            raise ModelFileError(path, f"does not match its config.json (first difference: {first})")
        model = loading.fill(path, OneFormerForUniversalSegmentation(config), state, "OneFormer")
        return _OneFormerSemantic(model, _task_tokens(folder, config.task_seq_len)).eval()

    return build


def segment(image: np.ndarray, dataset: Dataset) -> np.ndarray:
    """Class index per pixel (HxW) of an RGB image, by the dataset's OneFormer."""
    folder = os.path.dirname(weights_path(dataset.preprocessor, dataset.folder, "config.json"))
    relative = (dataset.folder, os.path.basename(_weight_file(folder)))
    network = loading.load_network(dataset.preprocessor, relative, _builder(folder, dataset))

    def infer() -> np.ndarray:
        device = loading.network_device(network)
        x = torch.from_numpy(image).to(device).float().div(255.0).permute(2, 0, 1)[None]
        mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
        return network((x - mean) / std)[0].argmax(dim=0).cpu().numpy()

    return loading.run(network, infer)


def colorize(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    return palette[np.clip(labels, 0, len(palette) - 1)]


def segmentation_map(image: np.ndarray, resolution: int, _a: float, _b: float, dataset: Dataset = ADE20K
                     ) -> np.ndarray:
    padded, remove_pad = resize_image_with_pad(image, resolution)
    return hwc3(remove_pad(colorize(segment(padded, dataset), dataset.palette)))


def preprocessors() -> list[Preprocessor]:
    return [Preprocessor(name=d.preprocessor, control_type="Segmentation", model_free=False, aliases=(d.alias,),
                         fn=functools.partial(segmentation_map, dataset=d))
            for d in (ADE20K, COCO)]

"""Same-name `.yaml` / `.json` files next to a checkpoint, which override what detection decides (as in A1111).

`.yaml` is the original ldm/sgm inference config A1111 users keep beside checkpoints; from it we take the
prediction type, the attention head layout and the latent scale factor (everything else must match the weights,
which we read anyway). `.json` is our compact form:

    {"family": "sd1", "prediction_type": "v_prediction",
     "unet": {"attention_head_dim": 4}, "vae": {"scaling_factor": 0.2}}

It may also be A1111's extra-networks metadata file, whose "sd version" (SD1/SD2/SDXL) is then checked.
"""

from __future__ import annotations

import json
import os
from typing import Any

import yaml

from modules.models.checkpoint_files import ModelFileError

_FAMILY_BY_A1111_VERSION = {"sd1": "sd1", "sd2": "sd2", "sdxl": "sdxl"}
ALLOWED_JSON_KEYS = {"family", "prediction_type", "unet", "vae", "text_encoder", "sd version", "description",
                     "activation text", "preferred weight", "notes", "vae_scaling_factor"}


def sidecar_paths(checkpoint_path: str) -> list[str]:
    stem = os.path.splitext(checkpoint_path)[0]
    return [p for p in (stem + ".yaml", stem + ".json") if os.path.isfile(p)]


def _family_from_ldm(model_params: dict[str, Any]) -> str | None:
    cond = str((model_params.get("cond_stage_config") or {}).get("target", ""))
    if "FrozenOpenCLIPEmbedder" in cond:
        return "sd2"
    if "FrozenCLIPEmbedder" in cond:
        return "sd1"
    embedders = ((model_params.get("conditioner_config") or {}).get("params") or {}).get("emb_models") or []
    if embedders:
        texts = [str(e.get("target", "")) for e in embedders if "Embedder" in str(e.get("target", ""))]
        has_clip_l = any(t.endswith("FrozenCLIPEmbedder") for t in texts)
        return "sdxl" if has_clip_l else "sdxl_refiner"
    return None


def read_ldm_yaml(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise ModelFileError(path, f"config sidecar is not readable YAML: {e}") from e
    params = ((doc or {}).get("model") or {}).get("params") if isinstance(doc, dict) else None
    if not isinstance(params, dict):
        raise ModelFileError(path, "config sidecar has no model.params section (not an ldm/sgm config)")
    out: dict[str, Any] = {"unet": {}, "vae": {}}
    family = _family_from_ldm(params)
    if family:
        out["family"] = family
    out["prediction_type"] = "v_prediction" if params.get("parameterization") == "v" else "epsilon"
    unet = (params.get("unet_config") or params.get("network_config") or {}).get("params") or {}
    if isinstance(unet.get("num_heads"), int) and unet["num_heads"] > 0:
        out["unet"]["attention_head_dim"] = unet["num_heads"]
    elif isinstance(unet.get("num_head_channels"), int) and unet["num_head_channels"] > 0:
        out["unet"]["num_head_channels"] = unet["num_head_channels"]
    if "scale_factor" in params:
        out["vae"]["scaling_factor"] = float(params["scale_factor"])
    return out


def read_json_sidecar(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFileError(path, f"config sidecar is not readable JSON: {e}") from e
    if not isinstance(doc, dict):
        raise ModelFileError(path, "config sidecar must be a JSON object")
    out: dict[str, Any] = {"unet": dict(doc.get("unet") or {}), "vae": dict(doc.get("vae") or {})}
    if doc.get("family"):
        out["family"] = str(doc["family"])
    elif str(doc.get("sd version", "")).lower() in _FAMILY_BY_A1111_VERSION:
        out["family"] = _FAMILY_BY_A1111_VERSION[str(doc["sd version"]).lower()]
    if doc.get("prediction_type"):
        if doc["prediction_type"] not in ("epsilon", "v_prediction"):
            raise ModelFileError(path, f"prediction_type must be epsilon or v_prediction, not {doc['prediction_type']!r}")
        out["prediction_type"] = doc["prediction_type"]
    return out


def read_sidecar(checkpoint_path: str) -> tuple[dict[str, Any], str | None]:
    """Overrides from the first sidecar found (yaml before json) and that file's path."""
    for path in sidecar_paths(checkpoint_path):
        overrides = read_ldm_yaml(path) if path.endswith(".yaml") else read_json_sidecar(path)
        return overrides, path
    return {}, None

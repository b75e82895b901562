"""Face restoration (GFPGAN, CodeFormer) on random-weight models written in the release formats: detection by
spandrel, faces found by OpenCV's cascade, restored only inside the face, refusals by name, the txt2img
`restore_faces` field with its infotext, and /sdapi/v1/face-restorers.

GFPGAN's architecture has a fixed size in spandrel (87 M parameters); it is built once per session and saved in
half precision (175 MB). CodeFormer's transformer is made small (its VQ autoencoder is fixed: 68 M parameters).
One 512x512 pass takes about 5 s (GFPGAN) and 10 s (CodeFormer) on two CPU cores; the tests run four."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import spandrel
import torch
from PIL import Image, ImageDraw, ImageFilter

from modules import face_detection, face_restoration, face_restoration_models, processing, sd_models, shared


def draw_face(size: tuple[int, int] = (384, 320), center: tuple[int, int] = (150, 160)) -> Image.Image:
    """A cartoon frontal face (head, brows, eyes, nose, mouth), soft-edged: enough for the Haar cascade."""
    im = Image.new("RGB", size, (70, 90, 110))
    d = ImageDraw.Draw(im)
    cx, cy = center

    def oval(x0: int, y0: int, x1: int, y1: int, fill: tuple[int, int, int]) -> None:
        d.ellipse([cx + x0, cy + y0, cx + x1, cy + y1], fill=fill)

    oval(-55, -75, 55, 80, (225, 185, 160))
    oval(-40, -30, -12, -14, (40, 30, 30))
    oval(12, -30, 40, -14, (40, 30, 30))
    d.rectangle([cx - 42, cy - 44, cx - 10, cy - 38], fill=(60, 40, 30))
    d.rectangle([cx + 10, cy - 44, cx + 42, cy - 38], fill=(60, 40, 30))
    oval(-8, 0, 8, 22, (200, 150, 130))
    oval(-22, 36, 22, 50, (150, 60, 60))
    return im.filter(ImageFilter.GaussianBlur(2))


def gfpgan_state() -> dict[str, torch.Tensor]:
    from spandrel.architectures.GFPGAN import GFPGAN

    torch.manual_seed(0)
    net = GFPGAN(out_size=512, num_style_feat=512, channel_multiplier=2, decoder_load_path=None, fix_decoder=False,
                 num_mlp=8, input_is_latent=True, different_w=True, narrow=1, sft_half=True)
    return {k: v.half() for k, v in net.state_dict().items()}


def codeformer_state() -> dict[str, torch.Tensor]:
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

    torch.manual_seed(1)
    net = CodeFormer(dim_embd=64, n_head=8, n_layers=1, codebook_size=64, latent_size=256, connect_list=["32"])
    return {k: v.half().contiguous() for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, str]:
    """Model files as the releases ship them: GFPGANv1.4.pth nests its weights under params_ema (a pickle, read
    through the restricted loader); CodeFormer as .safetensors."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("face_weights")
    gfpgan = root / "GFPGANv1.4.pth"
    torch.save({"params_ema": gfpgan_state()}, gfpgan)
    codeformer = root / "codeformer-v0.1.0.safetensors"
    save_file(codeformer_state(), codeformer)
    yield {"GFPGAN": str(gfpgan), "CodeFormer": str(codeformer)}
    shutil.rmtree(root, ignore_errors=True)  # 0.3 GB: gone before the next file's tests write theirs


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, isolated_data_dir, weights):
    """A data dir with a tiny SD checkpoint and both face models in their A1111 folders."""
    root = tmp_path_factory.mktemp("faces")
    with isolated_data_dir(root, {"sd1.safetensors": {"family": "sd1", "seed": 3}},
                           {"live_previews_enable": False}) as data:
        for folder, name in (("GFPGAN", "GFPGAN"), ("Codeformer", "CodeFormer")):
            target = data / "models" / folder
            target.mkdir(parents=True, exist_ok=True)
            source = weights[name]
            (target / source.rsplit("/", 1)[-1]).symlink_to(source)
        face_restoration.refresh()
        yield data
    face_restoration.refresh()


@pytest.fixture
def settings():
    saved = dict(shared.opts.data)
    yield shared.opts.data
    shared.opts.data.clear()
    shared.opts.data.update(saved)


def test_spandrel_detects_the_written_architectures(weights):
    _ = face_restoration_models._install_extra_arches()
    for name, path in weights.items():
        state = face_restoration_models.read_weights(path)
        assert spandrel.ModelLoader().load_from_state_dict(state).architecture.id == name


def test_the_cascade_finds_the_drawn_face_and_not_a_plain_picture():
    faces = face_detection.find_faces(np.asarray(draw_face()))
    assert len(faces) == 1
    box = faces[0]
    assert box.x < 150 < box.x + box.w and box.y < 160 < box.y + box.h
    assert face_detection.find_faces(np.full((320, 384, 3), 128, np.uint8)) == []


def test_restorers_on_disk_are_listed(data_dir):
    assert face_restoration.available_names() == ["CodeFormer", "GFPGAN"]
    assert face_restoration.known_names()[:2] == ["CodeFormer", "GFPGAN"]


def _changed_region(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return np.any(before.astype(np.int16) != after.astype(np.int16), axis=2)


@pytest.mark.parametrize("name", ["GFPGAN", "CodeFormer"])
def test_restore_changes_pixels_only_around_the_face(data_dir, name):
    picture = np.asarray(draw_face())
    restored = face_restoration.find(name).restore(picture)
    assert restored.shape == picture.shape and restored.dtype == np.uint8
    changed = _changed_region(picture, restored)
    box = face_detection.find_faces(picture)[0]
    sq = face_detection.square_around(box)
    inside = np.zeros_like(changed)
    inside[max(0, sq.top):sq.top + sq.side, max(0, sq.left):sq.left + sq.side] = True
    assert changed[box.y:box.y + box.h, box.x:box.x + box.w].mean() > 0.5  # the face itself is redrawn
    assert not changed[~inside].any()  # nothing outside the square around it
    assert changed[:, -40:].sum() == 0  # the far right of the picture has no face: untouched


def test_codeformer_weight_takes_effect(data_dir):
    picture = np.asarray(draw_face())
    restorer = face_restoration.find("CodeFormer")
    strong, faithful = restorer.restore(picture, w=0.0), restorer.restore(picture, w=1.0)
    assert not np.array_equal(strong, faithful)
    with pytest.raises(face_restoration.FaceRestorationError, match="CodeFormer weight 2 is outside 0..1"):
        restorer.restore(picture, w=2.0)


@pytest.fixture
def model_folders(tmp_path, monkeypatch):
    """Empty models/GFPGAN and models/Codeformer of their own (the data dir's stay as they are)."""
    from modules import paths

    models = tmp_path / "models"
    monkeypatch.setattr(paths, "models_path", str(models))
    monkeypatch.setattr(shared.cmd_opts, "gfpgan_models_path", str(models / "GFPGAN"))
    monkeypatch.setattr(shared.cmd_opts, "codeformer_models_path", str(models / "Codeformer"))
    face_restoration.refresh()
    yield models
    monkeypatch.undo()
    face_restoration.refresh()


def test_missing_model_is_refused_by_name(data_dir, model_folders, settings):
    assert face_restoration.available_names() == []
    with pytest.raises(face_restoration.FaceRestorationError,
                       match="no GFPGAN model in models/GFPGAN: put GFPGANv1.4.pth there"):
        face_restoration.find("GFPGAN")
    shared.opts.data["face_restoration_model"] = "CodeFormer"
    with pytest.raises(ValueError, match="restore_faces: no CodeFormer model in models/Codeformer: put "
                                         "codeformer-v0.1.0.pth there"):
        _txt2img(restore_faces=True)


def test_a_file_of_another_architecture_or_a_hostile_pickle_is_refused_by_name(data_dir, model_folders):
    from spandrel.architectures.ESRGAN import ESRGAN

    folder = model_folders / "GFPGAN"
    folder.mkdir(parents=True)
    torch.save({"params_ema": ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4).state_dict()},
               folder / "GFPGANv1.4.pth")
    face_restoration.refresh()
    restorer = face_restoration.find("GFPGAN")
    with pytest.raises(face_restoration.FaceRestorationError,
                       match="GFPGAN model GFPGANv1.4.pth: it is a ESRGAN model, not a GFPGAN model"):
        restorer.restore(np.asarray(draw_face()))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"params_ema": {"w": torch.zeros(1)}, "x": Evil()}, folder / "evil-GFPGAN.pth")
    face_restoration.refresh()
    evil = face_restoration.find("GFPGAN")
    assert evil.model_path.endswith("GFPGANv1.4.pth")  # the release name wins over others
    evil = face_restoration_models.GFPGANRestorer(str(folder / "evil-GFPGAN.pth"))
    with pytest.raises(face_restoration.FaceRestorationError, match="GFPGAN model evil-GFPGAN.pth: "):
        evil.restore(np.asarray(draw_face()))


class Negative(face_restoration.FaceRestoration):
    """A restorer as an extension adds one: it inverts the picture, so its effect is plain to see."""

    def name(self) -> str:
        return "Negative"

    def restore(self, np_image: np.ndarray) -> np.ndarray:
        return 255 - np_image


def _txt2img(**kw) -> processing.Processed:
    args = {"prompt": "a face", "steps": 3, "width": 64, "height": 64, "sampler_name": "Euler", "seed": 5,
            "do_not_save_samples": True, "do_not_save_grid": True}
    return processing.process_images(processing.StableDiffusionProcessingTxt2Img(**{**args, **kw}))


def test_txt2img_restore_faces_runs_the_chosen_restorer_and_writes_the_infotext(data_dir, settings):
    from modules import infotext_utils

    sd_models.load_model(sd_models.get_closet_checkpoint_match("sd1.safetensors"))
    shared.face_restorers.append(Negative())
    try:
        plain = _txt2img()
        shared.opts.data["face_restoration_model"] = "Negative"
        restored = _txt2img(restore_faces=True)
        assert np.array_equal(255 - np.asarray(plain.images[0]), np.asarray(restored.images[0]))
        assert "Face restoration: Negative" in restored.infotexts[0]
        assert ", Face restoration: Negative, Size: " in restored.infotexts[0]  # A1111's place: after Seed
        assert restored.face_restoration_model == "Negative" and plain.face_restoration_model is None
        assert "Face restoration" not in plain.infotexts[0]
        assert infotext_utils.parse_generation_parameters(restored.infotexts[0])["Face restoration"] == "Negative"
        shared.opts.data["face_restoration"] = True  # the setting answers for a request that does not say
        assert "Face restoration: Negative" in _txt2img().infotexts[0]
        assert "Face restoration" not in _txt2img(restore_faces=False).infotexts[0]
        shared.opts.data["face_restoration_model"] = "GFPGAN"  # a real one: no face in this picture, same pixels
        real = _txt2img(restore_faces=True)
        assert "Face restoration: GFPGAN" in real.infotexts[0]
        assert np.array_equal(np.asarray(plain.images[0]), np.asarray(real.images[0]))
    finally:
        shared.face_restorers.remove(shared.face_restorers[-1])


def test_restore_faces_checkboxes_reach_the_request_and_paste_back(data_dir):
    from modules import infotext_utils
    from modules.ui import app, img2img, paste, txt2img

    demo = app.create_ui()
    boxes = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None) in (
        "txt2img_restore_faces", "img2img_restore_faces")}
    assert set(boxes) == {"txt2img_restore_faces", "img2img_restore_faces"}
    for tab in ("txt2img", "img2img"):
        fields = infotext_utils.paste_fields[tab]["fields"]
        box = boxes[f"{tab}_restore_faces"]
        targets = [target for component, target in fields if component is box]
        assert len(targets) == 1
        assert paste.values_for([(box, targets[0])], {"Face restoration": "GFPGAN"}) == [True]
        assert paste.values_for([(box, targets[0])], {"Steps": 20}) == [False]
    t2i_values = ["x", "", [], 4, "Euler", "Automatic", 64, 64, 1, 1, 7.0, 1, False, -1, 0, 0, 0, False, False,
                  None, 0.8]
    assert txt2img.make_request(*t2i_values, True).restore_faces is True
    assert txt2img.make_request(*t2i_values, False).restore_faces is False
    i2i_values = [0, Image.new("RGB", (64, 64)), None, None, None, None, "", "", "", 0, False, 1.0, 4, 0, 1, False,
                  32, 0.5] + t2i_values
    assert len(i2i_values) + 1 + 5 == img2img.FIELD_COUNT  # then the Batch source and its PNG info options
    work = img2img.make_work(i2i_values + [True])
    assert work.__closure__ is not None
    p = next(c.cell_contents for c in work.__closure__ if isinstance(c.cell_contents, processing.StableDiffusionProcessing))
    assert p.restore_faces is True


def test_api_lists_face_restorers_and_refuses_restore_faces_by_name(data_dir, model_folders):
    from test_api_support import FAST, assert_error_json, client, serving

    from modules.api.server import create_app

    with serving(create_app(auth=None)) as server, client(server) as http:
        assert http.get("/sdapi/v1/face-restorers").json() == []
        body = assert_error_json(http.post("/sdapi/v1/txt2img", json={**FAST, "restore_faces": True}), 422,
                                 "restore_faces")
        assert "put codeformer-v0.1.0.pth there" in body["errors"]
        folder = model_folders / "GFPGAN"
        folder.mkdir(parents=True)
        (folder / "GFPGANv1.4.pth").write_bytes(b"not read until used")
        listed = http.get("/sdapi/v1/face-restorers").json()
        assert listed == [{"name": "GFPGAN", "cmd_dir": str(folder)}]


def test_a_loaded_face_model_is_known_to_the_memory_owner_and_can_be_dropped(data_dir, settings):
    from modules.models import memory

    restorer = face_restoration.find("GFPGAN")
    restorer.load()
    handle = f"face:{restorer.model_path}"
    assert handle in memory.owner and memory.owner.handles(group="face")[0].size_bytes > 10_000_000
    assert memory.owner.unload(handle)  # what the owner does under memory pressure
    assert restorer.descriptor is None and handle not in memory.owner
    assert restorer.load() is not None  # loaded again on the next use

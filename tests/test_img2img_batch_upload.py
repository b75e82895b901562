"""img2img Batch > Upload and the PNG info options, through the tab's own make_work on CPU with the tiny model:
uploads run in order and land in the img2img folder, hostile uploads are named and skipped or refused by the
existing limits, PNG info values are taken per picture (only the ticked ones), a PNG info folder is matched by
file name and checked like the other Batch folders, and uploads work where folders are refused."""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from modules import img2img_batch, shared

PAGE_PROMPT = "page words"


def png(path: Path, size: tuple[int, int] = (64, 64), parameters: str | None = None) -> str:
    info = None
    if parameters is not None:
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", parameters)
    Image.new("RGB", size, (200, 40, 40)).save(path, pnginfo=info)
    return str(path)


def bomb(path: Path) -> str:
    """A PNG whose header claims 100000x100000 pixels, with no pixel data: refused before anything is decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return str(path)


@pytest.fixture(scope="module")
def model_data_dir(tmp_path_factory, isolated_data_dir):
    from modules import sd_models

    settings = {"live_previews_enable": False, "save_to_dirs": False}
    with isolated_data_dir(tmp_path_factory.mktemp("data"), {"sd1.safetensors": {"family": "sd1", "seed": 3}},
                           settings) as root:
        sd_models.load_model(sd_models.get_closet_checkpoint_match("sd1.safetensors"))
        yield root


@pytest.fixture
def data(model_data_dir):
    shared.state.interrupted = shared.state.stopping_generation = False
    return model_data_dir


def values(files=None, *, source="upload", input_dir="", seed=-1, steps=2, use_png=False, props=(), png_dir=""):
    """The img2img tab's widget values for the Batch sub-tab ("Resize by" 1.0: results keep their source's size)."""
    img2img = [4, None, None, None, None, None, input_dir, "", "", 0, True, 1.0, 4, 0, 1, False, 32, 0.5]
    common = [PAGE_PROMPT, "", [], steps, "Euler", "Automatic", 64, 64, 1, 1, 7.0, seed, False, -1, 0, 0, 0, False,
              False, None, 0.8]
    return img2img + common + [False] + [source, files, use_png, list(props), png_dir]


def run(*args, **kwargs):
    from modules.ui import img2img

    return img2img.make_work(values(*args, **kwargs))()


def seed_of(infotext: str) -> int:
    return int(re.search(r"Seed: (\d+)", infotext).group(1))


def test_two_uploads_run_in_order_with_their_own_seeds_and_are_saved_to_the_img2img_folder(data, tmp_path):
    files = [png(tmp_path / "wide.png", (96, 64)), png(tmp_path / "tall.png", (64, 96))]
    result = run(files)
    assert [im.size for im in result.images] == [(96, 64), (64, 96)]  # the uploads' order
    assert len(result.infotexts) == 2 and all(PAGE_PROMPT in t for t in result.infotexts)
    assert seed_of(result.infotexts[0]) != seed_of(result.infotexts[1])  # seed -1: a new one for each picture
    assert "Processed 2 image(s) from 2 upload(s)." in result.comments
    saved = sorted((data / "outputs" / "img2img-images").glob("*.png"))
    assert len(saved) >= 2
    assert {Image.open(path).size for path in saved[-2:]} == {(96, 64), (64, 96)}


def test_a_non_picture_and_a_bomb_are_named_and_skipped_while_the_good_one_runs(data, tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("<b>not a picture</b>")
    result = run([str(notes), bomb(tmp_path / "bomb.png"), png(tmp_path / "good.png")])
    assert len(result.images) == 1 and result.images[0].size == (64, 64)
    assert "Could not read the uploaded image 'notes.png': it is not a picture" in result.comments
    assert "Could not read the uploaded image 'bomb.png'" in result.comments
    assert "Processed 1 image(s)" in result.comments
    with pytest.raises(ValueError, match="notes.png"):  # nothing readable: the job fails and says why
        run([str(notes)])


def test_uploads_are_bounded_by_the_existing_limits(data, tmp_path, monkeypatch):
    files = [png(tmp_path / "a.png"), png(tmp_path / "b.png")]
    monkeypatch.setitem(shared.opts.data, "api_max_input_pixels", 4096)
    result = run([png(tmp_path / "big.png", (128, 64)), files[0]])
    assert "'big.png': it is 128x64, more than the 4096 pixels" in result.comments and len(result.images) == 1
    monkeypatch.setitem(shared.opts.data, "api_max_init_images", 1)
    with pytest.raises(ValueError, match="2 pictures are more than 1 \\(setting api_max_init_images\\)"):
        run(files)
    monkeypatch.setitem(shared.opts.data, "api_max_init_images", 16)
    monkeypatch.setattr(shared.cmd_opts, "max_upload_size", 0.0001)
    with pytest.raises(ValueError, match="--max-upload-size"):
        run(files)
    with pytest.raises(ValueError, match="Add one or more pictures"):
        run([])


def test_png_info_takes_only_the_ticked_values_of_each_picture(data, tmp_path):
    files = [png(tmp_path / "cat.png", parameters="a cat\nNegative prompt: blurry\nSteps: 3, Sampler: Euler, "
                                                  "CFG scale: 5, Seed: 11, Size: 64x64"),
             png(tmp_path / "dog.png", parameters="a dog\nSteps: 4, Sampler: Euler, CFG scale: 5, Seed: 22, "
                                                  "Size: 64x64"),
             png(tmp_path / "plain.png")]
    result = run(files, seed=5, use_png=True, props=["Prompt", "Steps", "Seed"])
    cat, dog, plain = result.infotexts
    assert cat.startswith(f"{PAGE_PROMPT} a cat\nSteps: 3,") and "Seed: 11," in cat
    assert dog.startswith(f"{PAGE_PROMPT} a dog\nSteps: 4,") and "Seed: 22," in dog
    assert "CFG scale: 7," in cat and "blurry" not in cat  # not ticked: the page's values
    assert plain.startswith(f"{PAGE_PROMPT}\nSteps: 2,") and "Seed: 5," in plain
    assert "plain.png: no PNG info; the page's settings were used." in result.comments
    unticked = run(files[:1], seed=5, use_png=False, props=["Prompt", "Steps", "Seed"]).infotexts[0]
    assert unticked.startswith(f"{PAGE_PROMPT}\nSteps: 2,") and "Seed: 5," in unticked


def test_png_values_that_do_not_fit_are_noted_and_the_page_values_kept(data):
    from modules import sd_models

    png_info = img2img_batch.PngInfo(frozenset(img2img_batch.PNG_INFO_PROPS))
    page = {"prompt": "p", "negative_prompt": "", "steps": 2, "seed": 5, "cfg_scale": 7.0, "sampler_name": "Euler"}
    text = ("x\nNegative prompt: n\nSteps: 99999, Sampler: No such sampler, CFG scale: nan, Seed: 12, "
            "Model hash: 0123456789")
    fields, notes = img2img_batch.with_png_info(page, "x\nSteps: 3, Sampler: Euler, Seed: 1" + "0" * 30, png_info, "b.png")
    assert fields["seed"] == 5 and fields["steps"] == 3 and notes[0].startswith("b.png: Seed '1000")
    fields, notes = img2img_batch.with_png_info(page, text, png_info, "a.png")
    assert fields == {**page, "prompt": "p x", "negative_prompt": "n", "seed": 12}
    assert [n.split(" from PNG info")[0] for n in notes] == [
        "a.png: CFG scale 'nan'", "a.png: Sampler 'No such sampler'", "a.png: Steps '99999'",
        "a.png: Model hash '0123456789'"]
    assert "the current model was used" in notes[-1]
    loaded = shared.sd_model.sd_checkpoint_info.shorthash
    assert loaded and loaded in sd_models.checkpoint_aliases
    fields, notes = img2img_batch.with_png_info(page, f"x\nSteps: 3, Sampler: Euler, Model hash: {loaded}",
                                                png_info, "a.png")
    assert notes == [] and fields["override_settings"] == {"sd_model_checkpoint": shared.sd_model.sd_checkpoint_info.title}


def test_a_png_info_folder_is_matched_by_name_and_checked_like_the_batch_folders(data, tmp_path, monkeypatch):
    (data / "infos").mkdir(exist_ok=True)
    png(data / "infos" / "cat.png", parameters="from the folder\nSteps: 3, Sampler: Euler, Seed: 9, Size: 64x64")
    files = [png(tmp_path / "cat.png", parameters="own text\nSteps: 4, Sampler: Euler, Seed: 8, Size: 64x64"),
             png(tmp_path / "dog.png")]
    result = run(files, use_png=True, props=["Prompt", "Steps"], png_dir="infos")
    assert result.infotexts[0].startswith(f"{PAGE_PROMPT} from the folder\nSteps: 3,")
    assert result.infotexts[1].startswith(f"{PAGE_PROMPT}\nSteps: 2,")
    assert "dog.png: no PNG info" in result.comments

    (tmp_path / "outside").mkdir()
    for folder in (str(tmp_path / "outside"), "../../etc", "/"):
        with pytest.raises(ValueError, match="PNG info directory: Batch folders must be inside"):
            run(files, use_png=True, props=["Prompt"], png_dir=folder)

    # the folder source takes PNG info from its pictures too
    (data / "batch-in").mkdir(exist_ok=True)
    png(data / "batch-in" / "one.png", parameters="folder picture\nSteps: 3, Sampler: Euler, Seed: 4, Size: 64x64")
    from_dir = run(source="from dir", input_dir="batch-in", use_png=True, props=["Prompt", "Seed"])
    assert from_dir.infotexts[0].startswith(f"{PAGE_PROMPT} folder picture\n") and "Seed: 4," in from_dir.infotexts[0]

    # a server others can reach: uploads still work, anything that reads a server folder is refused
    monkeypatch.setattr(shared.cmd_opts, "listen", True)
    assert len(run(files[1:]).images) == 1
    with pytest.raises(ValueError, match="PNG info directory: .*--allow-batch-dirs-when-listening"):
        run(files, use_png=True, props=["Prompt"], png_dir="infos")
    with pytest.raises(ValueError, match="--allow-batch-dirs-when-listening"):
        run(source="from dir", input_dir="batch-in")


def test_interrupt_stops_before_the_next_upload(data, tmp_path, monkeypatch):
    from modules import scripts

    process = scripts.process_request

    def then_interrupt(p):
        processed = process(p)
        shared.state.interrupted = True  # pressed while the first picture ran
        return processed

    monkeypatch.setattr(scripts, "process_request", then_interrupt)
    result = run([png(tmp_path / "a.png"), png(tmp_path / "b.png")])
    assert len(result.images) == 1 and "Processed 1 image(s)" in result.comments
    with pytest.raises(ValueError, match="Interrupted before the first image"):
        run([png(tmp_path / "a.png")])  # still interrupted: nothing runs

"""Saving/reading images with infotext, output naming and its safety, grids and resize modes (modules.images)."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import struct
import sys
import types
import zlib
from types import SimpleNamespace

import piexif
import piexif.helper
import pytest
from PIL import Image, features

from modules import filename_patterns, images

INFO = "a cat, (best:1.2)\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 64x48"
UNICODE_INFO = "猫とネコ, ü\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 64x48"


def use_shared(monkeypatch, fake) -> None:
    """Let images and file names see `fake` as modules.shared (its opts, its upscalers)."""
    monkeypatch.setattr(images, "shared", fake)
    monkeypatch.setattr(filename_patterns, "shared", fake)


@pytest.fixture(autouse=True)
def isolated_modules(monkeypatch):
    """A1111 defaults and no upscalers, whatever the real modules.shared holds."""
    fake = types.ModuleType("modules.shared")
    fake.sd_upscalers = []
    use_shared(monkeypatch, fake)
    monkeypatch.setitem(sys.modules, "modules.sd_vae", types.ModuleType("modules.sd_vae"))


def make_image(w=64, h=48, color=(200, 30, 30)):
    return Image.new("RGB", (w, h), color)


def png_chunks(path):
    """(type, keyword) of every text chunk, straight from the file bytes."""
    data = open(path, "rb").read()
    pos, out = 8, []
    while pos < len(data):
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if ctype in (b"tEXt", b"iTXt", b"zTXt"):
            out.append((ctype.decode(), body.split(b"\0", 1)[0].decode("latin-1")))
        pos += 12 + length
    return out


def exif_comment_raw(path):
    return piexif.load(str(path))["Exif"][piexif.ExifIFD.UserComment]


# ------------------------------------------------------------------------------------------------ metadata


def test_png_parameters_chunk_round_trip(tmp_path):
    fn = tmp_path / "a.png"
    images.save_image_with_geninfo(
        make_image(), INFO, str(fn), existing_pnginfo={"extras": "Postprocess upscale by: 2"}
    )
    assert ("tEXt", "parameters") in png_chunks(fn)
    with Image.open(fn) as im:
        geninfo, items = images.read_info_from_image(im)
    assert geninfo == INFO and type(geninfo) is str
    assert items == {"extras": "Postprocess upscale by: 2"}


def test_png_non_latin1_uses_itxt(tmp_path):
    fn = tmp_path / "u.png"
    images.save_image_with_geninfo(make_image(), UNICODE_INFO, str(fn))
    assert ("iTXt", "parameters") in png_chunks(fn)
    with Image.open(fn) as im:
        assert images.read_info_from_image(im)[0] == UNICODE_INFO


@pytest.mark.parametrize("ext", [".jpg", ".jpeg", ".webp"])
@pytest.mark.parametrize("info", [INFO, UNICODE_INFO])
def test_exif_user_comment_round_trip(tmp_path, ext, info):
    fn = tmp_path / f"a{ext}"
    images.save_image_with_geninfo(make_image().convert("RGBA"), info, str(fn))
    raw = exif_comment_raw(fn)
    assert raw.startswith(b"UNICODE\0")  # piexif "unicode": UTF-16 with the UNICODE prefix, as A1111
    assert piexif.helper.UserComment.load(raw) == info
    with Image.open(fn) as im:
        assert im.mode == "RGB"
        geninfo, items = images.read_info_from_image(im)
    assert geninfo == info
    assert "exif" not in items


@pytest.mark.skipif(not features.check("avif"), reason="PIL built without AVIF")
def test_avif_exif_round_trip(tmp_path):
    fn = tmp_path / "a.avif"
    images.save_image_with_geninfo(make_image(), UNICODE_INFO, str(fn))
    with Image.open(fn) as im:
        assert images.read_info_from_image(im)[0] == UNICODE_INFO


def test_gif_comment_round_trip(tmp_path):
    fn = tmp_path / "a.gif"
    images.save_image_with_geninfo(make_image(), UNICODE_INFO, str(fn))
    with Image.open(fn) as im:
        assert images.read_info_from_image(im)[0] == UNICODE_INFO


def test_extension_argument_picks_format(tmp_path):
    fn = tmp_path / "noext"
    images.save_image_with_geninfo(make_image(), INFO, str(fn), extension=".jpg")
    with Image.open(fn) as im:
        assert im.format == "JPEG" and images.read_info_from_image(im)[0] == INFO


def test_no_metadata_when_pnginfo_disabled(tmp_path):
    fn = tmp_path / "a.png"
    images.save_image_with_geninfo(make_image(), INFO, str(fn), settings={"enable_pnginfo": False})
    with Image.open(fn) as im:
        assert images.read_info_from_image(im) == (None, {})


def test_read_prefers_parameters_and_survives_bad_exif(tmp_path):
    im = make_image()
    im.info = {"parameters": "from png", "exif": b"garbage, not exif", "dpi": (72, 72), "Title": "t"}
    assert images.read_info_from_image(im) == ("from png", {"Title": "t"})
    im.info = {"exif": b"garbage, not exif"}
    assert images.read_info_from_image(im) == (None, {})


def test_novelai_png_converted(tmp_path):
    im = make_image(512, 768)
    im.info = {
        "Software": "NovelAI",
        "Description": "1girl, smile",
        "Comment": json.dumps({"uc": "lowres", "steps": 28, "sampler": "k_euler_ancestral", "scale": 11, "seed": 9}),
    }
    geninfo, _ = images.read_info_from_image(im)
    assert geninfo == (
        "1girl, smile\nNegative prompt: lowres\n"
        "Steps: 28, Sampler: Euler a, CFG scale: 11, Seed: 9, Size: 512x768, Clip skip: 2, ENSD: 31337"
    )


# ------------------------------------------------------------------------------------------------ atomic writes


@pytest.mark.parametrize("ext", ["png", "jpg", "webp"])
def test_failed_rename_leaves_no_file(tmp_path, monkeypatch, ext):
    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    fn = tmp_path / f"final.{ext}"
    with pytest.raises(OSError):
        images.save_image_with_geninfo(make_image(), INFO, str(fn))
    assert list(tmp_path.iterdir()) == []

    with pytest.raises(OSError):
        images.save_image(make_image(), str(tmp_path), "", seed=1, prompt="p", info=INFO, extension=ext)
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert leftovers == []


def test_failed_encode_leaves_no_file(tmp_path, monkeypatch):
    def broken_save(self, *args, **kwargs):
        raise ValueError("encoder exploded")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(ValueError):
        images.save_image_with_geninfo(make_image(), INFO, str(tmp_path / "x.png"))
    assert list(tmp_path.iterdir()) == []


def test_overwrite_is_atomic_and_keeps_umask_permissions(tmp_path):
    fn = tmp_path / "a.png"
    images.save_image_with_geninfo(make_image(color=(0, 0, 0)), "old", str(fn))
    images.save_image_with_geninfo(make_image(color=(255, 255, 255)), "new", str(fn))
    with Image.open(fn) as im:
        assert im.info["parameters"] == "new"
    if os.name == "posix":
        umask = os.umask(0)
        os.umask(umask)
        assert fn.stat().st_mode & 0o777 == 0o666 & ~umask


# ------------------------------------------------------------------------------------------------ naming


def fake_p(**kw):
    base = dict(
        seed=1234,
        all_seeds=[1234, 1235, 1236],
        steps=20,
        cfg_scale=7.0,
        width=512,
        height=768,
        sampler_name="DPM++ 2M",
        scheduler="Karras",
        sd_model_hash="6ce0161689",
        sd_model_name="v1-5-pruned-emaonly",
        prompt="a cat, masterpiece",
        negative_prompt="blurry",
        styles=["Style A", "None"],
        batch_size=3,
        n_iter=2,
        iteration=1,
        batch_index=2,
        denoising_strength=0.75,
        user="alice",
        job_timestamp="20240101120000",
        sd_vae_name="vae-ft-mse.safetensors",
        override_settings={},
    )
    base.update(kw)
    return SimpleNamespace(**base)


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("[seed]", "1234"),
        ("[seed_first]-[seed_last]", "1234-1236"),
        ("[steps]_[cfg]", "20_7.0"),
        ("[width]x[height]", "64x48"),  # the image's size, as A1111
        ("[styles]", "Style A"),
        ("[sampler]", "DPM++ 2M"),
        ("[scheduler]", "Karras"),
        ("[sampler_scheduler]", "DPM++ 2M Karras"),
        ("[model_hash]-[model_name]", "6ce0161689-v1-5-pruned-emaonly"),
        ("[job_timestamp]", "20240101120000"),
        ("[prompt_hash]", hashlib.sha256(b"a cat, masterpiece").hexdigest()[:8]),
        ("[prompt_hash<4>]", hashlib.sha256(b"a cat, masterpiece").hexdigest()[:4]),
        ("[negative_prompt_hash]", hashlib.sha256(b"blurry").hexdigest()[:8]),
        ("[full_prompt_hash<12>]", hashlib.sha256(b"a cat, masterpiece blurry").hexdigest()[:12]),
        ("[prompt]", "a_cat,_masterpiece"),
        ("[prompt_spaces]", "a cat, masterpiece"),
        ("[prompt_words]", "a cat masterpiece"),
        ("[prompt_no_styles]", "a cat, masterpiece"),
        ("b[batch_number]-g[generation_number]-of[batch_size]", "b3-g6-of3"),
        ("[hasprompt<cat><dog|nodog>]", "catnodog"),
        ("[clip_skip]", "1"),
        ("[randn_source]", "GPU"),
        ("[denoising]", "0.75"),
        ("[user]", "alice"),
        ("[vae_filename]", "vae-ft-mse"),
        ("x[none]y", "xy"),
        ("[SEED]", "1234"),  # tags are case-insensitive
        ("[unknown_tag]-[seed]", "[unknown_tag]-1234"),
        ("[unknown<arg>]", "[unknown<arg>]"),
    ],
)
def test_filename_tags(pattern, expected):
    gen = images.FilenameGenerator(fake_p(), 1234, "a cat, masterpiece", make_image())
    assert gen.apply(pattern) == expected


def test_tags_that_skip_previous_text():
    p = fake_p(batch_size=1, n_iter=1, denoising_strength=0)
    gen = images.FilenameGenerator(p, 7, "x", make_image())
    assert gen.apply("[seed]-b[batch_number]-g[generation_number]-d[denoising]-l[seed_last]") == "7"
    zipped = images.FilenameGenerator(fake_p(), 7, "x", make_image(), zip=True)
    # the literal text right before a skipped tag goes too
    assert zipped.apply("a[seed]-[batch_number]-[generation_number]") == "a7"


def test_date_datetime_and_timezones():
    gen = images.FilenameGenerator(fake_p(), 1, "x", make_image())
    assert gen.apply("[date]") == datetime.datetime.now().strftime("%Y-%m-%d")
    assert len(gen.apply("[datetime]")) == 14
    assert gen.apply("[datetime<%Y>]") == str(datetime.datetime.now().year)
    utc = datetime.datetime.now(datetime.UTC)
    assert gen.apply("[datetime<%Y-%m-%d %H><UTC>]") in {
        utc.strftime("%Y-%m-%d %H"),
        (utc + datetime.timedelta(hours=1)).strftime("%Y-%m-%d %H"),
    }
    # a bad zone falls back to local time; a format with separators cannot make folders
    assert gen.apply("[datetime<%Y><../../etc/passwd>]") == str(datetime.datetime.now().year)
    assert "/" not in gen.apply("[datetime<%Y/%m/%d>]")


def test_image_hash_and_settings_sources(monkeypatch):
    img = make_image()
    gen = images.FilenameGenerator(fake_p(override_settings={"CLIP_stop_at_last_layers": 2}), 1, "x", img)
    assert gen.apply("[image_hash]") == hashlib.sha256(img.tobytes()).hexdigest()
    assert gen.apply("[image_hash<10>]") == hashlib.sha256(img.tobytes()).hexdigest()[:10]
    assert gen.apply("[clip_skip]") == "2"

    shared = types.ModuleType("modules.shared")
    shared.opts = SimpleNamespace(CLIP_stop_at_last_layers=3, directories_max_prompt_words=2)
    use_shared(monkeypatch, shared)
    gen = images.FilenameGenerator(fake_p(), 1, "one two three", img)
    assert gen.apply("[clip_skip] [prompt_words]") == "3 one two"


def test_missing_fields_leave_tags_like_a1111():
    bare = SimpleNamespace()
    gen = images.FilenameGenerator(bare, None, None, make_image())
    assert gen.apply("[seed]x[steps][prompt][user]") == "x[steps][prompt][user]"
    gen = images.FilenameGenerator(None, 5, "p", None)
    assert gen.apply("[seed]-[steps]-[width]") == "5-[steps]-[width]"


def test_scheduler_automatic_resolves_through_sampler_registry():
    gen = images.FilenameGenerator(fake_p(scheduler="Automatic"), 1, "x", make_image())
    assert gen.apply("[scheduler]") == "Karras"  # DPM++ 2M's own schedule, from the sampler registry
    assert gen.apply("[sampler_scheduler]") == "DPM++ 2M Karras"


HOSTILE = [
    "../../etc/passwd",
    "a/b\\c",
    "..",
    "con",
    "NUL.txt",
    " .hidden",
    "x\0y\nz\tw",
    "\u202etxt.exe",
    'what<>:"|?*#',
    "猫" * 400,
    "😀" * 300,
    "",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_sanitize_filename_part(text):
    for replace_spaces in (True, False):
        out = filename_patterns.sanitize_filename_part(text, replace_spaces=replace_spaces)
        assert out and not out.startswith((".", " ")) and not out.endswith((".", " "))
        assert not set(out) & set('/\\<>:"|?*#\0\n\t\u202e')
        assert len(out) <= filename_patterns.max_filename_part_length
        assert out.split(".")[0].upper() not in {"CON", "NUL"}
    assert filename_patterns.sanitize_filename_part(None) is None


def test_sanitize_length_is_a_module_setting(monkeypatch):
    monkeypatch.setattr(filename_patterns, "max_filename_part_length", 10)
    assert filename_patterns.sanitize_filename_part("x" * 50) == "x" * 10
    assert images.max_filename_part_length == 10


@pytest.mark.parametrize("text", HOSTILE)
@pytest.mark.parametrize(
    ("dir_pattern", "file_pattern"),
    [("[prompt]", "[prompt]"), ("[prompt_words]", "[prompt_spaces]"), ("[date]", "[hasprompt<../x|..\\y>]")],
)
def test_hostile_prompts_never_escape(tmp_path, text, dir_pattern, file_pattern):
    root = tmp_path / "out"
    settings = {"directories_filename_pattern": dir_pattern, "samples_filename_pattern": file_pattern}
    for add_number in (True, False):
        settings["save_images_add_number"] = add_number
        fn, _ = images.save_image(make_image(), str(root), "", seed=1, prompt=text, info=INFO, settings=settings)
        path = os.path.realpath(fn)
        assert os.path.commonpath([path, os.path.realpath(root)]) == os.path.realpath(root)
        assert os.path.dirname(os.path.dirname(path)) == os.path.realpath(root)  # exactly one folder level
        assert os.path.isfile(path) and len(os.path.basename(path).encode()) <= 255
    assert not (tmp_path / "etc").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_literal_traversal_in_patterns_is_neutralised(tmp_path):
    root = tmp_path / "out"
    settings = {"directories_filename_pattern": "../../[seed]/./x", "samples_filename_pattern": "../[seed]"}
    fn, _ = images.save_image(make_image(), str(root), "", seed=3, prompt="p", settings=settings)
    rel = os.path.relpath(fn, root)
    assert rel == os.path.join("_", "_", "3", "x", "00000-.._3.png")
    fn, _ = images.save_image(make_image(), str(root), "", seed=3, forced_filename="../../evil", settings=settings)
    assert os.path.dirname(fn) == os.path.join(str(root), "_", "_", "3", "x")


def test_symlinked_folder_pointing_outside_is_refused(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    root = tmp_path / "out"
    root.mkdir()
    try:
        (root / "link").symlink_to(outside, target_is_directory=True)
    except OSError:
        pytest.skip("no symlinks here")
    with pytest.raises(ValueError):
        images.save_image(make_image(), str(root), "", seed=1, settings={"directories_filename_pattern": "link"})
    assert list(outside.iterdir()) == []


def test_get_next_sequence_number(tmp_path):
    assert images.get_next_sequence_number(str(tmp_path / "missing"), "") == 0
    assert images.get_next_sequence_number(str(tmp_path), "") == 0
    for name in ["00005-123.png", "00002-x.png", "grid-0007.png", "notanumber.png", "00009.txt", "grid-x.png"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "2024-05-01").mkdir()  # a date folder is not a numbered file
    assert images.get_next_sequence_number(str(tmp_path), "") == 10
    assert images.get_next_sequence_number(str(tmp_path), "grid") == 8


def test_save_image_naming_rules(tmp_path):
    today = datetime.date.today().isoformat()
    fn, txt = images.save_image(make_image(), str(tmp_path), "", seed=42, prompt="a cat", info=INFO)
    assert os.path.relpath(fn, tmp_path) == os.path.join(today, "00000-42.png") and txt is None
    fn, _ = images.save_image(make_image(), str(tmp_path), "", seed=42, prompt="a cat", info=INFO, suffix="-mask")
    assert os.path.basename(fn) == "00001-42-mask.png"

    flat = {"save_to_dirs": False}
    fn, _ = images.save_image(make_image(), str(tmp_path), "", seed=42, prompt="a cat", settings=flat)
    assert os.path.relpath(fn, tmp_path) == "00000-42-a cat.png"

    grid, _ = images.save_image(make_image(), str(tmp_path), "grid", prompt="x", grid=True, short_filename=True)
    grid2, _ = images.save_image(make_image(), str(tmp_path), "grid", prompt="x", grid=True, short_filename=True)
    assert (os.path.basename(grid), os.path.basename(grid2)) == ("grid-0000.png", "grid-0001.png")

    fn, _ = images.save_image(make_image(), str(tmp_path), "", seed=1, forced_filename="chosen", save_to_dirs=False)
    assert os.path.basename(fn) == "chosen.png"

    no_number = {"save_images_add_number": False, "samples_filename_pattern": "[seed]-[steps]"}
    fn, _ = images.save_image(
        make_image(), str(tmp_path), "", seed=9, p=fake_p(), settings=no_number, save_to_dirs=False
    )
    assert os.path.basename(fn) == "9-20.png"


def test_save_image_pattern_from_p_override_and_shared_opts(tmp_path, monkeypatch):
    p = fake_p(override_settings={"samples_filename_pattern": "[sampler]"})
    fn, _ = images.save_image(make_image(), str(tmp_path), "", seed=1, p=p, save_to_dirs=False)
    assert os.path.basename(fn) == "00000-DPM++ 2M.png"

    shared = types.ModuleType("modules.shared")
    shared.opts = SimpleNamespace(samples_filename_pattern="s[seed]", save_to_dirs=False, save_txt=True)
    use_shared(monkeypatch, shared)
    fn, txt = images.save_image(make_image(), str(tmp_path), "", seed=5, info=INFO)
    assert os.path.basename(fn) == "00001-s5.png"
    assert open(txt, encoding="utf8").read() == INFO + "\n"
    # explicit settings beat shared.opts
    fn, txt = images.save_image(make_image(), str(tmp_path), "", seed=5, info=INFO, settings={"save_txt": False})
    assert txt is None


def test_save_image_formats_and_replace_action(tmp_path):
    fn, _ = images.save_image(make_image(), str(tmp_path), "", seed=1, info=INFO, extension="jpg", save_to_dirs=False)
    with Image.open(fn) as im:
        assert im.format == "JPEG" and images.read_info_from_image(im)[0] == INFO

    wide = Image.new("RGB", (16384, 1))
    fn, _ = images.save_image(wide, str(tmp_path), "", seed=1, extension="webp", save_to_dirs=False)
    assert fn.endswith(".png")  # too wide for WebP

    keep = {
        "save_images_add_number": False,
        "samples_filename_pattern": "same",
        "save_images_replace_action": "Add number suffix",
    }
    a, _ = images.save_image(make_image(), str(tmp_path), "", seed=1, save_to_dirs=False, settings=keep)
    b, _ = images.save_image(make_image(), str(tmp_path), "", seed=1, save_to_dirs=False, settings=keep)
    assert (os.path.basename(a), os.path.basename(b)) == ("same.png", "same-1.png")


def test_numbered_names_are_taken_exclusively_so_a_second_process_never_overwrites(tmp_path, monkeypatch):
    # Another process (a second server, a Ray replica) saved 00000-1.png after this one counted the folder:
    # simulated by a name check that answers "free" for a name that is taken.
    theirs = tmp_path / "00000-1.png"
    theirs.write_bytes(b"their picture")
    monkeypatch.setattr(images, "get_next_sequence_number", lambda path, basename: 0)
    real_exists = os.path.exists
    monkeypatch.setattr(images.os.path, "exists", lambda name: False if name == str(theirs) else real_exists(name))
    fn, _ = images.save_image(make_image(), str(tmp_path), "", seed=1, info=INFO, save_to_dirs=False)
    assert os.path.basename(fn) == "00001-1.png"
    assert theirs.read_bytes() == b"their picture"
    monkeypatch.setattr(images.os.path, "exists", real_exists)

    # a callback that picks another name, or a failing save, leaves no empty placeholder behind
    from modules import script_callbacks

    script_callbacks.on_before_image_saved(lambda params: setattr(params, "filename", str(tmp_path / "other.png")))
    try:
        fn, _ = images.save_image(make_image(), str(tmp_path), "", seed=2, save_to_dirs=False)
    finally:
        script_callbacks.remove_current_script_callbacks()
    assert os.path.basename(fn) == "other.png" and not (tmp_path / "00002-2.png").exists()
    monkeypatch.setattr(images, "save_image_with_geninfo", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        images.save_image(make_image(), str(tmp_path), "", seed=3, save_to_dirs=False)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["00000-1.png", "00001-1.png", "other.png"]


def test_save_image_runs_extension_callbacks(tmp_path):
    from modules import script_callbacks

    calls = []

    def before(params):
        calls.append(("before", os.path.basename(params.filename)))
        params.pnginfo["parameters"] = "changed by extension"

    def broken(params):
        raise RuntimeError("an extension bug")

    script_callbacks.on_before_image_saved(before)
    script_callbacks.on_before_image_saved(broken)  # reported by name; the image is still saved
    script_callbacks.on_image_saved(lambda params: calls.append(("after", os.path.basename(params.filename))))
    try:
        fn, _ = images.save_image(make_image(), str(tmp_path), "", seed=1, info=INFO, save_to_dirs=False)
    finally:
        script_callbacks.remove_current_script_callbacks()
    assert calls == [("before", "00000-1.png"), ("after", "00000-1.png")]
    with Image.open(fn) as im:
        assert im.info["parameters"] == "changed by extension"
    assert "broken" in script_callbacks.errors[-1] and "before_image_saved" in script_callbacks.errors[-1]


# ------------------------------------------------------------------------------------------------ grids and resizing


@pytest.mark.parametrize(
    ("n", "settings", "rows_arg", "batch", "shape"),
    [
        (4, {}, None, 1, (2, 2)),
        (3, {}, None, 1, (2, 2)),  # round(sqrt(3)) rows
        (5, {}, None, 1, (3, 2)),  # 2 rows of 3
        (6, {"grid_prevent_empty_spots": True}, None, 1, (3, 2)),
        (7, {"grid_prevent_empty_spots": True}, None, 1, (7, 1)),
        (6, {"n_rows": 0}, None, 3, (2, 3)),
        (6, {"n_rows": 1}, None, 1, (6, 1)),
        (4, {}, 4, 1, (1, 4)),
        (2, {}, 10, 1, (1, 2)),  # never more rows than images
    ],
)
def test_grid_shape(n, settings, rows_arg, batch, shape):
    imgs = [make_image(10, 20, (i * 30, 0, 0)) for i in range(n)]
    grid = images.image_grid(imgs, batch_size=batch, rows=rows_arg, settings=settings)
    cols, rows = shape
    assert grid.size == (cols * 10, rows * 20)


def test_grid_places_images_in_reading_order_and_centres_small_ones():
    imgs = [make_image(10, 10, (255, 0, 0)), make_image(10, 10, (0, 255, 0)), make_image(4, 4, (0, 0, 255))]
    grid = images.image_grid(imgs, rows=2)
    assert grid.getpixel((5, 5)) == (255, 0, 0)
    assert grid.getpixel((15, 5)) == (0, 255, 0)
    assert grid.getpixel((5, 15)) == (0, 0, 255)  # centred in its cell
    assert grid.getpixel((1, 11)) == (255, 255, 255)  # background around it


def test_split_and_combine_grid_round_trip():
    img = Image.linear_gradient("L").convert("RGB").resize((300, 200))
    grid = images.split_grid(img, tile_w=128, tile_h=128, overlap=32)
    assert all(tile.size == (128, 128) for _, _, row in grid.tiles for _, _, tile in row)
    back = images.combine_grid(grid)
    assert back.size == img.size
    assert max(abs(a - b) for a, b in zip(back.tobytes(), img.tobytes(), strict=True)) <= 2


def quadrant_image(w, h):
    """Centre marked green, left third red, right third blue."""
    im = Image.new("RGB", (w, h), (0, 255, 0))
    im.paste((255, 0, 0), (0, 0, w // 3, h))
    im.paste((0, 0, 255), (w - w // 3, 0, w, h))
    return im


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
@pytest.mark.parametrize(("src", "dst"), [((300, 100), (128, 128)), ((100, 300), (256, 64)), ((64, 64), (64, 64))])
def test_resize_modes_output_size(mode, src, dst):
    out = images.resize_image(mode, quadrant_image(*src), *dst)
    assert out.size == dst and out.mode == "RGB"


def test_crop_and_resize_keeps_the_centre():
    out = images.resize_image(1, quadrant_image(300, 100), 100, 100)
    # the 300x100 source is scaled to 300x100 and the middle 100 columns kept: all green
    assert out.getpixel((2, 50)) == (0, 255, 0) and out.getpixel((97, 50)) == (0, 255, 0)


def test_resize_and_fill_stretches_the_edges():
    src = Image.new("RGB", (100, 50), (255, 0, 0))
    src.paste((0, 0, 255), (0, 25, 100, 50))  # top half red, bottom half blue
    out = images.resize_image(2, src, 100, 100)
    assert out.getpixel((50, 0)) == (255, 0, 0) and out.getpixel((50, 20)) == (255, 0, 0)
    assert out.getpixel((50, 99)) == (0, 0, 255) and out.getpixel((50, 80)) == (0, 0, 255)

    side = images.resize_image(2, src.rotate(90, expand=True), 100, 100)
    assert side.getpixel((0, 50)) != (0, 0, 0) and side.getpixel((99, 50)) != (0, 0, 0)


def test_just_resize_stretches_and_unknown_upscaler_is_an_error():
    out = images.resize_image(0, quadrant_image(300, 100), 30, 30)
    assert out.getpixel((1, 15))[0] > 200 and out.getpixel((28, 15))[2] > 200
    with pytest.raises(ValueError):
        images.resize_image(0, make_image(8, 8), 64, 64, upscaler_name="No Such Upscaler")


def test_named_upscaler_is_used_when_growing(monkeypatch):
    used = []

    class Scaler:
        def upscale(self, img, scale, data_path):
            used.append(scale)
            return img.resize((int(img.width * scale), int(img.height * scale)))

    shared = types.ModuleType("modules.shared")
    shared.sd_upscalers = [SimpleNamespace(name="Fake 4x", scaler=Scaler(), data_path=None)]
    use_shared(monkeypatch, shared)
    out = images.resize_image(0, make_image(16, 16), 64, 32, upscaler_name="Fake 4x")
    assert out.size == (64, 32) and used == [4.0]


def test_png_writer_is_plain_zlib_png(tmp_path):
    # sanity: files we write are ordinary PNGs other readers accept (CRC of the text chunk checks out)
    fn = tmp_path / "a.png"
    images.save_image_with_geninfo(make_image(), INFO, str(fn))
    data = fn.read_bytes()
    i = data.index(b"tEXtparameters")
    length = struct.unpack(">I", data[i - 4 : i])[0]
    crc = struct.unpack(">I", data[i + 4 + length : i + 8 + length])[0]
    assert zlib.crc32(data[i : i + 4 + length]) == crc

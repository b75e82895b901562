"""img2img Batch folders: only inside the data dir and --batch-dirs, refusals that say nothing about what
exists outside, off on a server others can reach unless allowed, and one real batch run inside the data dir."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from modules import batch_folders, cmd_args, paths

posix_only = pytest.mark.skipif(os.name != "posix", reason="symlinks and /etc are POSIX")


def opts(*argv: str):
    return cmd_args.parse_args(list(argv), {})


def image(path, size=(64, 64), color=(200, 40, 40)):
    Image.new("RGB", size, color).save(path)
    return path


@pytest.fixture
def data(tmp_path, monkeypatch):
    """A data dir with in/ (two images and a text file), masks/ and an outside/ folder next to it."""
    root = tmp_path / "data"
    (root / "in").mkdir(parents=True)
    image(root / "in" / "a.png")
    image(root / "in" / "b.jpg")
    (root / "in" / "notes.txt").write_text("not an image")
    (root / "masks").mkdir()
    image(root / "masks" / "a.png", color=(255, 255, 255))
    (tmp_path / "outside").mkdir()
    image(tmp_path / "outside" / "secret.png")
    monkeypatch.setattr(paths, "data_path", str(root))
    return root


def refused(input_dir="in", output_dir="", mask_dir="", *argv: str) -> str:
    with pytest.raises(ValueError) as e:
        batch_folders.check(input_dir, output_dir, mask_dir, opts(*argv))
    return str(e.value)


# --- inside the roots ----------------------------------------------------------------------------------------


def test_relative_and_absolute_folders_inside_the_data_dir_are_used(data):
    relative = batch_folders.check("in", "out", "masks", opts())
    assert relative.input == os.path.realpath(data / "in")
    assert relative.output == os.path.realpath(data / "out")  # made when the first image is saved
    assert relative.mask == os.path.realpath(data / "masks")
    absolute = batch_folders.check(str(data / "in"), "", "", opts())
    assert absolute.input == relative.input and absolute.output is None and absolute.mask is None


def test_only_image_files_are_listed_and_masks_match_by_name(data):
    folders = batch_folders.check("in", "", "masks", opts())
    files = batch_folders.input_images(folders)
    assert [os.path.basename(f.path) for f in files] == ["a.png", "b.jpg"]
    assert batch_folders.mask_for(files[0], folders) == os.path.realpath(data / "masks" / "a.png")
    assert batch_folders.mask_for(files[1], folders) is None


def test_missing_folders_inside_are_named_only_after_the_check(data):
    assert refused("nothing-here") == "Input directory not found: nothing-here"
    assert refused("in", "", "no-masks") == "Mask directory not found: no-masks"
    assert "Type the input directory first" in refused("  ")
    (data / "a-file").write_text("x")
    assert refused("in", "a-file") == "Output directory is not a folder: a-file"


def test_batch_dirs_allow_more_folders(data, tmp_path):
    extra = tmp_path / "outside"
    folders = batch_folders.check(str(extra), str(tmp_path / "outside" / "done"), "", opts("--batch-dirs", str(extra)))
    assert folders.input == os.path.realpath(extra)
    both = opts("--batch-dirs", f"{tmp_path / 'x'}, {extra}", "--batch-dirs", str(tmp_path / "y"))
    assert batch_folders.extra_dirs(both) == [str(tmp_path / "x"), str(extra), str(tmp_path / "y")]
    assert batch_folders.check(str(extra), "", "", both).input == os.path.realpath(extra)


# --- outside the roots ---------------------------------------------------------------------------------------


@posix_only
def test_outside_folders_get_one_message_whether_they_exist_or_not(data, tmp_path):
    message = refused("/etc")
    assert message.startswith("Input directory: Batch folders must be inside: ")
    assert str(data) in message and "--batch-dirs" in message
    # the same words for a folder that exists, one that does not, and parent-folder tricks
    assert refused("/no/such/folder/anywhere") == message
    assert refused("../../") == message
    assert refused("../outside") == message == refused("../not-there")
    assert refused(str(tmp_path / "outside")) == message
    assert refused("in/../../outside") == message
    assert "/etc" not in message and "not found" not in message


@posix_only
def test_symlinks_leading_outside_are_refused_like_any_outside_path(data, tmp_path):
    message = refused("/etc")
    os.symlink(tmp_path / "outside", data / "link-out")
    os.symlink(tmp_path / "gone", data / "link-nowhere")  # dangling: the answer must not differ
    os.symlink("/etc", data / "link-etc")
    assert refused("link-out") == refused("link-nowhere") == refused("link-etc") == message


@posix_only
def test_output_and_mask_folders_are_checked_too(data, tmp_path):
    assert refused("in", "/tmp") == refused("in", str(tmp_path / "new"))
    assert refused("in", "/tmp").startswith("Output directory: Batch folders must be inside: ")
    assert refused("in", "", "/etc").startswith("Mask directory: Batch folders must be inside: ")
    os.symlink(tmp_path / "outside", data / "out-link")
    assert refused("in", "out-link/sub").startswith("Output directory: Batch folders must be inside: ")


@posix_only
def test_links_to_files_outside_are_skipped(data, tmp_path):
    os.symlink(tmp_path / "outside" / "secret.png", data / "in" / "c.png")
    os.symlink(data / "in" / "a.png", data / "in" / "d.png")  # a link that stays inside is fine
    os.symlink(tmp_path / "outside" / "secret.png", data / "masks" / "b.png")
    folders = batch_folders.check("in", "", "masks", opts())
    files = batch_folders.input_images(folders)
    assert [os.path.basename(f.path) for f in files] == ["a.png", "b.jpg", "d.png"]
    assert files[2].real == os.path.realpath(data / "in" / "a.png")
    assert batch_folders.mask_for(files[1], folders) is None  # b's mask leads outside: no mask


@posix_only
def test_the_png_info_folder_is_checked_and_its_files_matched_by_name_inside_only(data, tmp_path):
    folder, roots = batch_folders.png_info_dir("masks", opts())
    assert folder == os.path.realpath(data / "masks")
    assert batch_folders.png_info_file(folder, "a.png", roots) == os.path.realpath(data / "masks" / "a.png")
    # only the base name counts: a name with a path in it never leads out of the folder
    assert batch_folders.png_info_file(folder, "../in/b.jpg", roots) is None
    assert batch_folders.png_info_file(folder, "../../in/a.png", roots) == os.path.realpath(data / "masks" / "a.png")
    os.symlink(tmp_path / "outside" / "secret.png", data / "masks" / "secret.png")
    assert batch_folders.png_info_file(folder, "secret.png", roots) is None  # a link leading outside
    assert batch_folders.png_info_file(folder, "..", roots) is None
    assert batch_folders.png_info_file(folder, "missing.png", roots) is None
    for outside in ("/etc", str(tmp_path / "outside"), "../outside"):
        with pytest.raises(ValueError, match="^PNG info directory: Batch folders must be inside"):
            batch_folders.png_info_dir(outside, opts())
    with pytest.raises(ValueError, match="^PNG info directory: .*--allow-batch-dirs-when-listening"):
        batch_folders.png_info_dir("masks", opts("--listen"))


@posix_only
def test_a_symlinked_data_dir_works_under_either_name(tmp_path, monkeypatch):
    real = tmp_path / "real-data"
    (real / "in").mkdir(parents=True)
    os.symlink(real, tmp_path / "data-link")
    monkeypatch.setattr(paths, "data_path", str(tmp_path / "data-link"))
    assert batch_folders.check(str(real / "in"), "", "", opts()).input == os.path.realpath(real / "in")
    assert batch_folders.check(str(tmp_path / "data-link" / "in"), "", "", opts()).input == os.path.realpath(real / "in")


# --- who may use it ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["--listen"], ["--share"], ["--ngrok", "token"], ["--server-name", "0.0.0.0"], ["--server-name", "example.org"],
    ["--server-name", "192.168.1.5", "--listen"],
])
def test_a_server_others_can_reach_refuses_unless_allowed(data, argv):
    assert "--allow-batch-dirs-when-listening" in refused("in", "", "", *argv)
    assert batch_folders.check("in", "", "", opts(*argv, "--allow-batch-dirs-when-listening")).input


@pytest.mark.parametrize("argv", [[], ["--server-name", "127.0.0.1", "--listen"], ["--server-name", "localhost"],
                                  ["--server-name", "::1"]])
def test_loopback_servers_need_no_flag(data, argv):
    assert not batch_folders.reachable_from_other_machines(opts(*argv))
    assert batch_folders.check("in", "", "", opts(*argv)).input


def test_hide_ui_dir_config_turns_it_off_whatever_else_is_set(data):
    message = refused("in", "", "", "--hide-ui-dir-config", "--listen", "--allow-batch-dirs-when-listening")
    assert "--hide-ui-dir-config" in message


# --- a real run ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_data_dir(tmp_path_factory, isolated_data_dir):
    settings = {"live_previews_enable": False, "save_to_dirs": False}
    with isolated_data_dir(tmp_path_factory.mktemp("data"), {"sd1.safetensors": {"family": "sd1", "seed": 3}},
                           settings) as root:
        yield root


def test_one_image_through_the_batch_tab_lands_in_the_output_folder(model_data_dir):
    from modules import sd_models, shared
    from modules.ui import img2img

    (model_data_dir / "batch-in").mkdir(exist_ok=True)
    image(model_data_dir / "batch-in" / "one.png")
    sd_models.load_model(sd_models.get_closet_checkpoint_match("sd1.safetensors"))
    fields = {"prompt": "a red square", "negative_prompt": "", "steps": 2, "sampler_name": "Euler a", "seed": 1}
    shared.state.interrupted = shared.state.stopping_generation = False
    work = img2img._batch_work("batch-in", "batch-out", "", fields, {}, 0, False, 1.0, 64, 64, 0.5)
    result = work()
    assert len(result.images) == 1 and result.images[0].size == (64, 64)
    saved = sorted(os.listdir(model_data_dir / "batch-out"))
    assert len(saved) == 1 and saved[0].endswith(".png"), saved
    assert np.asarray(Image.open(model_data_dir / "batch-out" / saved[0])).shape == (64, 64, 3)
    with pytest.raises(ValueError, match="Batch folders must be inside"):
        img2img._batch_work("/", "", "", fields, {}, 0, False, 1.0, 64, 64, 0.5)

"""Hostile model files are refused before they cost memory, by name, as a 4xx over HTTP.

- Zip checkpoints: the central directory is read first; a zip bomb, entries that escape the archive, absurd
  names or counts, overlapping entries are refused before torch inflates anything.
- .safetensors: the header is checked on its bytes (nesting) and then against the file (shapes, dtypes, offsets).
- Pickled files need torch 2.6 or newer; launch.py says so at set-up when it is older.
- Symlinked folders in the model folders are not walked.

Run as a script to measure what refusing a zip bomb costs:
    python3 tests/test_hostile_model_files.py OUT.ckpt 3    # writes a 3 GiB bomb at OUT.ckpt, then loads it
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as a script
    sys.path.insert(0, REPO)

from modules.devices import choose_precision  # noqa: E402
from modules.models import checkpoint_files as cf  # noqa: E402
from modules.models.checkpoint_files import ModelFileError, read_state_dict  # noqa: E402
from modules.models.loader import check_diffusers_weights, check_loadable, load_model  # noqa: E402

CPU = choose_precision(torch.device("cpu"))
_SMALL = 70_000  # an element count pickled as a 4-byte int, so it can be patched in place


# --- writing hostile files ------------------------------------------------------------------------------------


def _torch_zip(payload: object) -> bytes:
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def write_zip_bomb(path: Path, inflated: int = 1 << 30) -> Path:
    """A torch checkpoint whose one tensor is `inflated` bytes of zeros, deflated to about a thousandth of that.

    Valid all through: torch would load it whole. Written in 1 MiB chunks, so making it costs no memory.
    """
    with zipfile.ZipFile(io.BytesIO(_torch_zip({"state_dict": {"w": torch.zeros(_SMALL)}}))) as src, \
            zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as dst:
        for info in src.infolist():
            if info.filename.endswith("/data/0"):
                chunk = bytes(1 << 20)
                with dst.open(info.filename, "w", force_zip64=True) as out:
                    for _ in range(inflated // len(chunk)):
                        out.write(chunk)
                continue
            data = src.read(info)
            if info.filename.endswith("/data.pkl"):  # the element count, twice (storage and size)
                assert data.count(struct.pack("<i", _SMALL)) == 2
                data = data.replace(struct.pack("<i", _SMALL), struct.pack("<i", inflated // 4))
            dst.writestr(info.filename, data, compress_type=zipfile.ZIP_STORED)
    return path


def repack(src: Path, dst: Path, extra: dict[str, bytes] | None = None) -> Path:
    """A copy of a zip checkpoint, entries stored, with `extra` entries added."""
    with zipfile.ZipFile(src) as z_in, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as z_out:
        for info in z_in.infolist():
            z_out.writestr(info.filename, z_in.read(info))
        for name, data in (extra or {}).items():
            z_out.writestr(zipfile.ZipInfo(name), data)
    return dst


def repeat_directory(path: Path, times: int) -> None:
    """Every central directory entry `times` over: many entries pointing at the same data (a "non-recursive"
    zip bomb unpacks each again)."""
    data = path.read_bytes()
    eocd = len(data) - 22
    count, cd_size, cd_offset = struct.unpack_from("<HLL", data, eocd + 10)
    directory = data[cd_offset:cd_offset + cd_size] * times
    end = bytearray(data[eocd:])
    struct.pack_into("<HHLL", end, 8, count * times, count * times, len(directory), cd_offset)
    path.write_bytes(data[:cd_offset] + directory + bytes(end))


def write_safetensors(path: Path, header: dict | bytes, data: bytes = b"") -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def tensor(dtype: str, shape: list, begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


@pytest.fixture(scope="module")
def zip_bomb(tmp_path_factory) -> Path:
    return write_zip_bomb(tmp_path_factory.mktemp("bomb") / "bomb.ckpt")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A real (zip) torch checkpoint with a handful of tensors."""
    path = tmp_path_factory.mktemp("tiny") / "tiny.ckpt"
    path.write_bytes(_torch_zip({"state_dict": {"a": torch.arange(6.0), "b": torch.ones(2, 3)}, "global_step": 7}))
    return path


def _refused(path: Path, pattern: str, load=lambda p: load_model(str(p), CPU)) -> ModelFileError:
    with pytest.raises(ModelFileError, match=pattern) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(path.name + ":"), message
    assert str(path.parent) not in message
    return info.value


# --- zip checkpoints ----------------------------------------------------------------------------------------

_MEASURE = """
import json, resource, sys, time
from modules.models.checkpoint_files import ModelFileError, read_state_dict
unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.monotonic()
try:
    read_state_dict(sys.argv[1])
    outcome = "loaded"
except ModelFileError as e:
    outcome = str(e)
grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * unit / 2**20
print(json.dumps({"outcome": outcome, "seconds": time.monotonic() - started, "grew_mib": grew}))
"""


def measure_load(path: Path) -> dict:
    """Load `path` in a fresh Python: what happened, how long it took, how much the peak memory grew (MiB)."""
    env = dict(os.environ, PYTHONPATH=REPO)
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(path)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(sys.platform == "win32", reason="measures memory with the resource module")
def test_zip_bomb_is_refused_from_its_directory_without_inflating(zip_bomb):
    assert zip_bomb.stat().st_size < 8 * 2**20  # a few MB that would inflate to 1 GiB
    result = measure_load(zip_bomb)
    assert result["outcome"].startswith("bomb.ckpt: refused: entry 'archive/data/0' would inflate"), result
    assert "zip bomb" in result["outcome"]
    assert result["grew_mib"] < 64 and result["seconds"] < 2, result


@pytest.mark.skipif(sys.platform == "win32", reason="measures memory with the resource module")
def test_legacy_pickle_claiming_gigabytes_costs_nothing(tmp_path):
    """Old-format files are not compressed: torch checks each storage against the bytes there before filling it."""
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(_SMALL)}, buf, _use_new_zipfile_serialization=False)
    path = tmp_path / "legacy.pt"
    path.write_bytes(buf.getvalue().replace(struct.pack("<i", _SMALL), struct.pack("<i", 3 * 2**30 // 4)))
    result = measure_load(path)
    assert result["outcome"].startswith("legacy.pt: truncated or corrupt checkpoint"), result
    assert result["grew_mib"] < 64, result


def test_zip_bomb_through_the_loader_and_the_pre_load_check(zip_bomb):
    _refused(zip_bomb, "zip bomb")
    _refused(zip_bomb, "zip bomb", load=lambda p: check_loadable(str(p), CPU))


def test_entries_that_escape_the_archive_are_refused(tmp_path, tiny_ckpt):
    for i, name in enumerate(["archive/../../etc/cron.d/x", "/etc/passwd", "C:\\Windows\\x", "archive\\..\\x"]):
        path = repack(tiny_ckpt, tmp_path / f"escape{i}.ckpt", {name: b"x"})
        _refused(path, "points outside")


def test_absurd_entry_names_and_counts_are_refused(tmp_path, tiny_ckpt, monkeypatch):
    _refused(repack(tiny_ckpt, tmp_path / "long.ckpt", {"archive/" + "n" * 5000: b""}), "entry name of 5008 bytes")
    monkeypatch.setattr(cf, "MAX_ZIP_ENTRIES", 3)
    _refused(tiny_ckpt, r"refused: the archive has \d+ entries")


def test_overlapping_entries_are_refused(tmp_path):
    path = tmp_path / "overlap.ckpt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data/0", bytes(2**20))
    repeat_directory(path, 4)
    _refused(path, "claim more data than the file holds")


def test_many_moderately_compressed_entries_add_up(tmp_path, monkeypatch):
    monkeypatch.setattr(cf, "UNPACKED_SLACK", 0)
    path = tmp_path / "inflating.ckpt"
    # 1 KiB of noise in every 8 KiB deflates about 8:1, under the ratio refused for a single entry
    data = b"".join(os.urandom(1024) + bytes(7 * 1024) for _ in range(256))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data/0", data)
    _refused(path, "would unpack to more than")


def test_zip64_checkpoint_is_read_and_loads(tmp_path, tiny_ckpt, monkeypatch):
    """Checkpoints over 4 GiB carry zip64 records; force them on a small one."""
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 16)
    path = repack(tiny_ckpt, tmp_path / "zip64.ckpt")
    monkeypatch.undo()
    assert path.read_bytes().find(b"PK\x06\x06") > 0  # a zip64 end record is there
    cf.check_zip_checkpoint(str(path))
    state = read_state_dict(str(path))
    assert torch.equal(state["a"], torch.arange(6.0)) and int(state["global_step"]) == 7


def test_real_checkpoints_pass_the_zip_checks(tiny_ckpt):
    cf.check_pickle_file(str(tiny_ckpt))
    assert set(read_state_dict(str(tiny_ckpt))) == {"a", "b", "global_step"}


# --- .safetensors headers -----------------------------------------------------------------------------------

F32x2 = tensor("F32", [2], 0, 8)

BAD_HEADERS = {
    "negative-shape": ({"w": tensor("F32", [-1, 4], 0, 16)}, 16, "impossible shape"),
    "float-shape": ({"w": tensor("F32", [2.0], 0, 8)}, 8, "impossible shape"),
    "bool-shape": ({"w": tensor("U8", [True], 0, 1)}, 1, "impossible shape"),
    "string-shape": ({"w": tensor("F32", "2", 0, 8)}, 8, "impossible shape"),
    "too-many-dims": ({"w": tensor("F32", [1] * 40, 0, 4)}, 4, "impossible shape"),
    "absurd-dim": ({"w": tensor("F32", [0, 2**50], 0, 0)}, 0, "impossible shape"),
    "unknown-dtype": ({"w": tensor("F128", [2], 0, 32)}, 32, "unknown dtype 'F128'"),
    "size-mismatch": ({"w": tensor("F32", [4], 0, 8)}, 8, "has 8 bytes of data but its dtype and shape need 16"),
    "negative-offset": ({"w": tensor("F32", [2], -8, 0)}, 8, "lies outside"),
    "past-the-end": ({"w": tensor("F32", [2], 8, 16)}, 8, "lies outside"),
    "overlap": ({"a": F32x2, "b": tensor("F32", [2], 4, 12)}, 12, "tensors 'a' and 'b' overlap"),
    "gap": ({"a": F32x2, "b": tensor("F32", [2], 12, 20)}, 20, "4 unused bytes before tensor 'b'"),
    "trailing": ({"a": F32x2}, 12, "4 bytes after the last tensor"),
    "metadata-not-strings": ({"__metadata__": {"epochs": 3}, "a": F32x2}, 8, "__metadata__ must map names"),
    "array": (b"[1, 2]", 0, "not a JSON object"),
    "deep": (b"[" * 200_000 + b"]" * 200_000, 0, "nests more than 8 levels deep"),
    "deep-unclosed": (b'{"a": ' + b"[" * 200_000, 0, "nests more than 8 levels deep"),
}


@pytest.mark.parametrize("case", list(BAD_HEADERS))
def test_bad_safetensors_headers_are_refused_by_name(tmp_path, case):
    header, data_len, reason = BAD_HEADERS[case]
    path = write_safetensors(tmp_path / f"{case}.safetensors", header, bytes(data_len))
    started = time.monotonic()
    _refused(path, reason)
    _refused(path, reason, load=lambda p: check_loadable(str(p), CPU))
    _refused(path, reason, load=lambda p: read_state_dict(str(p)))
    assert time.monotonic() - started < 5


def test_sub_byte_dtypes_are_sized_in_bits(tmp_path):
    path = write_safetensors(tmp_path / "f4.safetensors", {"w": tensor("F4", [6], 0, 3)}, bytes(3))
    assert cf.validate_safetensors_header(str(path))["w"]["shape"] == [6]
    odd = write_safetensors(tmp_path / "odd.safetensors", {"w": tensor("F4", [3], 0, 2)}, bytes(2))
    _refused(odd, "do not fill whole bytes", load=lambda p: cf.validate_safetensors_header(str(p)))


@pytest.mark.parametrize(("raw", "depth"), [
    (b'{"a": {"dtype": "F32", "shape": [1, 2], "data_offsets": [0, 8]}}', 3),
    (b'{"__metadata__": {"kohya": "[[[[{\\"x\\": \\"]]\\"}]]]]"}}', 2),  # brackets inside strings do not count
    (b'["\\\\", "[[[["]', 1),  # an escaped backslash ends with the string's closing quote
    (b"[" * 200_000, 200_000),
    (b"\xff\xfe{{{{", 4),
    (b"", 0),
])
def test_json_nesting_depth_from_the_bytes(raw, depth):
    assert cf.json_nesting_depth(raw) == depth


# --- the torch floor for pickled files ----------------------------------------------------------------------


@pytest.mark.parametrize(("version", "release", "safe"), [
    ("2.6.0", (2, 6, 0), True), ("2.6.0+cu124", (2, 6, 0), True), ("2.13.0+cpu", (2, 13, 0), True),
    ("2.7.0a0+git1234", (2, 7, 0), True), ("2.5.1+cu121", (2, 5, 1), False), ("1.13.1", (1, 13, 1), False),
    ("unknown", (), False),
])
def test_torch_version_floor(version, release, safe):
    assert cf.version_tuple(version) == release
    assert cf.torch_loads_pickles_safely(version) is safe


def test_version_is_read_without_packaging_too(monkeypatch):
    monkeypatch.setitem(sys.modules, "packaging.version", None)  # import fails
    assert cf.version_tuple("2.5.1+cu121") == (2, 5, 1)
    assert cf.version_tuple("2.10.0") == (2, 10, 0)


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin"])
def test_pickles_are_refused_on_an_old_torch(tmp_path, tiny_ckpt, monkeypatch, suffix):
    monkeypatch.setattr(cf, "installed_torch_version", lambda: "2.5.1+cu121")
    path = tmp_path / f"model{suffix}"
    shutil.copy(tiny_ckpt, path)
    err = _refused(path, r"needs torch 2\.6 or newer \(installed: 2\.5\.1\+cu121\)", load=lambda p: read_state_dict(str(p)))
    assert "safetensors" in str(err)
    if suffix == ".ckpt":
        _refused(path, r"needs torch 2\.6 or newer", load=lambda p: check_loadable(str(p), CPU))


def test_safetensors_still_load_on_an_old_torch(tmp_path, monkeypatch):
    monkeypatch.setattr(cf, "installed_torch_version", lambda: "2.5.1")
    path = write_safetensors(tmp_path / "ok.safetensors", {"a": F32x2}, bytes(8))
    assert read_state_dict(str(path))["a"].shape == (2,)


def test_diffusers_folder_with_pickled_weights_on_an_old_torch(tmp_path, tiny_ckpt, monkeypatch):
    folder = tmp_path / "pipe"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    shutil.copy(tiny_ckpt, folder / "unet" / "diffusion_pytorch_model.bin")
    check_diffusers_weights(str(folder))  # a new torch: fine
    monkeypatch.setattr(cf, "installed_torch_version", lambda: "2.4.0")
    with pytest.raises(ModelFileError, match=r"^pipe/unet/diffusion_pytorch_model\.bin: a pickled model file needs"):
        check_loadable(str(folder), CPU)
    write_safetensors(folder / "unet" / "diffusion_pytorch_model.safetensors", {"a": F32x2}, bytes(8))
    check_diffusers_weights(str(folder))  # diffusers loads the .safetensors, never the pickle


def test_launch_warns_about_an_old_torch_without_importing_it(monkeypatch, capsys):
    import importlib.metadata
    import types

    import launch
    from modules import shared

    assert launch.TORCH_PICKLE_FLOOR == cf.TORCH_PICKLE_FLOOR
    real = importlib.metadata.version
    installed = {"torch": "2.5.1+cu121"}
    monkeypatch.setattr(importlib.metadata, "version", lambda name: installed.get(name) or real(name))
    warning = launch.old_torch_warning()
    assert "torch 2.5.1+cu121 is installed" in warning and "need torch 2.6 or newer" in warning

    monkeypatch.setattr(launch, "prepare_environment", lambda cmd_opts: None)
    monkeypatch.setitem(sys.modules, "webui", types.SimpleNamespace(start=lambda: None))
    old_cmd_opts, old_args = shared.cmd_opts, launch.args
    try:
        assert launch.main(["--exit", "--skip-install"]) == 0
    finally:
        shared.set_cmd_opts(old_cmd_opts)
        launch.args = old_args
    assert "need torch 2.6 or newer" in capsys.readouterr().out

    installed["torch"] = "2.6.0+cu124"
    assert launch.old_torch_warning() is None


# --- folders: symlinked folders are not walked ------------------------------------------------------------


def test_vae_scan_does_not_walk_a_symlink_to_the_root(tmp_path, monkeypatch):
    from modules.models import vae_registry

    monkeypatch.setattr(vae_registry, "cmd_opt", lambda name: None)
    vae_dir, ckpt_dir = tmp_path / "VAE", tmp_path / "Stable-diffusion"
    vae_dir.mkdir()
    ckpt_dir.mkdir()
    write_safetensors(vae_dir / "mine.safetensors", {"a": F32x2}, bytes(8))
    os.symlink("/", vae_dir / "everything")
    os.symlink("/", ckpt_dir / "everything")
    started = time.monotonic()
    try:
        vae_registry.refresh_vae_list([str(vae_dir)], [str(ckpt_dir)])
        assert time.monotonic() - started < 5
        assert list(vae_registry.vae_dict) == ["mine.safetensors"]
    finally:
        vae_registry.vae_dict.clear()


# --- over HTTP: a 4xx naming the file, and the server carries on ------------------------------------------


def _hostile_files(folder: Path, zip_bomb: Path, tiny_ckpt: Path) -> dict[str, str]:
    """File name -> what its refusal must say."""
    shutil.copy(zip_bomb, folder / "bomb.ckpt")
    repack(tiny_ckpt, folder / "escape.ckpt", {"../../../tmp/evil": b"x"})
    write_safetensors(folder / "negative.safetensors", BAD_HEADERS["negative-shape"][0], bytes(16))
    write_safetensors(folder / "deep.safetensors", BAD_HEADERS["deep"][0])
    write_safetensors(folder / "overlap.safetensors", BAD_HEADERS["overlap"][0], bytes(12))
    return {"bomb.ckpt": "zip bomb", "escape.ckpt": "points outside", "negative.safetensors": "impossible shape",
            "deep.safetensors": "nests more than", "overlap.safetensors": "overlap"}


@pytest.fixture(scope="module")
def api(tmp_path_factory, isolated_data_dir, zip_bomb, tiny_ckpt):
    from test_api_support import SETTINGS, client, serving

    from modules import sd_models
    from modules.api.server import create_app
    from modules.models import registry, vae_registry

    root = tmp_path_factory.mktemp("hostile-api")
    with isolated_data_dir(root, checkpoints={"tiny.safetensors": {"family": "sd1", "seed": 3}}, settings=SETTINGS):
        expected = _hostile_files(root / "models" / "Stable-diffusion", zip_bomb, tiny_ckpt)
        write_safetensors(root / "models" / "VAE" / "negative-vae.safetensors", BAD_HEADERS["negative-shape"][0],
                          bytes(16))
        shutil.copy(tiny_ckpt, root / "models" / "Stable-diffusion" / "pickled.ckpt")
        registry.list_models()
        vae_registry.refresh_vae_list()
        sd_models.load_model(sd_models.get_closet_checkpoint_match("tiny.safetensors"))
        with serving(create_app(auth=None)) as server, client(server) as http:
            yield http, root, expected


def _assert_refused(response, name: str, reason: str, root: Path) -> None:
    assert 400 <= response.status_code < 500, response.text
    errors = response.json()["errors"]
    assert name in errors and reason in errors, errors
    assert str(root) not in response.text and str(root.resolve()) not in response.text


def _assert_still_on_tiny(http) -> None:
    assert http.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("tiny.safetensors")


def test_hostile_checkpoints_over_http_are_a_4xx_naming_them(api):
    http, root, expected = api
    for name, reason in expected.items():
        started = time.monotonic()
        r = http.post("/sdapi/v1/options", json={"sd_model_checkpoint": name})
        _assert_refused(r, name, reason, root)
        assert time.monotonic() - started < 10
        _assert_still_on_tiny(http)


def test_pickled_checkpoint_on_an_old_torch_over_http(api, monkeypatch):
    http, root, _ = api
    monkeypatch.setattr(cf, "installed_torch_version", lambda: "2.5.1")
    r = http.post("/sdapi/v1/options", json={"sd_model_checkpoint": "pickled.ckpt"})
    _assert_refused(r, "pickled.ckpt", "needs torch 2.6 or newer (installed: 2.5.1)", root)
    _assert_still_on_tiny(http)


def test_hostile_vae_over_http_and_generation_carries_on(api):
    from test_api_support import FAST

    http, root, _ = api
    try:
        r = http.post("/sdapi/v1/options", json={"sd_vae": "negative-vae.safetensors"})
        _assert_refused(r, "negative-vae.safetensors", "impossible shape", root)
    finally:
        assert http.post("/sdapi/v1/options", json={"sd_vae": "Automatic"}).status_code == 200
    _assert_still_on_tiny(http)
    r = http.post("/sdapi/v1/txt2img", json=FAST)
    assert r.status_code == 200, r.text


if __name__ == "__main__":
    target = Path(sys.argv[1])
    gib = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
    t0 = time.monotonic()
    write_zip_bomb(target, int(gib * 2**30))
    print(f"wrote {target} ({target.stat().st_size / 2**20:.1f} MiB, {gib:g} GiB inflated) "
          f"in {time.monotonic() - t0:.1f} s")
    print(json.dumps(measure_load(target)))

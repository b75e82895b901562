"""Settings: attribute access, set/onchange, casting, atomic save, recovery from a corrupt config.json."""

from __future__ import annotations

import json
import os

import pytest

from modules import shared_options
from modules.options import OptionHTML, OptionInfo, Options, options_section


def make_opts() -> Options:
    templates = {}
    templates.update(options_section(("sd", "Stable Diffusion", "sd"), {
        "sd_vae": OptionInfo("Automatic", "SD VAE", infotext="VAE"),
        "CLIP_stop_at_last_layers": OptionInfo(1, "Clip skip", infotext="Clip skip"),
        "upcast_attn": OptionInfo(False, "Upcast"),
        "cfg_scale_max": OptionInfo(30.0, "Max CFG"),
        "sd_model_checkpoint": OptionInfo(None, "Checkpoint"),
        "names": OptionInfo(["a"], "A list"),
    }))
    return Options(templates)


def test_option_info_chainable_helpers():
    info = OptionInfo(1, "x").info("some help").needs_reload_ui().needs_restart().link("wiki", "https://example")
    assert "some help" in info.comment_after
    assert "requires Reload UI" in info.comment_after
    assert "requires restart" in info.comment_after
    assert "wiki" in info.comment_before
    assert options_section(("a", "A", "cat"), {"k": info}) == {"k": info}
    assert info.section == ("a", "A") and info.category_id == "cat"


def test_attribute_get_and_set():
    opts = make_opts()
    assert opts.sd_vae == "Automatic"
    opts.sd_vae = "my.vae.safetensors"
    assert opts.sd_vae == "my.vae.safetensors"
    assert opts.data["sd_vae"] == "my.vae.safetensors"
    with pytest.raises(AttributeError):
        _ = opts.no_such_setting
    with pytest.raises(AttributeError):
        opts.no_such_setting = 1
    assert getattr(opts, "no_such_setting", "fallback") == "fallback"


def test_add_option_registers_a_new_setting():
    opts = make_opts()
    opts.add_option("my_ext_setting", OptionInfo(5, "Mine", section=("ext", "Extension")))
    assert opts.my_ext_setting == 5
    assert opts.data_labels["my_ext_setting"].label == "Mine"
    assert opts.get_default("my_ext_setting") == 5


def test_set_returns_whether_it_changed_and_runs_onchange():
    opts = make_opts()
    calls = []
    opts.onchange("CLIP_stop_at_last_layers", lambda: calls.append(opts.CLIP_stop_at_last_layers), call=False)
    assert calls == []
    assert opts.set("CLIP_stop_at_last_layers", 2) is True
    assert calls == [2]
    assert opts.set("CLIP_stop_at_last_layers", 2) is False  # unchanged: no callback
    assert calls == [2]
    assert opts.set("CLIP_stop_at_last_layers", 3, run_callbacks=False) is True
    assert calls == [2]


def test_onchange_call_true_calls_immediately():
    opts = make_opts()
    calls = []
    opts.onchange("sd_vae", lambda: calls.append("called"))
    assert calls == ["called"]


def test_failing_onchange_restores_old_value(capsys):
    opts = make_opts()

    def broken():
        raise RuntimeError("boom")

    opts.onchange("sd_vae", broken, call=False)
    assert opts.set("sd_vae", "x.safetensors") is False
    assert opts.sd_vae == "Automatic"
    assert "boom" in capsys.readouterr().err


def test_restrict_api_and_hidden_options():
    opts = make_opts()
    opts.add_option("outdir", OptionInfo("out", "Output dir", restrict_api=True))
    assert opts.set("outdir", "/elsewhere", is_api=True) is False
    assert opts.outdir == "out"
    assert opts.set("outdir", "elsewhere") is True
    opts.add_option("hidden", OptionInfo(1, "Hidden", component_args={"visible": False}))
    assert opts.set("hidden", 2) is False
    opts.add_option("explain", OptionHTML("<b>hi</b>"))
    assert "explain" not in opts.data


def test_cast_value():
    opts = make_opts()
    assert opts.cast_value("CLIP_stop_at_last_layers", "2") == 2
    assert opts.cast_value("CLIP_stop_at_last_layers", 2.0) == 2
    assert opts.cast_value("cfg_scale_max", "7.5") == 7.5
    assert opts.cast_value("cfg_scale_max", 7) == 7.0
    assert opts.cast_value("upcast_attn", "False") is False
    assert opts.cast_value("upcast_attn", "true") is True
    assert opts.cast_value("sd_vae", 5) == "5"
    assert opts.cast_value("sd_vae", None) is None
    assert opts.cast_value("names", ["b", "c"]) == ["b", "c"]
    assert opts.cast_value("sd_model_checkpoint", "model.safetensors") == "model.safetensors"  # no type known


@pytest.mark.parametrize(
    ("key", "value"),
    [("CLIP_stop_at_last_layers", "two"), ("CLIP_stop_at_last_layers", "2.5"), ("cfg_scale_max", "high"),
     ("upcast_attn", "maybe"), ("names", 3)],
)
def test_cast_value_errors_name_the_key(key, value):
    with pytest.raises(ValueError, match=key):
        make_opts().cast_value(key, value)


def test_same_type():
    opts = make_opts()
    assert opts.same_type(1, 2.5)  # int and float are interchangeable
    assert opts.same_type(None, "x")
    assert not opts.same_type("1", 1)
    assert not opts.same_type([1], "1")


def test_save_and_load_round_trip(tmp_path):
    config = tmp_path / "config.json"
    opts = make_opts()
    opts.set("sd_vae", "äöü.safetensors")
    opts.set("CLIP_stop_at_last_layers", 2)
    opts.save(str(config))
    assert json.loads(config.read_text(encoding="utf8"))["sd_vae"] == "äöü.safetensors"

    fresh = make_opts()
    fresh.load(str(config))
    assert fresh.sd_vae == "äöü.safetensors"
    assert fresh.CLIP_stop_at_last_layers == 2
    assert fresh.upcast_attn is False
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temp files left behind


def test_save_creates_missing_directory(tmp_path):
    target = tmp_path / "new" / "dir" / "config.json"
    make_opts().save(str(target))
    assert json.loads(target.read_text())["sd_vae"] == "Automatic"


def test_crash_during_save_keeps_old_config(tmp_path, monkeypatch):
    config = tmp_path / "config.json"
    opts = make_opts()
    opts.set("sd_vae", "old.safetensors")
    opts.save(str(config))
    before = config.read_bytes()

    written = []

    def crash(src, dst):
        written.append(open(src, encoding="utf8").read())  # the temp file was fully written first
        raise OSError("power failure")

    monkeypatch.setattr(os, "replace", crash)
    opts.set("sd_vae", "new.safetensors")
    with pytest.raises(OSError, match="power failure"):
        opts.save(str(config))
    monkeypatch.undo()

    assert config.read_bytes() == before
    assert json.loads(written[0])["sd_vae"] == "new.safetensors"
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # temp file cleaned up
    reloaded = make_opts()
    reloaded.load(str(config))
    assert reloaded.sd_vae == "old.safetensors"


def test_save_uses_fsync(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    make_opts().save(str(tmp_path / "config.json"))
    assert synced


def test_unserializable_value_is_dropped_not_the_whole_save(tmp_path, capsys):
    opts = make_opts()
    opts.add_option("weird", OptionInfo(None, "Weird"))
    opts.weird = object()
    opts.save(str(tmp_path / "config.json"))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "weird" not in saved and saved["sd_vae"] == "Automatic"
    assert "weird" in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"", b"{\"sd_vae\": ", b"\xff\xfe\x00garbage", b"[1, 2, 3]"])
def test_corrupt_config_is_moved_aside_and_defaults_used(tmp_path, capsys, content):
    config = tmp_path / "config.json"
    config.write_bytes(content)
    opts = make_opts()
    opts.load(str(config))

    assert opts.sd_vae == "Automatic"
    assert not config.exists()
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("config.json.bad-")]
    assert len(moved) == 1 and moved[0].read_bytes() == content
    err = capsys.readouterr().err
    assert "Warning" in err and moved[0].name in err

    opts.save(str(config))  # the next save writes a good file again
    assert json.loads(config.read_text())["sd_vae"] == "Automatic"


def test_two_corrupt_loads_keep_both_copies(tmp_path):
    config = tmp_path / "config.json"
    for content in ("{", "}"):
        config.write_text(content)
        make_opts().load(str(config))
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("config.json.bad-")]) == 2


def test_missing_config_gives_defaults_silently(tmp_path, capsys):
    opts = make_opts()
    opts.load(str(tmp_path / "config.json"))
    assert opts.sd_vae == "Automatic"
    assert capsys.readouterr().err == ""


def test_load_keeps_unknown_keys_and_warns_on_bad_types(tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"from_uninstalled_extension": 3, "CLIP_stop_at_last_layers": "two"}))
    opts = make_opts()
    opts.load(str(config))
    assert opts.from_uninstalled_extension == 3
    assert "CLIP_stop_at_last_layers" in capsys.readouterr().err
    opts.save(str(config))
    assert json.loads(config.read_text())["from_uninstalled_extension"] == 3


def test_load_migrates_sd_vae_as_default(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"sd_vae_as_default": True}))
    opts = Options(dict(shared_options.options_templates))
    opts.load(str(config))
    assert opts.sd_vae_overrides_per_model_preferences is False


def test_dumpjson():
    opts = make_opts()
    opts.data_labels["sd_vae"].info("pick one")
    dumped = json.loads(opts.dumpjson())
    assert dumped["sd_vae"] == "Automatic"
    assert "pick one" in dumped["_comments_after"]["sd_vae"]
    assert dumped["_categories"][-1] == ["Defaults", "Other"]


def test_shared_options_templates_have_a1111_keys_and_defaults():
    templates = shared_options.options_templates
    expected = {
        "sd_model_checkpoint": None,
        "sd_checkpoints_limit": 1,
        "sd_checkpoints_keep_in_cpu": True,
        "sd_checkpoint_cache": 0,
        "sd_vae": "Automatic",
        "sd_vae_overrides_per_model_preferences": True,
        "sd_vae_checkpoint_cache": 0,
        "CLIP_stop_at_last_layers": 1,
        "cross_attention_optimization": "Automatic",
        "upcast_attn": False,
    }
    for key, default in expected.items():
        assert templates[key].default == default, key
    assert templates["sd_model_checkpoint"].infotext == "Model hash"
    assert templates["sd_model_checkpoint"].label == "Stable Diffusion checkpoint"
    assert templates["sd_checkpoints_limit"].label == "Maximum number of checkpoints loaded at the same time"
    assert templates["sd_vae"].infotext == "VAE"
    assert templates["CLIP_stop_at_last_layers"].infotext == "Clip skip"
    assert templates["sd_vae"].section == ("vae", "VAE")
    assert templates["sd_model_checkpoint"].section == ("sd", "Stable Diffusion")
    assert templates["cross_attention_optimization"].section == ("optimizations", "Optimizations")


def test_shared_module_state(tmp_path):
    from modules import cmd_args, paths, shared

    assert shared.opts.sd_vae == "Automatic"
    assert shared.cmd_opts.precision == "autocast"
    assert shared.parser is cmd_args.parser
    assert shared.sd_model is None
    old = shared.cmd_opts
    try:
        shared.set_cmd_opts(cmd_args.parse_args(["--data-dir", str(tmp_path)], {}))
        assert shared.config_filename == os.path.join(str(tmp_path), "config.json")
        assert shared.data_path == str(tmp_path) == paths.data_path
        assert shared.models_path == os.path.join(str(tmp_path), "models")
        assert paths.sd_model_dir == os.path.join(str(tmp_path), "models", "Stable-diffusion")
    finally:
        shared.set_cmd_opts(old)
    assert shared.data_path == paths.script_path


"""Settings: attribute access, set/onchange, casting, validation (type, range, choices), atomic save, recovery
from a corrupt or hand-edited config.json."""

from __future__ import annotations

import json
import os

import pytest

from modules import shared_options
from modules.options import OptionHTML, OptionInfo, Options, SettingValueError, options_section


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
    assert opts.CLIP_stop_at_last_layers == 1  # the default, not "two"
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



# --- validation: type, range, choices ------------------------------------------------------------------------


def shipped_opts() -> Options:
    """The real templates (their ranges and choices), with values of their own."""
    return Options(dict(shared_options.options_templates))


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("eta_noise_seed_delta", 2**80, "1208925819614629174706176 is out of range (0 to 4294967295)"),
        ("eta_noise_seed_delta", -1, "-1 is out of range (0 to 4294967295)"),
        ("randn_source", "../../x", "'../../x' is not one of: GPU, CPU, NV"),
        ("sd_checkpoints_limit", -5, "-5 is out of range (1 to 10)"),
        ("sd_checkpoints_limit", 2.5, "expected a whole number"),
        ("sd_checkpoints_limit", "many", "expected a number"),
        ("sd_checkpoints_limit", True, "expected a number"),
        ("sd_checkpoints_limit", None, "a value is required"),
        ("sd_checkpoints_keep_in_cpu", "maybe", "expected true/false"),
        ("sd_checkpoints_keep_in_cpu", 2, "expected true/false"),
        ("live_previews_image_format", "gif", "is not one of: jpeg, png, webp"),
        ("show_progress_type", ["Full"], "is not text"),
        ("show_progress_every_n_steps", float("nan"), "expected a finite number"),
        ("show_progress_every_n_steps", float("inf"), "expected a finite number"),
        ("live_preview_refresh_period", -10, "-10 is out of range (at least 0)"),
        ("api_max_input_pixels", 100, "100 is out of range (at least 4096)"),
    ],
)
def test_validate_refuses_bad_values_naming_the_setting(key, value, reason):
    with pytest.raises(SettingValueError) as caught:
        shipped_opts().validate(key, value)
    assert caught.value.key == key
    assert reason in caught.value.reason
    assert str(caught.value).startswith(f"{key}: ")


def test_validate_error_message_names_setting_value_and_range():
    with pytest.raises(SettingValueError) as caught:
        shipped_opts().validate("eta_noise_seed_delta", 2**80)
    assert str(caught.value) == "eta_noise_seed_delta: 1208925819614629174706176 is out of range (0 to 4294967295)"


@pytest.mark.parametrize(
    ("key", "value", "stored"),
    [
        ("eta_noise_seed_delta", 31337, 31337),
        ("eta_noise_seed_delta", 2**32 - 1, 2**32 - 1),
        ("eta_noise_seed_delta", 31337.0, 31337),  # a Number box sends floats
        ("eta_noise_seed_delta", "31337", 31337),  # infotext sends text
        ("randn_source", "CPU", "CPU"),
        ("sd_checkpoints_limit", 10, 10),
        ("sd_checkpoints_keep_in_cpu", "False", False),  # A1111's infotext form
        ("sd_checkpoints_keep_in_cpu", False, False),
        ("show_progress_every_n_steps", -1, -1),
        ("sd_model_checkpoint", None, None),  # no default: unset is a value
    ],
)
def test_validate_accepts_good_values_in_the_settings_type(key, value, stored):
    result = shipped_opts().validate(key, value)
    assert result == stored and type(result) is type(stored)


def test_eta_noise_seed_delta_maximum_fits_the_rng_with_the_largest_seed():
    import torch

    from modules.api.models import MAX_SEED

    high = shipped_opts().data_labels["eta_noise_seed_delta"].bounds()[1]
    torch.Generator().manual_seed(MAX_SEED + 10**7 + int(high))  # seed + image index + ENSD: must not overflow
    with pytest.raises((RuntimeError, ValueError), match="Overflow"):
        torch.Generator().manual_seed(2 + 2**80)  # the value that once broke every "Euler a" job


def test_choices_from_callables_and_pairs_and_custom_values():
    names = ["a.safetensors"]
    opts = make_opts()
    opts.add_option("by_lambda", OptionInfo("a.safetensors", "L", component_args=lambda: {"choices": names}))
    opts.add_option("by_choices", OptionInfo("a", "C", choices=lambda: names + ["a"]))
    opts.add_option("pairs", OptionInfo("v1", "P", component_args={"choices": [("Label one", "v1"), ("Two", "v2")]}))
    opts.add_option("custom", OptionInfo("x", "X", component_args={"choices": ["x"], "allow_custom_value": True}))
    opts.add_option("multi", OptionInfo(["x"], "M", component_args={"choices": ["x", "y"]}))
    names.append("b.safetensors")  # a list that grows after registration: the check sees it
    assert opts.validate("by_lambda", "b.safetensors") == "b.safetensors"
    assert opts.validate("pairs", "v2") == "v2"
    assert opts.validate("custom", "anything") == "anything"
    assert opts.validate("multi", ["y", "x"]) == ["y", "x"]
    for key, value in (("by_lambda", "c"), ("by_choices", "c"), ("pairs", "Label one"), ("multi", ["x", "z"])):
        with pytest.raises(SettingValueError, match=key):
            opts.validate(key, value)


def test_a_broken_choices_callable_does_not_block_the_setting():
    def broken() -> dict:
        raise RuntimeError("extension bug")

    opts = make_opts()
    opts.add_option("ext", OptionInfo("x", "Ext", component_args=broken))
    assert opts.validate("ext", "y") == "y"


def test_set_refuses_a_bad_value_and_keeps_the_old_one():
    opts = shipped_opts()
    calls = []
    opts.onchange("randn_source", lambda: calls.append(1), call=False)
    with pytest.raises(SettingValueError, match="randn_source"):
        opts.set("randn_source", "../../x")
    assert opts.randn_source == "GPU" and calls == []
    assert opts.set("eta_noise_seed_delta", "31337") is True
    assert opts.eta_noise_seed_delta == 31337  # stored as the setting's type
    with pytest.raises(KeyError):
        opts.set("no_such_setting", 1)


def test_hand_edited_bad_values_fall_back_to_defaults_at_load(tmp_path, capsys):
    config = tmp_path / "config.json"
    hand_edited = {"eta_noise_seed_delta": 2**80, "randn_source": "../../x", "sd_checkpoints_limit": -5,
                   "live_previews_enable": "maybe", "show_progress_every_n_steps": 5.0, "upcast_attn": True}
    config.write_text(json.dumps(hand_edited))
    opts = shipped_opts()
    opts.load(str(config))

    assert (opts.eta_noise_seed_delta, opts.randn_source, opts.sd_checkpoints_limit) == (0, "GPU", 1)
    assert opts.live_previews_enable is True
    assert opts.show_progress_every_n_steps == 5 and opts.upcast_attn is True  # good values kept
    err = capsys.readouterr().err
    for key in ("eta_noise_seed_delta", "randn_source", "sd_checkpoints_limit", "live_previews_enable"):
        assert f"Warning: bad value in the config file: {key}: " in err
    assert "upcast_attn" not in err


def test_load_keeps_values_whose_choices_are_only_known_later(tmp_path, capsys):
    # The model list is empty when config.json is read; the saved choice must survive until it is filled.
    models: list[str] = []
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"ext_model": "m.safetensors"}))
    opts = make_opts()
    opts.add_option("ext_model", OptionInfo("none", "M", component_args=lambda: {"choices": models}))
    opts.load(str(config))
    assert opts.ext_model == "m.safetensors" and capsys.readouterr().err == ""


def test_option_registered_after_load_checks_the_loaded_value(tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"ext_steps": 500, "ext_mode": "b"}))
    opts = make_opts()
    opts.load(str(config))
    opts.add_option("ext_steps", OptionInfo(20, "Steps", component_args={"minimum": 1, "maximum": 150}))
    opts.add_option("ext_mode", OptionInfo("a", "Mode", component_args={"choices": ["a", "b"]}))
    assert opts.ext_steps == 20 and opts.ext_mode == "b"
    assert "ext_steps: 500 is out of range (1 to 150)" in capsys.readouterr().err

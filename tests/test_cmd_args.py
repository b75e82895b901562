"""Command-line flags: A1111 names and defaults, COMMANDLINE_ARGS, clear errors, effective/not-yet-effective."""

from __future__ import annotations

import os

import pytest

from modules import cmd_args, paths

NO_ENV: dict[str, str] = {}


def parse(*argv: str, env: str | None = None):
    return cmd_args.parse_args(list(argv), {"COMMANDLINE_ARGS": env} if env is not None else NO_ENV)


def test_effective_flags_parse_into_namespace(tmp_path):
    ns = parse(
        "--data-dir", str(tmp_path / "data"),
        "--models-dir", str(tmp_path / "models"),
        "--ckpt", "a.safetensors",
        "--ckpt-dir", str(tmp_path / "ckpts"),
        "--vae-dir", str(tmp_path / "vaes"),
        "--vae-path", "v.safetensors",
        "--no-half", "--no-half-vae",
        "--precision", "full",
        "--use-cpu", "SD", "interrogate",
        "--skip-install", "--xformers", "--opt-sdp-attention", "--exit",
    )
    assert ns.data_dir == str(tmp_path / "data")
    assert ns.models_dir == str(tmp_path / "models")
    assert ns.ckpt == "a.safetensors"
    assert ns.ckpt_dir == str(tmp_path / "ckpts")
    assert ns.vae_dir == str(tmp_path / "vaes")
    assert ns.vae_path == "v.safetensors"
    assert ns.no_half and ns.no_half_vae
    assert ns.precision == "full"
    assert ns.use_cpu == ["sd", "interrogate"]  # lower-cased, as A1111 does
    assert ns.skip_install and ns.xformers and ns.opt_sdp_attention and ns.exit
    assert cmd_args.not_yet_effective(ns) == []


def test_every_effective_flag_is_declared():
    declared = {s for action in cmd_args.parser._actions for s in action.option_strings}
    assert cmd_args.EFFECTIVE_FLAGS <= declared
    assert cmd_args.SECRET_FLAGS <= declared


def test_a1111_defaults():
    ns = parse()
    assert ns.port is None
    assert ns.precision == "autocast"
    assert ns.use_cpu == []
    assert ns.styles_file == []
    assert ns.gradio_allowed_path == []
    assert ns.filenames_max_length == 128
    assert ns.timeout_keep_alive == 30
    assert ns.max_batch_count == 16
    assert ns.sub_quad_q_chunk_size == 1024
    assert ns.disable_tls_verify is True  # A1111 declares it store_false
    assert ns.api_auth is None and ns.gradio_auth is None and ns.ngrok is None
    assert ns.models_dir is None and ns.ckpt_dir is None
    assert ns.data_dir == paths.script_path
    assert ns.embeddings_dir == os.path.join(paths.script_path, "embeddings")
    assert ns.lora_dir == os.path.join(paths.script_path, "models", "Lora")


def test_reference_flags_all_parse():
    # A sample from every group of the A1111 flag table, including no-ops kept for old command lines.
    ns = parse(
        "--listen", "--server-name", "0.0.0.0", "--port", "7000", "--share", "--api", "--nowebui",
        "--api-auth", "u:p", "--api-log", "--api-server-stop", "--timeout-keep-alive", "5",
        "--gradio-auth", "a:b,c:d", "--gradio-auth-path", "auth.txt", "--cors-allow-origins", "http://x",
        "--cors-allow-origins-regex", ".*", "--tls-keyfile", "k", "--tls-certfile", "c", "--disable-tls-verify",
        "--subpath", "/sd", "--autolaunch", "--theme", "dark", "--no-gradio-queue", "--gradio-debug",
        "--gradio-allowed-path", "/a", "--gradio-allowed-path", "/b", "--enable-insecure-extension-access",
        "--allow-code", "--styles-file", "a.csv", "--styles-file", "b/*.csv", "--medvram", "--lowvram",
        "--upcast-sampling", "--opt-channelslast", "--disable-nan-check", "--use-ipex", "--device-id", "1",
        "--skip-torch-cuda-test", "--reinstall-torch", "--uv", "--loglevel", "DEBUG", "--freeze-settings",
        "--filenames-max-length", "64", "--ngrok-options", '{"region": "eu"}', "--max-batch-count", "3",
        "--always-batch-cond-uncond", "--deepdanbooru", "--gradio-img2img-tool", "color-sketch", "--gradio-queue",
        "--add-stop-route", "--lora-dir", "L", "--sub-quad-kv-chunk-size", "512",
    )
    assert ns.port == 7000 and ns.timeout_keep_alive == 5 and ns.filenames_max_length == 64
    assert ns.gradio_allowed_path == ["/a", "/b"]
    assert ns.styles_file == ["a.csv", "b/*.csv"]
    assert ns.ngrok_options == {"region": "eu"}
    assert ns.disable_tls_verify is False
    assert ns.lora_dir == "L"


def test_commandline_args_env_combined_argv_wins():
    ns = parse("--port", "9000", "--api", env="--port 8000 --listen --ckpt 'my model.safetensors'")
    assert ns.port == 9000  # argv comes after COMMANDLINE_ARGS
    assert ns.listen and ns.api
    assert ns.ckpt == "my model.safetensors"  # split like a shell would


def test_commandline_args_with_bad_quotes_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exc:
        parse(env='--ckpt "unterminated')
    assert exc.value.code == 2
    assert "COMMANDLINE_ARGS" in capsys.readouterr().err


def test_unknown_flag_exits_2_and_names_it(capsys):
    with pytest.raises(SystemExit) as exc:
        parse("--no-such-flag")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--no-such-flag" in err
    assert "unrecognized arguments" in err


def test_misspelled_flag_gets_a_suggestion(capsys):
    with pytest.raises(SystemExit):
        parse("--lisen")
    assert "did you mean --listen" in capsys.readouterr().err


def test_unknown_flag_in_env_is_also_an_error(capsys):
    with pytest.raises(SystemExit) as exc:
        parse(env="--bogus-flag")
    assert exc.value.code == 2
    assert "--bogus-flag" in capsys.readouterr().err


def test_non_strict_parse_ignores_unknown_flags():
    ns = cmd_args.parse_args(["--listen", "--some-extension-flag"], NO_ENV, strict=False)
    assert ns.listen


def test_bad_value_type_is_an_error(capsys):
    with pytest.raises(SystemExit) as exc:
        parse("--port", "http")
    assert exc.value.code == 2
    assert "--port" in capsys.readouterr().err


def test_help_lists_flags_and_marks_not_yet_effective(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as exc:
        parse("--help")
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--listen", "--data-dir", "--ckpt", "--api-auth", "--exit", "--precision"):
        assert flag in out
    channelslast_help = out[out.index("--opt-channelslast"):]
    assert "(not yet effective)" in channelslast_help[:channelslast_help.index("\n  -")]
    medvram_help = out[out.index("--medvram"):out.index("--medvram-sdxl")]
    assert "not yet effective" not in medvram_help  # offloading (modules/models/offload.py)
    data_dir_help = out[out.index("--data-dir DATA_DIR"):out.index("--models-dir")]
    assert "not yet effective" not in data_dir_help


def test_help_texts_end_with_marker_exactly_for_non_effective_flags():
    for action in cmd_args.parser._actions:
        if not action.option_strings or action.help in (None, "==SUPPRESS==") or action.dest == "help":
            continue
        effective = bool(set(action.option_strings) & cmd_args.EFFECTIVE_FLAGS)
        assert action.help.endswith("(not yet effective)") != effective, action.option_strings


def test_not_yet_effective_reports_set_flags_only(tmp_path):
    assert cmd_args.not_yet_effective(parse()) == []
    ns = parse("--medvram", "--lowvram", "--no-half", "--data-dir", str(tmp_path), "--opt-channelslast", "--listen",
               "--upcast-sampling")
    assert sorted(cmd_args.not_yet_effective(ns)) == ["--opt-channelslast", "--upcast-sampling"]


def test_path_defaults_follow_data_and_models_dir(tmp_path):
    ns = parse("--data-dir", str(tmp_path / "d"), "--models-dir", str(tmp_path / "m"))
    assert ns.embeddings_dir == str(tmp_path / "d" / "embeddings")
    assert ns.ui_settings_file == str(tmp_path / "d" / "config.json")
    assert ns.lora_dir == str(tmp_path / "m" / "Lora")
    assert ns.esrgan_models_path == str(tmp_path / "m" / "ESRGAN")
    # moving the data dir is not the same as setting --hypernetwork-dir
    assert cmd_args.not_yet_effective(ns) == []
    explicit = parse("--data-dir", str(tmp_path / "d"), "--hypernetwork-dir", "H")
    assert explicit.hypernetwork_dir == "H"
    assert cmd_args.not_yet_effective(explicit) == ["--hypernetwork-dir"]  # no hypernetworks in this version


def test_extension_flags_are_not_reported(monkeypatch):
    parser = cmd_args.parser
    action = parser.add_argument("--my-extension-flag", action="store_true")
    try:
        ns = cmd_args.parse_args(["--my-extension-flag"], NO_ENV)
        assert ns.my_extension_flag
        assert cmd_args.not_yet_effective(ns) == []
    finally:
        parser._remove_action(action)
        for s in action.option_strings:
            parser._option_string_actions.pop(s, None)


def test_mark_effective_updates_set_and_help(monkeypatch):
    monkeypatch.setattr(cmd_args, "EFFECTIVE_FLAGS", set(cmd_args.EFFECTIVE_FLAGS))
    action = cmd_args.parser._option_string_actions["--lowram"]
    monkeypatch.setattr(action, "help", action.help)
    cmd_args.mark_effective(["--lowram"])
    assert "--lowram" in cmd_args.EFFECTIVE_FLAGS
    assert not action.help.endswith("(not yet effective)")
    assert cmd_args.not_yet_effective(parse("--lowram")) == []


def test_secrets_are_redacted():
    ns = parse("--api-auth", "user:hunter2", "--gradio-auth", "a:b", "--listen")
    shown = cmd_args.redacted(ns)
    assert "hunter2" not in repr(shown)
    assert shown["api_auth"] == "<redacted>" and shown["gradio_auth"] == "<redacted>"
    assert shown["ngrok"] is None  # unset secrets stay visibly unset
    assert shown["listen"] is True
    assert {"--api-auth", "--gradio-auth", "--ngrok", "--tls-keyfile"} <= cmd_args.SECRET_FLAGS


def test_ngrok_options_error_does_not_echo_value(capsys):
    with pytest.raises(SystemExit):
        parse("--ngrok-options", "{authtoken: s3cret")
    err = capsys.readouterr().err
    assert "--ngrok-options" in err and "s3cret" not in err

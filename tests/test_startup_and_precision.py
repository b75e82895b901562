"""The launcher starts on a data dir with a checkpoint, and precision follows the flags."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import torch
from tiny_models import write_tiny_checkpoint

from modules import devices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(*args, env_extra=None, until=("Model loaded", "Could not load the checkpoint")):
    """Start the launcher (which then serves the web UI), read its output until the model line, stop it.

    Returns (output, whether the web UI answered): the server keeps running after start-up, so the test
    stops it (by its process id) once start-up has said what it did with the checkpoint.
    """
    env = dict(os.environ, **(env_extra or {}), PYTHONUNBUFFERED="1")
    process = subprocess.Popen([sys.executable, "launch.py", "--skip-install", "--port", str(_free_port()), *args],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, served, seen = [], False, False
    deadline = time.monotonic() + 300
    try:
        for line in process.stdout:
            lines.append(line)
            served = served or "Running on local URL" in line
            seen = seen or any(marker in line for marker in until)
            if (served and seen) or time.monotonic() > deadline:
                break
    finally:
        _stop(process)
    return "".join(lines), served


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_the_api_answers_from_the_first_connection_the_web_ui_accepts(tmp_path):
    """With --api the /sdapi routes exist before the server accepts a connection: a client polling them while
    it starts gets its answer, never a 404 (they were added after gradio started serving: about 20 polls got
    404 "Not Found" here first)."""
    port = _free_port()
    process = subprocess.Popen([sys.executable, "launch.py", "--skip-install", "--port", str(port), "--api",
                                "--data-dir", str(tmp_path), "--skip-load-model-at-start"],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    answers = []
    deadline = time.monotonic() + 300
    try:
        while not answers and time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/sdapi/v1/samplers", timeout=30) as r:
                    answers.append((r.status, json.loads(r.read())))
            except urllib.error.HTTPError as e:
                answers.append((e.code, None))
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.005)  # not accepting connections yet
    finally:
        _stop(process)
    assert answers, "the server never answered"
    status, samplers = answers[0]
    assert status == 200
    assert "Euler a" in [s["name"] for s in samplers]


def test_launch_loads_the_checkpoint_from_the_data_dir(tmp_path):
    ckpt_dir = tmp_path / "models" / "Stable-diffusion"
    ckpt_dir.mkdir(parents=True)
    write_tiny_checkpoint(ckpt_dir / "tiny.safetensors", "sd1")
    output, served = _launch("--data-dir", str(tmp_path), "--use-cpu", "all")
    assert served, output
    assert "Model loaded: tiny.safetensors [" in output
    assert "(SD1.x) on cpu" in output
    assert (tmp_path / "cache.json").exists()  # the hash was computed and cached


def test_launch_reports_a_broken_checkpoint_without_crashing(tmp_path):
    ckpt_dir = tmp_path / "models" / "Stable-diffusion"
    ckpt_dir.mkdir(parents=True)
    (ckpt_dir / "broken.safetensors").write_bytes(b"\x05")
    output, served = _launch(env_extra={"COMMANDLINE_ARGS": f"--data-dir {tmp_path}"})
    assert served, output  # the page still comes up, and says what is wrong
    assert "Could not load the checkpoint: broken.safetensors: not a valid .safetensors file" in output


def test_cpu_computes_in_float32():
    p = devices.choose_precision(torch.device("cpu"))
    assert (p.unet, p.text_encoder, p.vae, p.sdxl_vae) == (torch.float32,) * 4


@pytest.mark.parametrize("bf16", [True, False])
def test_cuda_is_half_precision_and_the_sdxl_vae_never_float16(monkeypatch, bf16):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    p = devices.choose_precision(torch.device("cuda"))
    assert p.unet == torch.float16 and p.vae == torch.float16
    assert p.sdxl_vae == (torch.bfloat16 if bf16 else torch.float32)
    assert devices.choose_precision(torch.device("cuda"), prefer_bf16=True).unet == (torch.bfloat16 if bf16 else torch.float16)


@pytest.mark.parametrize(("flags", "unet", "vae"), [
    ({"no_half": True}, torch.float32, torch.float32),
    ({"precision": "full"}, torch.float32, torch.float32),
    ({"no_half_vae": True}, torch.float16, torch.float32),
])
def test_precision_flags(monkeypatch, flags, unet, vae):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    p = devices.choose_precision(torch.device("cuda"), **flags)
    assert (p.unet, p.vae) == (unet, vae)
    if vae == torch.float32:
        assert p.sdxl_vae == torch.float32


def test_use_cpu_forces_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert devices.choose_device(["all"]).type == "cpu"
    assert devices.choose_device(["sd"]).type == "cpu"
    assert devices.choose_device([]).type == "cuda"


def test_device_id_from_the_command_line_picks_that_gpu(monkeypatch):
    """`--device-id 1` arrives as the string "1" (A1111 parses it as one); it must select cuda:1."""
    from modules import cmd_args

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    opts = cmd_args.parse_args(["--device-id", "1"], {})
    assert devices.precision_from_cmd_opts(opts).device == torch.device("cuda", 1)
    assert devices.choose_device([], None) == torch.device("cuda", 0)


@pytest.mark.parametrize("value, message", [("2", "this machine has 2 CUDA devices"), ("one", "a GPU number"),
                                            ("-1", "a GPU number")])
def test_a_bad_device_id_is_refused_by_value(monkeypatch, value, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=message) as error:
        devices.choose_device([], value)
    assert "--device-id" in str(error.value)

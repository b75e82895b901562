"""A UNet that yields nothing but NaNs (float16 overflow, a broken merge) fails the job with A1111's
NansException advice, over the API as a person's client sees it, instead of returning a black picture;
`--disable-nan-check` lets such a job finish; the server keeps serving."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from test_api_support import CHECKPOINTS, FAST, SETTINGS, assert_error_json, client, decode, pixels, serving

from modules import devices, shared
from modules.api.server import create_app


@pytest.fixture(scope="module")
def http(tmp_path_factory, isolated_data_dir):
    with isolated_data_dir(tmp_path_factory.mktemp("nan"), CHECKPOINTS, SETTINGS):
        with serving(create_app(auth=None)) as running, client(running) as c:
            yield c


@contextlib.contextmanager
def unet_yielding_nans() -> Iterator[None]:
    """The loaded UNet's last bias set to NaN: every value it predicts is NaN, as with a broken checkpoint."""
    bias = shared.sd_model.unet.conv_out.bias
    saved = bias.detach().clone()
    with torch.no_grad():
        bias.fill_(float("nan"))
    try:
        yield
    finally:
        with torch.no_grad():
            bias.copy_(saved)


def test_all_nan_unet_fails_the_job_with_a1111_advice_and_the_server_goes_on(http):
    assert http.post("/sdapi/v1/txt2img", json=FAST).status_code == 200  # loads the model
    with unet_yielding_nans():
        body = assert_error_json(http.post("/sdapi/v1/txt2img", json=FAST), 500)
    assert "A tensor with all NaNs was produced in Unet" in body["errors"], body
    assert "--disable-nan-check" in body["errors"] and "Traceback" not in body["errors"]
    ok = http.post("/sdapi/v1/txt2img", json=FAST)
    assert ok.status_code == 200 and pixels(decode(ok.json()["images"][0])).std() > 0


def test_disable_nan_check_lets_the_job_finish(http, monkeypatch):
    monkeypatch.setattr(shared.cmd_opts, "disable_nan_check", True, raising=False)
    assert http.post("/sdapi/v1/txt2img", json=FAST).status_code == 200
    with unet_yielding_nans():
        r = http.post("/sdapi/v1/txt2img", json=FAST)
    assert r.status_code == 200, r.text
    assert pixels(decode(r.json()["images"][0])).std() == 0  # what the check spares people: a flat picture


def test_only_all_nan_tensors_are_refused(monkeypatch):
    monkeypatch.setattr(shared.cmd_opts, "disable_nan_check", False, raising=False)
    partly = torch.zeros(1, 4, 8, 8)
    partly[0, 0, 0, 0] = float("nan")
    devices.test_for_nans(partly, "unet")  # a few NaNs: A1111 lets the picture through
    devices.test_for_nans(None, "unet")  # an interrupted batch may have no latents yet
    with pytest.raises(devices.NansException, match="produced in vae"):
        devices.test_for_nans(torch.full((1, 3, 4, 4), float("nan")), "vae")

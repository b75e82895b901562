"""Prompt text over real HTTP: a lone surrogate (valid JSON, not valid Unicode) and a prompt over the length
limit are a 422 naming the field, never a 500; a prompt at the limit, even a hostile one, still generates."""

from __future__ import annotations

import json

import pytest
from test_api_support import CHECKPOINTS, FAST, SETTINGS, assert_error_json, client, serving

from modules import shared
from modules.api.server import create_app


@pytest.fixture(scope="module")
def http(tmp_path_factory, isolated_data_dir):
    with isolated_data_dir(tmp_path_factory.mktemp("api-prompt-text"), CHECKPOINTS, SETTINGS):
        with serving(create_app(auth=None)) as running, client(running) as c:
            yield c


def _post_raw(http, body: str):
    # json.dumps escapes a lone surrogate as "\ud800", which is how a client sends one
    return http.post("/sdapi/v1/txt2img", content=body.encode("ascii"), headers={"content-type": "application/json"})


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
@pytest.mark.parametrize("text", ["\ud800", "a red \udfff circle", "\ud83d"], ids=["alone", "inside", "high half"])
def test_lone_surrogate_is_a_422_naming_the_field(http, field, text):
    body = json.dumps({**FAST, field: text})
    assert "\\ud" in body  # sent as a JSON escape, the way the issue reports it
    error = assert_error_json(_post_raw(http, body), 422, field)
    assert "surrogate" in error["errors"]
    assert "Traceback" not in error["errors"]


def test_surrogate_pair_is_a_character_not_an_error(http):
    # "\ud83d\ude00" is one character (an emoji) once decoded: a valid prompt
    r = _post_raw(http, json.dumps({**FAST, "prompt": "a red circle \U0001F600", "steps": 1}))
    assert r.status_code == 200, r.text


def test_surrogate_in_the_raw_body_is_the_literal_text(http):
    r = _post_raw(http, '{"prompt": "\\\\ud800", "steps": 1, "width": 64, "height": 64}')
    assert r.status_code == 200, r.text  # an escaped backslash: the six characters \ud800, harmless


def test_prompt_length_limit_is_a_setting(http, monkeypatch):
    most = shared.opts.api_max_prompt_chars
    assert most == 20000
    assert_error_json(http.post("/sdapi/v1/txt2img", json={**FAST, "prompt": "x" * (most + 1)}), 422, "prompt")
    assert_error_json(http.post("/sdapi/v1/txt2img", json={**FAST, "negative_prompt": "y" * (most + 1)}), 422,
                      "negative_prompt")
    monkeypatch.setitem(shared.opts.data, "api_max_prompt_chars", 10)
    error = assert_error_json(http.post("/sdapi/v1/txt2img", json={**FAST, "prompt": "a red circle!"}), 422, "prompt")
    assert "api_max_prompt_chars" in error["errors"]


HOSTILE = {"close_round": ")" * 20000, "close_round_then_square": ")" * 10000 + "]" * 10000,
           "red_emphasis": "(red) " * 3333, "alternations": "[a|b]" * 4000, "edits": "[a:b:5]" * 2857}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_prompts_at_the_limit_generate(http, name):
    prompt = HOSTILE[name]
    assert len(prompt) <= shared.opts.api_max_prompt_chars
    r = http.post("/sdapi/v1/txt2img", json={**FAST, "prompt": prompt, "steps": 2}, timeout=120)
    assert r.status_code == 200, r.text[:500]

"""A1111's extra-network tag syntax: parsed out of prompts, arguments split, unknown types reported by name."""

from __future__ import annotations

from modules import extra_networks


def test_tags_are_cut_from_the_prompt_and_their_arguments_kept():
    text, found = extra_networks.parse_prompt("a cat <lora:film grain:0.6:te=1>, <hypernet:anime>")
    assert text == "a cat , "
    assert found["lora"][0].items == ["film grain", "0.6", "te=1"]
    assert found["lora"][0].positional == ["film grain", "0.6"] and found["lora"][0].named == {"te": "1"}
    assert found["hypernet"][0].positional == ["anime"]


def test_text_that_only_looks_like_a_tag_stays():
    for prompt in ("a <b> c", "x < lora : y >", "emphasis (a:1.2)"):
        assert extra_networks.parse_prompt(prompt) == (prompt, {})


def test_a_registered_type_is_not_reported_as_unapplied(monkeypatch):
    monkeypatch.setattr(extra_networks, "extra_network_registry", {})
    monkeypatch.setattr(extra_networks, "extra_network_aliases", {})
    prompts = ["<lora:a:1> <lora:a:0.5> <lyco:b>"]
    assert extra_networks.unapplied(prompts) == ["lora:a", "lyco:b"]
    extra_networks.register_extra_network(extra_networks.ExtraNetwork("lora"))
    assert extra_networks.unapplied(prompts) == ["lyco:b"]
    assert extra_networks.not_applied_warning(["plain"]) == ""


def test_parsing_is_linear_on_unclosed_tags():
    import time

    text = "<a:" * 6666
    started = time.process_time()
    assert extra_networks.parse_prompt(text) == (text, {})
    assert time.process_time() - started < 0.5  # was 0.7 s at this size, growing with the square

"""Infotext writing and parsing (modules.infotext_utils), checked against A1111's layout and parser rules."""

from __future__ import annotations

import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from modules import infotext_utils as iu

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def no_shared(monkeypatch):
    """Tests see A1111's defaults, whatever modules.shared (built elsewhere) holds."""
    monkeypatch.setattr(iu, "shared", types.ModuleType("modules.shared"))


# ------------------------------------------------------------------------------------------------ writing


def test_layout_matches_the_reference_example():
    # written by hand in the layout of reference §2.1; params given out of order on purpose
    expected = (
        "a photo of a cat, (masterpiece:1.2)\n"
        "Negative prompt: blurry, lowres\n"
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x768, "
        "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.7, Hires upscale: 2, "
        'Hires upscaler: Latent, Lora hashes: "foo: 0123456789ab", Version: v1.10.1'
    )
    params = {
        "Model": "v1-5-pruned-emaonly",
        "Size": "512x768",
        "Seed": 1234,
        "CFG scale": 7,
        "Schedule type": "Karras",
        "Sampler": "DPM++ 2M",
        "Steps": 20,
        "Model hash": "6ce0161689",
        "Denoising strength": 0.7,
        "Clip skip": None,
        "RNG": None,
    }
    extra = {"Hires upscale": 2, "Hires upscaler": "Latent", "Lora hashes": "foo: 0123456789ab"}
    text = iu.build_infotext("a photo of a cat, (masterpiece:1.2)", "blurry, lowres", params, extra, "v1.10.1")
    assert text == expected


def test_fixed_key_order_then_extras_then_version_and_user():
    params = {k: f"v{i}" for i, k in reversed(list(enumerate(iu.INFOTEXT_KEY_ORDER)))}
    text = iu.build_infotext("p", "", params, {"Zeta": "z", "Alpha": "a"}, version="v1", user="bob")
    keys = [part.split(": ")[0] for part in text.split("\n")[-1].split(", ")]
    assert keys == [*iu.INFOTEXT_KEY_ORDER, "Zeta", "Alpha", "Version", "User"]


def test_extra_key_that_is_a_fixed_key_keeps_the_fixed_position():
    text = iu.build_infotext("p", None, {"Steps": 20, "Seed": 1}, {"Hires steps": 5, "Denoising strength": 0.5})
    assert text.endswith("Steps: 20, Seed: 1, Denoising strength: 0.5, Hires steps: 5")


def test_values_render_like_python_str_and_none_is_skipped():
    text = iu.build_infotext("p", "", {"Steps": 20, "CFG scale": 7.0, "Tiling": "True", "VAE": None}, {"Flag": "Flag"})
    assert text == "p\nSteps: 20, CFG scale: 7.0, Tiling: True, Flag"


def test_negative_prompt_line_only_when_not_empty():
    assert "Negative prompt" not in iu.build_infotext("p", "", {"Steps": 1})
    assert "Negative prompt" not in iu.build_infotext("p", None, {"Steps": 1})
    assert iu.build_infotext("p", "n", {"Steps": 1}) == "p\nNegative prompt: n\nSteps: 1"


def test_list_and_callable_extras():
    extra = {"Per image": ["a", "b"], "Computed": lambda index, **_: f"img{index}", "Broken": lambda **_: 1 / 0}
    text = iu.build_infotext("p", "", {"Steps": 1}, extra, index=1)
    assert text == "p\nSteps: 1, Per image: b, Computed: img1"


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("plain", "plain"),
        ("a, b", '"a, b"'),
        ("key: value", '"key: value"'),
        ("two\nlines", '"two\\nlines"'),
        ('say "hi", ok', '"say \\"hi\\", ok"'),
        ("ünï, cødé", '"ünï, cødé"'),  # ensure_ascii=False
    ],
)
def test_quote(value, written):
    assert iu.quote(value) == written
    assert iu.unquote(written) == value


def test_quote_keeps_non_strings_and_unquote_keeps_bad_json():
    assert iu.quote(7) == 7
    assert iu.unquote('"not json\\"') == '"not json\\"'
    assert iu.unquote("") == ""


# ------------------------------------------------------------------------------------------------ parsing

ROUND_TRIP_CASES = [
    ("a cat", "", {"Steps": "20", "Sampler": "Euler a", "CFG scale": "7", "Seed": "1"}),
    (
        "first line\nsecond, line\n(third:1.3) line",
        "bad\nworse, quality",
        {"Steps": "30", "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": "7.5", "Seed": "42"},
    ),
    (
        "unicode 猫 prompt",
        "нет",
        {
            "Steps": "20",
            "Sampler": "Euler",
            "CFG scale": "7",
            "Seed": "3",
            "Model": "my: model, v2",
            "Hires prompt": "hires\nprompt, with: colon",
            "Lora hashes": 'a: 0123, b: "x"',
            "Version": "v1.10.1",
        },
    ),
    ("p", "", {"Steps": "1", "Sampler": "LMS", "CFG scale": "1", "Seed": "-1", "Tiling": "True", "User": "bob"}),
]


@pytest.mark.parametrize(("prompt", "negative", "params"), ROUND_TRIP_CASES)
def test_round_trip(prompt, negative, params):
    fixed = {k: v for k, v in params.items() if k in iu.INFOTEXT_KEY_ORDER}
    extra = {k: v for k, v in params.items() if k not in iu.INFOTEXT_KEY_ORDER and k not in ("Version", "User")}
    text = iu.build_infotext(prompt, negative, fixed, extra, params.get("Version"), params.get("User"))
    parsed = iu.parse_generation_parameters(text)
    assert parsed["Prompt"] == prompt
    assert parsed["Negative prompt"] == negative
    assert {k: parsed[k] for k in params} == params


def test_size_like_values_split_into_string_halves():
    parsed = iu.parse_generation_parameters(
        "p\nSteps: 20, Size: 512x768, Hires resize: 1024x1536, Seed resize from: 64x32"
    )
    # A1111 keeps the halves as the strings it matched
    assert (parsed["Size-1"], parsed["Size-2"]) == ("512", "768")
    assert (parsed["Hires resize-1"], parsed["Hires resize-2"]) == ("1024", "1536")
    assert (parsed["Seed resize from-1"], parsed["Seed resize from-2"]) == ("64", "32")
    assert "Size" not in parsed


def test_last_line_needs_three_pairs_to_be_parameters():
    parsed = iu.parse_generation_parameters("a portrait\nstyle: oil, mood: calm")
    assert parsed["Prompt"] == "a portrait\nstyle: oil, mood: calm"
    assert "style" not in parsed and "Steps" not in parsed

    parsed = iu.parse_generation_parameters("a portrait\nstyle: oil, mood: calm, light: soft")
    assert parsed["Prompt"] == "a portrait"
    assert parsed["style"] == "oil" and parsed["light"] == "soft"


def test_prompt_and_negative_split_and_strip():
    text = "  line one  \nline two\nNegative prompt:  neg one \n neg two\nSteps: 5, Seed: 1, CFG scale: 3"
    parsed = iu.parse_generation_parameters(text)
    assert parsed["Prompt"] == "line one\nline two"
    assert parsed["Negative prompt"] == "neg one\nneg two"


def test_defaults_filled_in():
    parsed = iu.parse_generation_parameters("p\nSteps: 20, Sampler: Euler, CFG scale: 7")
    expected = {
        "Clip skip": "1",
        "Hires resize-1": 0,
        "Hires resize-2": 0,
        "Hires sampler": "Use same sampler",
        "Hires schedule type": "Use same scheduler",
        "Hires checkpoint": "Use same checkpoint",
        "Hires prompt": "",
        "Hires negative prompt": "",
        "Mask mode": "Inpaint masked",
        "Masked content": "original",
        "Inpaint area": "Whole picture",
        "Masked area padding": 32,
        "RNG": "GPU",
        "Schedule type": "Automatic",
        "Schedule max sigma": 0,
        "Schedule min sigma": 0,
        "Schedule rho": 0,
        "VAE Encoder": "Full",
        "VAE Decoder": "Full",
        "FP8 weight": "Disable",
        "Refiner switch by sampling steps": False,
    }
    assert {k: parsed.get(k, "<missing>") for k in expected} == expected
    assert "Cache FP16 weight for LoRA" not in parsed  # A1111 adds it only when FP8 is on
    assert "Emphasis" not in parsed


def test_written_values_beat_defaults_and_empty_values_are_dropped():
    parsed = iu.parse_generation_parameters("p\nSteps: 20, Clip skip: 2, RNG: CPU, FP8 weight: Enable, Schedule type: ")
    assert parsed["Clip skip"] == "2" and parsed["RNG"] == "CPU"
    assert parsed["Cache FP16 weight for LoRA"] is False
    assert parsed["Schedule type"] == "Automatic"


@pytest.mark.parametrize(
    ("prompt", "uses"),
    [
        ("plain words", False),
        ("(weighted) words", True),
        ("[less] words", True),
        ("(word:1.3)", True),
        ("(word:1.0)", False),
        ("\\(escaped\\) parens", False),
        ("[(cancel out)]", False),
        ("(unclosed weight", True),
        ("a BREAK b", False),
        ("()", False),
    ],
)
def test_emphasis_default_only_when_prompt_uses_weights(prompt, uses):
    parsed = iu.parse_generation_parameters(f"{prompt}\nSteps: 20, Sampler: Euler, CFG scale: 7")
    assert ("Emphasis" in parsed) is uses
    if uses:
        assert parsed["Emphasis"] == "Original"


def test_emphasis_also_looks_at_negative_prompt_and_keeps_written_value():
    parsed = iu.parse_generation_parameters("p\nNegative prompt: (bad:1.4)\nSteps: 1, Seed: 1, CFG scale: 1")
    assert parsed["Emphasis"] == "Original"
    parsed = iu.parse_generation_parameters("(p)\nSteps: 1, Seed: 1, Emphasis: No norm")
    assert parsed["Emphasis"] == "No norm"


def test_emphasis_check_is_linear_on_hostile_prompts():
    start = time.perf_counter()
    iu.parse_generation_parameters("(" * 100_000 + "x" + ":1.1)" * 50_000 + "\nSteps: 1, Seed: 1, CFG scale: 1")
    iu.parse_generation_parameters("a:" * 200_000 + "\nSteps: 1, Seed: 1, CFG scale: 1")
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize(
    ("written", "sampler", "schedule"),
    [
        ("DPM++ 2M Karras", "DPM++ 2M", "Karras"),
        ("DPM++ 2M SDE Exponential", "DPM++ 2M SDE", "Exponential"),
        ("Euler SGM Uniform", "Euler", "SGM Uniform"),
        ("LMS karras", "LMS", "Karras"),
        ("DPM++ SDE Align Your Steps", "DPM++ SDE", "Align Your Steps"),
        ("Euler a", "Euler a", "Automatic"),
        ("DDIM", "DDIM", "Automatic"),
    ],
)
def test_legacy_combined_sampler_names(written, sampler, schedule):
    parsed = iu.parse_generation_parameters(f"p\nSteps: 20, Sampler: {written}, CFG scale: 7")
    assert (parsed["Sampler"], parsed["Schedule type"]) == (sampler, schedule)


def test_combined_name_left_alone_when_schedule_type_is_written():
    parsed = iu.parse_generation_parameters("p\nSteps: 20, Sampler: Odd Karras, Schedule type: Exponential, Seed: 1")
    assert (parsed["Sampler"], parsed["Schedule type"]) == ("Odd Karras", "Exponential")


def test_legacy_hires_sampler_split():
    parsed = iu.parse_generation_parameters("p\nSteps: 20, Sampler: Euler, Hires sampler: DPM++ 2M Karras")
    assert (parsed["Hires sampler"], parsed["Hires schedule type"]) == ("DPM++ 2M", "Karras")


def test_skip_fields_and_option_default(monkeypatch):
    parsed = iu.parse_generation_parameters("p\nSteps: 20, Seed: 5, CFG scale: 7", skip_fields=["Seed", "RNG"])
    assert "Seed" not in parsed and "RNG" not in parsed and parsed["Steps"] == "20"

    shared = types.ModuleType("modules.shared")
    shared.opts = types.SimpleNamespace(infotext_skip_pasting=["CFG scale"])
    monkeypatch.setattr(iu, "shared", shared)
    parsed = iu.parse_generation_parameters("p\nSteps: 20, Seed: 5, CFG scale: 7")
    assert "CFG scale" not in parsed and parsed["Seed"] == "5"


def test_extract_styles_hook():
    def extract(prompt, negative):
        if prompt.endswith(", masterpiece"):
            return ["Quality"], prompt.removesuffix(", masterpiece"), negative
        return [], prompt, negative

    parsed = iu.parse_generation_parameters(
        "a cat, masterpiece\nSteps: 1, Seed: 1, CFG scale: 1", extract_styles=extract
    )
    assert parsed["Prompt"] == "a cat" and parsed["Styles array"] == ["Quality"]
    parsed = iu.parse_generation_parameters("a cat\nSteps: 1, Seed: 1, CFG scale: 1", extract_styles=extract)
    assert parsed["Prompt"] == "a cat" and "Styles array" not in parsed

    # a hires prompt equal to the first pass one (after styles) becomes "" = "use the same prompt"
    text = 'a cat, masterpiece\nSteps: 1, Seed: 1, Hires prompt: "a cat, masterpiece"'
    parsed = iu.parse_generation_parameters(text, extract_styles=extract)
    assert parsed["Hires prompt"] == "" and parsed["Styles array"] == ["Quality"]


@pytest.mark.parametrize(("mode", "prompt", "array"), [("Ignore", "a cat, masterpiece", None), ("Apply", "a cat", [])])
def test_infotext_styles_option(monkeypatch, mode, prompt, array):
    shared = types.ModuleType("modules.shared")
    shared.opts = types.SimpleNamespace(infotext_styles=mode)
    monkeypatch.setattr(iu, "shared", shared)
    parsed = iu.parse_generation_parameters(
        "a cat, masterpiece\nSteps: 1, Seed: 1, CFG scale: 1", extract_styles=lambda p, n: ([], p.split(",")[0], n)
    )
    assert parsed["Prompt"] == prompt and parsed.get("Styles array") == array


def test_legacy_hypernet_and_first_pass_size():
    parsed = iu.parse_generation_parameters("p\nSteps: 1, Hypernet: anime, Hypernet strength: 0.5, Seed: 1")
    assert parsed["Prompt"] == "p<hypernet:anime:0.5>"

    parsed = iu.parse_generation_parameters("p\nSteps: 1, Size: 1024x1024, First pass size: 512x512, Seed: 1")
    assert (parsed["Size-1"], parsed["Size-2"]) == (512, 512)
    assert (parsed["Hires resize-1"], parsed["Hires resize-2"]) == (1024, 1024)

    parsed = iu.parse_generation_parameters("p\nSteps: 1, Size: 1024x768, First pass size: 0x0, Seed: 1")
    assert (parsed["Size-1"], parsed["Size-2"]) == (640, 448)  # about 512*512 pixels, rounded up to multiples of 64


def test_backcompat_flags_follow_version():
    old = iu.parse_generation_parameters("[a:b:5]\nSteps: 1, Sampler: DDIM, Seed: 1, Version: v1.5.1")
    assert old["Old prompt editing timelines"] is True
    assert old["Pad conds v0"] is True
    assert old["Downcast alphas_cumprod"] is True
    new = iu.parse_generation_parameters("[a:b:5]\nSteps: 1, Sampler: DDIM, Seed: 1, Version: v1.10.1")
    assert not {"Old prompt editing timelines", "Pad conds v0", "Downcast alphas_cumprod"} & set(new)


# ------------------------------------------------------------------------------------------------ settings mapping


def test_override_settings_use_existing_settings_only(monkeypatch):
    class Opts:
        data_labels = {
            "CLIP_stop_at_last_layers": types.SimpleNamespace(infotext="Clip skip"),
            "eta_noise_seed_delta": types.SimpleNamespace(infotext=None),
            "sd_model_checkpoint": types.SimpleNamespace(infotext=None),
        }
        CLIP_stop_at_last_layers = 1
        eta_noise_seed_delta = 0
        sd_model_checkpoint = "abc"

        def cast_value(self, key, value):
            return type(getattr(self, key))(value)

    shared = types.ModuleType("modules.shared")
    shared.opts = Opts()
    monkeypatch.setattr(iu, "shared", shared)

    assert iu.create_override_settings_dict(["Clip skip: 2", "ENSD: 31337", "VAE: x"]) == {
        "CLIP_stop_at_last_layers": 2,
        "eta_noise_seed_delta": 31337,
    }
    params = {"Clip skip": "2", "ENSD": "0", "Model hash": "abc", "VAE": "x"}
    assert iu.get_override_settings(params) == [("Clip skip", "CLIP_stop_at_last_layers", 2)]
    assert iu.get_override_settings(params, skip_fields=["Clip skip"]) == []
    assert ("Clip skip", "CLIP_stop_at_last_layers") in iu.infotext_to_setting_name_mapping


# ------------------------------------------------------------------------------------------------ registry and alias


def test_paste_field_registry():
    iu.reset()
    field = iu.PasteField("steps_component", "Steps", api="steps")
    component, target = field
    assert (component, target, field.label, field.function, field.api) == (
        "steps_component",
        "Steps",
        "Steps",
        None,
        "steps",
    )
    fn = iu.PasteField("c", lambda params: params.get("Seed"))
    assert fn.label is None and fn.function({"Seed": 3}) == 3

    fields = [("prompt_component", "Prompt"), field]
    iu.add_paste_fields("txt2img", None, fields)
    assert all(isinstance(f, iu.PasteField) for f in iu.paste_fields["txt2img"]["fields"])

    binding = iu.ParamBinding(paste_button="button", tabname="txt2img", source_tabname="img2img")
    iu.register_paste_params_button(binding)
    iu.bind_buttons({"img2img": "b2"}, "image", "txt2img")
    assert iu.registered_param_bindings[0] is binding
    assert iu.registered_param_bindings[1].source_tabname == "txt2img"
    assert binding.paste_field_names == []
    iu.reset()
    assert iu.paste_fields == {} and iu.registered_param_bindings == []


@pytest.mark.parametrize("first", ["modules.generation_parameters_copypaste", "modules.infotext_utils"])
def test_legacy_module_name_is_the_same_object(first):
    code = (
        f"import {first}\n"
        "import modules.generation_parameters_copypaste as old\n"
        "import modules.infotext_utils as new\n"
        "from modules import generation_parameters_copypaste as via_from\n"
        "assert old is new and via_from is new, (old, new, via_from)\n"
        "assert old.parse_generation_parameters is new.parse_generation_parameters\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)

"""The top row's tool buttons in a real browser, used as a person uses them: 🗑️ empties the prompts, ↙️ brings
back the last generation (params.txt) or the parameters pasted into the prompt box, 📋 writes the selected styles
into the prompts."""

from __future__ import annotations

from .helpers import fill_prompt, gallery_png, press_generate, set_number, small_run


def _value(page, selector: str) -> str:
    return page.input_value(selector)


def _wait_value(page, selector: str, value: str) -> None:
    page.wait_for_function("([s, v]) => document.querySelector(s)?.value === v", arg=[selector, value])


PROMPT, NEGATIVE = "#{}_prompt textarea", "#{}_neg_prompt textarea"
STEPS, SEED = "#{}_steps input[type=number]", "#{}_seed input"


def test_clear_the_prompt_then_paste_brings_back_the_last_generation(page):
    fill_prompt(page, "txt2img", "a red fox in the snow")
    page.fill(NEGATIVE.format("txt2img"), "blurry")
    small_run(page, "txt2img", steps=5)
    assert "Time taken" in press_generate(page, "txt2img")
    seed = gallery_png(page, "txt2img").info["parameters"].split("Seed: ")[1].split(",")[0]
    assert _value(page, SEED.format("txt2img")) == "-1"  # a random seed: only the paste can bring this one back

    # 🗑️ asks first, as A1111 does: "Cancel" keeps the prompts, "OK" empties both.
    questions: list[str] = []
    page.once("dialog", lambda dialog: (questions.append(dialog.message), dialog.dismiss()))
    page.click("#txt2img_clear_prompt")
    for _ in range(100):  # the question comes from the button's event, a moment after the click
        if questions:
            break
        page.wait_for_timeout(100)
    assert questions == ["Delete prompt?"]
    assert _value(page, PROMPT.format("txt2img")) == "a red fox in the snow"
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#txt2img_clear_prompt")
    _wait_value(page, PROMPT.format("txt2img"), "")
    assert _value(page, NEGATIVE.format("txt2img")) == ""

    set_number(page, "txt2img_steps", 20)
    page.click("#txt2img_paste")  # the prompt is empty: params.txt, the last generation
    _wait_value(page, PROMPT.format("txt2img"), "a red fox in the snow")
    assert _value(page, NEGATIVE.format("txt2img")) == "blurry"
    _wait_value(page, STEPS.format("txt2img"), "5")
    assert _value(page, SEED.format("txt2img")) == seed
    assert page.inner_text("#txt2img_paste_result").strip() == ""
    assert "paste" in (page.get_attribute("#txt2img_paste", "class") or "").split()  # A1111's class, for scripts


def test_paste_reads_parameters_typed_into_the_prompt_on_both_tabs(page):
    fill_prompt(page, "txt2img", "a castle at dusk\nNegative prompt: fog\n"
                                 "Steps: 7, Sampler: Euler, CFG scale: 5.5, Seed: 4242, Size: 96x64")
    page.click("#txt2img_paste")
    _wait_value(page, PROMPT.format("txt2img"), "a castle at dusk")
    assert _value(page, NEGATIVE.format("txt2img")) == "fog"
    _wait_value(page, STEPS.format("txt2img"), "7")
    assert _value(page, SEED.format("txt2img")) == "4242"
    assert _value(page, "#txt2img_width input[type=number]") == "96"
    assert _value(page, "#txt2img_height input[type=number]") == "64"
    assert _value(page, "#txt2img_cfg_scale input[type=number]") == "5.5"

    page.click("#tab_img2img-button")
    fill_prompt(page, "img2img", "a bridge\nSteps: 9, Sampler: Euler, Seed: 77, Size: 64x64, Denoising strength: 0.3")
    page.click("#img2img_paste")
    _wait_value(page, PROMPT.format("img2img"), "a bridge")
    _wait_value(page, STEPS.format("img2img"), "9")
    assert _value(page, SEED.format("img2img")) == "77"
    assert _value(page, "#img2img_denoising_strength input[type=number]") == "0.3"
    assert _value(page, PROMPT.format("txt2img")) == "a castle at dusk"  # the other tab is left alone


def test_apply_styles_writes_the_selected_styles_into_the_prompts(page):
    # a style saved as a person saves one: its prompts, a name, 💾
    fill_prompt(page, "txt2img", "masterpiece, {prompt}, oil painting")
    page.fill(NEGATIVE.format("txt2img"), "lowres")
    page.fill("#txt2img_style_name textarea, #txt2img_style_name input", "toprow oil")
    page.click("#txt2img_style_create")
    page.wait_for_selector("#txt2img_style_result :text('Saved style')")

    fill_prompt(page, "txt2img", "a cat")
    page.fill(NEGATIVE.format("txt2img"), "blurry")
    page.locator("#txt2img_styles input").click()
    page.locator("[role=option]:has-text('toprow oil')").click()
    page.locator("#txt2img_prompt label").first.click()  # close the list
    styles = page.locator("#txt2img_styles .token")
    styles.first.wait_for()
    assert styles.count() == 1

    page.click("#txt2img_style_apply")
    _wait_value(page, PROMPT.format("txt2img"), "masterpiece, a cat, oil painting")
    assert _value(page, NEGATIVE.format("txt2img")) == "blurry, lowres"
    page.wait_for_function("() => document.querySelectorAll('#txt2img_styles .token').length === 0")


def test_paste_without_a_prompt_or_a_last_generation_says_so_and_changes_nothing(page, server):
    (server.data_dir / "params.txt").unlink(missing_ok=True)
    fill_prompt(page, "txt2img", "")
    set_number(page, "txt2img_steps", 13)
    page.click("#txt2img_paste")
    message = page.locator("#txt2img_paste_result .error")
    message.wait_for()
    assert "There is no last generation yet (no params.txt)" in message.inner_text()
    assert message.is_visible()
    assert _value(page, STEPS.format("txt2img")) == "13"
    assert _value(page, PROMPT.format("txt2img")) == ""

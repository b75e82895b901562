"""The 🖌️ styles editor in a real browser, as a person uses it: make a style, use it, change it, delete it."""

from __future__ import annotations

from .helpers import fill_prompt

PROMPT = "#{}_prompt textarea"
NAME = "browser oil"


def _choices(page, tab: str) -> list[str]:
    """The names the tab's Styles dropdown offers (the list is opened, read and closed again)."""
    page.click(f"#tab_{tab}-button")
    page.locator(f"#{tab}_styles input").click()
    page.wait_for_timeout(500)  # the list opens (with no options when there are no styles)
    names = [text.strip() for text in page.locator(f"#{tab}_styles [role=option]").all_inner_texts()]
    page.locator(f"#{tab}_prompt label").first.click()  # close the list
    return names


def _open_editor(page) -> None:
    page.click("#txt2img_styles_edit_button")
    page.locator("#txt2img_styles_dialog").first.wait_for(state="visible")


def _save_with_prompt(page, prompt: str) -> None:
    page.fill("#txt2img_edit_style_prompt textarea", prompt)
    page.click("#txt2img_edit_style_save")
    page.wait_for_selector(f"#txt2img_edit_style_result :text(\"Saved style '{NAME}'\")")


def test_make_use_change_and_delete_a_style(page):
    assert NAME not in _choices(page, "txt2img")
    page.click("#tab_txt2img-button")
    _open_editor(page)
    select = page.locator("#txt2img_styles_edit_select input")
    select.fill(NAME)  # a new name, typed into the Style box
    select.press("Enter")
    page.locator("#txt2img_edit_style_prompt label").first.click()  # leave the box: its list closes
    _save_with_prompt(page, "oil painting, {prompt}")
    assert NAME in _choices(page, "txt2img")
    assert NAME in _choices(page, "img2img")  # the other tab's list follows without a reload

    page.click("#tab_txt2img-button")
    page.locator("#txt2img_styles input").click()
    page.locator(f"#txt2img_styles [role=option]:has-text('{NAME}')").click()
    page.locator("#txt2img_prompt label").first.click()
    page.locator("#txt2img_styles .token").first.wait_for()

    page.click("#txt2img_edit_style_close")
    page.locator("#txt2img_styles_dialog").first.wait_for(state="hidden")
    _open_editor(page)
    assert select.input_value() == NAME
    assert page.input_value("#txt2img_edit_style_prompt textarea") == "oil painting, {prompt}"
    _save_with_prompt(page, "watercolor, {prompt}, paper texture")

    fill_prompt(page, "txt2img", "a cat")
    page.click("#txt2img_style_apply")  # 📋 uses the changed style
    page.wait_for_function("([s, v]) => document.querySelector(s)?.value === v",
                           arg=[PROMPT.format("txt2img"), "watercolor, a cat, paper texture"])

    questions: list[str] = []
    page.once("dialog", lambda dialog: (questions.append(dialog.message), dialog.dismiss()))
    page.click("#txt2img_edit_style_delete")  # "Cancel" keeps it
    for _ in range(50):
        if questions:
            break
        page.wait_for_timeout(100)
    assert questions == [f"Delete style {NAME}?"]
    page.wait_for_timeout(500)
    assert NAME in _choices(page, "txt2img")

    page.click("#tab_txt2img-button")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#txt2img_edit_style_delete")
    page.wait_for_selector(f"#txt2img_edit_style_result :text(\"Deleted style '{NAME}'\")")
    assert NAME not in _choices(page, "txt2img")
    assert NAME not in _choices(page, "img2img")

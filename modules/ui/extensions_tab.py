"""The Extensions tab (A1111's): the installed extensions with their git facts and an enabled checkbox each,
Apply and restart UI (updates the extensions whose "update" box is ticked, saves `disabled_extensions` /
`disable_all_extensions`, then restarts the server in place after the jobs already queued, so the change loads;
the page reloads when the server is back), Check for updates (git fetch and compare; an extension behind its
remote gets a ticked "update" box), Available (the extension index, loaded only when the person asks:
modules/extension_index.py), Install from URL (git clone into extensions/<name>) and Backup/Restore (config
states: modules/config_states.py).

Changing anything is refused on a server other machines can reach, unless --enable-insecure-extension-access
(modules/extension_manager.py says why); the list stays visible.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterator
from typing import Any

import gradio as gr

from modules import config_states, extension_index, extension_manager, extensions, restart, shared
from modules.ui import common
from modules.ui.page_load import PageLoad

# name -> result of the last "Check for updates" or update (the server's view, shared by every page)
update_status: dict[str, str] = {}
# names the last "Check for updates" found behind their remote: their row shows a ticked "update" box
updatable: set[str] = set()

# Before Apply runs on the server: the names whose "enabled" and whose "update" box is ticked, as JSON, in place of
# the hidden boxes.
COLLECT_ENABLED_JS = """(enabled, disableAll, update) => {
    const ticked = (kind) => JSON.stringify(Array.from(document.querySelectorAll(
        `#extensions_installed_html input[type=checkbox][data-${kind}]`)).filter((b) => b.checked)
        .map((b) => b.dataset[kind]));
    return [ticked('extension'), disableAll, ticked('update')];
}"""


RESTARTING = "Saved. Restarting the server (after the jobs already queued); this page reloads when it is back."

# After Apply: when the server said it restarts, wait for it to go away and come back, then reload the page.
RELOAD_WHEN_BACK_JS = """async (result) => {
    if (!result || !result.includes('Restarting the server')) return;
    const answers = async () => { try { return (await fetch(location.href, {cache: 'no-store'})).ok; }
                                  catch (e) { return false; } };
    const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
    for (let i = 0; i < 600 && await answers(); i++) await sleep(500);   // still the old server
    for (let i = 0; i < 1200 && !(await answers()); i++) await sleep(500);  // down, then back
    location.reload();
}"""


def _link(url: str | None) -> str:
    if not url:
        return ""
    text = html.escape(url)
    if url.startswith(("https://", "http://")):
        return f'<a href="{text}" target="_blank" rel="noopener noreferrer">{text}</a>'
    return text


def _update_cell(name: str, refused: bool) -> str:
    status = html.escape(update_status.get(name, ""))
    if name not in updatable or refused:
        return status
    name = html.escape(name)
    return (f"<label><input type='checkbox' name='update_{name}' data-update='{name}' checked"
            f" aria-label='Update {name}'> {status}</label>")


def table_html() -> str:
    """The installed extensions as a table; the checkbox shows the saved setting, "Loaded" what runs now."""
    refused = extension_manager.access_refusal(shared.cmd_opts) is not None
    disabled = set(shared.opts.data.get("disabled_extensions") or [])
    running = {ext.path for ext in extensions.active()}
    found = extensions.scan()
    if not found:
        return "<p class='extensions-empty'>No extensions are installed.</p>"
    rows = []
    for ext in found:
        name = html.escape(ext.name)
        checked = "" if ext.name in disabled else " checked"
        locked = " disabled" if refused else ""
        kind = " <span class='info'>(built-in)</span>" if ext.is_builtin else ""
        rows.append(
            "<tr>"
            f"<td><input type='checkbox' name='enable_{name}' data-extension='{name}'{checked}{locked}"
            f" aria-label='Enable {name}'></td>"
            f"<td class='extension-name'>{name}{kind}</td>"
            f"<td>{_link(ext.remote)}</td>"
            f"<td>{html.escape(ext.branch or '')}</td>"
            f"<td><code>{html.escape(ext.version)}</code></td>"
            f"<td>{html.escape(ext.commit_date_text())}</td>"
            f"<td>{'yes' if ext.path in running else 'no'}</td>"
            f"<td class='extension-update'>{_update_cell(ext.name, refused)}</td>"
            "</tr>"
        )
    head = "".join(f"<th>{h}</th>" for h in ("Enabled", "Extension", "URL", "Branch", "Commit", "Date", "Loaded",
                                              "Update"))
    return f"<table id='extensions_table'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def errors_html() -> str:
    if not extensions.errors:
        return ""
    items = "".join(f"<li>{html.escape(line)}</li>" for line in extensions.errors)
    return f"<div class='error'>Problems with extensions:<ul>{items}</ul></div>"


def _names(text: str) -> list[str]:
    names = json.loads(text or "[]")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError("expected a list of names")
    return names


def apply(enabled_json: str, disable_all: str, update_json: str = "[]") -> tuple[str, str]:
    """Save the checkboxes and the "Disable all extensions" choice, update the ticked extensions, and restart when
    something changed; (result, table). The result says per extension what its update did."""
    try:
        enabled, update = _names(enabled_json), _names(update_json)
    except ValueError as e:
        return common.error_html(f"Could not read the checkboxes: {e}"), table_html()
    backup = None
    try:
        backup = config_states.save("Backup (pre-apply)")  # first: it checks access; removed when nothing changed
        message = extension_manager.save_disabled(enabled, disable_all)
        results = extension_manager.update_extensions(update)
    except (extension_manager.ExtensionError, ValueError, OSError) as e:  # SettingValueError is a ValueError
        if backup:
            config_states.remove(backup)
        return common.error_html(str(e)), table_html()
    lines = []
    for result in results:
        update_status[result.name] = result.message.removeprefix(f"{result.name}: ")
        if result.status != "failed":
            updatable.discard(result.name)
        lines.append((common.error_html if result.status == "failed" else common.notice_html)(result.message))
    updated = any(r.status == "updated" for r in results)
    if updated and extension_manager.CHANGED_MESSAGE not in message:
        message = extension_manager.CHANGED_MESSAGE  # the new versions load at the next start
    if extension_manager.CHANGED_MESSAGE not in message:
        config_states.remove(backup)
    elif restart.is_restartable():
        restart.request_restart()  # after the jobs already waiting; the page reloads when the server is back
        message = RESTARTING
    return "".join(lines) + common.notice_html(message), table_html()


def state_choices() -> Any:
    choices = config_states.list_states()
    return gr.update(choices=choices, value=choices[0][1] if choices else None)


def save_state(name: str) -> tuple[str, Any, str]:
    """"Save current config": (result, the state list with the new one chosen, its preview)."""
    try:
        filename = config_states.save(name)
    except (extension_manager.ExtensionError, OSError) as e:
        return common.error_html(f"Could not save the config state: {e}"), gr.skip(), gr.skip()
    return (common.notice_html(f"Saved config state {filename}."), gr.update(choices=config_states.list_states(),
            value=filename), config_states.preview_html(filename))


def restore_state(filename: str | None, restore_type: str) -> tuple[str, str, Any]:
    """"Restore selected config state": back up the state now, restore the chosen one's extensions, restart when
    something changed; (result, installed table, state list)."""
    if restore_type != "extensions":
        return common.error_html("Only extensions can be restored here."), gr.skip(), gr.skip()
    if not filename:
        return common.error_html("Choose a config state first."), gr.skip(), gr.skip()
    try:
        extension_manager.check_access()
        config_states.load(filename)  # a file that is not a state is refused before anything is done
        backup = config_states.save("Backup (pre-restore)")
        report = config_states.restore(filename)
    except (extension_manager.ExtensionError, config_states.StateError, ValueError, OSError) as e:
        return common.error_html(f"Not restored: {e}"), table_html(), gr.skip()
    lines = [common.notice_html(line) for line in report.restored]
    lines += [common.error_html(line) for line in report.problems]
    if not report.changed:
        config_states.remove(backup)
        message = "Nothing changed."
    elif restart.is_restartable():
        restart.request_restart()
        message = RESTARTING
    else:
        message = extension_manager.CHANGED_MESSAGE
    return "".join(lines) + common.notice_html(message), table_html(), gr.update(choices=config_states.list_states())


def check_for_updates() -> Iterator[tuple[str, str]]:
    """git fetch each installed extension in turn; (progress or result, table)."""
    found = [ext for ext in extensions.scan() if ext.remote]
    if not found:
        yield common.notice_html("No installed extension has a git remote to check."), table_html()
        return
    try:
        for n, ext in enumerate(extension_manager.check_updates(found), start=1):
            update_status[ext.name] = ext.status
            (updatable.add if ext.can_update else updatable.discard)(ext.name)
            yield common.notice_html(f"Checked {n} of {len(found)}: {ext.name}: {ext.status}"), gr.skip()
    except extension_manager.ExtensionError as e:
        yield common.error_html(str(e)), table_html()
        return
    behind = [ext.name for ext in found if ext.can_update]
    summary = f"Updates available for: {', '.join(behind)}." if behind else "All extensions are up to date."
    yield common.notice_html(summary), table_html()


def install(url: str, branch: str, dirname: str) -> Iterator[tuple[str, Any]]:
    """Install from a git URL, showing each step; (progress or result, table)."""
    last = ""
    try:
        for line in extension_manager.install_from_url(url, branch, dirname):
            last = line
            yield common.notice_html(line), gr.skip()
    except extension_manager.ExtensionError as e:
        yield common.error_html(str(e)), gr.skip()
        return
    except OSError as e:  # the extensions folder cannot be written
        yield common.error_html(f"Could not install: {e.strerror or e}"), gr.skip()
        return
    yield common.notice_html(last), table_html()


def load_index(url: str, hide_tags: list[str], order: str, search: str) -> tuple[str, Any, str, Any]:
    """"Load from:": (result line, the loaded index for this page, its table, the tag choices)."""
    try:
        index = extension_index.load(url)
    except extension_index.IndexFailure as e:
        return common.error_html(str(e)), gr.skip(), gr.skip(), gr.skip()
    return (common.notice_html(extension_index.summary(index)), index,
            extension_index.table_html(index, hide_tags, order, search),
            gr.update(choices=index.tag_choices(hide_tags)))


def filter_index(index: extension_index.Index | None, hide_tags: list[str], order: str, search: str) -> str:
    return extension_index.table_html(index, hide_tags, order, search)


def install_from_index(url: str, index: extension_index.Index | None, hide_tags: list[str], order: str,
                       search: str) -> Iterator[tuple[Any, Any, Any, Any]]:
    """A row's Install: the same path, checks and lines as Install from URL; (result, available table, installed
    table, the index marked with what is installed now)."""
    for message, installed in install(url, "", ""):
        yield message, gr.skip(), installed, gr.skip()
    if index is not None:  # the row now says "Installed"
        index = extension_index.with_installed(index)
        yield gr.skip(), extension_index.table_html(index, hide_tags, order, search), gr.skip(), index


def disable_all_value() -> str:
    return shared.opts.data.get("disable_all_extensions", "none")


def build(loads: PageLoad) -> None:
    """The tab; call inside the page's `gr.Tabs()` (app.py puts it before Settings). Its error list, table and
    "Disable all" choice are refreshed by each page open (`loads`)."""
    refusal = extension_manager.access_refusal(shared.cmd_opts)
    allowed = refusal is None
    with gr.Tab("Extensions", id="extensions", elem_id="tab_extensions"):
        if refusal:
            gr.HTML(common.notice_html(refusal), elem_id="extensions_access_refused")
        errors = gr.HTML(errors_html(), elem_id="extensions_errors")
        with gr.Tabs(elem_id="tabs_extensions"):
            with gr.Tab("Installed", id="extensions_installed", elem_id="extensions_installed_tab"):
                with gr.Row(elem_id="extensions_installed_top"):
                    apply_button = gr.Button("Apply and restart UI", variant="primary",
                                             elem_id="extensions_apply", interactive=allowed)
                    check_button = gr.Button("Check for updates", elem_id="extensions_check",
                                             interactive=allowed)
                    disable_all = gr.Radio(label="Disable all extensions", choices=["none", "extra", "all"],
                                           value=disable_all_value(),
                                           elem_id="extensions_disable_all", interactive=allowed)
                result = gr.HTML("", elem_id="extensions_installed_result")
                table = gr.HTML(table_html(), elem_id="extensions_installed_html")
                enabled_json = gr.Textbox(visible=False)
                update_json = gr.Textbox(visible=False)
            with gr.Tab("Available", id="extensions_available", elem_id="extensions_available_tab"):
                with gr.Row():
                    load_button = gr.Button("Load from:", variant="primary", elem_id="extensions_available_load",
                                            interactive=allowed, scale=0)
                    index_url = gr.Textbox(value=extension_index.index_url(), label="Extension index URL",
                                           show_label=False, elem_id="extensions_available_index_url",
                                           interactive=allowed)
                with gr.Row():
                    hide_tags = gr.CheckboxGroup(label="Hide extensions with tags",
                                                 choices=list(extension_index.INITIAL_TAGS),
                                                 value=list(extension_index.DEFAULT_HIDDEN),
                                                 elem_id="extensions_available_hide_tags")
                    order = gr.Radio(label="Order", choices=list(extension_index.ORDERS), value="newest first",
                                     elem_id="extensions_available_order")
                search = gr.Textbox(label="Search", elem_id="extensions_available_search")
                available_result = gr.HTML("", elem_id="extensions_available_result")
                available_table = gr.HTML("", elem_id="extensions_available_html")
                index_state = gr.State(None)  # this page's loaded index
                # kept in the page but never shown: a row's Install button fills and presses them
                # (javascript/extensions_tab.js)
                chosen_url = gr.Textbox(visible="hidden", elem_id="extensions_available_install_url")
                chosen_install = gr.Button("Install", visible="hidden", elem_id="extensions_available_install_button")
            with gr.Tab("Install from URL", id="extensions_install", elem_id="extensions_install_tab"):
                url = gr.Textbox(label="URL for extension's git repository", elem_id="extensions_install_url",
                                 interactive=allowed)
                branch = gr.Textbox(label="Specific branch name", placeholder="Leave empty for the default branch",
                                    elem_id="extensions_install_branch", interactive=allowed)
                dirname = gr.Textbox(label="Local directory name", placeholder="Leave empty for auto",
                                     elem_id="extensions_install_dirname", interactive=allowed)
                install_button = gr.Button("Install", variant="primary", elem_id="extensions_install_button",
                                           interactive=allowed)
                install_result = gr.HTML("", elem_id="extension_install_result")
            with gr.Tab("Backup/Restore", id="extensions_backup", elem_id="extensions_backup_tab"):
                gr.HTML(common.notice_html(config_states.RESTORE_NOTE), elem_id="extensions_config_note")
                with gr.Row():
                    state_list = gr.Dropdown(label="Saved config states", choices=[],
                                             elem_id="extensions_config_state", interactive=True)
                    restore_type = gr.Radio(label="Restore type", choices=["extensions"], value="extensions",
                                            elem_id="extensions_config_restore_type", interactive=allowed)
                restore_button = gr.Button("Restore selected config state", variant="stop",
                                           elem_id="extensions_config_restore", interactive=allowed)
                with gr.Row():
                    state_name = gr.Textbox(label="Config name", placeholder="Name the current config",
                                            elem_id="extensions_config_name", interactive=allowed)
                    save_button = gr.Button("Save current config", elem_id="extensions_config_save",
                                            interactive=allowed, scale=0)
                state_result = gr.HTML("", elem_id="extensions_config_result")
                state_preview = gr.HTML("", elem_id="extensions_config_preview")
    loads.add(lambda: (errors_html(), disable_all_value(), table_html()), [errors, disable_all, table])
    loads.add(state_choices, [state_list])
    state_list.change(config_states.preview_html, inputs=[state_list], outputs=[state_preview],
                      show_progress="hidden")
    save_button.click(save_state, inputs=[state_name], outputs=[state_result, state_list, state_preview],
                      show_progress="hidden")
    restore_button.click(restore_state, inputs=[state_list, restore_type], outputs=[state_result, table, state_list],
                         show_progress="hidden").then(None, inputs=[state_result], js=RELOAD_WHEN_BACK_JS)
    apply_button.click(apply, inputs=[enabled_json, disable_all, update_json], outputs=[result, table],
                       js=COLLECT_ENABLED_JS, show_progress="hidden").then(None, inputs=[result], js=RELOAD_WHEN_BACK_JS)
    filters = [hide_tags, order, search]
    load_button.click(load_index, inputs=[index_url, *filters], outputs=[available_result, index_state,
                                                                        available_table, hide_tags])
    for component in (hide_tags, order):
        component.change(filter_index, inputs=[index_state, *filters], outputs=[available_table],
                         show_progress="hidden")
    search.input(filter_index, inputs=[index_state, *filters], outputs=[available_table], show_progress="hidden",
                 trigger_mode="always_last")
    chosen_install.click(install_from_index, inputs=[chosen_url, index_state, *filters],
                         outputs=[available_result, available_table, table, index_state], show_progress="hidden")
    check_button.click(check_for_updates, outputs=[result, table], show_progress="hidden")
    install_button.click(install, inputs=[url, branch, dirname], outputs=[install_result, table],
                         show_progress="hidden")

"""X/Y/Z plot: one picture per combination of up to three axes' values, in a labelled grid (A1111's script).

The request is copied for every cell and each axis applies its value to the copy (modules.xyz_axes), so a cell
is exactly the picture a single generation with those settings gives. Unless "Keep -1 for seeds" is ticked the
seed is fixed once, so every cell shares it. All values are read and checked before the first cell runs.
Settings that cells change (checkpoint, VAE, clip skip ...) are put back once, after the last cell.

The result: the grid (with the X/Y/Z values in its infotext, saved to the grids folder when `grid_save` is on),
then the sub-grids of each Z value and the cells when "Include Sub Grids" / "Include Sub Images" are ticked.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections import namedtuple
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
from PIL import Image

from modules import grid_labels, images, processing, scripts, sd_models, shared
from modules.filename_patterns import shared_opt
from modules.grid_labels import GridAnnotation
from modules.processing import Processed
from modules.ui.common import tool_button
from modules.xyz_axes import (  # noqa: F401  (A1111's names: extensions reach them through this module)
    AxisOption,
    AxisOptionImg2Img,
    AxisOptionTxt2Img,
    apply_field,
    apply_override,
    axes_for,
    axis_options,
    boolean_choice,
    confirm_range,
    csv_string_to_list_strip,
    do_nothing,
    find_axis,
    fix_axis_seeds,
    format_nothing,
    format_remove_path,
    format_value,
    format_value_add_label,
    format_value_join_list,
    list_to_csv_string,
    loop_order,
    parse_axis_values,
    str_permutations,
)

log = logging.getLogger(__name__)

fill_values_symbol = "\U0001f4d2"  # 📒
AxisInfo = namedtuple("AxisInfo", ["axis", "values"])
AXIS_NAMES = ("X", "Y", "Z")


@dataclass
class Axis:
    """One axis of a run: its option, the values it takes, and the text the infotext records."""

    name: str
    opt: AxisOption
    values: list[Any]
    text: str

    def labels(self, p: Any) -> list[Any]:
        return [self.opt.format_value(p, self.opt, v) for v in self.values]


@dataclass
class Cell:
    index: int
    positions: tuple[int, int, int]
    request: Any = None
    result: Processed | None = None
    error: str | None = None
    exception: Exception | None = None


@dataclass
class Plot:
    axes: list[Axis]
    cells: list[Cell] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.axes[0].values), len(self.axes[1].values), len(self.axes[2].values)


# --- settings the cells change ---------------------------------------------------------------------------------


class SettingsGuard:
    """Remembers each setting a cell overrides and puts all back after the plot (A1111's
    SharedSettingsStackHelper). Cells do not restore their own: a checkpoint axis would load every checkpoint
    twice per cell."""

    def __init__(self) -> None:
        self.saved: dict[str, Any] = {}
        self.absent: set[str] = set()
        model = shared.sd_model
        self.checkpoint = model.sd_checkpoint_info if model is not None else None

    def remember(self, keys: set[str]) -> None:
        for key in keys - self.saved.keys() - self.absent:
            if key in shared.opts.data:
                self.saved[key] = shared.opts.data[key]
            else:
                self.absent.add(key)

    def restore(self) -> None:
        for key, value in self.saved.items():
            shared.opts.data[key] = value
        for key in self.absent:
            shared.opts.data.pop(key, None)
        model = shared.sd_model
        target = self.checkpoint
        if target is None and self.saved.get("sd_model_checkpoint"):  # no model was loaded before the plot
            target = sd_models.get_closet_checkpoint_match(str(self.saved["sd_model_checkpoint"]))
        try:
            if target is not None and model is not None and model.sd_checkpoint_info.filename != target.filename:
                sd_models.load_model(target)  # generations take the loaded model: it must be the one in settings
            elif "sd_vae" in self.saved or "sd_vae" in self.absent:
                sd_models.reload_vae_weights()
        except Exception:  # the plot is done; a failed switch back must not throw its pictures away
            log.exception("X/Y/Z plot: could not restore the model used before the plot")


# --- the cells ------------------------------------------------------------------------------------------------


def cell_request(p: Any, plot: Plot, positions: tuple[int, int, int], vary: tuple[bool, bool, bool]) -> Any:
    """A copy of the request with each axis's value applied (the mutable parts copied, so cells share nothing)."""
    pc = copy.copy(p)
    pc.styles = list(p.styles)
    pc.override_settings = dict(p.override_settings)
    pc.extra_generation_params = dict(p.extra_generation_params)
    pc.comments = dict(p.comments)
    pc.override_settings_restore_afterwards = False  # SettingsGuard restores once, after the last cell
    for axis, i in zip(plot.axes, positions, strict=True):
        axis.opt.apply(pc, axis.values[i], axis.values)
    nx, ny, _ = plot.shape
    if isinstance(pc.seed, int) and pc.seed >= 0:  # "Vary seeds": an offset per position, as A1111
        xdim, ydim = (nx if vary[0] else 1), (ny if vary[1] else 1)
        pc.seed += (positions[0] if vary[0] else 0) + (positions[1] * xdim if vary[1] else 0) \
            + (positions[2] * xdim * ydim if vary[2] else 0)
    return pc


def run_cell(p: Any, pc: Any, guard: SettingsGuard) -> Processed:
    keys = set(pc.override_settings)
    if not p.override_settings_restore_afterwards:
        keys -= set(p.override_settings)  # the caller wanted its own overrides to stay
    guard.remember(keys)
    for key, value in pc.override_settings.items():
        if key not in shared.opts.data_labels:
            # A sampler parameter no registered setting holds: the engine reads it from the settings all the same.
            shared.opts.data[key] = value
    return processing.process_images(pc)


def run_cells(p: Any, plot: Plot, vary: tuple[bool, bool, bool]) -> None:
    nx, ny, _ = plot.shape
    order = loop_order(*(axis.opt.cost for axis in plot.axes))
    guard = SettingsGuard()
    try:
        for indices in itertools.product(*(range(plot.shape[axis]) for axis in order)):
            positions = [0, 0, 0]
            for axis, i in zip(order, indices, strict=True):
                positions[axis] = i
            ix, iy, iz = positions
            cell = Cell(ix + iy * nx + iz * nx * ny, (ix, iy, iz))
            plot.cells.append(cell)
            if shared.state.stopping:
                continue  # interrupted: the remaining cells stay blank
            try:
                cell.request = cell_request(p, plot, cell.positions, vary)
                cell.result = run_cell(p, cell.request, guard)
            except Exception as e:  # as A1111: the cell stays blank, the other cells still run
                log.exception("X/Y/Z plot: cell %s failed", cell.index + 1)
                cell.error = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
                cell.exception = e
    finally:
        guard.restore()
    plot.cells.sort(key=lambda c: c.index)


# --- the grid ---------------------------------------------------------------------------------------------------


def _cell_size(images_list: list[Image.Image]) -> tuple[int, int]:
    return max(i.width for i in images_list), max(i.height for i in images_list)


def draw_xyz_grid(p: Any, plot: Plot, cell_images: list[Image.Image], draw_legend: bool,
                  margin_size: int) -> tuple[Image.Image, list[Image.Image]]:
    """(the whole grid, one grid per Z value)."""
    x_axis, y_axis, z_axis = plot.axes
    nx, ny, nz = plot.shape
    hor_texts = [[GridAnnotation(str(label))] for label in x_axis.labels(p)]
    ver_texts = [[GridAnnotation(str(label))] for label in y_axis.labels(p)]
    sub_grids = []
    for iz in range(nz):
        cells = cell_images[iz * nx * ny:(iz + 1) * nx * ny]
        grid = images.image_grid(cells, rows=ny)
        if draw_legend:
            width, height = _cell_size(cells)
            grid = grid_labels.draw_grid_annotations(grid, width, height, hor_texts, ver_texts, margin_size)
        sub_grids.append(grid)
    if nz == 1:
        return sub_grids[0], sub_grids
    z_grid = images.image_grid(sub_grids, rows=1)
    if draw_legend:
        width, height = _cell_size(sub_grids)
        titles = [[GridAnnotation(str(label))] for label in z_axis.labels(p)]
        z_grid = grid_labels.draw_grid_annotations(z_grid, width, height, titles, [[GridAnnotation()]])
    return z_grid, sub_grids


def _axis_params(axis: Axis, no_fixed_seeds: bool) -> dict[str, Any]:
    if axis.opt.label == "Nothing":
        return {}
    params = {f"{axis.name} Type": axis.opt.label, f"{axis.name} Values": axis.text}
    if axis.opt.label in ("Seed", "Var. seed") and not no_fixed_seeds:
        params[f"Fixed {axis.name} Values"] = ", ".join(str(v) for v in axis.values)
    return params


def grid_infotext(pc: Any, params: dict[str, Any]) -> str:
    """The infotext of a cell's request with the plot's parameters added (A1111's grid infotext)."""
    request = copy.copy(pc)
    request.extra_generation_params = {**pc.extra_generation_params, **params}
    return processing.create_infotext(request, request.all_prompts, request.all_seeds, request.all_subseeds)


def _first_done(cells: list[Cell]) -> Cell | None:
    return next((c for c in cells if c.result is not None and c.result.images), None)


def _outdir_grids(p: Any) -> str:
    return p.outpath_grids or processing._outdir(p.kind, False)  # the grids folder process_images also uses


def _save_grid(p: Any, pc: Any, grid: Image.Image, infotext: str, prompt: str, seed: Any) -> None:
    images.save_image(grid, _outdir_grids(p), "xyz_grid", seed, prompt, shared_opt("grid_format", "png"),
                      info=infotext, grid=True, p=pc,
                      short_filename=not shared_opt("grid_extended_filename", False))


# --- the script ---------------------------------------------------------------------------------------------------


class Script(scripts.Script):
    def title(self) -> str:
        return "X/Y/Z plot"

    def show(self, is_img2img: bool) -> bool:
        return True

    def ui(self, is_img2img: bool) -> list[Any]:
        self.current_axis_options = axes_for(is_img2img)
        labels = [opt.label for opt in self.current_axis_options]
        with gr.Row():
            with gr.Column(scale=19):
                rows = [self._axis_row(name.lower(), labels, labels[1] if name == "X" else labels[0])
                        for name in AXIS_NAMES]
        with gr.Row(variant="compact", elem_id="axis_options"):
            with gr.Column():
                draw_legend = gr.Checkbox(label="Draw legend", value=True, elem_id=self.elem_id("draw_legend"))
                no_fixed_seeds = gr.Checkbox(label="Keep -1 for seeds", value=False,
                                             elem_id=self.elem_id("no_fixed_seeds"))
                with gr.Row():
                    vary = [gr.Checkbox(label=f"Vary seeds for {name}", value=False, min_width=80,
                                        elem_id=self.elem_id(f"vary_seeds_{name.lower()}")) for name in AXIS_NAMES]
            with gr.Column():
                include_lone_images = gr.Checkbox(label="Include Sub Images", value=False,
                                                  elem_id=self.elem_id("include_lone_images"))
                include_sub_grids = gr.Checkbox(label="Include Sub Grids", value=False,
                                                elem_id=self.elem_id("include_sub_grids"))
                csv_mode = gr.Checkbox(label="Use text inputs instead of dropdowns", value=False,
                                       elem_id=self.elem_id("csv_mode"))
            with gr.Column():
                margin_size = gr.Slider(label="Grid margins (px)", minimum=0, maximum=500, value=0, step=2,
                                        elem_id=self.elem_id("margin_size"))
        self._wire(rows, csv_mode)
        flat = [c for (axis_type, values, dropdown, _) in rows for c in (axis_type, values, dropdown)]
        return [*flat, draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds, *vary, margin_size,
                csv_mode]

    def _axis_row(self, name: str, labels: list[str], value: str) -> tuple[Any, Any, Any, Any]:
        with gr.Row():
            axis_type = gr.Dropdown(label=f"{name.upper()} type", choices=labels, value=value, type="index",
                                    elem_id=self.elem_id(f"{name}_type"))
            values = gr.Textbox(label=f"{name.upper()} values", value="", lines=1,
                                elem_id=self.elem_id(f"{name}_values"))
            dropdown = gr.Dropdown(label=f"{name.upper()} values", visible=False, multiselect=True, interactive=True,
                                   choices=[])
            fill = tool_button(fill_values_symbol, f"xyz_grid_fill_{name}_tool_button",
                               "Fill with all the values this axis can take", visible=False)
        return axis_type, values, dropdown, fill

    def _wire(self, rows: list[tuple[Any, Any, Any, Any]], csv_mode: Any) -> None:
        """The page's behaviour: swap axes, fill values, a dropdown for axes that have choices."""
        axes = self.current_axis_options

        def option(index: Any) -> AxisOption:
            try:
                return find_axis(axes, index)
            except ValueError:
                return axes[0]

        def swap(type1, values1, dropdown1, type2, values2, dropdown2):
            return option(type2).label, values2, dropdown2, option(type1).label, values1, dropdown1

        def fill(axis_type, csv: bool):
            opt = option(axis_type)
            if opt.choices is None:
                return gr.update(), gr.update()
            if csv:
                return list_to_csv_string(opt.choices()), gr.update()
            return gr.update(), gr.update(value=opt.choices())

        def select_axis(axis_type, values, dropdown, csv: bool):
            choices_fn = option(axis_type).choices
            choices = choices_fn() if choices_fn is not None else None
            if choices is not None:
                if csv and dropdown:
                    values, dropdown = list_to_csv_string([v for v in dropdown if v in choices]), []
                elif not csv and values:
                    dropdown, values = [v for v in csv_string_to_list_strip(values) if v in choices], ""
            return (gr.update(visible=choices is not None),
                    gr.update(visible=choices is None or csv, value=values),
                    gr.update(choices=choices or [], visible=choices is not None and not csv, value=dropdown or []))

        for first, second in ((0, 1), (1, 2), (0, 2)):
            a, b = rows[first][:3], rows[second][:3]
            button = gr.Button(value=f"Swap {AXIS_NAMES[first]}/{AXIS_NAMES[second]} axes",
                               elem_id=f"{AXIS_NAMES[first].lower()}{AXIS_NAMES[second].lower()}_grid_swap_axes_button")
            button.click(swap, inputs=[*a, *b], outputs=[*a, *b])
        for axis_type, values, dropdown, fill_button in rows:
            fill_button.click(fill, inputs=[axis_type, csv_mode], outputs=[values, dropdown])
            axis_type.change(select_axis, inputs=[axis_type, values, dropdown, csv_mode],
                             outputs=[fill_button, values, dropdown])

        def change_choice_mode(csv: bool, *axis_values):
            out = []
            for i in range(0, len(axis_values), 3):
                out.extend(select_axis(*axis_values[i:i + 3], csv))
            return out

        inputs = [c for row in rows for c in row[:3]]
        outputs = [c for (axis_type, values, dropdown, fill_button) in rows for c in (fill_button, values, dropdown)]
        csv_mode.change(change_choice_mode, inputs=[csv_mode, *inputs], outputs=outputs)
        self.infotext_fields = [(c, f"{AXIS_NAMES[i]} {kind}") for i, row in enumerate(rows)
                                for c, kind in ((row[0], "Type"), (row[1], "Values"))]

    # --- run ---
    def read_axes(self, p: Any, args: list[Any], csv_mode: bool) -> list[Axis]:
        """The three axes from (type, text, dropdown) triples; every value checked before anything runs."""
        options = axes_for(getattr(p, "kind", "txt2img") == "img2img")
        axes = []
        for i, name in enumerate(AXIS_NAMES):
            axis_type, text, dropdown = args[3 * i:3 * i + 3]
            opt = find_axis(options, axis_type)
            if opt.choices is not None and not csv_mode and dropdown:
                text = list_to_csv_string(dropdown)
            try:
                values = parse_axis_values(opt, text or "", dropdown, csv_mode, p)
            except ValueError as e:
                raise ValueError(f"X/Y/Z plot, {name} values: {e}") from None
            axes.append(Axis(name, opt, values, text or ""))
        return axes

    def run(self, p: Any, x_type: Any = 1, x_values: str = "", x_values_dropdown: list[Any] | None = None,
            y_type: Any = 0, y_values: str = "", y_values_dropdown: list[Any] | None = None,
            z_type: Any = 0, z_values: str = "", z_values_dropdown: list[Any] | None = None,
            draw_legend: bool = True, include_lone_images: bool = False, include_sub_grids: bool = False,
            no_fixed_seeds: bool = False, vary_seeds_x: bool = False, vary_seeds_y: bool = False,
            vary_seeds_z: bool = False, margin_size: int = 0, csv_mode: bool = False) -> Processed:
        if not no_fixed_seeds:
            processing.fix_seed(p)
        if not shared_opt("return_grid", True):
            p.batch_size = 1  # each cell shows its first picture only, so it must be the only one
        args = [x_type, x_values, x_values_dropdown, y_type, y_values, y_values_dropdown,
                z_type, z_values, z_values_dropdown]
        plot = Plot(self.read_axes(p, args, bool(csv_mode)))
        self._check_size(p, plot)
        if not no_fixed_seeds:
            for axis in plot.axes:
                axis.values = fix_axis_seeds(axis.opt, axis.values)
        nx, ny, nz = plot.shape
        per_cell = p.n_iter * p.batch_size
        log.info("X/Y/Z plot will create %d images on %d %dx%d grid%s%s.", nx * ny * nz * per_cell, nz, nx, ny,
                 "s" if nz > 1 else "", f"; {per_cell} images per cell" if per_cell > 1 else "")
        state = getattr(shared, "state", None)
        if state is not None:  # A1111 extensions read the running plot's axes here
            state.xyz_plot_x, state.xyz_plot_y, state.xyz_plot_z = (AxisInfo(a.opt, a.values) for a in plot.axes)
        with shared.state.job_scope(p.kind):
            run_cells(p, plot, (bool(vary_seeds_x), bool(vary_seeds_y), bool(vary_seeds_z)))
        return self.assemble(p, plot, bool(draw_legend), bool(include_lone_images), bool(include_sub_grids),
                             bool(no_fixed_seeds), int(margin_size or 0))

    @staticmethod
    def _check_size(p: Any, plot: Plot) -> None:
        nx, ny, nz = plot.shape
        megapixels = round(nx * ny * nz * p.width * p.height / 1_000_000)
        limit = shared_opt("img_max_size_mp", 200)
        if megapixels >= limit:
            raise ValueError(f"X/Y/Z plot: the grid would be too large ({megapixels} megapixels; the img_max_size_mp "
                             f"setting allows less than {limit})")

    def assemble(self, p: Any, plot: Plot, draw_legend: bool, include_lone_images: bool, include_sub_grids: bool,
                 no_fixed_seeds: bool, margin_size: int) -> Processed:
        """The grid(s) in front of the cells, with their infotexts, saved when `grid_save` is on."""
        first = _first_done(plot.cells)
        if first is None:
            failed = next((c for c in plot.cells if c.exception is not None), None)
            if failed is not None:
                raise failed.exception  # not one cell worked: the reason is the plot's
            return Processed(p, [])  # interrupted before the first cell
        size = first.result.images[0].size
        cell_images = [c.result.images[0] if c.result is not None and c.result.images else Image.new("RGB", size)
                       for c in plot.cells]
        main_grid, sub_grids = draw_xyz_grid(p, plot, cell_images, draw_legend, margin_size)
        grid_cells, grid_texts = self.grid_infotexts(plot, first, no_fixed_seeds)
        grids = [main_grid] + (sub_grids if include_sub_grids and len(sub_grids) > 1 else [])
        for grid, text in zip(grids, grid_texts, strict=False):
            grid.info["parameters"] = text
        if shared_opt("grid_save", True):
            for grid, text, cell in zip(grids, grid_texts, grid_cells, strict=False):
                _save_grid(p, cell.request, grid, text, cell.request.all_prompts[0], cell.result.seed)

        result = copy.copy(first.result)
        cell_texts = [c.result.infotexts[0] if c.result is not None and c.result.images else "" for c in plot.cells]
        result.images = grids + (cell_images if include_lone_images else [])
        result.infotexts = grid_texts[:len(grids)] + (cell_texts if include_lone_images else [])
        result.info = grid_texts[0]
        result.index_of_first_image = len(grids)
        done = [c.result if c.result is not None and c.result.images else first.result for c in plot.cells]
        result.all_prompts = [r.all_prompts[0] for r in done]
        result.all_negative_prompts = [r.all_negative_prompts[0] for r in done]
        result.all_seeds = [r.all_seeds[0] for r in done]
        result.all_subseeds = [r.all_subseeds[0] for r in done]
        result.comments = "\n".join(filter(None, [first.result.comments] + [
            f"X/Y/Z plot cell {c.index + 1} failed: {c.error}" for c in plot.cells if c.error]))
        return result

    def grid_infotexts(self, plot: Plot, first: Cell, no_fixed_seeds: bool) -> tuple[list[Cell], list[str]]:
        """([the cell each grid's infotext comes from], [texts]) for the whole grid, then each Z value's grid.

        A grid's infotext is that of its first cell that worked, with the plot's axes added (the whole grid's
        with all three, a Z value's grid with X and Y), as A1111 writes them."""
        nx, ny, nz = plot.shape
        x_axis, y_axis, z_axis = plot.axes
        xy_params = {"Script": self.title(), **_axis_params(x_axis, no_fixed_seeds),
                     **_axis_params(y_axis, no_fixed_seeds)}
        sub_cells = [_first_done(plot.cells[iz * nx * ny:(iz + 1) * nx * ny]) or first for iz in range(nz)]
        sub_texts = [grid_infotext(cell.request, xy_params) for cell in sub_cells]
        main_text = grid_infotext(sub_cells[0].request, {**xy_params, **_axis_params(z_axis, no_fixed_seeds)})
        return [sub_cells[0], *sub_cells], [main_text, *sub_texts]

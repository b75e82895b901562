"""Text around image grids: A1111's `GridAnnotation`, `draw_grid_annotations` and `draw_prompt_matrix`.

The X/Y/Z plot and the prompt matrix label their grids with these. A label that is too wide for its column is
wrapped at spaces, then drawn smaller; an inactive label (a prompt-matrix part left out of that picture) is
grey and struck through. The font is the `font` setting when it names a TrueType file, else Pillow's built-in
scalable font, so labels need no download and no font installed on the machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageColor, ImageDraw, ImageFont

from modules.filename_patterns import shared_opt

AnyFont = ImageFont.FreeTypeFont | ImageFont.ImageFont


@dataclass
class GridAnnotation:
    """One line of a grid label (A1111's class: extensions build these with `GridAnnotation(text, is_active)`)."""

    text: str = ""
    is_active: bool = True
    size: tuple[int, int] = (0, 0)  # measured when the grid is drawn


@lru_cache(maxsize=64)
def _font(path: str, size: int) -> AnyFont:
    if path:
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            pass  # a font setting naming a missing or broken file falls back, as A1111's does
    return ImageFont.load_default(size=size)


def get_font(fontsize: int) -> AnyFont:
    """The labels' font at `fontsize` pixels (A1111's `images.get_font`)."""
    return _font(str(shared_opt("font", "") or ""), max(1, int(fontsize)))


def _colors() -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(active text, inactive text, background) from A1111's grid colour settings."""
    def color(name: str, default: str) -> tuple[int, ...]:
        return ImageColor.getcolor(str(shared_opt(name, default) or default), "RGB")

    return (color("grid_text_active_color", "#000000"), color("grid_text_inactive_color", "#999999"),
            color("grid_background_color", "#ffffff"))


_MEASURE = ImageDraw.Draw(Image.new("RGB", (1, 1)))


def _text_size(text: str, font: AnyFont) -> tuple[int, int]:
    left, top, right, bottom = _MEASURE.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _wrap(text: str, font: AnyFont, width: int) -> list[str]:
    """Words joined into lines no wider than `width` (a single long word keeps a line of its own)."""
    lines = [""]
    for word in text.split():
        candidate = f"{lines[-1]} {word}".strip()
        if _MEASURE.textlength(candidate, font=font) <= width or not lines[-1]:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines


def _layout(texts: list[GridAnnotation], font: AnyFont, width: int) -> list[GridAnnotation]:
    """The label's lines after wrapping, each measured."""
    lines = []
    for annotation in texts:
        for line in _wrap(annotation.text, font, width):
            lines.append(GridAnnotation(line, annotation.is_active, _text_size(line, font)))
    return lines


def _block_height(lines: list[GridAnnotation], spacing: int) -> int:
    if not any(line.text for line in lines):
        return 0
    return sum(line.size[1] for line in lines) + spacing * (len(lines) - 1)


@dataclass
class _Layout:
    fontsize: int
    spacing: int
    pad_left: int
    pad_top: int
    columns: list[list[GridAnnotation]]
    rows: list[list[GridAnnotation]]


def _plan(width: int, height: int, hor_texts: list[list[GridAnnotation]],
          ver_texts: list[list[GridAnnotation]]) -> _Layout:
    # A1111's proportions: the font grows with the cell, the row labels take 3/4 of a cell's width.
    fontsize = max(1, (width + height) // 25)
    spacing = fontsize // 2
    font = get_font(fontsize)
    has_row_labels = any(a.text for texts in ver_texts for a in texts)
    pad_left = width * 3 // 4 if has_row_labels else 0
    columns = [_layout(texts, font, width) for texts in hor_texts]
    rows = [_layout(texts, font, pad_left) for texts in ver_texts]
    tallest = max((_block_height(lines, spacing) for lines in columns), default=0)
    pad_top = tallest + spacing * 2 if tallest else 0
    return _Layout(fontsize, spacing, pad_left, pad_top, columns, rows)


def annotation_margins(width: int, height: int, hor_texts: list[list[GridAnnotation]],
                       ver_texts: list[list[GridAnnotation]]) -> tuple[int, int]:
    """(left, top) space `draw_grid_annotations` adds for the row and column labels of `width`x`height` cells."""
    layout = _plan(width, height, hor_texts, ver_texts)
    return layout.pad_left, layout.pad_top


def _draw_lines(draw: ImageDraw.ImageDraw, centre_x: float, top: float, lines: list[GridAnnotation],
                allowed_width: int, layout: _Layout) -> None:
    active, inactive, _ = _colors()
    y = top
    for line in lines:
        fontsize = layout.fontsize
        font = get_font(fontsize)
        while fontsize > 1 and _MEASURE.textlength(line.text, font=font) > allowed_width:
            fontsize -= 1  # one word wider than its column: shrink rather than spill into the next
            font = get_font(fontsize)
        fill = active if line.is_active else inactive
        draw.text((centre_x, y), line.text, font=font, fill=fill, anchor="mt")
        if not line.is_active:
            middle = y + line.size[1] / 2
            draw.line((centre_x - line.size[0] / 2, middle, centre_x + line.size[0] / 2, middle), fill=inactive,
                      width=max(1, layout.fontsize // 6))
        y += line.size[1] + layout.spacing


def draw_grid_annotations(im: Image.Image, width: int, height: int, hor_texts: list[list[GridAnnotation]],
                          ver_texts: list[list[GridAnnotation]], margin: int = 0) -> Image.Image:
    """`im`, a grid of `width`x`height` cells, with a label above each column and left of each row, and
    `margin` pixels between cells. One list of annotations per column (`hor_texts`) and per row (`ver_texts`)."""
    cols, rows = im.width // width, im.height // height
    if cols != len(hor_texts) or rows != len(ver_texts):
        raise ValueError(f"grid of {cols}x{rows} cells, labels for {len(hor_texts)} columns and "
                         f"{len(ver_texts)} rows")
    layout = _plan(width, height, hor_texts, ver_texts)
    background = _colors()[2]
    result = Image.new("RGB", (im.width + layout.pad_left + margin * (cols - 1),
                               im.height + layout.pad_top + margin * (rows - 1)), background)
    for row in range(rows):
        for col in range(cols):
            cell = im.crop((width * col, height * row, width * (col + 1), height * (row + 1)))
            result.paste(cell, (layout.pad_left + (width + margin) * col, layout.pad_top + (height + margin) * row))
    draw = ImageDraw.Draw(result)
    for col, lines in enumerate(layout.columns):
        centre = layout.pad_left + (width + margin) * col + width / 2
        top = layout.pad_top / 2 - _block_height(lines, layout.spacing) / 2
        _draw_lines(draw, centre, top, lines, width, layout)
    for row, lines in enumerate(layout.rows):
        top = layout.pad_top + (height + margin) * row + height / 2 - _block_height(lines, layout.spacing) / 2
        _draw_lines(draw, layout.pad_left / 2, top, lines, layout.pad_left, layout)
    return result


def draw_prompt_matrix(im: Image.Image, width: int, height: int, all_prompts: list[str],
                       margin: int = 0) -> Image.Image:
    """Label a prompt-matrix grid: `all_prompts` is the prompt split at "|"; the first half of the variable
    parts runs along the columns, the rest down the rows, each shown active where that picture has it."""
    parts = all_prompts[1:]
    boundary = math.ceil(len(parts) / 2)
    across, down = parts[:boundary], parts[boundary:]

    def labels(texts: list[str]) -> list[list[GridAnnotation]]:
        return [[GridAnnotation(text, is_active=bool(pos & (1 << i))) for i, text in enumerate(texts)]
                for pos in range(1 << len(texts))]

    return draw_grid_annotations(im, width, height, labels(across), labels(down), margin)


def check_grid_size(imgs: list[Image.Image]) -> bool:
    """Whether a grid of these pictures stays under the `img_max_size_mp` setting (megapixels)."""
    pixels = sum(img.width * img.height for img in imgs if img is not None)
    return pixels / 1_000_000 <= float(shared_opt("img_max_size_mp", 200))

"""Images in and out of the API as base64: decoding with limits, encoding with the infotext embedded.

Decoding refuses, with a 422 naming the field: text that is not base64, data that is not an image of an
allowed format, and images with more pixels than the `api_max_input_pixels` setting. The pixel count comes
from the header, before anything is decompressed, so a decompression bomb costs nothing. PIL's own global
`MAX_IMAGE_PIXELS` is left as it is (A1111's X/Y/Z plot switched it off for the whole process).
URLs are not fetched (A1111's `api_enable_requests` is off by default and its guard was weak).
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import piexif
import piexif.helper
from PIL import Image, PngImagePlugin

from modules import shared
from modules.api.errors import invalid

ALLOWED_FORMATS = frozenset({"PNG", "JPEG", "MPO", "WEBP", "BMP", "GIF", "TIFF"})
FieldName = str | Sequence[str | int]
_OUTPUT_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}


def max_input_pixels() -> int:
    return int(getattr(shared.opts, "api_max_input_pixels", 25_000_000))


def _strip_data_url(text: str) -> str:
    # "data:image/png;base64,AAAA" -> "AAAA"; A1111 accepts both forms.
    if text.startswith("data:"):
        header, sep, payload = text.partition(",")
        if not sep or not header.endswith(";base64"):
            raise ValueError("a data: URL must be base64 (data:image/...;base64,...)")
        return payload
    return text


def _open(data: bytes, field: FieldName) -> Image.Image:
    """PIL's lazy open (header only), refusing foreign formats and too many pixels before any decoding."""
    limit = max_input_pixels()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise invalid(field, "image has too many pixels (decompression bomb)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # PIL's ways of saying "not an image I know"
        raise invalid(field, f"not a readable image ({type(e).__name__})") from None
    if image.format not in ALLOWED_FORMATS:
        raise invalid(field, f"image format {image.format} is not accepted")
    width, height = image.size
    if width < 1 or height < 1 or width * height > limit:
        raise invalid(field, f"image is {width}x{height}; at most {limit} pixels are accepted "
                             "(setting api_max_input_pixels)")
    return image


def _payload(text: str, field: FieldName) -> bytes:
    """The image file inside base64 text (optionally a data: URL); ApiError 422 naming `field` if there is none."""
    try:
        data = base64.b64decode("".join(_strip_data_url(text.strip()).split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise invalid(field, f"not valid base64 ({e})") from None
    if not data:
        raise invalid(field, "empty image")
    return data


@dataclass(frozen=True)
class CheckedImage:
    """An uploaded image whose base64, format and size were checked; `load()` decodes it when the job runs.

    It keeps the base64 text exactly as the request sent it, the very string the request's parsed body
    already holds, so a request waiting in the queue adds neither the file's bytes nor decoded pixels."""

    text: str
    field: FieldName
    size: tuple[int, int]

    @property
    def sent_bytes(self) -> int:
        """Size of the upload as sent (base64 characters): what a waiting request holds for this image."""
        return len(self.text)

    def load(self) -> Image.Image:
        """The decoded image (first frame); ApiError 422 naming the field when the data is damaged."""
        image = _open(_payload(self.text, self.field), self.field)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image.load()
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombWarning) as e:
            raise invalid(self.field, f"not a readable image ({type(e).__name__}: {e})") from None
        return image


def check_base64_image(text: str, field: FieldName) -> CheckedImage:
    """Base64 text (optionally a data: URL) checked up to the image header; ApiError 422 naming `field`."""
    if not isinstance(text, str):
        raise invalid(field, "expected a base64-encoded image")
    if text.lstrip().startswith(("http://", "https://")):
        raise invalid(field, "image URLs are not accepted; send the image as base64")
    size = _open(_payload(text, field), field).size  # the decoded bytes are dropped again at once
    return CheckedImage(text, field, size)


def decode_base64_to_image(text: str, field: FieldName) -> Image.Image:
    """A decoded PIL image from base64 text (A1111's name); ApiError 422 naming `field` if unusable."""
    return check_base64_image(text, field).load()


def _exif_comment(text: str) -> bytes:
    comment = piexif.helper.UserComment.dump(text, encoding="unicode")
    return piexif.dump({"Exif": {piexif.ExifIFD.UserComment: comment}})


def encode_pil_to_base64(image: Image.Image) -> str:
    """Base64 in the `samples_format` format (PNG by default), with `image.info["parameters"]` (the infotext)
    embedded as A1111 does: PNG text chunks, EXIF UserComment for JPEG/WebP."""
    fmt = _OUTPUT_FORMATS.get(str(getattr(shared.opts, "samples_format", "png")).lower(), "PNG")
    buffer = io.BytesIO()
    if fmt == "PNG":
        chunks = {k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, str)}
        pnginfo = None
        if chunks:
            pnginfo = PngImagePlugin.PngInfo()
            for key, value in chunks.items():
                pnginfo.add_text(key, value)  # iTXt when the text is not Latin-1
        image.save(buffer, format="PNG", pnginfo=pnginfo)
    else:
        text = image.info.get("parameters")
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        kwargs: dict = {"quality": int(getattr(shared.opts, "jpeg_quality", 80))}
        if isinstance(text, str):
            kwargs["exif"] = _exif_comment(text)
        if fmt == "WEBP":
            kwargs["lossless"] = bool(getattr(shared.opts, "webp_lossless", False))
        image.save(buffer, format=fmt, **kwargs)
    return base64.b64encode(buffer.getvalue()).decode("ascii")

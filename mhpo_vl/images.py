"""Safe image loading: every image a dataset names is checked against its dataset root and a pixel limit, and is
decoded in full before anyone trusts it. Failures are :class:`DataError` naming the file, row and field.

``DataError`` lives here (not in ``mhpo_vl.datasets``) because this is the lowest module of the data path: the
adapters, the collator and the CLI all import it, and it imports nothing of theirs.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

# Decompression bombs: a 50M-pixel RGB image is ~150 MB decoded; anything larger in a math benchmark is an
# error, not a picture. Override per call, or for the whole process with $MHPO_VL_MAX_IMAGE_PIXELS.
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")


class DataError(ValueError):
    """Bad input data. The message names where: file, row and field, as far as they are known."""

    def __init__(self, message: str, *, file: str | os.PathLike | None = None, row: Any = None, field: str | None = None):
        self.reason = message
        self.file = None if file is None else str(file)
        self.row = row
        self.field = field
        super().__init__(self.describe())

    def describe(self) -> str:
        where = []
        if self.file is not None:
            where.append(self.file)
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.field is not None:
            where.append(f"field {self.field!r}")
        return f"{': '.join(where)}: {self.reason}" if where else self.reason


def max_image_pixels(override: int | None = None) -> int:
    if override is not None:
        return int(override)
    env = os.environ.get("MHPO_VL_MAX_IMAGE_PIXELS")
    return int(env) if env else DEFAULT_MAX_IMAGE_PIXELS


def resolve_image_path(
    root: str | os.PathLike, relative: str, *, file: Any = None, row: Any = None, field: str | None = None
) -> Path:
    """``root / relative`` as an existing file inside ``root``.

    A path that leaves the root (``../``, an absolute path elsewhere, a symlink pointing out) is refused: a dataset
    file must not be able to make us read arbitrary files from the machine.
    """
    if not isinstance(relative, str) or not relative.strip():
        raise DataError(f"image path must be a non-empty string, got {relative!r}", file=file, row=row, field=field)
    root_path = Path(root).resolve()
    candidate = (root_path / relative).resolve()
    if not candidate.is_relative_to(root_path):
        raise DataError(
            f"image path {relative!r} escapes the dataset root {root_path}", file=file, row=row, field=field
        )
    if not candidate.is_file():
        raise DataError(f"image file not found: {candidate}", file=file, row=row, field=field)
    return candidate


def find_image_file(
    root: str | os.PathLike, relative: str, *, file: Any = None, row: Any = None, field: str | None = None,
    other_suffixes: bool = False,
) -> tuple[Path | None, str | None]:
    """(path, note): like :func:`resolve_image_path` but a missing file gives ``(None, None)`` instead of an error.

    With ``other_suffixes``, a missing ``images/1.jpg`` is matched by a single ``images/1.png`` (re-encoded copies of
    a benchmark's images); ``note`` then says which file stood in for the listed one, for the sample's metadata.
    """
    try:
        return resolve_image_path(root, relative, file=file, row=row, field=field), None
    except DataError as exc:
        if "not found" not in exc.reason:
            raise
    if other_suffixes:
        listed = Path(root).resolve() / relative
        if listed.parent.is_dir():
            matches = sorted(p for p in listed.parent.glob(listed.stem + ".*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if len(matches) == 1:
                found = resolve_image_path(root, str(matches[0].relative_to(Path(root).resolve())), file=file, row=row, field=field)
                return found, f"listed as {relative}, found {found.name}"
    return None, None


def check_image_header(image: Any, *, limit: int | None = None, file: Any = None, row: Any = None, field: str | None = None):
    """Open (header only) and return (width, height); refuses non-images and images over the pixel limit.

    Cheap enough to run on every row at load time; full decoding is :func:`open_image`.
    """
    return _size_checked(_open_lazy(image, file=file, row=row, field=field), image, limit, file, row, field)


def open_image(image: Any, *, limit: int | None = None, file: Any = None, row: Any = None, field: str | None = None):
    """A fully decoded RGB ``PIL.Image`` from a path, bytes, an HF image dict or a PIL image: what a person sees
    (:func:`to_rgb`).

    Truncated or corrupt files fail here, with the file named, instead of deep inside a processor.
    """
    from PIL import Image

    pil = _open_lazy(image, file=file, row=row, field=field)
    _size_checked(pil, image, limit, file, row, field)
    try:
        pil.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot decode image {_name(image)}: {exc}", file=file or _path_of(image), row=row, field=field) from exc
    return to_rgb(pil, image, file=file, row=row, field=field)


# Pixel modes that hold an alpha channel (La, RGBa: premultiplied) or may name a transparent colour (info["transparency"]:
# a PNG tRNS chunk, a GIF's transparent index).
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_KEYED_MODES = ("P", "L", "RGB", "1")
# Modes whose own conversion to RGB is what a viewer shows (LAB: colorimetric; CMYK: PIL's conversion, as viewers).
_DIRECT_MODES = ("RGB", "RGBX", "L", "1", "P", "CMYK", "YCbCr", "LAB", "HSV")
_INT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def to_rgb(pil: Any, image: Any = None, *, file: Any = None, row: Any = None, field: str | None = None):
    """``pil`` (decoded) as the 8-bit RGB image a person sees in an image viewer, for every pixel mode Pillow has:

    - transparency (RGBA, LA, PA, premultiplied RGBa/La; P, L, RGB with a transparent colour): composited on white,
      as ``qwen_vl_utils`` does for RGBA, so a black line drawing on a transparent background stays a dark line on
      white (``convert("RGB")`` drops the alpha: all black);
    - 16-bit greys (I;16 and its byte orders: what Pillow 13 gives for a 16-bit grey PNG): value / 257, so
      0..65535 maps onto 0..255 and a mid-grey 32768 becomes 128 (``convert("RGB")`` clips at 255: all white);
    - 32-bit integer greys (I: older Pillow's 16-bit PNGs, 32-bit TIFFs): values within 0..65535 are 16-bit data
      (/ 257); anything outside is scaled over the int32 range;
    - float greys (F): values within 0..1 are scaled by 255, within 0..255 kept, anything else stretched from its
      minimum (black) to its maximum (white); NaN and infinities count as the minimum;
    - 1, L, P, RGBX, CMYK, YCbCr, LAB, HSV: Pillow's conversion to RGB.
    Any other mode (an older Pillow's BGR;15 ...) is a DataError naming the file and the mode.
    """
    from PIL import Image

    mode = pil.mode
    where = {"file": file or _path_of(image), "row": row, "field": field}
    if mode in _ALPHA_MODES or (mode in _KEYED_MODES and "transparency" in pil.info):
        rgba = (pil.convert("LA") if mode == "La" else pil).convert("RGBA")
        rgb = Image.new("RGB", pil.size, (255, 255, 255))
        rgb.paste(rgba, mask=rgba.getchannel("A"))
        return rgb
    if mode in _DIRECT_MODES:
        return pil.convert("RGB")
    if mode in _INT16_MODES or mode in ("I", "F"):
        return Image.fromarray(_grey_to_8bit(pil, mode), mode="L").convert("RGB")
    raise DataError(f"image {_name(image if image is not None else pil)} has pixel mode {mode!r}, which is not "
                    f"converted to RGB (known: {', '.join(_ALPHA_MODES + _DIRECT_MODES + _INT16_MODES + ('I', 'F'))})",
                    **where)


def _grey_to_8bit(pil: Any, mode: str):
    import numpy as np

    values = np.asarray(pil).astype(np.float64)
    if mode in _INT16_MODES:
        scaled = values / 257.0
    elif mode == "I":
        if values.size and values.min() >= 0 and values.max() <= 65535:
            scaled = values / 257.0
        else:
            scaled = (values + 2.0**31) / (2.0**32 - 1) * 255.0
    else:  # F
        finite = values[np.isfinite(values)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        values = np.where(np.isfinite(values), values, low)
        if low >= 0 and high <= 1:
            scaled = values * 255.0
        elif low >= 0 and high <= 255:
            scaled = values
        else:
            scaled = (values - low) / ((high - low) or 1.0) * 255.0  # one value throughout: black
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def describe_image(image: Any) -> str:
    """How `data show` prints an image reference: the path, or ``<in-memory WxH>``."""
    if isinstance(image, (str, os.PathLike)):
        return str(image)
    size = getattr(image, "size", None)
    return f"<in-memory {size[0]}x{size[1]}>" if size else f"<in-memory {type(image).__name__}>"


def image_from_field(
    value: Any, root: str | os.PathLike | None, *, file: Any = None, row: Any = None, field: str | None = None
) -> Any:
    """Turn one image cell into an ImageRef (absolute path str, or PIL image), checking it exists and is an image.

    Accepts what real datasets store: a relative path string, an HF ``Image`` dict ``{"bytes": ..., "path": ...}``,
    raw bytes, or an already decoded PIL image (``datasets`` decodes Image columns).
    """
    from PIL import Image

    if isinstance(value, Image.Image):
        check_image_header(value, file=file, row=row, field=field)
        return value
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        if value.get("bytes"):
            value = value["bytes"]
        elif value.get("path"):
            value = value["path"]
        else:
            raise DataError("image dict holds neither bytes nor a path", file=file, row=row, field=field)
    if isinstance(value, (bytes, bytearray)):
        pil = _open_lazy(bytes(value), file=file, row=row, field=field)
        _size_checked(pil, "<bytes>", None, file, row, field)
        return pil
    if isinstance(value, str):
        if root is None:
            raise DataError(f"image path {value!r} given but the dataset has no root folder", file=file, row=row, field=field)
        path = resolve_image_path(root, value, file=file, row=row, field=field)
        check_image_header(str(path), file=file, row=row, field=field)
        return str(path)
    raise DataError(f"unsupported image value of type {type(value).__name__}", file=file, row=row, field=field)


def _open_lazy(image: Any, *, file: Any, row: Any, field: str | None):
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    try:
        with warnings.catch_warnings():
            # Our own pixel limit (checked right after) decides; PIL's warning band (89M-179M) would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if isinstance(image, (bytes, bytearray)):
                return Image.open(io.BytesIO(bytes(image)))
            return Image.open(os.fspath(image))
    except Image.DecompressionBombError as exc:  # PIL refuses > 179M pixels before we see the size
        raise DataError(f"image {_name(image)} is over the pixel limit: {exc}", file=file or _path_of(image), row=row, field=field) from exc
    except FileNotFoundError as exc:
        raise DataError(f"image file not found: {image}", file=file or image, row=row, field=field) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        # UnidentifiedImageError is an OSError. (PIL's own bomb check, DecompressionBombError, is caught above.)
        raise DataError(f"not a readable image {_name(image)}: {exc}", file=file or _path_of(image), row=row, field=field) from exc


def _size_checked(pil, image: Any, limit: int | None, file: Any, row: Any, field: str | None):
    width, height = pil.size
    allowed = max_image_pixels(limit)
    if width * height > allowed:
        raise DataError(
            f"image {_name(image)} has {width}x{height} = {width * height} pixels, over the limit of {allowed} "
            "(raise it with $MHPO_VL_MAX_IMAGE_PIXELS if this image is genuine)",
            file=file or _path_of(image), row=row, field=field,
        )
    if width < 1 or height < 1:
        raise DataError(f"image {_name(image)} is empty ({width}x{height})", file=file or _path_of(image), row=row, field=field)
    return width, height


def _path_of(image: Any) -> str | None:
    return str(image) if isinstance(image, (str, os.PathLike)) else None


def _name(image: Any) -> str:
    return str(image) if isinstance(image, (str, os.PathLike)) else describe_image(image)

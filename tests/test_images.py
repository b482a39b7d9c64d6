"""open_image converts every pixel mode to what a person sees: small generated diagrams, saved and read back the way a
dataset's files are, checked pixel by pixel. Before (issue 22 item 6) only RGBA was composited: LA and palette PNGs
with transparency came out all black, 16-bit grey mid-tones all white."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mhpo_vl.images import DataError, open_image

SIZE = 16
LINE = 8  # the diagram: a horizontal line along row LINE


def _line_mask() -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[LINE, 2:-2] = True
    return mask


def _png(image: Image.Image, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **save)
    return buffer.getvalue()


def _pixels(data) -> np.ndarray:
    rgb = open_image(data)
    assert rgb.mode == "RGB" and rgb.size == (SIZE, SIZE)
    return np.asarray(rgb).astype(int)


def _assert_dark_line_on_white(pixels: np.ndarray) -> None:
    mask = _line_mask()
    assert (pixels[mask] <= 10).all(), f"line pixels {np.unique(pixels[mask])}"
    assert (pixels[~mask] >= 245).all(), f"background pixels {np.unique(pixels[~mask])}"


# ------------------------------------------------------------------------------- transparent line drawings --

def test_la_black_line_on_transparent_background():
    # L is 0 everywhere (the background is "transparent black"): only the alpha draws the line.
    la = np.zeros((SIZE, SIZE, 2), dtype=np.uint8)
    la[..., 1] = np.where(_line_mask(), 255, 0)
    image = Image.fromarray(la, mode="LA")
    assert Image.open(io.BytesIO(_png(image))).mode == "LA"
    _assert_dark_line_on_white(_pixels(_png(image)))


def test_palette_png_with_a_transparent_index():
    # Index 0: black, transparent (tRNS); index 1: black, opaque. convert("RGB") drops tRNS: all black before.
    p = Image.fromarray(np.where(_line_mask(), 1, 0).astype(np.uint8), mode="P")
    p.putpalette([0, 0, 0, 0, 0, 0] + [0] * (256 * 3 - 6))
    data = _png(p, transparency=0)
    assert Image.open(io.BytesIO(data)).mode == "P" and "transparency" in Image.open(io.BytesIO(data)).info
    _assert_dark_line_on_white(_pixels(data))


def test_palette_png_with_per_entry_alpha_and_half_transparency():
    # tRNS as bytes: index 0 transparent, 1 opaque, 2 half transparent black -> mid grey on white.
    index = np.where(_line_mask(), 1, 0).astype(np.uint8)
    index[0, 0] = 2
    p = Image.fromarray(index, mode="P")
    p.putpalette([0] * (256 * 3))
    pixels = _pixels(_png(p, transparency=bytes([0, 255, 128])))
    assert abs(pixels[0, 0] - 127).max() <= 2  # 255 * (1 - 128/255)
    pixels[0, 0] = 255
    _assert_dark_line_on_white(pixels)


def test_pa_and_premultiplied_modes_composite_on_white():
    alpha = np.where(_line_mask(), 255, 0).astype(np.uint8)
    pa = Image.new("P", (SIZE, SIZE), 0)
    pa.putpalette([0] * (256 * 3))
    pa = pa.convert("PA")
    pa.putalpha(Image.fromarray(alpha, mode="L"))
    assert pa.mode == "PA"
    _assert_dark_line_on_white(_pixels(pa))
    rgba = Image.merge("RGBA", [Image.new("L", (SIZE, SIZE), 0)] * 3 + [Image.fromarray(alpha, mode="L")])
    _assert_dark_line_on_white(_pixels(rgba.convert("RGBa")))
    la = Image.merge("LA", [Image.new("L", (SIZE, SIZE), 0), Image.fromarray(alpha, mode="L")])
    _assert_dark_line_on_white(_pixels(la.convert("La")))
    _assert_dark_line_on_white(_pixels(_png(rgba)))  # RGBA: as before


def test_grey_and_rgb_pngs_with_a_transparent_colour():
    grey = Image.fromarray(np.where(_line_mask(), 0, 50).astype(np.uint8), mode="L")  # 50: the transparent grey
    _assert_dark_line_on_white(_pixels(_png(grey, transparency=50)))
    rgb = Image.fromarray(np.stack([np.where(_line_mask(), 0, 50).astype(np.uint8)] * 3, axis=-1), mode="RGB")
    _assert_dark_line_on_white(_pixels(_png(rgb, transparency=(50, 50, 50))))


# ------------------------------------------------------------------------------------- deep greys --

def test_16_bit_grey_png_is_scaled_not_clipped():
    values = np.full((SIZE, SIZE), 65535, dtype=np.uint16)
    values[LINE] = 32768  # a mid-grey line
    values[0, 0] = 0
    values[0, 1] = 257
    data = _png(Image.fromarray(values))
    assert Image.open(io.BytesIO(data)).mode in ("I;16", "I")  # Pillow 13: I;16; older Pillow: I
    pixels = _pixels(data)
    assert (pixels == pixels[..., :1]).all()  # grey
    assert pixels[LINE, 5, 0] == 128 and pixels[5, 5, 0] == 255 and pixels[0, 0, 0] == 0 and pixels[0, 1, 0] == 1


def test_16_bit_byte_orders_and_mode_i():
    for mode in ("I;16B", "I;16L"):
        image = Image.new(mode, (SIZE, SIZE), 32768)
        assert image.mode == mode
        assert (_pixels(image) == 128).all(), mode
    # Mode I holding 16-bit data (older Pillow's 16-bit PNGs): / 257.
    assert (_pixels(Image.fromarray(np.full((SIZE, SIZE), 32768, dtype=np.int32), mode="I")) == 128).all()
    # Beyond 16 bits: the int32 range, 0 -> 128, its maximum -> 255, its minimum -> 0.
    wide = np.zeros((SIZE, SIZE), dtype=np.int32)
    wide[0, 0], wide[0, 1] = 2**31 - 1, -(2**31)
    pixels = _pixels(Image.fromarray(wide, mode="I"))
    assert pixels[0, 0, 0] == 255 and pixels[0, 1, 0] == 0 and pixels[5, 5, 0] == 128


def test_float_greys_by_range():
    unit = np.full((SIZE, SIZE), 1.0, dtype=np.float32)
    unit[LINE] = 0.5
    pixels = _pixels(Image.fromarray(unit, mode="F"))
    assert pixels[LINE, 3, 0] == 128 and pixels[0, 0, 0] == 255  # 0..1 -> x 255
    bytes_like = np.full((SIZE, SIZE), 200.0, dtype=np.float32)
    assert (_pixels(Image.fromarray(bytes_like, mode="F")) == 200).all()  # 0..255 -> as is
    wide = np.full((SIZE, SIZE), 1000.0, dtype=np.float32)
    wide[LINE] = -1000.0
    wide[0, 0] = np.nan
    pixels = _pixels(Image.fromarray(wide, mode="F"))
    assert pixels[LINE, 3, 0] == 0 and pixels[5, 5, 0] == 255 and pixels[0, 0, 0] == 0  # stretched; NaN: the minimum


# ------------------------------------------------------------------------------------- the other modes --

def test_bilevel_grey_cmyk_and_colour_spaces():
    line = np.where(_line_mask(), 0, 255).astype(np.uint8)
    _assert_dark_line_on_white(_pixels(_png(Image.fromarray(line, mode="L").convert("1"))))
    _assert_dark_line_on_white(_pixels(_png(Image.fromarray(line, mode="L"))))
    cmyk = np.zeros((SIZE, SIZE, 4), dtype=np.uint8)
    cmyk[..., 3] = np.where(_line_mask(), 255, 0)  # black ink only on the line
    buffer = io.BytesIO()
    Image.fromarray(cmyk, mode="CMYK").save(buffer, format="TIFF")
    _assert_dark_line_on_white(_pixels(buffer.getvalue()))
    rgb = Image.fromarray(np.stack([line] * 3, axis=-1), mode="RGB")
    for mode in ("YCbCr", "LAB", "HSV", "RGBX"):
        converted = rgb.convert(mode) if mode != "LAB" else _to_lab(rgb)
        _assert_dark_line_on_white(_pixels(converted))


def _to_lab(rgb: Image.Image) -> Image.Image:
    from PIL import ImageCms

    transform = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")
    lab = ImageCms.applyTransform(rgb, transform)
    assert lab is not None and lab.mode == "LAB"
    return lab


def test_an_unknown_mode_is_an_error_naming_file_and_mode(tmp_path):
    image = Image.new("RGB", (SIZE, SIZE))
    image._mode = "BGR;24"  # an older Pillow's mode, unknown to the conversion
    with pytest.raises(DataError, match=r"data\.jsonl: row 7: field 'images': image <in-memory 16x16> has pixel mode "
                                        r"'BGR;24', which is not converted to RGB \(known: RGBA, LA"):
        open_image(image, file="data.jsonl", row=7, field="images")

"""Every kind of input becomes one RGB image by the documented rules, or a clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medvit_edge.runtime.images import ImageDecodeError, array_to_rgb, as_rgb_image, load_image, to_rgb


def test_grey_is_repeated_into_three_channels() -> None:
    grey = Image.fromarray(np.array([[0, 128], [255, 7]], dtype=np.uint8))
    rgb = np.asarray(to_rgb(grey))
    assert rgb.shape == (2, 2, 3) and (rgb == np.asarray(grey)[:, :, None]).all()


def test_alpha_is_composited_over_black() -> None:
    rgba = np.zeros((1, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (200, 100, 50, 255)  # opaque
    rgba[0, 1] = (200, 100, 50, 0)  # fully transparent -> black
    rgb = np.asarray(to_rgb(Image.fromarray(rgba, "RGBA")))
    assert rgb[0, 0].tolist() == [200, 100, 50] and rgb[0, 1].tolist() == [0, 0, 0]


def _ramp(width: int, height: int) -> np.ndarray:
    """A grey ramp: decoded files must not be one constant colour (those are refused)."""
    return np.tile(np.linspace(0, 255, width).astype(np.uint8), (height, 1))


def test_transparent_palette_goes_through_alpha(tmp_path: Path) -> None:
    image = Image.new("P", (4, 4), 1)
    image.paste(2, (2, 0, 4, 4))  # right half: opaque grey
    image.putpalette([0, 0, 0, 255, 255, 255, 100, 100, 100] + [0] * 759)
    image.info["transparency"] = 1
    image.save(tmp_path / "p.png", transparency=1)
    rgb = np.asarray(load_image(tmp_path / "p.png"))
    assert rgb[:, :2].max() == 0 and (rgb[:, 2:] == 100).all()  # transparent white -> black


def test_sixteen_bit_grey_uses_the_full_range(tmp_path: Path) -> None:
    values = np.array([[0, 257, 65535, 32896]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    rgb = np.asarray(load_image(tmp_path / "g16.png"))
    assert rgb[0, :, 0].tolist() == [0, 1, 255, 128]


def test_float_arrays_are_read_as_unit_or_byte_range() -> None:
    unit = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    byte = np.array([[0.0, 128.0, 300.0]], dtype=np.float32)
    assert np.asarray(array_to_rgb(unit))[0, :, 0].tolist() == [0, 128, 255]
    assert np.asarray(array_to_rgb(byte))[0, :, 0].tolist() == [0, 128, 255]


def test_exif_rotation_is_applied(tmp_path: Path) -> None:
    image = Image.fromarray(_ramp(40, 20)).convert("RGB")
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_image(tmp_path / "rotated.jpg").size == (20, 40)


def test_animated_gif_uses_the_first_frame(tmp_path: Path) -> None:
    frames = [Image.fromarray(_ramp(8, 8) // 20 + value) for value in (0, 200)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert np.asarray(load_image(tmp_path / "anim.gif")).max() <= 14


@pytest.mark.parametrize("shape", [(0, 5), (5, 5, 2), (2, 2, 2, 2)])
def test_unusable_arrays_are_clear_errors(shape: tuple[int, ...]) -> None:
    with pytest.raises(ImageDecodeError, match="shape"):
        array_to_rgb(np.zeros(shape, dtype=np.uint8))


def test_decode_errors_name_the_file(tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    png = tmp_path / "cut.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(png)
    png.write_bytes(png.read_bytes()[:60])
    for path in (text, png, tmp_path / "missing.png"):
        with pytest.raises(ImageDecodeError, match=path.name):
            load_image(path)


def test_decompression_bombs_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.png"
    Image.new("L", (400, 400)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100)
    with pytest.raises(ImageDecodeError, match="too many pixels"):
        load_image(path)


def test_as_rgb_image_accepts_paths_images_and_arrays(tmp_path: Path) -> None:
    path = tmp_path / "x.bmp"
    Image.fromarray(_ramp(5, 4)).convert("RGB").save(path)
    for item in (path, str(path), Image.open(path), np.asarray(Image.open(path))):
        assert as_rgb_image(item).size == (5, 4)
    with pytest.raises(ImageDecodeError, match="type"):
        as_rgb_image(42)

"""Hostile inputs at the edges: DICOM rendering, integer arrays, degenerate images,
DICOM decompression bombs, symlink cycles, and every file a walk passes over reported.

Each test builds real files (pydicom, Pillow, symlinks, deep folders) and checks what the
decoders, ``collect_inputs`` and ``infer`` make of them."""

from __future__ import annotations

import io
import os
import shutil
import threading
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from medvit_edge.io.inputs import InputList, collect_inputs
from medvit_edge.io.labelled import read_class_folders, read_split_csv
from medvit_edge.runtime.images import ImageDecodeError, array_to_rgb, as_rgb_image, load_image

from .conftest import needs_export
from .dicom_files import write_us_dicom

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
PARAMETRIC_MAP = "1.2.840.10008.5.1.4.1.1.30"
DEFLATED = "1.2.840.10008.1.2.1.99"


# ---------------------------------------------------------------- builders


def _texture(height: int = 96, width: int = 128, seed: int = 0) -> np.ndarray:
    """A grey gradient with speckle: never constant, like an ultrasound frame."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(20, 220, width)[None, :] + np.linspace(0, 30, height)[:, None]
    return np.clip(ramp + rng.normal(0, 12, (height, width)), 0, 255).astype(np.uint8)


def _dataset(sop_class: str, syntax: str = "1.2.840.10008.1.2.1") -> object:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    return ds


def _mono_dicom(path: Path, frames: np.ndarray, **attributes: object) -> Path:
    """MONOCHROME2 DICOM of integer frames ((F,)H,W): bits and sign from the dtype; float32
    frames become Float Pixel Data (a parametric map)."""
    stack = frames if frames.ndim == 3 else frames[None]
    is_float = stack.dtype.kind == "f"
    ds = _dataset(PARAMETRIC_MAP if is_float else CT_IMAGE)
    ds.Rows, ds.Columns = stack.shape[1], stack.shape[2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    bits = stack.dtype.itemsize * 8
    ds.BitsAllocated = bits
    if not is_float:
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, int(stack.dtype.kind == "i")
    if len(stack) > 1:
        ds.NumberOfFrames = len(stack)
    for name, value in attributes.items():
        setattr(ds, name, value)
    data = np.ascontiguousarray(stack).tobytes()
    if is_float:
        ds.FloatPixelData = data
    else:
        ds.PixelData = data
    ds.save_as(path, enforce_file_format=True)
    return path


def _deflated_dicom(path: Path, rows: int, columns: int, pixels: bytes | None = None) -> Path:
    """A real Deflated Explicit VR Little Endian 8-bit MONOCHROME2 file, written the way pydicom
    writes one (raw deflate of the whole dataset), but streamed: the pixel data goes through zlib
    in 1 MiB pieces (zeros when ``pixels`` is None), so a 12000x12000 image costs no memory."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info

    ds = _dataset(CT_IMAGE, DEFLATED)
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    meta, body = DicomBytesIO(), DicomBytesIO()
    write_file_meta_info(meta, ds.file_meta)
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    size = rows * columns
    element = b"\xe0\x7f\x10\x00OB\x00\x00" + size.to_bytes(4, "little")  # (7FE0,0010) OB
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    with open(path, "wb") as handle:
        handle.write(bytes(128) + b"DICM" + meta.getvalue())
        handle.write(deflate.compress(body.getvalue() + element))
        if pixels is not None:
            handle.write(deflate.compress(pixels))
        else:
            zeros = bytes(1 << 20)
            for start in range(0, size, len(zeros)):
                handle.write(deflate.compress(zeros[: min(len(zeros), size - start)]))
        handle.write(deflate.flush())
    return path


def _deep_tree(top: Path, leaf_name: str, image: Image.Image) -> Path:
    """Folders nested past PATH_MAX (4096 bytes), built through folder descriptors because no
    path that long can be opened; one PNG at the bottom. Returns the top folder."""
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for level in range(22):
            name = f"{level:02d}" + "d" * 198
            os.mkdir(name, dir_fd=fd)
            deeper = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = deeper
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        out = os.open(leaf_name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(out, buffer.getvalue())
        os.close(out)
    finally:
        os.close(fd)
    return top


def _unreadable(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder whose listing fails with EACCES. chmod 000 does that for anyone but root, for
    whom nothing is unreadable: there the listing call is made to fail as it would for a user."""
    if os.geteuid() != 0:
        folder.chmod(0)
        return
    real_scandir = os.scandir

    def scandir(path: object = ".") -> object:
        if os.path.abspath(os.fspath(path)) == os.path.abspath(folder):  # type: ignore[arg-type]
            raise PermissionError(13, "Permission denied", os.fspath(path))  # type: ignore[arg-type]
        return real_scandir(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", scandir)


def _frames(path: Path) -> list[np.ndarray]:
    from medvit_edge.io.dicom import read_dicom_frames

    return [np.asarray(frame)[:, :, 0] for frame in read_dicom_frames(path)]


# ---------------------------------------------------------------- 5: DICOM rendering


def test_one_bit_dicom_becomes_black_and_white() -> None:
    """pydicom's liver_1frame.dcm: BitsAllocated 1, values 0/1 (were rendered 0/1 of 255: black)."""
    path = Path(get_testdata_file("liver_1frame.dcm"))
    stored = pydicom.dcmread(path).pixel_array
    (grey,) = _frames(path)
    assert set(np.unique(grey)) == {0, 255}
    assert ((grey == 255) == (stored == 1)).all()


def test_window_applies_to_rescaled_values(tmp_path: Path) -> None:
    """Signed CT with RescaleIntercept -1024 and a soft-tissue window (40/400 HU): the window is
    in Hounsfield units, so it must see the rescaled values (Modality LUT, then VOI LUT)."""
    stored = np.tile(np.arange(0, 2048, 8, dtype=np.int16), (4, 1))  # -1024 .. +1016 HU
    path = _mono_dicom(
        tmp_path / "ct.dcm", stored, RescaleIntercept=-1024, RescaleSlope=1, WindowCenter=40, WindowWidth=400
    )
    (grey,) = _frames(path)
    hu = stored.astype(np.float64) - 1024
    expected = np.clip((hu - 39.5) / 399 + 0.5, 0, 1) * 255  # PS3.3 C.11.2.1.2.1 (LINEAR)
    assert np.abs(grey.astype(np.float64) - expected).max() <= 1
    assert grey[0, hu[0] < -160].max() == 0 and grey[0, hu[0] > 240].min() == 255
    assert 0 < grey[0, np.argmin(np.abs(hu[0] - 40))] < 255  # the window's centre is mid-grey


def test_signed_eight_bit_is_shifted_not_clipped(tmp_path: Path) -> None:
    stored = np.arange(-128, 128, dtype=np.int8).reshape(16, 16)
    (grey,) = _frames(_mono_dicom(tmp_path / "s8.dcm", stored))
    assert grey.min() == 0 and grey.max() == 255
    assert (np.diff(grey.reshape(-1).astype(int)) >= 0).all()  # monotonic: nothing clipped
    assert grey.reshape(-1)[128] == 128  # stored 0 is the middle grey


def test_unsigned_eight_bit_is_unchanged(tmp_path: Path) -> None:
    texture = _texture()
    (grey,) = _frames(_mono_dicom(tmp_path / "u8.dcm", texture))
    assert (grey == texture).all()


def test_constant_frames_are_errors_not_predictions(tmp_path: Path) -> None:
    from medvit_edge.io.dicom import read_dicom_frames

    blank = _mono_dicom(tmp_path / "blank.dcm", np.zeros((32, 32), np.uint16))
    with pytest.raises(ImageDecodeError, match=r"blank\.dcm: decodes to a constant image \(every pixel 0\)"):
        read_dicom_frames(blank)
    cine = _mono_dicom(tmp_path / "cine.dcm", np.stack([_texture(), np.full((96, 128), 77, np.uint8)]))
    with pytest.raises(ImageDecodeError, match=r"cine\.dcm: frame 1 \(of 2\): decodes to a constant image"):
        read_dicom_frames(cine)
    Image.new("L", (40, 30), 90).save(tmp_path / "flat.png")
    with pytest.raises(ImageDecodeError, match=r"flat\.png: decodes to a constant image \(every pixel 90\)"):
        load_image(tmp_path / "flat.png")


def test_float_pixel_data_is_decoded(tmp_path: Path) -> None:
    """Float Pixel Data used to be told "no pixel data"; it is monochrome, stretched min..max."""
    values = np.linspace(-3.5, 12.0, 64 * 48, dtype=np.float32).reshape(48, 64)
    values[0, 0] = np.nan
    (grey,) = _frames(_mono_dicom(tmp_path / "map.dcm", values))
    expected = np.rint((values.astype(np.float64) + 3.5) * 255 / 15.5)
    expected[0, 0] = 0
    assert np.abs(grey - expected).max() <= 1


# ---------------------------------------------------------------- 6: integer and float arrays


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.int16, np.int8, np.uint32, np.uint64])
def test_integer_arrays_holding_bytes_are_eight_bit(dtype: type) -> None:
    texture = _texture() // 2  # 0..127, so int8 holds it too
    expected = np.asarray(array_to_rgb(texture))
    assert (np.asarray(array_to_rgb(texture.astype(dtype))) == expected).all()


def test_integer_arrays_wider_than_a_byte_are_sixteen_bit() -> None:
    values = np.array([[0, 257, 65535, 32896]], dtype=np.int32)
    assert np.asarray(array_to_rgb(values))[0, :, 0].tolist() == [0, 1, 255, 128]


@pytest.mark.parametrize(
    ("array", "words"),
    [
        (np.array([[-5, 0, 100]], np.int8), r"int8 pixel values -5\.\.100"),
        (np.array([[0, 70000]], np.int64), r"int64 pixel values 0\.\.70000"),
        (np.array([[np.nan, np.inf], [-np.inf, np.nan]], np.float32), r"float32 array .* no finite pixel"),
    ],
)
def test_values_the_rule_cannot_map_are_errors(array: np.ndarray, words: str) -> None:
    with pytest.raises(ImageDecodeError, match=words):
        array_to_rgb(array)


def test_floats_keep_their_documented_ranges() -> None:
    unit = np.array([[0.0, 0.5, 1.0, np.nan, -np.inf]], np.float32)
    byte = np.array([[-3.0, 128.0, 300.0, np.inf]], np.float32)
    assert np.asarray(array_to_rgb(unit))[0, :, 0].tolist() == [0, 128, 255, 0, 0]
    assert np.asarray(array_to_rgb(byte))[0, :, 0].tolist() == [0, 128, 255, 255]


# ---------------------------------------------------------------- 7: degenerate images


@pytest.mark.parametrize(
    "item",
    [Image.new("L", (0, 0)), Image.new("RGB", (0, 7)), np.zeros((5, 0, 3), np.uint8), np.zeros((0, 0))],
    ids=["pil-0x0", "pil-0x7", "array-5x0x3", "array-0x0"],
)
def test_degenerate_images_are_clear_errors(item: object) -> None:
    with pytest.raises(ImageDecodeError, match="no pixels"):
        as_rgb_image(item)


# ---------------------------------------------------------------- 8: DICOM decompression bombs


def test_deflated_dicom_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    from medvit_edge.io.dicom import read_dicom_frames

    small = _deflated_dicom(tmp_path / "small.dcm", 48, 64, _texture(48, 64).tobytes())
    assert (pydicom.dcmread(small).pixel_array == _texture(48, 64)).all()  # the writer is real DICOM
    assert (_frames(small)[0] == _texture(48, 64)).all()  # and our lazy inflater reads it the same
    bomb = _deflated_dicom(tmp_path / "bomb.dcm", 12000, 12000)  # 144 M pixels > Pillow's 89 M
    assert bomb.stat().st_size < 1_000_000
    tracemalloc.start()
    try:
        with pytest.raises(ImageDecodeError, match=r"bomb\.dcm: refused, too many pixels \(12000x12000"):
            read_dicom_frames(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 * 2**20, f"{peak / 2**20:.0f} MiB allocated to refuse a bomb"


def test_all_frames_together_have_a_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each 10x10 frame is within the limit; 20 of them are within FRAMES_BUDGET x the limit
    only while the limit is at least 2000 / FRAMES_BUDGET."""
    from medvit_edge.io.dicom import FRAMES_BUDGET, read_dicom_frames

    cine = _mono_dicom(tmp_path / "cine.dcm", np.stack([_texture(10, 10, seed) for seed in range(20)]))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000 // FRAMES_BUDGET)
    assert len(read_dicom_frames(cine)) == 20
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000 // FRAMES_BUDGET - 1)
    with pytest.raises(ImageDecodeError, match=r"refused, too many pixels \(20 frames of 10x10x1 = 2000"):
        read_dicom_frames(cine)


# ---------------------------------------------------------------- 9: symlink cycles, duplicates


def _run_with_deadline(specs: list[str], seconds: float = 20.0) -> InputList:
    """``collect_inputs`` in a daemon thread: a walk that never ends fails the test, not CI."""
    result: list[InputList] = []
    worker = threading.Thread(target=lambda: result.append(collect_inputs(specs)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert result, f"collect_inputs({specs}) did not finish in {seconds} s"
    return result[0]


def test_recursive_glob_walks_a_symlink_cycle_once(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(_texture()).save(folder / "sub" / "a.png")
    (folder / "sub" / "loop").symlink_to(folder)
    found = _run_with_deadline([str(folder / "**" / "*.png")])
    assert [item.path for item in found.files] == [folder / "sub" / "a.png"]
    (folder / "self1").symlink_to(".")
    (folder / "self2").symlink_to(".")
    found = _run_with_deadline([str(folder / "**" / "*.png"), str(folder)])
    assert [item.path for item in found.files] == [folder / "sub" / "a.png"]
    walked_again = {s.path.name for s in found.skipped if s.reason == "folder walked already"}
    assert walked_again == {"loop", "self1", "self2"}


def test_one_file_is_listed_once_however_it_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    Image.fromarray(_texture()).save(folder / "x.png")
    (tmp_path / "link.png").symlink_to(folder / "x.png")
    specs = [str(folder / "x.png"), str(folder), str(folder / "*.png"), str(tmp_path / "link.png")]
    specs.append(f"{tmp_path}/./scans/x.png")
    found = collect_inputs(specs)
    assert [item.path for item in found.files] == [folder / "x.png"]
    assert [s.reason for s in found.skipped] == ["duplicate"] * 4
    assert all("same file as" in s.detail for s in found.skipped)


# ---------------------------------------------------------------- 12: nothing skipped silently


def test_dicom_without_extension_and_busi_mask_names(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    write_us_dicom(folder / "IM000001", [_texture()], "MONOCHROME2")
    write_us_dicom(folder / "1.2.840.113619.2.55.3", [_texture(seed=1)], "MONOCHROME2")
    for name in ("patient02_mask_off.png", "benign (1)_mask.png", "benign (1)_mask_1.png"):
        Image.fromarray(_texture()).save(folder / name)
    (folder / "DICOMDIR").write_bytes(bytes(128) + b"DICM")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    found = collect_inputs([str(folder)])
    assert [item.path.name for item in found.files] == [
        "1.2.840.113619.2.55.3",
        "IM000001",
        "patient02_mask_off.png",
    ]
    assert {s.path.name: s.reason for s in found.skipped} == {
        ".DS_Store": "hidden",
        "DICOMDIR": "DICOMDIR",
        "benign (1)_mask.png": "BUSI mask",
        "benign (1)_mask_1.png": "BUSI mask",
        "notes.txt": "not an image",
    }


def test_unreadable_folders_and_overlong_paths_are_error_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    locked = tmp_path / "scans" / "locked"
    locked.mkdir(parents=True)
    Image.fromarray(_texture()).save(locked / "hidden from us.png")
    Image.fromarray(_texture()).save(tmp_path / "scans" / "ok.png")
    deep = _deep_tree(tmp_path / "scans" / "deep", "far.png", Image.fromarray(_texture()))
    _unreadable(locked, monkeypatch)
    try:
        found = collect_inputs([str(tmp_path / "scans"), "x" * 5000])
    finally:
        locked.chmod(0o755)
    errors = {item.path: item.error for item in found.files if item.error}
    assert [item.path.name for item in found.files if not item.error] == ["ok.png"]
    assert errors[locked] == f"{locked}: cannot read folder (permission denied)"
    (too_long,) = [path for path in errors if str(path).startswith(str(deep))]
    assert len(os.fsencode(too_long)) >= 4096 and "path longer than the system allows" in errors[too_long]
    assert errors[Path("x" * 5000)].endswith("path longer than the system allows (4096 bytes)")


def test_every_suffix_named_is_a_row(tmp_path: Path) -> None:
    """.jfif, .jp2, .avif read when this Pillow can; .heic (no decoder here) says so in its row."""
    folder = tmp_path / "photos"
    folder.mkdir()
    image = Image.fromarray(_texture()).convert("RGB")
    image.save(folder / "a.jfif", "JPEG")
    if features.check("jpg_2000"):
        image.save(folder / "b.jp2")
    if features.check("avif"):
        image.save(folder / "c.avif")
    (folder / "d.heic").write_bytes(b"\0\0\0\x18ftypheic" + bytes(64))
    found = collect_inputs([str(folder)])
    assert [item.path.name for item in found.files] == sorted(p.name for p in folder.iterdir())
    for item in found.files:
        if item.path.suffix == ".heic" and ".heic" not in Image.registered_extensions():
            with pytest.raises(ImageDecodeError, match=r"d\.heic: not a readable image file \(this Pillow"):
                load_image(item.path)
        elif item.path.suffix != ".heic":
            assert load_image(item.path).size == (128, 96)


def test_an_empty_input_set_is_detectable(tmp_path: Path) -> None:
    folder = tmp_path / "only masks"
    folder.mkdir()
    Image.fromarray(_texture()).save(folder / "x_mask.png")
    (folder / "readme.md").write_text("#")
    found = collect_inputs([str(folder)])
    assert found.files == []
    assert found.describe_skipped() == "2 skipped: 1 BUSI mask, 1 not an image"
    assert [str(item) for item in found.skipped] == [
        f"{folder / 'readme.md'}: not an image",
        f"{folder / 'x_mask.png'}: BUSI mask",
    ]


def test_class_folders_use_the_same_rule(tmp_path: Path) -> None:
    for label in ("benign", "normal"):
        (tmp_path / label).mkdir()
        Image.fromarray(_texture()).save(tmp_path / label / "p_mask_off.png")
        Image.fromarray(_texture()).save(tmp_path / label / "p_mask.png")
        write_us_dicom(tmp_path / label / "IM000001", [_texture()], "MONOCHROME2")
        (tmp_path / label / ".p.png").write_bytes(b"")
    keys = [image.key for image in read_class_folders(tmp_path)]
    assert keys == [
        f"{label}/{name}" for label in ("benign", "normal") for name in ("IM000001", "p_mask_off.png")
    ]


# ---------------------------------------------------------------- 21: CSV byte-order mark


def test_split_csv_with_a_byte_order_mark(tmp_path: Path) -> None:
    Image.fromarray(_texture()).save(tmp_path / "a.png")
    (tmp_path / "split.csv").write_text("path,label,split\na.png,benign,test\n", encoding="utf-8-sig")
    (image,) = read_split_csv(tmp_path / "split.csv")
    assert (image.key, image.label, image.split) == ("a.png", "benign", "test")


# ---------------------------------------------------------------- the model on all of it


@needs_export
def test_arrays_and_degenerate_images_through_the_classifier(tiny_export: Path) -> None:
    from medvit_edge.runtime.classifier import Classifier

    classifier = Classifier.load(tiny_export / "model.onnx")
    texture = _texture()
    reference = classifier.predict(texture).probabilities
    for dtype in (np.int64, np.int32, np.int16):
        assert classifier.predict(texture.astype(dtype)).probabilities == pytest.approx(reference, abs=1e-6)
    with pytest.raises(ImageDecodeError, match="no pixels"):
        classifier.predict(Image.new("L", (0, 0)))


def _hostile_corpus(folder: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Every probe, mapped to "predict", "error: <words>" or "skip: <reason>"."""
    cases: dict[str, str] = {}
    texture = Image.fromarray(_texture())
    write_us_dicom(folder / "IM000001", [np.asarray(texture.convert("RGB"))])
    cases["IM000001"] = "predict"
    write_us_dicom(folder / "1.2.840.113619.2.55.3", [_texture(seed=2)], "MONOCHROME2")
    cases["1.2.840.113619.2.55.3"] = "predict"
    texture.convert("RGB").save(folder / "scan.jfif", "JPEG")
    cases["scan.jfif"] = "predict"
    for name, feature in (("scan.jp2", "jpg_2000"), ("scan.avif", "avif")):
        texture.convert("RGB").save(folder / name) if features.check(feature) else None
        cases[name] = "predict" if features.check(feature) else "absent"
    (folder / "photo.heic").write_bytes(b"\0\0\0\x18ftypheic" + bytes(64))
    heic = ".heic" in Image.registered_extensions()
    cases["photo.heic"] = "error: not a readable image" if heic else "error: no decoder for .heic"
    texture.save(folder / "patient02_mask_off.png")
    cases["patient02_mask_off.png"] = "predict"
    for name in ("benign (1)_mask.png", "benign (1)_mask_1.png"):
        texture.save(folder / name)
        cases[name] = "skip: BUSI mask"
    (folder / "notes.txt").write_text("hello")
    cases["notes.txt"] = "skip: not an image"
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    cases[".DS_Store"] = "skip: hidden"
    (folder / "DICOMDIR").write_bytes(bytes(128) + b"DICM")
    cases["DICOMDIR"] = "skip: DICOMDIR"
    shutil.copy(get_testdata_file("liver_1frame.dcm"), folder / "one-bit.dcm")
    cases["one-bit.dcm"] = "predict"
    stored = np.tile(np.arange(0, 2048, 8, dtype=np.int16), (64, 1))
    _mono_dicom(
        folder / "ct.dcm", stored, RescaleIntercept=-1024, RescaleSlope=1, WindowCenter=40, WindowWidth=400
    )
    cases["ct.dcm"] = "predict"
    _mono_dicom(folder / "signed8.dcm", np.arange(-128, 128, dtype=np.int8).reshape(16, 16))
    cases["signed8.dcm"] = "predict"
    _mono_dicom(folder / "map.dcm", np.linspace(0, 7, 48 * 64, dtype=np.float32).reshape(48, 64))
    cases["map.dcm"] = "predict"
    _mono_dicom(folder / "blank.dcm", np.zeros((32, 32), np.uint16))
    cases["blank.dcm"] = "error: constant image (every pixel 0)"
    _mono_dicom(folder / "cine.dcm", np.stack([_texture(), np.zeros((96, 128), np.uint8), _texture(seed=3)]))
    # a blank frame costs that frame only: the cine loop's other frames are still classified
    cases["cine.dcm"] = "partial: frame 1: decodes to a constant image"
    Image.new("L", (64, 64), 90).save(folder / "blank.png")
    cases["blank.png"] = "error: constant image (every pixel 90)"
    _deflated_dicom(folder / "bomb.dcm", 12000, 12000)
    cases["bomb.dcm"] = "error: too many pixels"
    (folder / "locked").mkdir()
    texture.save(folder / "locked" / "inside.png")
    _unreadable(folder / "locked", monkeypatch)
    cases["locked"] = "error: cannot read folder (permission denied)"
    _deep_tree(folder / "deep", "far.png", texture)
    cases["deep"] = "error: path longer than the system allows"
    (folder / "loop").symlink_to(".")
    cases["loop"] = "skip: folder walked already"
    (folder / "zz-again.png").symlink_to("patient02_mask_off.png")  # sorted after its target
    cases["zz-again.png"] = "skip: duplicate"
    return {name: outcome for name, outcome in cases.items() if outcome != "absent"}


@needs_export
def test_hostile_corpus_end_to_end(
    tiny_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One folder of every probe through ``infer``: each hostile file is one error row naming
    it, each good one a prediction, each skipped one reported; nothing else stops the run."""
    from medvit_edge.inference.command import InferConfig, infer

    folder = tmp_path / "hostile"
    folder.mkdir()
    cases = _hostile_corpus(folder, monkeypatch)
    specs = [str(folder), str(folder / "**" / "*.png")]  # the glob only repeats what the walk found
    try:
        found = collect_inputs(specs)
        summary = infer(InferConfig(model=tiny_export / "model.onnx", inputs=specs, progress=False))
    finally:
        (folder / "locked").chmod(0o755)
    rows: dict[str, list[dict]] = {}
    for row in summary.rows:
        rows.setdefault(_probe_name(Path(row.path), folder), []).append(row)
    skipped = {_probe_name(s.path, folder): s.reason for s in found.skipped}
    for name, outcome in cases.items():
        kind, _, words = outcome.partition(": ")
        errors_here = [r.error for r in rows.get(name, []) if r.error]
        if kind == "predict":
            assert errors_here == [] and all(r.label for r in rows[name]), (name, errors_here)
        elif kind == "error":
            assert len(rows[name]) == 1 and rows[name][0].label == "", name
            assert words in errors_here[0] and name in errors_here[0], (name, errors_here)
        elif kind == "partial":
            assert len(errors_here) == 1 and words in errors_here[0] and name in errors_here[0], errors_here
            assert sum(bool(r.label) for r in rows[name]) == len(rows[name]) - 1
        else:
            assert skipped.get(name) == words and name not in rows, (name, skipped.get(name))
    assert set(rows) == {n for n, o in cases.items() if not o.startswith("skip")}
    errors = sum(o.startswith(("error", "partial")) for o in cases.values())
    assert summary.failed_files == errors and summary.exit_code == 1
    predicted = sum(o == "predict" for o in cases.values())
    assert summary.predictions == predicted + 2  # and the cine loop's two good frames
    print(
        f"\nhostile corpus: {len(cases)} probes, {predicted} predicted, {errors} error rows, "
        f"{len(cases) - predicted - errors} skipped with a reason ({found.describe_skipped()})"
    )


def _probe_name(path: Path, folder: Path) -> str:
    """The corpus entry a row or a skip belongs to: its first path part under the folder."""
    return path.relative_to(folder).parts[0]

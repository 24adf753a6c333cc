"""Tests for synthex.data.images: reading, the thesis crop, and the resumable sharded export."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from synthex.data import images as im
from synthex.data.images import (
    ExportTask,
    ImageReadError,
    crop_box,
    export_images,
    parse_shard,
    prepare_image,
    read_image,
    resize_short_side,
    select_shard,
    smart_crop,
    to_8bit,
)
from synthex.errors import SynthexError


def _rows_image(width: int, height: int) -> Image.Image:
    """An "L" image whose every pixel holds its row index (height <= 256)."""
    rows = np.repeat(np.arange(height, dtype=np.uint8)[:, None], width, axis=1)
    return Image.fromarray(rows, mode="L")


def _cols_image(width: int, height: int) -> Image.Image:
    cols = np.repeat(np.arange(width, dtype=np.uint8)[None, :], height, axis=0)
    return Image.fromarray(cols, mode="L")


def _xray_like(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth grey test pattern with some noise, values 0..255 (float)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = 128 + 80 * np.sin(x / 7.0) * np.cos(y / 11.0)
    return np.clip(base + rng.normal(0, 8, size=base.shape), 0, 255)


# --- geometry --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("width", "height", "size", "box"),
    [
        (100, 160, 100, (0, 20, 100, 120)),  # portrait: 60 excess -> 20 above, 40 below
        (100, 161, 100, (0, 20, 100, 120)),  # 61 excess -> 20 above (floor of 1/3), 41 below
        (160, 100, 100, (30, 0, 130, 100)),  # landscape: centre
        (161, 100, 100, (30, 0, 130, 100)),  # odd excess: 30 left, 31 right
        (100, 100, 100, (0, 0, 100, 100)),  # square: untouched
    ],
)
def test_crop_box(width: int, height: int, size: int, box: tuple[int, int, int, int]) -> None:
    assert crop_box(width, height, size) == box


def test_smart_crop_portrait_keeps_top_third_of_excess() -> None:
    out = np.asarray(smart_crop(_rows_image(100, 160), 100))
    assert out.shape == (100, 100)
    assert out[0, 0] == 20 and out[-1, 0] == 119  # rows 0-19 (20) removed above, 120-159 (40) below
    assert (out[:, 0] == np.arange(20, 120)).all()


def test_smart_crop_landscape_is_centred() -> None:
    out = np.asarray(smart_crop(_cols_image(160, 100), 100))
    assert out.shape == (100, 100)
    assert out[0, 0] == 30 and out[0, -1] == 129


def test_smart_crop_square_and_too_small() -> None:
    img = _rows_image(50, 50)
    assert np.array_equal(np.asarray(smart_crop(img, 50)), np.asarray(img))
    with pytest.raises(ValueError, match="40x60"):
        smart_crop(_rows_image(40, 60), 50)


@pytest.mark.parametrize(
    ("size_in", "size", "size_out"),
    [
        ((200, 300), 100, (100, 150)),  # portrait: width is the short side
        ((300, 200), 100, (150, 100)),  # landscape
        ((50, 80), 100, (100, 160)),  # upscaling
        ((3, 5), 2, (2, 3)),  # 5 * 2/3 = 3.33 -> 3
        ((2048, 2500), 1024, (1024, 1250)),
    ],
)
def test_resize_short_side(size_in: tuple[int, int], size: int, size_out: tuple[int, int]) -> None:
    assert resize_short_side(Image.new("L", size_in), size).size == size_out


def test_resize_same_size_is_untouched_copy() -> None:
    img = _rows_image(64, 96)
    out = resize_short_side(img, 64)
    assert out is not img and np.array_equal(np.asarray(out), np.asarray(img))


@pytest.mark.parametrize("bad", [0, -3, 1.5, "1024", True])
def test_bad_size_and_mode_are_named(bad: object) -> None:
    with pytest.raises(ValueError, match="size"):
        prepare_image(Image.new("L", (10, 10)), bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'CMYK'"):
        prepare_image(Image.new("L", (10, 10)), 8, "CMYK")


def test_prepare_image_shape_mode_and_grey_shortcut() -> None:
    grey = Image.fromarray(_xray_like(40, 64).astype(np.uint8), mode="L")
    for mode in ("RGB", "L"):
        out = prepare_image(grey, 32, mode)
        assert out.size == (32, 32) and out.mode == mode
    # resizing the grey image then converting == converting to RGB first (the thesis order)
    thesis = smart_crop(resize_short_side(grey.convert("RGB"), 32), 32)
    assert prepare_image(grey, 32, "RGB").tobytes() == thesis.tobytes()


# --- reading ---------------------------------------------------------------------------------
def test_16bit_png_is_scaled_by_bit_range(tmp_path: Path) -> None:
    data = np.array([[0, 1024, 2048, 4095]], dtype=np.uint16)  # 12-bit data in a 16-bit PNG
    Image.fromarray(data).save(tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as raw:
        assert raw.mode == "I;16"
    out = read_image(tmp_path / "a.png")
    assert out.mode == "L"
    assert np.asarray(out).tolist() == [[0, 64, 128, 255]]  # / 4095, not / 65535


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0, 32768, 65535], [0, 128, 255]),  # full 16-bit range
        ([0, 100, 200], [0, 100, 200]),  # 8-bit data in a 16-bit container: unchanged
        ([0, 0, 0], [0, 0, 0]),  # blank
    ],
)
def test_high_bit_modes(values: list[int], expected: list[int]) -> None:
    arr = np.array([values], dtype=np.uint16)
    big_endian = Image.frombytes("I;16B", (3, 1), arr.astype(">u2").tobytes())
    as_int32 = Image.fromarray(arr.astype(np.int32))
    for img in (Image.fromarray(arr), big_endian, as_int32):
        assert np.asarray(to_8bit(img)).tolist() == [expected], img.mode


def test_signed_int_image_is_min_max_stretched() -> None:
    img = Image.fromarray(np.array([[-100, 0, 100]], dtype=np.int32))
    assert np.asarray(to_8bit(img)).tolist() == [[0, 128, 255]]


def test_colour_modes(tmp_path: Path) -> None:
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb, "RGB").save(tmp_path / "rgb.png")
    assert read_image(tmp_path / "rgb.png").mode == "RGB"
    grey_rgb = Image.new("RGB", (4, 4), (90, 90, 90))
    grey_rgb.save(tmp_path / "grey_rgb.png")
    assert np.asarray(read_image(tmp_path / "grey_rgb.png")).tolist() == [[90] * 4] * 4
    rgba = Image.new("RGBA", (4, 4), (255, 255, 255, 255))
    rgba.putpixel((0, 0), (255, 255, 255, 0))  # transparent -> black background
    rgba.save(tmp_path / "rgba.png")
    out = np.asarray(read_image(tmp_path / "rgba.png"))
    assert out[0, 0] == 0 and out[1, 1] == 255
    Image.new("L", (4, 4), 77).convert("P").save(tmp_path / "pal.png")
    assert np.asarray(read_image(tmp_path / "pal.png")).tolist() == [[77] * 4] * 4
    Image.new("1", (4, 4), 1).save(tmp_path / "bw.png")
    assert read_image(tmp_path / "bw.png").mode == "L"
    Image.new("LA", (4, 4), (200, 0)).save(tmp_path / "la.png")
    assert np.asarray(read_image(tmp_path / "la.png")).max() == 0


def test_jpeg_grey_and_colour(tmp_path: Path) -> None:
    Image.fromarray(_xray_like(40, 48).astype(np.uint8), mode="L").save(tmp_path / "g.jpg")
    grey = read_image(tmp_path / "g.jpg")
    assert grey.mode == "L" and grey.size == (40, 48)
    Image.new("RGB", (40, 48), (200, 30, 30)).save(tmp_path / "c.jpeg", quality=95)
    colour = read_image(tmp_path / "c.jpeg")
    assert colour.mode == "RGB"
    assert prepare_image(colour, 16).size == (16, 16)


def _truncated_png(path: Path) -> None:
    Image.fromarray(_xray_like(64, 64).astype(np.uint8), mode="L").save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_and_fake_files_raise_image_read_error(tmp_path: Path) -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    _truncated_png(tmp_path / "cut.png")
    (tmp_path / "text.png").write_text("not an image\n")
    for name in ("cut.png", "text.png", "missing.png"):
        with pytest.raises(ImageReadError) as info:
            read_image(tmp_path / name)
        assert isinstance(info.value, SynthexError)
        assert name in str(info.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# --- export ----------------------------------------------------------------------------------
def _sources(folder: Path, count: int = 6) -> list[ExportTask]:
    """Mixed good inputs: 16-bit portrait, 8-bit landscape, RGB, JPEG."""
    folder.mkdir(parents=True, exist_ok=True)
    tasks = []
    for k in range(count):
        kind = k % 4
        pixels = _xray_like(40 + 3 * k, 56 - 2 * k if kind == 1 else 70 + k, seed=k)
        if kind == 1:
            pixels = pixels.T  # landscape
        path = folder / f"src{k}.{'jpg' if kind == 3 else 'png'}"
        if kind == 0:
            img = Image.fromarray((pixels * 16).astype(np.uint16))
        elif kind == 2:
            img = Image.fromarray(pixels.astype(np.uint8), mode="L").convert("RGB")
        else:
            img = Image.fromarray(pixels.astype(np.uint8), mode="L")
        img.save(path)
        tasks.append(ExportTask(path, f"images/{k}_IM-{k:04d}.png"))
    return tasks


def test_export_writes_squares_and_lists_rejects(tmp_path: Path, caplog) -> None:
    tasks = _sources(tmp_path / "src")
    _truncated_png(tmp_path / "src" / "cut.png")
    (tmp_path / "src" / "text.png").write_text("hello")
    tasks += [ExportTask(tmp_path / "src" / "cut.png", "images/cut.png"),
              ExportTask(tmp_path / "src" / "text.png", "images/text.png")]
    out = tmp_path / "out"
    report = export_images(tasks, out, size=32, progress=False)
    assert (report.written, report.skipped_existing, len(report.rejected)) == (6, 0, 2)
    for task in tasks[:6]:
        with Image.open(out / task.name) as img:
            assert img.size == (32, 32) and img.mode == "RGB" and img.format == "PNG"
    assert not (out / "images/cut.png").exists() and not (out / "images/text.png").exists()
    with open(out / "rejects.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["name"] for row in rows] == ["images/cut.png", "images/text.png"]
    assert set(rows[0]) == {"source", "name", "reason"}
    assert rows[0]["source"] == str(tmp_path / "src" / "cut.png")
    assert "truncated" in rows[0]["reason"]
    assert "2 of 8 image(s) could not be read" in caplog.text
    assert [source for source, _ in report.rejected] == [rows[0]["source"], rows[1]["source"]]


def test_export_mode_l(tmp_path: Path) -> None:
    tasks = _sources(tmp_path / "src", 2)
    export_images(tasks, tmp_path / "out", size=16, mode="L", progress=False)
    with Image.open(tmp_path / "out" / tasks[0].name) as img:
        assert img.mode == "L" and img.size == (16, 16)


def test_resume_skips_existing(tmp_path: Path) -> None:
    tasks = _sources(tmp_path / "src", 4)
    out = tmp_path / "out"
    assert export_images(tasks, out, size=16, progress=False).written == 4
    again = export_images(tasks, out, size=16, progress=False)
    assert (again.written, again.skipped_existing) == (0, 4)
    (out / tasks[2].name).unlink()
    third = export_images(tasks, out, size=16, progress=False)
    assert (third.written, third.skipped_existing) == (1, 3)
    assert (out / tasks[2].name).exists()


def test_interrupted_write_leaves_no_partial_file(tmp_path: Path, monkeypatch) -> None:
    tasks = _sources(tmp_path / "src", 2)
    out = tmp_path / "out"
    real_save = Image.Image.save

    def crash(self, fp, *args, **kwargs):  # write a few bytes, then die mid-file
        fp.write(b"\x89PNG\r\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        export_images(tasks, out, size=16, progress=False)
    assert not any((out / "images").iterdir())  # neither the output nor its temp file
    monkeypatch.setattr(Image.Image, "save", real_save)
    # a temp file left by a hard kill (no cleanup ran) is removed and not counted as done
    stale = out / "images" / f".{Path(tasks[0].name).name}.0123456789ab{im._TEMP_SUFFIX}"
    stale.write_bytes(b"\x89PNG half")
    other = out / "images" / f".someone-else.png.0123456789ab{im._TEMP_SUFFIX}"
    other.write_bytes(b"another shard's file in progress")
    report = export_images(tasks, out, size=16, progress=False)
    assert report.written == 2
    assert not stale.exists() and other.exists()
    assert sorted(p.name for p in (out / "images").iterdir() if not p.name.startswith(".")) == \
        sorted(Path(t.name).name for t in tasks)


def test_parse_shard() -> None:
    assert parse_shard("0/4") == (0, 4)
    assert parse_shard(" 3 / 4 ") == (3, 4)
    for bad in ("4/4", "-1/4", "1/0", "a/b", "1", "1/2/3", ""):
        with pytest.raises(ValueError, match="invalid shard") as info:
            parse_shard(bad)
        assert repr(bad) in str(info.value)


def test_select_shard_partitions_and_is_stable() -> None:
    tasks = [ExportTask(Path(f"/src/{k}.png"), f"images/{k}_IM-{k:04d}.png") for k in range(50)]
    for count in (1, 2, 3, 5):
        parts = [select_shard(tasks, (k, count)) for k in range(count)]
        names = [t.name for part in parts for t in part]
        assert sorted(names) == sorted(t.name for t in tasks) and len(names) == len(set(names))
    # depends only on the name: reversing or trimming the list does not move a task
    first = {t.name for t in select_shard(tasks, (1, 3))}
    assert {t.name for t in select_shard(tasks[::-1], (1, 3))} == first
    trimmed = {t.name for t in select_shard(tasks[:20], (1, 3))}
    assert trimmed == first & {t.name for t in tasks[:20]}
    assert [im.shard_of(f"images/{k}.png", 7) for k in range(5)] == [4, 2, 0, 0, 4]  # fixed forever
    with pytest.raises(ValueError, match="invalid shard"):
        select_shard(tasks, (2, 2))


def test_export_shards_cover_everything_once(tmp_path: Path) -> None:
    tasks = _sources(tmp_path / "src", 6)
    out = tmp_path / "out"
    reports = [export_images(tasks, out, size=16, shard=(k, 3), progress=False) for k in range(3)]
    assert sum(r.written for r in reports) == 6
    assert all(r.rejects_path.name == f"rejects.shard-{k}-of-3.csv" for k, r in enumerate(reports))
    assert len(list((out / "images").iterdir())) == 6


def test_bad_names_are_rejected_up_front(tmp_path: Path) -> None:
    src = tmp_path / "a.png"
    for name in ("../x.png", "/abs/x.png", "images/x.jpg"):
        with pytest.raises(ValueError, match="output name"):
            export_images([ExportTask(src, name)], tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="more than one task"):
        export_images([ExportTask(src, "a.png"), ExportTask(src, "./a.png")], tmp_path / "o")
    with pytest.raises(ValueError, match="workers"):
        export_images([], tmp_path / "out", workers=0)


def test_two_workers_byte_identical_to_one(tmp_path: Path) -> None:
    tasks = _sources(tmp_path / "src", 6)
    tasks.append(ExportTask(tmp_path / "src" / "missing.png", "images/missing.png"))
    one = export_images(tasks, tmp_path / "w1", size=24, workers=1, progress=False)
    two = export_images(tasks, tmp_path / "w2", size=24, workers=2, progress=False)
    assert (two.written, len(two.rejected), two.workers) == (6, 1, 2)
    assert one.rejected == two.rejected
    for task in tasks[:6]:
        one_bytes = (tmp_path / "w1" / task.name).read_bytes()
        assert one_bytes == (tmp_path / "w2" / task.name).read_bytes()
    assert (tmp_path / "w1/rejects.csv").read_bytes() == (tmp_path / "w2/rejects.csv").read_bytes()


def test_output_loads_as_imagefolder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    tasks = _sources(tmp_path / "src", 3)
    out = tmp_path / "dataset"
    export_images(tasks, out, size=16, progress=False)
    # a temp file left by a hard kill must not show up as an image
    leftover = f".{Path(tasks[0].name).name}.0123456789ab{im._TEMP_SUFFIX}"
    (out / "images" / leftover).write_bytes(b"x")
    with open(out / "metadata.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "text"])
        writer.writerows([t.name, f"Chest x-ray. Case {k}."] for k, t in enumerate(tasks))
    dataset = datasets.load_dataset("imagefolder", data_dir=str(out), split="train",
                                    cache_dir=str(tmp_path / "hf-cache"))
    assert len(dataset) == 3
    assert sorted(dataset["text"]) == [f"Chest x-ray. Case {k}." for k in range(3)]
    assert dataset[0]["image"].size == (16, 16)
    assert os.environ["HF_DATASETS_OFFLINE"] == "1"


def test_wide_int_and_float_modes() -> None:
    wide = Image.fromarray(np.array([[0, 2**19, 2**20 - 1]], dtype=np.int32))  # 20-bit data
    assert np.asarray(to_8bit(wide)).tolist() == [[0, 128, 255]]
    floats = Image.fromarray(np.array([[0.0, 127.6, 255.0]], dtype=np.float32))
    assert to_8bit(floats).mode == "L"
    assert np.asarray(to_8bit(floats)).tolist() == [[0, 128, 255]]

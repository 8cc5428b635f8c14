import io
import os

import numpy as np
import PIL.Image
import pytest

from training import image_files


def test_image_extensions_are_still_images_pil_decodes():
    exts = image_files.image_extensions()
    assert {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif"} <= exts
    # A video, a document, metadata and stub formats (header only) are not dataset images.
    assert not exts & {".pdf", ".mpg", ".mpeg", ".eps", ".ps", ".h5", ".grib", ".iim", ".txt", ".json"}
    assert image_files.is_image_name("a/B.PNG", exts) and not image_files.is_image_name("notes.pdf", exts)


def test_walk_files_follows_symlinked_folders_once(tmp_path):
    real = tmp_path / "real"
    (real / "deep").mkdir(parents=True)
    (real / "a.png").write_bytes(b"")
    (real / "deep" / "b.png").write_bytes(b"")
    root = tmp_path / "root"
    root.mkdir()
    (root / "c.png").write_bytes(b"")
    os.symlink(real, root / "linked")
    os.symlink(root, real / "back")  # a loop: root/linked/back -> root
    files = sorted(image_files.walk_files(str(root)))
    assert files == ["c.png", "linked/a.png", "linked/deep/b.png"]


def test_duplicate_names():
    assert image_files.duplicate_names(["a", "b", "a", "c", "a", "b"]) == ["a", "b"]
    assert image_files.duplicate_names(["a", "b"]) == []


def _png(arr: np.ndarray, orientation: int | None = None) -> bytes:
    img = PIL.Image.fromarray(arr)
    exif = PIL.Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, format="png", exif=exif)
    return buf.getvalue()


def test_open_image_turns_it_upright_by_its_exif_orientation():
    arr = np.array([[0, 255]], np.uint8)  # 2 wide, 1 high: black | white
    assert np.array_equal(np.asarray(image_files.open_image(_png(arr))), arr)
    # Orientation 6: the camera was turned a quarter clockwise; upright, the left pixel is at the top.
    upright = np.asarray(image_files.open_image(_png(arr, orientation=6)))
    assert upright.shape == (2, 1) and upright[0, 0] == 0 and upright[1, 0] == 255


def test_open_image_fails_on_truncated_pixels_and_errors_read_well():
    data = _png(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    with pytest.raises(OSError, match="truncated"):
        image_files.open_image(data[:-30])
    with pytest.raises(PIL.UnidentifiedImageError) as info:
        image_files.open_image(b"not an image")
    assert image_files.decode_error(info.value) == "not a recognised image format (or a damaged header)"
    assert image_files.decode_error(OSError("image file is truncated")) == "OSError: image file is truncated"


def test_label_table_refuses_one_image_with_two_labels():
    assert image_files.label_table([["a\\b.png", 1], ["c.png", [0.5]], ["a/b.png", 1]]) == {"a/b.png": 1,
                                                                                           "c.png": [0.5]}
    with pytest.raises(image_files.LabelConflict, match="'a/b.png' is listed twice, with labels 1 and 2"):
        image_files.label_table([["a/b.png", 1], ["a\\b.png", 2]])

"""Input validation: every bad-input case, with its exact message and exit code."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_tiny_data, write_csv
from sonokit.schema import DataError, load_schema, require_valid, validate

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "scripts" / "check_data.py"


def run_check(data: Path, *args: str) -> tuple[int, list[str]]:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import check_data
    finally:
        sys.path.pop(0)
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        rc = check_data.main([str(data), "--no-progress", *args])
    return rc, [line for line in out.getvalue().splitlines() if line]


def test_clean_data_exit_0(tiny_data):
    rc, lines = run_check(tiny_data, "--folds", "5")
    assert rc == 0
    assert lines[-1].startswith("OK: 10 train images in 2 classes (cat, dog), 3 test images")


def test_cli_no_traceback_and_nothing_written(tiny_data):
    (tiny_data / "train" / "cat_0.jpg").write_bytes(b"")
    before = sorted(p.name for p in tiny_data.rglob("*"))
    r = subprocess.run([sys.executable, str(CHECK), str(tiny_data), "--no-progress"], capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr + r.stdout
    assert "train/cat_0.jpg: empty file (0 bytes)" in r.stdout
    assert sorted(p.name for p in tiny_data.rglob("*")) == before


def test_missing_and_extra_columns(tiny_data):
    write_csv(tiny_data / "train.csv", ["image_id", "klass", "extra"], [("cat_0", "cat", "1")])
    rc, lines = run_check(tiny_data)
    assert rc == 2
    assert "train.csv:1: missing column(s): label (found: image_id, klass, extra)" in lines
    assert "train.csv:1: extra column(s): klass, extra (expected: image_id, label)" in lines


def test_empty_csv(tiny_data):
    (tiny_data / "train.csv").write_text("")
    write_csv(tiny_data / "sample_submission.csv", ["image_id", "label"], [])
    rc, lines = run_check(tiny_data)
    assert rc == 2
    assert "train.csv: empty CSV (no header)" in lines
    assert "sample_submission.csv: empty CSV (a header but no rows)" in lines


def test_duplicate_ids(tiny_data):
    with open(tiny_data / "train.csv", "a") as f:
        f.write("cat_1,cat\n")
    rc, lines = run_check(tiny_data)
    assert rc == 2
    assert "train.csv:12: duplicate image_id 'cat_1' (first on line 3)" in lines


@pytest.mark.parametrize("bad", ["../etc/passwd", "a/b", "a\\b", "..", "x..y"])
def test_ids_with_path_separators(tiny_data, bad):
    with open(tiny_data / "train.csv", "a") as f:
        f.write(f"{bad},cat\n")
    rc, lines = run_check(tiny_data)
    assert rc == 2
    assert f"train.csv:12: id {bad!r} contains a path separator or '..'" in lines


def test_missing_image_file(tiny_data):
    (tiny_data / "train" / "dog_2.jpg").unlink()
    rc, lines = run_check(tiny_data)
    assert rc == 2
    assert "train.csv:9: image file missing: train/dog_2.<jpg|jpeg|png>" in lines


def test_extra_image_not_listed(tiny_data):
    Image.new("RGB", (8, 8)).save(tiny_data / "train" / "stray.png")
    rc, lines = run_check(tiny_data)
    assert rc == 2
    assert "train/stray.png: image not listed in train.csv" in lines


def test_undecodable_images(tiny_data):
    good = (tiny_data / "train" / "cat_0.jpg").read_bytes()
    (tiny_data / "train" / "cat_0.jpg").write_bytes(good[: len(good) // 2])  # truncated
    (tiny_data / "train" / "cat_1.png").write_bytes(b"")  # zero bytes
    (tiny_data / "train" / "cat_2.jpg").write_text("this is not an image")
    rc, lines = run_check(tiny_data)
    assert rc == 2
    assert any(line.startswith("train/cat_0.jpg: cannot decode:") for line in lines), lines
    assert "train/cat_1.png: empty file (0 bytes)" in lines
    assert "train/cat_2.jpg: not an image (cannot identify the format)" in lines


def test_image_modes(tiny_data):
    t = tiny_data / "train"
    Image.new("L", (20, 10), 90).save(t / "cat_1.png")  # converted
    Image.new("RGBA", (20, 10), (1, 2, 3, 255)).save(t / "cat_3.png")  # opaque alpha: converted
    Image.new("P", (20, 10), 3).save(t / "dog_1.png")  # palette: converted
    Image.fromarray(np.full((10, 20), 40000, np.uint16)).save(t / "dog_3.png")  # 16-bit: converted
    rc, lines = run_check(tiny_data)
    assert rc == 0, lines
    Image.new("RGBA", (20, 10), (1, 2, 3, 100)).save(t / "dog_3.png")  # transparency: reported
    rc, lines = run_check(tiny_data)
    assert rc == 2
    assert lines == ["train/dog_3.png: mode RGBA with transparent pixels: dropping alpha would change the image"]


def test_cmyk_jpeg_is_read_like_other_modes(tiny_data):
    from sonokit.schema import load_image

    path = tiny_data / "train" / "dog_4.jpg"
    Image.new("CMYK", (24, 16), (0, 255, 255, 0)).save(path, quality=100)  # pure red in CMYK
    with Image.open(path) as im:
        assert im.mode == "CMYK"
    rc, lines = run_check(tiny_data)
    assert rc == 0, lines
    arr = load_image(path)
    assert arr.shape == (16, 24, 3) and arr.dtype == np.uint8
    r, g, b = arr.reshape(-1, 3).mean(0)
    assert r > 240 and g < 15 and b < 15


def test_unsupported_mode_is_reported(tiny_data, tmp_path):
    schema = tmp_path / "s.yaml"
    text = (Path(__file__).resolve().parents[1] / "input_schema" / "default.yaml").read_text()
    schema.write_text(text.replace("extensions: [jpg, jpeg, png]", "extensions: [jpg, jpeg, png, tif]"))
    (tiny_data / "train" / "dog_4.jpg").unlink()
    Image.fromarray(np.zeros((10, 20), np.float32)).save(tiny_data / "train" / "dog_4.tif")  # mode F
    rc, lines = run_check(tiny_data, "--schema", str(schema))
    assert rc == 2
    assert lines == ["train/dog_4.tif: mode F is not supported (expected L, RGB, RGBA, P, CMYK or 16-bit grayscale)"]


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    from sonokit.schema import load_image

    Image.fromarray(np.full((4, 4), 40000, np.uint16)).save(tmp_path / "a.png")
    arr = load_image(tmp_path / "a.png")
    assert arr.shape == (4, 4, 3) and arr.dtype == np.uint8
    assert int(arr[0, 0, 0]) == 40000 >> 8


def test_labels_not_in_class_list(tiny_data, tmp_path):
    schema = tmp_path / "s.yaml"
    text = (Path(__file__).resolve().parents[1] / "input_schema" / "default.yaml").read_text()
    schema.write_text(text.replace("classes: []", "classes: [cat, bird]"))
    rc, lines = run_check(tiny_data, "--schema", str(schema), "--folds", "2")
    assert rc == 2
    assert "train.csv:7: label 'dog' is not in the class list (cat, bird)" in lines
    assert "train.csv: class 'bird' has 0 image(s), fewer than the 2 folds" in lines


def test_test_images_vs_sample_submission(tiny_data):
    (tiny_data / "test" / "t1.png").unlink()
    Image.new("RGB", (8, 8)).save(tiny_data / "test" / "zz.jpg")
    rc, lines = run_check(tiny_data)
    assert rc == 2
    assert "sample_submission.csv:3: image file missing: test/t1.<jpg|jpeg|png>" in lines
    assert "test/zz.jpg: test image has no row in sample_submission.csv" in lines


def test_classes_fewer_than_folds(tmp_path):
    data = make_tiny_data(tmp_path / "d", per_class=3)
    rc, lines = run_check(data, "--folds", "5")
    assert rc == 2
    assert "train.csv: class 'cat' has 3 image(s), fewer than the 5 folds" in lines
    assert run_check(data, "--folds", "3")[0] == 0


def test_every_problem_reported_at_once(tiny_data):
    (tiny_data / "train" / "dog_2.jpg").unlink()
    (tiny_data / "train" / "cat_1.png").write_bytes(b"")
    with open(tiny_data / "train.csv", "a") as f:
        f.write("cat_1,cat\n")
    rc, lines = run_check(tiny_data)
    assert rc == 2
    assert sorted(lines) == sorted(
        [
            "train.csv:12: duplicate image_id 'cat_1' (first on line 3)",
            "train.csv:9: image file missing: train/dog_2.<jpg|jpeg|png>",
            "train.csv: class 'dog' has 4 image(s), fewer than the 5 folds",
            "train/cat_1.png: empty file (0 bytes)",
        ]
    )


def test_require_valid_raises_with_all_problems(tiny_data):
    (tiny_data / "train" / "dog_2.jpg").unlink()
    with pytest.raises(DataError) as e:
        require_valid(tiny_data, load_schema(), n_folds=2, progress=False)
    assert len(e.value.problems) == 1


def test_image_check_replaces_decoding(tiny_data):
    """validate() hands the images to the given checker (training's cache builder) and reports what it says."""
    (tiny_data / "train" / "cat_1.png").write_bytes(b"")
    seen = []

    def checker(train, test):
        seen.append((len(train), len(test)))
        return {test[0]: "says the checker"}

    problems, _ = validate(tiny_data, load_schema(), n_folds=2, image_check=checker)
    assert seen == [(10, 3)]
    assert [str(p) for p in problems] == ["test/t0.png: says the checker"]  # cat_1.png was never decoded


def test_predict_scope_reads_only_the_class_list(tiny_data):
    """A prediction-only run needs the classes and the test images, not the train images."""
    import shutil

    shutil.rmtree(tiny_data / "train")
    problems, index = validate(tiny_data, load_schema(), n_folds=5, scope="predict")
    assert problems == [] and index.classes == ["cat", "dog"] and index.train_files == [] and len(index.test_files) == 3
    problems, _ = validate(tiny_data, load_schema(), n_folds=5)
    assert "train/: image folder not found" in [str(p) for p in problems]


def test_integer_labels_sort_numerically(tmp_path):
    data = make_tiny_data(tmp_path / "d", classes=tuple(str(i) for i in range(12)), per_class=2, size=(8, 8))
    problems, index = validate(data, load_schema(), n_folds=2, scope="predict")
    assert problems == [] and index.classes == [str(i) for i in range(12)]


def test_schema_unknown_key(tmp_path):
    from sonokit.schema import SchemaError

    p = tmp_path / "s.yaml"
    p.write_text("train_csv: a.csv\nid_col: x\n")
    with pytest.raises(SchemaError, match=r"unknown key\(s\) \['id_col'\]"):
        load_schema(p)

"""The ingest stage: both raw layouts, the quirks of the real files, and bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import (
    REPOSITORY,
    make_image,
    write_csv_layout,
    write_folder_layout,
    write_label_file,
)
from PIL import Image

from ferplus.dataset import load_dataset
from ferplus.ingest import detect_layout, ingest
from ferplus.readers import RawDataError, read_kaggle_csv, read_pngs, write_kaggle_csv

NF_ONLY = [0, 0, 0, 0, 0, 0, 0, 0, 0, 10]

# One row per image: (Usage, image name, votes). Covers a clear majority, a two-way split, a
# nameless not-a-face row, a repeated name with other votes, a vote total of 9, and a row whose
# votes go mostly to unknown.
ROWS = [
    ("Training", "fer0000000.png", [6, 3, 1, 0, 0, 0, 0, 0, 0, 0]),
    ("Training", "fer0000001.png", [0, 4, 4, 0, 0, 0, 0, 0, 2, 0]),
    ("Training", "", NF_ONLY),
    ("PublicTest", "fer0000003.png", [0, 0, 0, 7, 2, 0, 0, 0, 1, 0]),
    ("PublicTest", "fer0000000.png", [0, 0, 0, 0, 0, 10, 0, 0, 0, 0]),
    ("PrivateTest", "fer0000005.png", [0, 0, 0, 0, 0, 0, 5, 4, 0, 0]),
    ("PrivateTest", "fer0000006.png", [2, 0, 0, 0, 0, 0, 0, 0, 8, 0]),
]

# In both layouts rows 0, 1, 3 and 5 are kept, with these crossentropy-mode labels.
EXPECTED_MULTI = np.array(
    [
        [2 / 3, 1 / 3, 0, 0, 0, 0, 0, 0],
        [0, 0.5, 0.5, 0, 0, 0, 0, 0],
        [0, 0, 0, 1, 0, 0, 0, 0],  # sadness alone has 7 of 9 votes, past the 75% mark
        [0, 0, 0, 0, 0, 0, 5 / 9, 4 / 9],
    ],
    dtype=np.float32,
)
EXPECTED_SINGLE = np.array(
    [
        [1, 0, 0, 0, 0, 0, 0, 0],
        [0, 1, 0, 0, 0, 0, 0, 0],  # happiness and surprise tie: the emotion listed first wins
        [0, 0, 0, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 1, 0],
    ],
    dtype=np.float32,
)


def test_ingest_csv_layout_exact(tmp_path):
    raw_dir = tmp_path / "raw"
    write_csv_layout(raw_dir, ROWS)
    # Kaggle copies exist whose header has spaces around the column names.
    kaggle = raw_dir / "fer2013.csv"
    header = " emotion , pixels , Usage"
    kaggle.write_text(kaggle.read_text().replace("emotion,pixels,Usage", header))

    dataset, report = ingest(raw_dir)

    np.testing.assert_array_equal(dataset.images[..., 0], [make_image(n) for n in (0, 1, 3, 5)])
    assert dataset.images.dtype == np.uint8
    assert dataset.images.shape == (4, 48, 48, 1)
    np.testing.assert_allclose(dataset.emotions_multi, EXPECTED_MULTI, atol=1e-7)
    np.testing.assert_array_equal(dataset.emotions_single, EXPECTED_SINGLE)
    assert dataset.index["source"].tolist() == [
        "fer2013.csv:2",
        "fer2013.csv:3",
        "fer2013.csv:5",
        "fer2013.csv:7",
    ]
    assert dataset.index["usage"].tolist() == ["Training", "Training", "PublicTest", "PrivateTest"]
    assert dataset.votes.tolist() == [ROWS[row][2] for row in (0, 1, 3, 5)]
    assert report["layout"] == "csv"
    assert report["label_source"] == "fer2013new.csv"
    assert report["images_read"] == 7
    assert report["images_kept"] == 4
    assert report["dropped"] == {
        "duplicate_name": 1,
        "no_image_name": 1,
        "unknown_or_not_face": 1,
    }
    assert report["per_usage"]["PublicTest"] == {
        "read": 2,
        "kept": 1,
        "dropped": {"duplicate_name": 1},
        "emotions": {
            "neutral": 0,
            "happiness": 0,
            "surprise": 0,
            "sadness": 1,
            "anger": 0,
            "disgust": 0,
            "fear": 0,
            "contempt": 0,
        },
    }
    assert report["vote_totals"] == {"9": 1, "10": 6}
    assert report["majority_ties"] == 1
    assert report["duplicates"] == [
        {
            "image_name": "fer0000000.png",
            "kept": "fer2013.csv:2",
            "dropped": "fer2013.csv:6",
            "same_votes": False,
        }
    ]


def test_ingest_folder_layout_exact(tmp_path):
    raw_dir = tmp_path / "raw"
    # The folder layout has no nameless rows, and a repeated name would be one file.
    rows = [row for number, row in enumerate(ROWS) if number not in (2, 4)]
    write_folder_layout(raw_dir, rows)

    dataset, report = ingest(raw_dir)

    # make_image numbers follow the row order given to write_folder_layout.
    np.testing.assert_array_equal(dataset.images[..., 0], [make_image(n) for n in (0, 1, 2, 3)])
    np.testing.assert_allclose(dataset.emotions_multi, EXPECTED_MULTI, atol=1e-7)
    np.testing.assert_array_equal(dataset.emotions_single, EXPECTED_SINGLE)
    assert dataset.index["source"].tolist() == [
        "FER2013Train/fer0000000.png",
        "FER2013Train/fer0000001.png",
        "FER2013Valid/fer0000003.png",
        "FER2013Test/fer0000005.png",
    ]
    assert report["layout"] == "folders"
    assert report["label_source"] == "label.csv of each FER+ folder"
    assert report["dropped"] == {"unknown_or_not_face": 1}


def test_ingest_folder_duplicate_across_folders(tmp_path):
    raw_dir = tmp_path / "raw"
    rows = [
        ("Training", "fer0000000.png", [10, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        ("PublicTest", "fer0000000.png", [10, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        ("PrivateTest", "fer0000002.png", [0, 10, 0, 0, 0, 0, 0, 0, 0, 0]),
    ]
    write_folder_layout(raw_dir, rows)

    dataset, report = ingest(raw_dir)

    assert len(dataset) == 2
    assert report["duplicates"] == [
        {
            "image_name": "fer0000000.png",
            "kept": "FER2013Train/fer0000000.png",
            "dropped": "FER2013Valid/fer0000000.png",
            "same_votes": True,
        }
    ]


@pytest.mark.parametrize(
    ("mode", "kept"),
    [("majority", [0, 3, 5]), ("probability", [0, 1, 3, 5]), ("multi_target", [0, 1, 3, 5])],
)
def test_ingest_vote_mode_keeps(tmp_path, mode, kept):
    write_csv_layout(tmp_path, ROWS)

    dataset, _ = ingest(tmp_path, vote_mode=mode)

    assert dataset.index["source"].tolist() == [f"fer2013.csv:{row + 2}" for row in kept]


def test_ingest_keep_rejected_mostly_unknown(tmp_path):
    write_csv_layout(tmp_path, ROWS)

    dataset, report = ingest(tmp_path, keep_rejected=True)

    # Row 6 (8 unknown votes, 2 neutral) is kept with its raw emotion votes: neutral only.
    assert dataset.index["source"].tolist()[-1] == "fer2013.csv:8"
    np.testing.assert_array_equal(dataset.emotions_multi[-1], [1, 0, 0, 0, 0, 0, 0, 0])
    assert report["dropped"] == {"duplicate_name": 1, "no_image_name": 1}


def test_ingest_rows_without_emotion_votes_dropped(tmp_path):
    rows = [
        ("Training", "fer0000000.png", [0, 0, 0, 0, 0, 0, 0, 0, 4, 6]),
        ("PublicTest", "fer0000001.png", [0, 10, 0, 0, 0, 0, 0, 0, 0, 0]),
        ("PrivateTest", "fer0000002.png", [0, 0, 10, 0, 0, 0, 0, 0, 0, 0]),
    ]
    write_csv_layout(tmp_path, rows)

    dataset, report = ingest(tmp_path, keep_rejected=True)

    assert report["dropped"] == {"no_emotion_votes": 1}
    assert not np.isnan(dataset.emotions_multi).any()


def test_detect_layout_choices(tmp_path):
    write_csv_layout(tmp_path / "csv", ROWS)
    write_folder_layout(tmp_path / "folders", ROWS[:1] + ROWS[3:4] + ROWS[5:6])

    assert detect_layout(tmp_path / "csv") == "csv"
    assert detect_layout(tmp_path / "folders") == "folders"
    with pytest.raises(ValueError, match="expected one of 'auto', 'csv', 'folders'|auto, csv"):
        detect_layout(tmp_path / "csv", "kaggle")


def test_detect_layout_both_present(tmp_path):
    write_csv_layout(tmp_path, ROWS)
    write_folder_layout(tmp_path, ROWS[:1] + ROWS[3:4] + ROWS[5:6])

    with pytest.raises(RawDataError, match="set ingest.layout to csv or folders"):
        detect_layout(tmp_path)


def test_detect_layout_empty_folder(tmp_path):
    with pytest.raises(RawDataError, match="found neither fer2013.csv nor"):
        detect_layout(tmp_path)


# --- bad input in the Kaggle layout ---------------------------------------------------------


def replace_line(path, line_number, new_line):
    lines = path.read_text().split("\n")
    lines[line_number - 1] = new_line
    path.write_text("\n".join(lines))


def pixel_line(values, usage="Training"):
    return f"0,{' '.join(values)},{usage}"


@pytest.mark.parametrize(
    ("new_line", "message"),
    [
        (pixel_line(["1"] * 2303), "line 3: pixels has 2303 values, expected 2304"),
        (pixel_line(["1"] * 2305), "line 3: pixels has 2305 values, expected 2304"),
        (pixel_line(["1"] * 100 + ["x7"] + ["1"] * 2203), "line 3: pixel 101 is 'x7'"),
        (pixel_line(["1"] * 5 + ["256"] + ["1"] * 2298), "line 3: pixel 6 is '256'"),
        (pixel_line(["1"] * 5 + ["1000"] + ["1"] * 2298), "line 3: pixel 6 is '1000'"),
        (pixel_line(["1"] * 5 + ["-1"] + ["1"] * 2298), "line 3: pixel 6 is '-1'"),
        (pixel_line(["1"] * 2304, usage="Validation"), "line 3: unknown Usage 'Validation'"),
        ("0,,Training", "line 3: pixels is empty, expected 2304 values"),
        ("x," + " ".join(["1"] * 2304) + ",Training", "line 3: emotion is 'x'"),
        ("0," + " ".join(["1"] * 2304), "line 3: expected 3 columns, got 2"),
    ],
)
def test_kaggle_csv_bad_row(tmp_path, new_line, message):
    write_csv_layout(tmp_path, ROWS)
    replace_line(tmp_path / "fer2013.csv", 3, new_line)

    with pytest.raises(RawDataError) as error:
        read_kaggle_csv(tmp_path / "fer2013.csv")

    assert str(tmp_path / "fer2013.csv") in str(error.value)
    assert message in str(error.value)


def test_kaggle_csv_missing_column(tmp_path):
    write_csv_layout(tmp_path, ROWS)
    replace_line(tmp_path / "fer2013.csv", 1, "emotion,pixel,Usage")

    with pytest.raises(RawDataError, match=r"fer2013.csv, line 1: missing column 'pixels'"):
        read_kaggle_csv(tmp_path / "fer2013.csv")


def test_kaggle_csv_empty_file(tmp_path):
    (tmp_path / "fer2013.csv").write_text("")

    with pytest.raises(RawDataError, match="fer2013.csv: file is empty"):
        read_kaggle_csv(tmp_path / "fer2013.csv")


def test_kaggle_csv_header_only(tmp_path):
    (tmp_path / "fer2013.csv").write_text("emotion,pixels,Usage\n")

    with pytest.raises(RawDataError, match="fer2013.csv: no data rows after the header"):
        read_kaggle_csv(tmp_path / "fer2013.csv")


def test_kaggle_csv_many_blocks_match(tmp_path, monkeypatch):
    # Small blocks force rows to straddle block borders; the values must not change.
    images = np.stack([make_image(number) for number in range(30)])
    write_kaggle_csv(tmp_path / "fer2013.csv", images, ["Training"] * 30, [3] * 30)
    monkeypatch.setattr("ferplus.readers.CSV_BLOCK_BYTES", 20_000)

    rows = read_kaggle_csv(tmp_path / "fer2013.csv")

    np.testing.assert_array_equal(rows.images[..., 0], images)
    assert rows.line_numbers == list(range(2, 32))


def test_kaggle_csv_quoted_pixels_crlf(tmp_path):
    pixels = " ".join(str(value) for value in make_image(4).ravel())
    (tmp_path / "fer2013.csv").write_bytes(
        f'emotion,pixels,Usage\r\n3,"{pixels}",PrivateTest\r\n'.encode()
    )

    rows = read_kaggle_csv(tmp_path / "fer2013.csv")

    np.testing.assert_array_equal(rows.images[0, ..., 0], make_image(4))
    assert rows.usages == ["PrivateTest"]


def test_ingest_missing_label_file(tmp_path):
    write_csv_layout(tmp_path, ROWS)
    (tmp_path / "fer2013new.csv").unlink()

    with pytest.raises(RawDataError, match="fer2013new.csv: file not found; the Kaggle layout"):
        ingest(tmp_path)


def test_ingest_row_count_mismatch(tmp_path):
    write_csv_layout(tmp_path, ROWS)
    write_label_file(tmp_path / "fer2013new.csv", ROWS[:-1])

    with pytest.raises(RawDataError, match="has 7 data rows but .*fer2013new.csv has 6"):
        ingest(tmp_path)


def test_ingest_usage_out_of_step(tmp_path):
    write_csv_layout(tmp_path, ROWS)
    swapped = ROWS[:2] + [("PublicTest", "", NF_ONLY)] + ROWS[3:]
    write_label_file(tmp_path / "fer2013new.csv", swapped)

    with pytest.raises(RawDataError, match="fer2013.csv, line 4 has Usage 'Training' but"):
        ingest(tmp_path)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("Train,fer0000000.png,1,0,0,0,0,0,0,0,0,9", "line 2: unknown Usage 'Train'"),
        ("Training,fer0000000.png,1,0,x,0,0,0,0,0,0,9", "line 2: surprise vote count is 'x'"),
        ("Training,fer0000000.png,1,0,-1,0,0,0,0,0,0,9", "line 2: surprise vote count is '-1'"),
        ("Training,fer0000000.png,1,0,0", "line 2: expected 12 columns, got 5"),
    ],
)
def test_fer2013new_bad_row(tmp_path, row, message):
    write_csv_layout(tmp_path, ROWS)
    replace_line(tmp_path / "fer2013new.csv", 2, row)

    with pytest.raises(RawDataError) as error:
        ingest(tmp_path)

    assert str(tmp_path / "fer2013new.csv") in str(error.value)
    assert message in str(error.value)


def test_fer2013new_missing_column(tmp_path):
    write_csv_layout(tmp_path, ROWS)
    replace_line(tmp_path / "fer2013new.csv", 1, "Usage,Image name,neutral,happiness")

    with pytest.raises(RawDataError, match="line 1: missing column 'surprise'"):
        ingest(tmp_path)


# --- bad input in the folder layout ---------------------------------------------------------

FOLDER_ROWS = [
    ("Training", "fer0000000.png", [10, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    ("PublicTest", "fer0000001.png", [0, 10, 0, 0, 0, 0, 0, 0, 0, 0]),
    ("PrivateTest", "fer0000002.png", [0, 0, 10, 0, 0, 0, 0, 0, 0, 0]),
]


def test_folder_missing_png(tmp_path):
    write_folder_layout(tmp_path, FOLDER_ROWS)
    (tmp_path / "FER2013Valid" / "fer0000001.png").unlink()

    with pytest.raises(RawDataError, match="FER2013Valid/fer0000001.png: image file not found"):
        ingest(tmp_path)


def test_folder_unreadable_png(tmp_path):
    write_folder_layout(tmp_path, FOLDER_ROWS)
    (tmp_path / "FER2013Test" / "fer0000002.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")

    with pytest.raises(RawDataError, match="FER2013Test/fer0000002.png: unreadable image"):
        ingest(tmp_path)


def test_folder_corrupt_pixel_data(tmp_path):
    write_folder_layout(tmp_path, FOLDER_ROWS)
    path = tmp_path / "FER2013Train" / "fer0000000.png"
    data = bytearray(path.read_bytes())
    data[45:60] = b"\xff" * 15  # inside the compressed pixels
    path.write_bytes(bytes(data))

    with pytest.raises(RawDataError, match="FER2013Train/fer0000000.png: unreadable image"):
        ingest(tmp_path)


def test_folder_wrong_image_size(tmp_path):
    write_folder_layout(tmp_path, FOLDER_ROWS)
    Image.new("L", (64, 48)).save(tmp_path / "FER2013Train" / "fer0000000.png")

    with pytest.raises(RawDataError, match="is 64x48 pixels, expected 48x48"):
        ingest(tmp_path)


def test_folder_colour_png_converted(tmp_path):
    write_folder_layout(tmp_path, FOLDER_ROWS)
    Image.new("RGB", (48, 48), (255, 0, 0)).save(tmp_path / "FER2013Train" / "fer0000000.png")

    dataset, _ = ingest(tmp_path)

    # Pillow's L conversion: 299/1000 of red, rounded.
    assert dataset.images[0].max() == 76
    assert dataset.images[0].min() == 76


def test_folder_missing_folder(tmp_path):
    write_folder_layout(tmp_path, FOLDER_ROWS)
    for path in (tmp_path / "FER2013Test").iterdir():
        path.unlink()
    (tmp_path / "FER2013Test").rmdir()

    with pytest.raises(RawDataError, match="FER2013Test: folder not found"):
        ingest(tmp_path)


def test_folder_empty_label_file(tmp_path):
    write_folder_layout(tmp_path, FOLDER_ROWS)
    (tmp_path / "FER2013Valid" / "label.csv").write_text("")

    with pytest.raises(RawDataError, match="FER2013Valid/label.csv: file is empty"):
        ingest(tmp_path)


def test_folder_label_bad_columns(tmp_path):
    write_folder_layout(tmp_path, FOLDER_ROWS)
    (tmp_path / "FER2013Valid" / "label.csv").write_text("fer0000001.png,0,10,0\n")

    with pytest.raises(RawDataError, match="label.csv, line 1: expected 11 or 12 columns"):
        ingest(tmp_path)


def test_folder_label_without_face_box(tmp_path):
    write_folder_layout(tmp_path, FOLDER_ROWS)
    (tmp_path / "FER2013Valid" / "label.csv").write_text("fer0000001.png,0,10,0,0,0,0,0,0,0,0\n")

    dataset, _ = ingest(tmp_path)

    assert dataset.emotions_single[1].tolist() == [0, 1, 0, 0, 0, 0, 0, 0]


def test_read_pngs_matches_pillow(tmp_path):
    paths = []
    for number in range(5):
        paths.append(tmp_path / f"{number}.png")
        Image.fromarray(make_image(number), mode="L").save(paths[-1], optimize=number % 2 == 0)

    images = read_pngs(paths)

    np.testing.assert_array_equal(images, [make_image(number) for number in range(5)])


# --- the stage script -----------------------------------------------------------------------


def write_params(directory, raw_dir="data/raw", vote_mode="crossentropy"):
    (directory / "params.yaml").write_text(
        "base:\n  seed: 1\n"
        f"ingest:\n  raw_dir: {raw_dir}\n  layout: auto\n  vote_mode: {vote_mode}\n"
        "  remove_single_votes: true\n  keep_rejected: false\n"
    )


def run_ingest_stage(directory):
    return subprocess.run(
        [sys.executable, str(REPOSITORY / "stages" / "ingest.py")],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_ingest_stage_writes_outputs(tmp_path):
    write_csv_layout(tmp_path / "data" / "raw", ROWS)
    write_params(tmp_path)

    result = run_ingest_stage(tmp_path)

    assert result.returncode == 0, result.stderr
    dataset = load_dataset(tmp_path / "data" / "prepared")
    np.testing.assert_allclose(dataset.emotions_multi, EXPECTED_MULTI, atol=1e-7)
    report = json.loads((tmp_path / "data" / "prepared" / "report.json").read_text())
    assert report["images_kept"] == 4
    assert "kept 4 of 7 images" in result.stderr


def test_ingest_stage_bad_input_leaves_nothing(tmp_path):
    write_csv_layout(tmp_path / "data" / "raw", ROWS)
    replace_line(tmp_path / "data" / "raw" / "fer2013.csv", 5, pixel_line(["7"] * 2000))
    write_params(tmp_path)

    result = run_ingest_stage(tmp_path)

    assert result.returncode == 1
    assert "fer2013.csv, line 5: pixels has 2000 values, expected 2304" in result.stderr
    assert "Traceback" not in result.stderr
    assert list((tmp_path / "data").iterdir()) == [tmp_path / "data" / "raw"]


def test_ingest_stage_bad_params(tmp_path):
    write_csv_layout(tmp_path / "data" / "raw", ROWS)
    write_params(tmp_path, vote_mode="soft")

    result = run_ingest_stage(tmp_path)

    assert result.returncode == 1
    assert "ingest.vote_mode is 'soft', expected one of 'majority'" in result.stderr
    assert not (tmp_path / "data" / "prepared").exists()


# --- real data ------------------------------------------------------------------------------


def test_ingest_real_folders(real_data):
    dataset, report = ingest(real_data, layout="folders")

    assert report["images_read"] == 35_710
    assert dataset.images.shape == (report["images_kept"], 48, 48, 1)
    assert dataset.emotions_multi.shape == (report["images_kept"], 8)
    folder_counts = {"Training": 28_558, "PublicTest": 3_579, "PrivateTest": 3_573}
    for usage, folder_count in folder_counts.items():
        counts = report["per_usage"][usage]
        assert counts["read"] == folder_count
        assert counts["kept"] == int((dataset.index["usage"] == usage).sum())
        assert counts["kept"] + sum(counts["dropped"].values()) == folder_count
    assert sum(report["emotions"].values()) == report["images_kept"]
    np.testing.assert_allclose(dataset.emotions_multi.sum(axis=1), 1.0, atol=1e-6)
    # Spot-check pixels against Pillow's own decoder.
    for position in (0, 12_345, len(dataset) - 1):
        path = real_data / dataset.index["source"][position]
        expected = np.asarray(Image.open(path))
        np.testing.assert_array_equal(dataset.images[position, ..., 0], expected)


def test_ingest_real_fer_plus_test_subset(real_data):
    dataset, _ = ingest(real_data, layout="folders", vote_mode="majority")

    private_test = int((dataset.index["usage"] == "PrivateTest").sum())
    assert private_test == 3_137

"""params.yaml validation: unknown keys, wrong types and out-of-range values name the key."""

import pytest

from ferplus.params import ParamsError, Setting, check_choice, load_section, load_seed

SETTINGS = {
    "epochs": Setting(int, minimum=1),
    "learning_rate": Setting(float, minimum=0, exclusive_minimum=True),
    "model": Setting(str, choices=("compact_cnn", "vgg13")),
    "augment": Setting(bool),
    "milestones": Setting(list, item_kind=int, minimum=0),
}

VALID = (
    "base:\n  seed: 3\n"
    "train:\n  epochs: 2\n  learning_rate: 0.001\n  model: vgg13\n  augment: true\n"
    "  milestones: [1, 2]\n"
)


def write(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_load_section_valid(tmp_path):
    path = write(tmp_path, VALID)

    params = load_section("train", SETTINGS, path)

    assert params == {
        "epochs": 2,
        "learning_rate": 0.001,
        "model": "vgg13",
        "augment": True,
        "milestones": [1, 2],
    }
    assert load_seed(path) == 3


def test_load_section_small_float_stays_float(tmp_path):
    # `dvc exp run -S train.learning_rate=0.000001` writes 1.0e-06; a YAML 1.1 reader keeps 1e-6
    # as a string.
    for written in ("1.0e-06", "1e-6", "0.000001"):
        path = write(tmp_path, VALID.replace("0.001", written))

        params = load_section("train", SETTINGS, path)

        assert params["learning_rate"] == pytest.approx(1e-6)
        assert isinstance(params["learning_rate"], float)


def test_load_section_integer_for_float(tmp_path):
    path = write(tmp_path, VALID.replace("learning_rate: 0.001", "learning_rate: 1"))

    assert load_section("train", SETTINGS, path)["learning_rate"] == 1.0


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("epochs: 2", "epochs: 0", "train.epochs is 0, expected an integer >= 1"),
        ("epochs: 2", "epochs: 2.5", "train.epochs is 2.5, expected an integer >= 1"),
        ("epochs: 2", "epochs: true", "train.epochs is True, expected an integer >= 1"),
        ("epochs: 2", "epochs: two", "train.epochs is 'two', expected an integer >= 1"),
        ("learning_rate: 0.001", "learning_rate: 0", "learning_rate is 0, expected a number > 0"),
        ("learning_rate: 0.001", "learning_rate: .nan", "train.learning_rate is nan"),
        ("model: vgg13", "model: vgg19", "'vgg19', expected one of 'compact_cnn', 'vgg13'"),
        ("augment: true", "augment: 1", "train.augment is 1, expected true or false"),
        ("[1, 2]", "[1, -2]", "train.milestones contains -2"),
        ("[1, 2]", "3", "train.milestones is 3, expected a list of integers"),
        ("  epochs: 2\n", "  epochs: 2\n  epoch: 3\n", "unknown key train.epoch; the keys of"),
        ("  epochs: 2\n", "", "missing key train.epochs"),
    ],
)
def test_load_section_invalid(tmp_path, old, new, message):
    path = write(tmp_path, VALID.replace(old, new))

    with pytest.raises(ParamsError) as error:
        load_section("train", SETTINGS, path)

    assert message in str(error.value)
    assert str(path) in str(error.value)


def test_load_section_missing_section(tmp_path):
    path = write(tmp_path, "base:\n  seed: 1\n")

    with pytest.raises(ParamsError, match="missing section 'train'"):
        load_section("train", SETTINGS, path)


def test_load_section_missing_file(tmp_path):
    with pytest.raises(ParamsError, match="file not found"):
        load_section("train", SETTINGS, tmp_path / "params.yaml")


def test_load_section_invalid_yaml(tmp_path):
    path = write(tmp_path, "train: [unclosed\n")

    with pytest.raises(ParamsError, match="invalid YAML"):
        load_section("train", SETTINGS, path)


def test_load_seed_negative(tmp_path):
    path = write(tmp_path, VALID.replace("seed: 3", "seed: -1"))

    with pytest.raises(ParamsError, match="base.seed is -1, expected an integer >= 0"):
        load_seed(path)


def test_check_choice_lists_allowed():
    with pytest.raises(ValueError, match="invalid model 'x': expected one of 'a', 'b'"):
        check_choice("model", "x", ["a", "b"])

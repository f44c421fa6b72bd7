"""Loading and validating params.yaml: each stage reads its own section plus `base`.

Every stage declares the settings it reads as a dict of `Setting`s. Validation happens before a
stage does any work and rejects unknown keys, missing keys, wrong types and out-of-range values
with a message that names the key and what is allowed.
"""

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

PARAMS_FILE = "params.yaml"


class ParamsError(ValueError):
    """An invalid params.yaml: the message names the file, the key and what is allowed."""


@dataclass(frozen=True)
class Setting:
    """The allowed values of one params key."""

    kind: type  # bool, int, float, str or list
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    item_kind: type | None = None  # for kind=list: the type of each item

    def describe(self) -> str:
        """Return what this setting allows, as a phrase for error messages."""
        if self.choices is not None:
            return "one of " + ", ".join(repr(choice) for choice in self.choices)
        if self.kind is list:
            plurals = {bool: "true/false values", int: "integers", float: "numbers", str: "strings"}
            text = f"a list of {plurals[self.item_kind or float]}"
        else:
            names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
            text = names[self.kind]
        if self.minimum is not None:
            text += f" {'>' if self.exclusive_minimum else '>='} {self.minimum}"
        if self.maximum is not None:
            text += f"{' and' if self.minimum is not None else ''} <= {self.maximum}"
        return text


BASE_SETTINGS = {
    "seed": Setting(int, minimum=0),
}


def check_choice(name: str, value: Any, choices: Iterable) -> None:
    """Raise ValueError listing the allowed values when `value` is not one of `choices`."""
    allowed = tuple(choices)
    if value not in allowed:
        listed = ", ".join(repr(choice) for choice in allowed)
        raise ValueError(f"invalid {name} {value!r}: expected one of {listed}")


def _matches_kind(value: Any, kind: type) -> bool:
    # bool is a subclass of int in Python, but `epochs: true` is a mistake, not 1.
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, kind)


def _check_number(
    key: str, value: float, setting: Setting, where: str, verb: str = "is"
) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ParamsError(f"{where}: {key} {verb} {value!r}, expected {setting.describe()}")
    too_small = setting.minimum is not None and (
        value <= setting.minimum if setting.exclusive_minimum else value < setting.minimum
    )
    too_large = setting.maximum is not None and value > setting.maximum
    if too_small or too_large:
        raise ParamsError(f"{where}: {key} {verb} {value!r}, expected {setting.describe()}")


def validate_section(
    section: str, values: Any, settings: Mapping[str, Setting], where: str = PARAMS_FILE
) -> dict:
    """Check one params section against its settings and return it as a plain dict."""
    if not isinstance(values, Mapping):
        raise ParamsError(f"{where}: section {section!r} must be a mapping of keys to values")
    unknown = sorted(set(values) - set(settings))
    if unknown:
        raise ParamsError(
            f"{where}: unknown key {section}.{unknown[0]}; "
            f"the keys of {section} are {', '.join(settings)}"
        )
    missing = [key for key in settings if key not in values]
    if missing:
        raise ParamsError(f"{where}: missing key {section}.{missing[0]}")

    checked = {}
    for key, setting in settings.items():
        value = values[key]
        full_key = f"{section}.{key}"
        if setting.kind is float and isinstance(value, str):
            # A YAML 1.1 reader keeps 1e-6 (no dot) as a string; accept what parses as a number.
            try:
                value = float(value)
            except ValueError:
                pass
        if not _matches_kind(value, setting.kind):
            raise ParamsError(f"{where}: {full_key} is {value!r}, expected {setting.describe()}")
        if setting.kind is list:
            value = list(value)
            item_kind = setting.item_kind or float
            for item in value:
                if not _matches_kind(item, item_kind):
                    raise ParamsError(
                        f"{where}: {full_key} contains {item!r}, expected {setting.describe()}"
                    )
                if item_kind in (int, float):
                    _check_number(full_key, item, setting, where, verb="contains")
        elif setting.choices is not None:
            if value not in setting.choices:
                raise ParamsError(
                    f"{where}: {full_key} is {value!r}, expected {setting.describe()}"
                )
        elif setting.kind in (int, float):
            _check_number(full_key, value, setting, where)
        if setting.kind is float:
            value = float(value)
        checked[key] = value
    return checked


def read_params_file(path: str | os.PathLike = PARAMS_FILE) -> dict:
    """Read params.yaml with a YAML 1.2 reader, so that 1e-6 is a float as DVC writes it."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found; run from the repository root") from None
    try:
        data = YAML(typ="safe", pure=True).load(text)
    except YAMLError as error:
        raise ParamsError(f"{path}: invalid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    return data


def load_section(
    section: str, settings: Mapping[str, Setting], path: str | os.PathLike = PARAMS_FILE
) -> dict:
    """Return one validated section of params.yaml, such as `base` or a stage's own section."""
    data = read_params_file(path)
    if section not in data:
        raise ParamsError(f"{path}: missing section {section!r}")
    return validate_section(section, data[section], settings, str(path))


def load_seed(path: str | os.PathLike = PARAMS_FILE) -> int:
    """Return `base.seed`, the seed of every random source in the pipeline."""
    return load_section("base", BASE_SETTINGS, path)["seed"]

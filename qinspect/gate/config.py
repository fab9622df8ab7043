"""Configuration of ``qinspect check``: where it is read from, what each key means.

Search order (the first that exists wins, nothing is merged between files):

1. ``--config FILE`` (a ``qinspect.toml``-style file, or a ``pyproject.toml``);
2. ``qinspect.toml`` in the current directory, table ``[check]``;
3. ``[tool.qinspect.check]`` in ``./pyproject.toml``;
4. the built-in defaults.

Command-line ``--set KEY=VALUE`` options are applied on top of the file. Unknown keys,
wrong types and out-of-range values are an :class:`~qinspect.errors.InputError` (exit 2)
naming the key: a typo must never silently disable a rule.

Per-layer overrides are tables keyed by a glob that matches layer names (or, for the
unattributed-keys rule, key names)::

    [tool.qinspect.check]
    require_per_channel = true

    [tool.qinspect.check.overrides."ct"]      # ConvTranspose: per-tensor only in torch
    require_per_channel = false

Overrides apply in file order; a later match wins, ``ignore`` lists accumulate.
No torch and no numpy here.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from qinspect.errors import InputError
from qinspect.gate.catalogue import rule_by_ref

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

QINSPECT_TOML = "qinspect.toml"
PYPROJECT = "pyproject.toml"
SEVERITIES = ("error", "warning")
FLOAT_DTYPES = ("float16", "bfloat16", "float32")
INT_DTYPES = ("qint8", "quint8", "qint32", "quint4x2", "quint2x4", "int8", "uint8", "int4",
              "uint4", "int32")
KNOWN_DTYPES = INT_DTYPES + FLOAT_DTYPES
DEFAULT_MAX_SQNR_DROP_DB = 1.0


@dataclass(frozen=True)
class LayerSettings:
    """Settings that can differ per layer (top level, or an ``overrides`` table)."""

    require_per_channel: bool = False
    weight_dtypes: tuple[str, ...] | None = None
    activation_dtypes: tuple[str, ...] | None = None
    max_saturated_fraction: float | None = None
    min_range_used: float | None = None
    min_weight_sqnr_db: float | None = None
    min_output_sqnr_db: float | None = None
    max_clipping_fraction: float | None = None
    min_kernel_agreement: float | None = None
    max_sqnr_drop_db: float = DEFAULT_MAX_SQNR_DROP_DB
    ignore: tuple[str, ...] = ()


@dataclass(frozen=True)
class CheckConfig:
    """Everything ``qinspect check`` is configured with, already validated."""

    defaults: LayerSettings = field(default_factory=LayerSettings)
    overrides: tuple[tuple[str, Mapping[str, Any]], ...] = ()
    require_quantized: tuple[str, ...] = ()
    allow_float: tuple[str, ...] = ()
    unrecognised_keys: str = "warning"
    min_overall_weight_sqnr_db: float | None = None
    source: str = "built-in defaults"

    def for_layer(self, name: str) -> LayerSettings:
        """The settings for one layer (or key): defaults, then every matching override."""
        settings = self.defaults
        for pattern, values in self.overrides:
            if fnmatch.fnmatchcase(name, pattern):
                extra = dict(values)
                if "ignore" in extra:
                    extra["ignore"] = settings.ignore + tuple(extra["ignore"])
                settings = replace(settings, **extra)
        return settings

    def must_be_quantized(self, name: str) -> bool | None:
        """True/False when the quantized-layers rule is configured, None when it is off."""
        if not self.require_quantized and not self.allow_float:
            return None
        required = self.require_quantized or ("*",)
        if any(fnmatch.fnmatchcase(name, p) for p in self.allow_float):
            return False
        return any(fnmatch.fnmatchcase(name, p) for p in required)

    def settings_dict(self) -> dict[str, Any]:
        """The effective configuration as plain data (for the JSON report)."""
        top = {f.name: _plain(getattr(self.defaults, f.name)) for f in fields(LayerSettings)}
        top.update(require_quantized=list(self.require_quantized),
                   allow_float=list(self.allow_float),
                   unrecognised_keys=self.unrecognised_keys,
                   min_overall_weight_sqnr_db=self.min_overall_weight_sqnr_db)
        top["overrides"] = {p: {k: _plain(v) for k, v in vals.items()}
                            for p, vals in self.overrides}
        return top


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


# --- key specification ----------------------------------------------------------------


Validator = Callable[[str, Any], Any]


def _fraction(where: str, value: Any) -> float:
    x = _number(where, value)
    if not 0.0 <= x <= 1.0:
        raise InputError(f"{where} must be a fraction between 0 and 1, got {value!r}")
    return x


def _number(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{where} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise InputError(f"{where} must be a finite number, got {value!r}")
    return float(value)


def _non_negative(where: str, value: Any) -> float:
    x = _number(where, value)
    if x < 0:
        raise InputError(f"{where} must be >= 0, got {value!r}")
    return x


def _boolean(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"{where} must be true or false, got {value!r}")
    return value


def _strings(where: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(f"{where} must be a list of strings, got {value!r}")
    return tuple(value)


def _dtypes(where: str, value: Any) -> tuple[str, ...]:
    names = tuple(v.removeprefix("torch.") for v in _strings(where, value))
    for name in names:
        if name not in KNOWN_DTYPES:
            near = difflib.get_close_matches(name, KNOWN_DTYPES, n=1)
            tip = f" (did you mean '{near[0]}'?)" if near else ""
            raise InputError(f"{where}: unknown dtype {name!r}{tip}; known: "
                             f"{', '.join(KNOWN_DTYPES)}")
    return names


def _severity(where: str, value: Any) -> str:
    if value not in SEVERITIES:
        raise InputError(f"{where} must be \"error\" or \"warning\", got {value!r}")
    return str(value)


def _rule_refs(where: str, value: Any) -> tuple[str, ...]:
    refs = _strings(where, value)
    for ref in refs:
        rule_by_ref(ref, where)
    return refs


LAYER_KEYS: dict[str, Validator] = {
    "require_per_channel": _boolean,
    "weight_dtypes": _dtypes,
    "activation_dtypes": _dtypes,
    "max_saturated_fraction": _fraction,
    "min_range_used": _fraction,
    "min_weight_sqnr_db": _number,
    "min_output_sqnr_db": _number,
    "max_clipping_fraction": _fraction,
    "min_kernel_agreement": _fraction,
    "max_sqnr_drop_db": _non_negative,
    "ignore": _rule_refs,
}
FILE_KEYS: dict[str, Validator] = {
    "require_quantized": _strings,
    "allow_float": _strings,
    "unrecognised_keys": _severity,
    "min_overall_weight_sqnr_db": _number,
}
TOP_KEYS = {**LAYER_KEYS, **FILE_KEYS, "overrides": lambda where, v: v}


def _unknown(key: str, known: Any, where: str) -> InputError:
    near = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    tip = f" (did you mean '{near[0]}'?)" if near else ""
    return InputError(f"{where}: unknown key {key!r}{tip}; known keys: {', '.join(known)}")


def parse(table: Mapping[str, Any], source: str = "built-in defaults",
          where: str = "config") -> CheckConfig:
    """Validate a ``[check]`` table (as read from TOML) into a :class:`CheckConfig`."""
    if not isinstance(table, Mapping):
        raise InputError(f"{where} must be a table of settings, got {table!r}")
    layer_values: dict[str, Any] = {}
    file_values: dict[str, Any] = {}
    overrides: tuple[tuple[str, Mapping[str, Any]], ...] = ()
    for key, value in table.items():
        if key not in TOP_KEYS:
            raise _unknown(key, TOP_KEYS, where)
        label = f"{where}: {key}"
        if key == "overrides":
            overrides = _overrides(value, where)
        elif key in LAYER_KEYS:
            layer_values[key] = LAYER_KEYS[key](label, value)
        else:
            file_values[key] = FILE_KEYS[key](label, value)
    return CheckConfig(defaults=LayerSettings(**layer_values), overrides=overrides,
                       source=source, **file_values)


def _overrides(value: Any, where: str) -> tuple[tuple[str, Mapping[str, Any]], ...]:
    if not isinstance(value, Mapping):
        raise InputError(f"{where}: overrides must be a table of tables keyed by a layer "
                         f"glob, e.g. [tool.qinspect.check.overrides.\"fc*\"]")
    out = []
    for pattern, body in value.items():
        label = f"{where}: overrides.{pattern!r}"
        if not isinstance(body, Mapping):
            raise InputError(f"{label} must be a table of settings")
        checked: dict[str, Any] = {}
        for key, item in body.items():
            if key not in LAYER_KEYS:
                raise _unknown(key, LAYER_KEYS, label)
            checked[key] = LAYER_KEYS[key](f"{label}.{key}", item)
        out.append((str(pattern), checked))
    return tuple(out)


# --- files ------------------------------------------------------------------------------


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: config file not found; check the --config path") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read config ({exc.strerror})") from exc
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: not valid TOML ({line}); fix the syntax") from exc


def _from_pyproject(path: Path, doc: dict[str, Any], required: bool) -> CheckConfig | None:
    tool = doc.get("tool", {})
    section = tool.get("qinspect") if isinstance(tool, Mapping) else None
    if section is None:
        if required:
            raise InputError(f"{path}: no [tool.qinspect.check] table; add one or pass a "
                             f"qinspect.toml")
        return None
    if not isinstance(section, Mapping):
        raise InputError(f"{path}: [tool.qinspect] must be a table")
    for key in section:
        if key != "check":
            raise _unknown(key, ["check"], f"{path}: [tool.qinspect]")
    if "check" not in section:
        if required:
            raise InputError(f"{path}: no [tool.qinspect.check] table")
        return None
    where = f"{path} [tool.qinspect.check]"
    return parse(section["check"], source=f"{path} [tool.qinspect.check]", where=where)


def _from_qinspect_toml(path: Path, doc: dict[str, Any]) -> CheckConfig:
    for key in doc:
        if key != "check":
            hint = (f"settings go under a [check] table ({key!r} looks like one)"
                    if key in TOP_KEYS else "")
            err = _unknown(key, ["check"], f"{path}")
            raise InputError(f"{err}{'; ' + hint if hint else ''}")
    return parse(doc.get("check", {}), source=f"{path} [check]", where=f"{path} [check]")


def load_config(explicit: str | os.PathLike[str] | None = None,
                cwd: str | os.PathLike[str] | None = None) -> CheckConfig:
    """Find and read the configuration (see the module docstring for the order)."""
    base = Path(cwd) if cwd is not None else Path.cwd()
    if explicit is not None:
        path = Path(explicit)
        doc = _read_toml(path)
        if path.name == PYPROJECT or "tool" in doc:
            result = _from_pyproject(path, doc, required=True)
            assert result is not None
            return result
        return _from_qinspect_toml(path, doc)
    own = base / QINSPECT_TOML
    if own.is_file():
        return _from_qinspect_toml(Path(QINSPECT_TOML), _read_toml(own))
    pyproject = base / PYPROJECT
    if pyproject.is_file():
        found = _from_pyproject(Path(PYPROJECT), _read_toml(pyproject), required=False)
        if found is not None:
            return found
        return CheckConfig(source="built-in defaults (./pyproject.toml has no "
                                  "[tool.qinspect.check])")
    return CheckConfig(source="built-in defaults (no qinspect.toml or pyproject.toml here)")


def parse_assignment(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` from the command line; VALUE is TOML, or a bare word for a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise InputError(f"--set {text!r}: expected KEY=VALUE, e.g. --set min_range_used=0.5")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def with_assignments(config: CheckConfig, assignments: list[str]) -> CheckConfig:
    """Apply ``--set KEY=VALUE`` options on top of a loaded configuration."""
    if not assignments:
        return config
    layer_values: dict[str, Any] = {}
    file_values: dict[str, Any] = {}
    for text in assignments:
        key, value = parse_assignment(text)
        where = f"--set {key}"
        if key in LAYER_KEYS:
            layer_values[key] = LAYER_KEYS[key](where, value)
        elif key in FILE_KEYS:
            file_values[key] = FILE_KEYS[key](where, value)
        elif key == "overrides":
            raise InputError("--set overrides: per-layer overrides live in the config file")
        else:
            raise _unknown(key, [k for k in TOP_KEYS if k != "overrides"], "--set")
    source = f"{config.source} + command-line --set"
    return replace(config, defaults=replace(config.defaults, **layer_values),
                   source=source, **file_values)


def from_mapping(values: Mapping[str, Any] | None, source: str = "Python API") -> CheckConfig:
    """A configuration given as a dict (the same keys as the TOML table)."""
    return parse(values or {}, source=source, where=source)

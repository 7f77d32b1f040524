"""A declarative config schema: one Key per key of a YAML file, and the reader that loads a mapping by it.

A Key names its path, its kind (how the YAML value is read), its default, an optional check and a one-line doc. The
loader, the unknown-key check and the README's key table all come from one list of Keys (builder/config.py's KEYS);
rules that span several keys are plain functions run after every key was read.

Every problem is recorded, not raised, so a config's problems are all reported at once, each as
"key: value: what to do".

`python -m builder.schema` prints the README's key table; `python -m builder.schema --readme README.md` rewrites it.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


# A key absent from the file (shown as "missing" in a problem), and the default of a key that must be written.
MISSING = _Marker("missing")
REQUIRED = _Marker("required")


class Invalid(Exception):
    """A value that cannot be used; its message is the fix."""


class Absent(str):
    """A check's finding that reports the key as missing: an empty list says no more than leaving the key out."""


@dataclass(frozen=True)
class Kind:
    """How a YAML value is read: the types it may have, then a conversion that may refuse it (Invalid)."""

    types: tuple[type, ...]
    noun: str  # "a string", as in "must be a string"
    convert: Callable[[Any], Any] | None = None
    what: str = ""  # said after "required" and a wrong type (a choice: the choices)

    def read(self, value: Any, what: str) -> Any:
        # YAML's true/false are ints in Python; never accept one where a number is wanted, or the reverse.
        if not isinstance(value, self.types) or (isinstance(value, bool) and bool not in self.types):
            raise Invalid(f"must be {self.noun}{': ' + what if what else ''}")
        return self.convert(value) if self.convert else value


TEXT = Kind((str,), "a string")
WHOLE = Kind((int,), "a whole number")
FLAG = Kind((bool,), "true or false")
LIST = Kind((list,), "a list")


def choice(options) -> Kind:
    options = tuple(options)

    def convert(value: str) -> str:
        if value not in options:
            raise Invalid(f"must be one of {', '.join(options)}")
        return value
    return Kind((str,), "a string", convert, "one of " + ", ".join(options))


def whole(low: int, high: int | None, fix: str) -> Kind:
    """A whole number from low to high (None: no upper bound); one outside them leaves the key at its default."""
    def convert(value: int) -> int:
        if value < low or (high is not None and value > high):
            raise Invalid(fix)
        return value
    return Kind((int,), "a whole number", convert)


@dataclass(frozen=True)
class Computed:
    """A default that depends on other keys (read before it) or on a list item's position."""

    compute: Callable[[dict, int | None], Any]  # (values read so far, list item index) -> the default
    shown: str  # the README's default column


@dataclass(frozen=True)
class Key:
    """One key: "section.key", a top-level "key", or "list[].key" for the keys of a list's mappings."""

    path: str
    kind: Kind
    default: Any
    doc: str
    # The value (written, or the default) -> None, or the fix (a str, or an Absent); the value is kept either way.
    check: Callable[[Any], str | None] | None = None
    # A list's items: each item -> the item used, or Invalid(fix) to refuse it.
    each: Callable[[Any], Any] | None = None
    what: str = ""  # what the key is, said with "required" and a wrong type; a choice's default: the choices
    shown: str = ""  # the README's default column, when the default's own text is not the best way to say it

    @property
    def parent(self) -> str:
        return self.path.rpartition(".")[0]

    @property
    def name(self) -> str:
        return self.path.rpartition(".")[2]

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


class Reader:
    """Reads a mapping by a schema, recording problems instead of raising, so every problem is reported at once."""

    def __init__(self, keys: tuple[Key, ...], base_dir: Path) -> None:
        self.keys = keys
        self.base_dir = base_dir
        self.problems: list[str] = []
        self.warnings: list[str] = []
        # Keys whose value holds a control character: reported once, as that, not again by the key's own rule.
        self.unprintable: set[str] = set()
        # By key path ("nodes[1].name"): the value read (or its default) before its items were, and the value used.
        self.written: dict[str, Any] = {}
        self.values: dict[str, Any] = {}

    def problem(self, key: str, value: Any, fix: str) -> None:
        if key in self.unprintable:
            return
        self.problems.append(f"{key}: {value!r}: {fix}")

    def in_file_order(self) -> list[str]:
        """The problems by section in the schema's order (a rule across keys reports after every key was read);
        unknown top-level keys first."""
        sections = children(self.keys, "")

        def section(problem: str) -> int:
            name = re.split(r"[.\[:]", problem)[0]
            return sections.index(name) if name in sections else -1
        return sorted(self.problems, key=section)

    def warn(self, key: str, value: Any, what: str) -> None:
        self.warnings.append(f"{key}: {value!r}: {what}")

    def control_characters(self, value: Any, key: str = "") -> None:
        """Refuse a control character anywhere (a line break in a name would reach /etc/hosts and pcs's argv)."""
        if isinstance(value, dict):
            for k, v in value.items():
                self.control_characters(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                self.control_characters(v, f"{key}[{i}]")
        elif isinstance(value, str):
            bad = next((c for c in value if _is_control(c)), None)
            if bad is not None:
                self.problem(key, value, f"holds a control character ({_describe(bad)}) at position "
                                         f"{value.index(bad) + 1}: remove it (a value is one line of printable text)")
                self.unprintable.add(key)

    def read(self, data: dict) -> dict[str, Any]:
        """Read every key of the schema from data; values by schema path, a list of mappings as a list of dicts."""
        self.control_characters(data)
        self._unknown(data, "", children(self.keys, ""))
        for name in children(self.keys, ""):
            if key := find(self.keys, name):
                self.values[name] = self._key(data, "", key)
                continue
            inner = [find(self.keys, f"{name}.{k}") for k in children(self.keys, name)]
            section = self._section(data, name, any(k.required for k in inner))
            for k in inner:
                self.values[k.path] = self._key(section, name, k)
        return self.values

    def _section(self, data: dict, name: str, required: bool) -> dict:
        value = data.get(name)
        if value is None:
            if required:
                self.problem(name, MISSING, f"add a '{name}:' section")
            return {}
        if not isinstance(value, dict):
            self.problem(name, value, "must be a mapping of keys")
            return {}
        self._unknown(value, name, children(self.keys, name))
        return value

    def _unknown(self, value: dict, path: str, known: list[str]) -> None:
        for k in value:
            if k not in known:
                self.problem(f"{path}.{k}" if path else str(k), value[k],
                             f"unknown key; known keys here: {', '.join(known)}")

    def _key(self, data: dict, path: str, key: Key, index: int | None = None) -> Any:
        full = f"{path}.{key.name}" if path else key.name
        what = key.what or key.kind.what
        value = data.get(key.name)
        if value is None:
            if key.required:
                self.problem(full, MISSING, f"required{': ' + what if what else ''}")
                return None
            value = self._default(key, index)
            written: Any = MISSING
        else:
            written = value
            try:
                value = key.kind.read(value, what)
            except Invalid as bad:
                self.problem(full, written, str(bad))
                if key.required:
                    return None
                value = self._default(key, index)
        self.written[full] = value
        found = key.check(value) if key.check and value is not None else None
        if isinstance(found, Absent):
            self.problem(full, MISSING, found)
        elif found:
            self.problem(full, written if written is not MISSING else value, found)
        if isinstance(value, list):
            value = tuple(self._items(full, key, value))
        return value

    def _default(self, key: Key, index: int | None) -> Any:
        return key.default.compute(self.values, index) if isinstance(key.default, Computed) else key.default

    def _items(self, full: str, key: Key, items: list):
        """The items of a list: each item through key.each, or, for a list of mappings, each of its keys."""
        inner = children(self.keys, f"{key.path}[]")
        for i, item in enumerate(items):
            at = f"{full}[{i}]"
            if inner:
                if not isinstance(item, dict):
                    needed = [k for k in inner if find(self.keys, f"{key.path}[].{k}").required]
                    self.problem(at, item, f"must be a mapping with {', '.join(needed[:-1])} and {needed[-1]}")
                    continue
                self._unknown(item, at, inner)
                yield {k: self._key(item, at, find(self.keys, f"{key.path}[].{k}"), i) for k in inner}
            elif key.each:
                try:
                    yield key.each(item)
                except Invalid as bad:
                    self.problem(at, item, str(bad))
            else:
                yield item


def children(keys: tuple[Key, ...], parent: str) -> list[str]:
    """The names directly under parent ("" for the top level), in schema order."""
    names: list[str] = []
    for key in keys:
        if parent and not key.path.startswith(parent + "."):
            continue
        name = key.path[len(parent) + 1:] if parent else key.path
        name = name.split(".")[0].removesuffix("[]")
        if name not in names:
            names.append(name)
    return names


def find(keys: tuple[Key, ...], path: str) -> Key | None:
    return next((k for k in keys if k.path == path), None)


def _is_control(char: str) -> bool:
    # Cc: C0 (line breaks, tab, escape, NUL), DEL and C1; also Unicode's own line and paragraph separators.
    return unicodedata.category(char) in ("Cc", "Zl", "Zp")


def _describe(char: str) -> str:
    names = {"\n": "a line break, \\n", "\r": "a carriage return, \\r", "\t": "a tab, \\t"}
    return names.get(char, f"U+{ord(char):04X}")


# ---- the README's key table -------------------------------------------------------------------------------------

TABLE_HEAD = "| key | default | meaning |\n|---|---|---|\n"


def shown_default(key: Key) -> str:
    if key.shown:
        return key.shown
    if key.required:
        return "required"
    if isinstance(key.default, Computed):
        return key.default.shown
    if key.default is None:
        return "—"
    if isinstance(key.default, bool):
        return f"`{str(key.default).lower()}`"
    if isinstance(key.default, tuple):
        return f"`{list(key.default)}`"
    return f"`{key.default}`"


def readme_table(keys: tuple[Key, ...]) -> str:
    return TABLE_HEAD + "".join(f"| `{k.path}` | {shown_default(k)} | {k.doc} |\n" for k in keys)


def replace_table(text: str, table: str) -> str:
    """text with its key table (from TABLE_HEAD to the first line that is not a table row) replaced by table."""
    start = text.index(TABLE_HEAD)
    end = start + len(TABLE_HEAD)
    while text.startswith("|", end):
        end = text.index("\n", end) + 1
    return text[:start] + table + text[end:]


def main(argv: list[str]) -> int:
    from builder.config import KEYS

    table = readme_table(KEYS)
    if argv[:1] == ["--readme"] and len(argv) == 2:
        path = Path(argv[1])
        path.write_text(replace_table(path.read_text(), table))
    elif not argv:
        sys.stdout.write(table)
    else:
        print("usage: python -m builder.schema [--readme README.md]", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    # Through the imported module: builder.config's Keys are made of its classes, not of this __main__'s copies.
    from builder import schema
    sys.exit(schema.main(sys.argv[1:]))

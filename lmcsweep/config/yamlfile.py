"""Reading a sweep file: YAML to plain Python, with the line each field was written on.

Every mistake is a `Problem` (``FILE:LINE: field.path: message``); `ConfigError` carries all of a
file's problems at once, YAML syntax errors included.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


class ConfigError(Exception):
    """One or more problems in a sweep file; str() lists them one per line."""

    def __init__(self, problems: list[Problem]):
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, p.field))
        super().__init__("\n".join(str(p) for p in self.problems))


def dotted(path: tuple[Any, ...]) -> str:
    """A path in the document as a field name: ('train', 'milestones', 1) -> 'train.milestones[1]'."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top)"


class Lines:
    """Maps a path in the YAML document to the line it was written on (1-based)."""

    def __init__(self) -> None:
        self.lines: dict[tuple[Any, ...], int] = {}

    def line(self, path: tuple[Any, ...]) -> int:
        path = tuple(path)
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path, 1)


def _to_python(node: yaml.Node, path: tuple[Any, ...], lines: Lines, problems: list[Problem], file: str) -> Any:
    lines.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node) if not isinstance(key_node, yaml.ScalarNode) else key_node.value
            if key in out:
                problems.append(Problem(file, key_node.start_mark.line + 1, dotted(path + (key,)),
                                        "duplicate key"))
                continue
            lines.lines[path + (key,)] = key_node.start_mark.line + 1
            out[key] = _to_python(value_node, path + (key,), lines, problems, file)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(v, path + (i,), lines, problems, file) for i, v in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    """The value of a composed node, as yaml.safe_load gives it (`key:` with nothing after is None)."""
    return yaml.constructor.SafeConstructor().construct_object(node, deep=True)


def read_yaml(path: str | Path) -> tuple[dict[str, Any], Lines]:
    """The document as plain Python plus its line map; YAML syntax errors become ConfigError."""
    file = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError([Problem(file, 0, "(file)", f"cannot read: {exc.strerror}")]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        message = f"{exc.problem}"
        if exc.context and exc.context_mark:  # e.g. "while scanning a quoted scalar": where it began
            start = exc.context_mark.line + 1
            message += f" ({exc.context}, which starts at line {start})"
            if line > len(text.splitlines()):  # the end of the file: point at the opening instead
                line = start
        raise ConfigError([Problem(file, line, "(yaml)", f"syntax error: {message}")]) from None
    lines, problems = Lines(), []
    if node is None:
        raise ConfigError([Problem(file, 1, "(top)", "the file is empty")])
    raw = _to_python(node, (), lines, problems, file)
    if not isinstance(raw, dict):
        problems.append(Problem(file, 1, "(top)", "a sweep file is a mapping of fields"))
    if problems:
        raise ConfigError(problems)
    return raw, lines

"""Reading a sweep file: YAML to plain Python, with the line each field was written on.

Every mistake is a `Problem` (``FILE:LINE: field.path: message``, or ``FILE: message`` where no line
exists); `ConfigError` carries all of a file's problems at once, YAML syntax errors included.

The reader is bounded, whatever the file: a regular file of at most `MAX_BYTES` (a FIFO or a device
is refused before it is read), UTF-8 text, nesting at most `MAX_DEPTH` deep, no aliases (`*name`:
their expansion can grow exponentially), no tags but YAML's plain types (no `!!python/...`, `!foo`,
`!!binary`), plain keys only.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 1 << 20  # a sweep file is a few hundred bytes; a megabyte is far beyond any real one
MAX_DEPTH = 32  # the deepest field of a sweep file is 4 levels down (search.space.KEY.low)
PLAIN_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "seq", "map")} | {"!"}


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        if self.line < 1:  # about the whole file
            return f"{self.file}: {_oneline(self.message)}"
        return f"{self.file}:{self.line}: {_oneline(self.field)}: {_oneline(self.message)}"


def _oneline(text: str, limit: int = 300) -> str:
    """`text` on one line of at most `limit` characters: control characters escaped (a key or a
    value of the file shown in a message cannot break the one-line format)."""
    text = "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


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
            if not isinstance(key_node, yaml.ScalarNode):
                problems.append(Problem(file, key_node.start_mark.line + 1, dotted(path),
                                        "a key must be a plain name, not a list or a mapping"))
                continue
            key = key_node.value
            if key in out:
                problems.append(Problem(file, key_node.start_mark.line + 1, dotted(path + (key,)),
                                        "duplicate key"))
                continue
            lines.lines[path + (key,)] = key_node.start_mark.line + 1
            out[key] = _to_python(value_node, path + (key,), lines, problems, file)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(v, path + (i,), lines, problems, file) for i, v in enumerate(node.value)]
    try:
        return _scalar(node)
    except (ValueError, OverflowError) as exc:  # e.g. an integer of 5,000 digits
        message = "number too large" if "digits" in str(exc) else f"unreadable value: {exc}"
        problems.append(Problem(file, node.start_mark.line + 1, dotted(path), message))
        return None
    except yaml.YAMLError as exc:
        problems.append(Problem(file, node.start_mark.line + 1, dotted(path), f"unreadable value: {exc.problem}"))
        return None


def _scalar(node: yaml.Node) -> Any:
    """The value of a composed node, as yaml.safe_load gives it (`key:` with nothing after is None)."""
    return yaml.constructor.SafeConstructor().construct_object(node, deep=True)


def _read_bytes(path: str | Path, file: str) -> bytes:
    """The file's bytes; refused unread when it is not a regular file or is too large."""
    try:  # O_NONBLOCK: opening a FIFO with no writer does not wait
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise ConfigError([Problem(file, 0, "(file)", f"cannot read: {exc.strerror}")]) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        what = "it is a folder" if stat.S_ISDIR(mode) else "not a regular file (a FIFO, socket or device)"
        raise ConfigError([Problem(file, 0, "(file)", f"cannot read: {what}")])
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise ConfigError([Problem(file, 0, "(file)", f"too large for a sweep file (over {MAX_BYTES} bytes)")])
    return data


def _decode(data: bytes, file: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError([Problem(file, line, "(file)", f"not UTF-8 text: byte 0x{data[exc.start]:02x} "
                                                         f"at column {column}")]) from None


def _check_events(text: str, file: str) -> None:
    """Walk the YAML events (no recursion, nothing built) and refuse what could blow up or run code:
    deep nesting, aliases, tags beyond the plain types."""
    depth, problems = 0, []
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        line = event.start_mark.line + 1
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise ConfigError([Problem(file, line, "(yaml)", f"nested more than {MAX_DEPTH} levels deep")])
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
        elif isinstance(event, yaml.AliasEvent) and not any(p.line == line for p in problems):
            problems.append(Problem(file, line, "(yaml)", f"alias *{event.anchor} is not supported: write the "
                                                          "value out"))
        tag = getattr(event, "tag", None)
        if tag is not None and tag not in PLAIN_TAGS:
            shown = "!!" + tag[len("tag:yaml.org,2002:"):] if tag.startswith("tag:yaml.org,2002:") else tag
            problems.append(Problem(file, line, "(yaml)", f"tag {shown} is not supported (plain values only)"))
        if len(problems) >= 20:
            break
    if problems:
        raise ConfigError(problems)


def read_yaml(path: str | Path) -> tuple[dict[str, Any], Lines]:
    """The document as plain Python plus its line map; YAML syntax errors become ConfigError."""
    file = str(path)
    text = _decode(_read_bytes(path, file), file)
    try:
        _check_events(text, file)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (NUL, most control codes)
        line = text.count("\n", 0, exc.position) + 1
        raise ConfigError([Problem(file, line, "(yaml)", f"character U+{exc.character:04X} is not "
                                                         "allowed in YAML")]) from None
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
    except yaml.YAMLError as exc:  # any other error of the YAML reader
        raise ConfigError([Problem(file, 1, "(yaml)", f"unreadable YAML: {exc}")]) from None
    lines, problems = Lines(), []
    if node is None:
        raise ConfigError([Problem(file, 1, "(top)", "the file is empty")])
    raw = _to_python(node, (), lines, problems, file)
    if not isinstance(raw, dict):
        problems.append(Problem(file, 1, "(top)", "a sweep file is a mapping of fields"))
    if problems:
        raise ConfigError(problems)
    return raw, lines

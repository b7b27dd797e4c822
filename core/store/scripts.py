"""The Redis store's Lua scripts: each in ``lua/<name>.lua``, called with named keys and
arguments.

A script opens with the names of its keys and arguments, in their order:

    --! keys: job queued running events
    --! args: id worker started_at

A last name ending in ``*`` takes the rest (a list). Loading binds each name to its slot
(``local job = KEYS[1]``), so the body reads names, not ``KEYS[1]`` and ``ARGV[3]``; and
``Script.bind`` lays a call's named values out in that order, refusing a missing or an
unknown name. None travels as '' (Redis has no nil argument), True as '1'.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib.resources import files
from typing import Any


def _names(line: str, what: str) -> tuple[str, ...]:
    head = f"--! {what}:"
    if not line.startswith(head):
        raise ValueError(f"a script's {what} line must start with {head!r}, got {line!r}")
    return tuple(line[len(head):].split())


def _prologue(names: tuple[str, ...], table: str) -> str:
    lines = []
    for i, name in enumerate(names, start=1):
        if name.endswith("*"):
            lines.append(f"local {name[:-1]} = {{unpack({table}, {i})}}")
        else:
            lines.append(f"local {name} = {table}[{i}]")
    return "\n".join(lines)


def _arg(value: Any) -> Any:
    if value is None or value is False:
        return ""
    if value is True:
        return "1"
    return value


@dataclass(frozen=True)
class Script:
    name: str
    keys: tuple[str, ...]
    args: tuple[str, ...]
    source: str  # the body with its names bound
    sha: str

    @classmethod
    def load(cls, name: str) -> Script:
        text = files("core.store").joinpath("lua", f"{name}.lua").read_text()
        first, second, *_ = text.splitlines()
        keys, args = _names(first, "keys"), _names(second, "args")
        for names in (keys, args):
            if any(n.endswith("*") for n in names[:-1]):
                raise ValueError(f"{name}.lua: only the last name may take the rest")
        source = "\n".join([_prologue(keys, "KEYS"), _prologue(args, "ARGV"), text])
        return cls(name, keys, args, source, hashlib.sha1(source.encode()).hexdigest())

    def bind(self, **named: Any) -> tuple[list[Any], list[Any]]:
        """(KEYS, ARGV) of a call from its named values (a rest name takes a list)."""
        wanted = {n.rstrip("*") for n in (*self.keys, *self.args)}
        if set(named) != wanted:
            missing, unknown = wanted - set(named), set(named) - wanted
            raise TypeError(f"{self.name}.lua: missing {sorted(missing)}, unknown "
                            f"{sorted(unknown)}")
        return self._layout(self.keys, named), self._layout(self.args, named)

    @staticmethod
    def _layout(names: tuple[str, ...], named: dict[str, Any]) -> list[Any]:
        out: list[Any] = []
        for name in names:
            if name.endswith("*"):
                out.extend(_arg(v) for v in named[name[:-1]])
            else:
                out.append(_arg(named[name]))
        return out


SCRIPTS = ("accept", "claim", "finish", "requeue", "cancel", "append", "mark", "put_artifact",
           "count_blob", "refund")

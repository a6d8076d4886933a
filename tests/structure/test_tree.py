"""The shim's tree keeps its architecture: three processes, each in its room.

`daemon/` (the shim process), `instance/` (one process per wasm container)
and `compiler/` (one per cache miss) never use each other's modules,
`shared/` uses none of them, no two modules use
each other (directly or around a loop), and no file grows past about 400
lines. Edges are read from the `use` declarations and the `crate::`/`super::`
paths of each file (its unit tests excluded).
"""

import os
import re
import sys

import pytest

SRC = os.path.join(os.path.dirname(__file__), "..", "..", "shim", "src")
MAX_LINES = 400


def modules():
    """{module path tuple: file}; `mod.rs` names its directory, main.rs is ()."""
    found = {}
    for directory, _, files in os.walk(SRC):
        for name in files:
            if name.endswith(".rs"):
                path = os.path.join(directory, name)
                parts = os.path.relpath(path, SRC)[:-3].split(os.sep)
                if parts[-1] == "mod":
                    parts = parts[:-1]
                found[tuple(p for p in parts if p != "main")] = path
    return found


def resolve(mods, here, path):
    """The module a `crate::`/`super::`/`self::` path lands in, or None."""
    parts = path.split("::")
    current = list(here)
    if parts[0] == "crate":
        current, parts = [], parts[1:]
    elif parts[0] == "super":
        while parts and parts[0] == "super":
            current, parts = current[:-1], parts[1:]
    elif parts[0] == "self":
        parts = parts[1:]
    else:
        return None
    for part in parts:
        if tuple(current + [part]) not in mods:
            break
        current.append(part)
    return tuple(current)


def expand(use):
    """`a::{b, c::d}` as ['a::b', 'a::c::d'] (one level of braces suffices here)."""
    use = re.sub(r"\s+", "", use)
    braced = re.match(r"(.*?)::\{(.*)\}$", use)
    if not braced:
        return [use]
    return [f"{braced.group(1)}::{item}" for item in re.split(r",(?![^{]*\})", braced.group(2)) if item]


def edges():
    mods = modules()
    graph = {}
    for module, path in mods.items():
        with open(path) as f:
            code = f.read().split("#[cfg(test)]")[0]
        paths = [p for use in re.findall(r"\buse\s+([^;]+);", code) for p in expand(use)]
        paths += re.findall(r"\b((?:super|crate)(?:::\w+)+)", code)
        targets = {resolve(mods, module, p) for p in paths}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def name(module):
    return "::".join(module) or "main"


def test_the_rooms_exist():
    mods = modules()
    for room in ROOMS:
        assert (room,) in mods, f"shim/src/{room}/mod.rs is missing"
    roots = {m[0] for m in mods if m}
    assert roots == set(ROOMS), f"top-level modules besides the rooms: {roots}"


PROCESSES = {"daemon", "instance", "compiler"}
ROOMS = sorted(PROCESSES | {"shared"})


@pytest.mark.parametrize("room, forbidden", [(room, PROCESSES - {room}) for room in sorted(PROCESSES)]
                         + [("shared", PROCESSES)])
def test_rooms_keep_to_themselves(room, forbidden):
    bad = [f"{name(m)} uses {name(t)}" for m, targets in edges().items() if m[:1] == (room,)
           for t in targets if t[:1] and t[0] in forbidden]
    assert bad == []


def test_no_import_cycle():
    graph = edges()
    cycles, state, stack = [], {}, []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for target in graph.get(module, ()):
            if state.get(target) == "open":
                cycles.append(" -> ".join(name(m) for m in stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module)
    assert cycles == []


def test_main_only_dispatches():
    graph = edges()
    with open(modules()[()]) as f:
        functions = re.findall(r"^fn (\w+)", f.read(), re.M)
    assert functions == ["main"], functions
    assert graph[()] <= {("compiler",), ("daemon",), ("instance",), ("shared", "allocator"), ("shared", "compile_protocol"),
                         ("shared", "launch_plan")}


def test_no_file_is_too_long():
    long = {path: n for path in modules().values() if (n := sum(1 for _ in open(path))) > MAX_LINES}
    assert long == {}


def test_a_cycle_would_be_found(tmp_path, monkeypatch):
    """The checker itself: two modules that use each other are reported."""
    for module, other in (("a", "b"), ("b", "a")):
        (tmp_path / "daemon").mkdir(exist_ok=True)
        (tmp_path / "daemon" / f"{module}.rs").write_text(f"use super::{other}::Thing;\n")
    (tmp_path / "daemon" / "mod.rs").write_text("mod a;\nmod b;\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", str(tmp_path))
    assert edges()[("daemon", "a")] == {("daemon", "b")}
    with pytest.raises(AssertionError):
        test_no_import_cycle()

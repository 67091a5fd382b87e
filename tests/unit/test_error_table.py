"""The one error table: every error class says how the gateway and the CLI answer it.

The walk covers every subclass of ``StoryError`` in the package (all modules are imported, so a
class defined next to its use, like the gateway's ``NodeNotFound``, is walked too).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import pickle
import pkgutil
import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

import fleet_actors
from fleet_actors.errors import RuleViolation, StoryError
from fleet_actors.gateway.status_mapping import CODE_KEY, rpc_failure

PACKAGE = Path(fleet_actors.__file__).parent
#: bases that say too little to be raised themselves
ABSTRACT = {"StoryError", "Retryable", "NonRetryable"}


def _subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def _error_classes() -> list[type[StoryError]]:
    for module in pkgutil.walk_packages(fleet_actors.__path__, "fleet_actors."):
        if "._generated" not in module.name:
            importlib.import_module(module.name)
    found = {cls for cls in _subclasses(StoryError) if cls.__module__.startswith("fleet_actors.")}
    return sorted([StoryError, *found], key=lambda cls: (cls.__module__, cls.__qualname__))


ERROR_CLASSES = _error_classes()


def _instance(cls: type[StoryError]) -> StoryError:
    # every constructor takes one positional text: a message, or the story id it names
    return cls("S1")


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__qualname__)
def test_every_error_class_declares_its_status_exit_code_and_reason(cls: type[StoryError]) -> None:
    assert cls.grpc_status in grpc.StatusCode.__members__, f"{cls.grpc_status!r} is not a grpc.StatusCode"
    assert cls.grpc_status not in ("OK", "UNKNOWN")
    # 0 is success and 1 is a check that found differences (verify): an error is neither
    assert isinstance(cls.exit_code, int) and not isinstance(cls.exit_code, bool) and cls.exit_code > 1
    assert isinstance(cls.code, str) and cls.code.strip()
    assert isinstance(cls.retryable, bool)


@pytest.mark.parametrize(
    "cls", [c for c in ERROR_CLASSES if c.__module__ == "fleet_actors.errors"], ids=lambda cls: cls.__qualname__
)
def test_each_class_of_the_hierarchy_states_its_status_in_its_own_body(cls: type[StoryError]) -> None:
    # an inherited status is how ArchiveCorrupted (DATA_LOSS by its code) came to be answered INTERNAL
    assert "grpc_status" in vars(cls) and "code" in vars(cls)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__qualname__)
def test_the_gateway_answers_each_class_with_its_status_and_reason(cls: type[StoryError]) -> None:
    error = _instance(cls)
    failure = rpc_failure(error)
    assert failure.code == grpc.StatusCode[cls.grpc_status]
    assert failure.reason == cls.code and (CODE_KEY, cls.code) in failure.trailing_metadata
    assert error.message in failure.details
    # errors cross Ray as pickles: the class, and so its status, survives the trip
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is cls and again.message == error.message and again.field == error.field


def test_the_cli_exits_with_the_exit_code_of_the_error_class(monkeypatch, capsys) -> None:
    from fleet_actors.cli import main as cli

    def refuse(args: argparse.Namespace) -> int:
        raise RuleViolation("phases advance one at a time", field="to_phase")

    parser = argparse.ArgumentParser(prog="fleet-actors")
    parser.set_defaults(func=refuse)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    assert cli.main([]) == RuleViolation.exit_code == 2
    monkeypatch.setattr(RuleViolation, "exit_code", 9)
    assert cli.main([]) == 9
    err = capsys.readouterr().err
    assert err == "error: phases advance one at a time\n" * 2


def _abstract_name(node: ast.expr) -> str | None:
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
    return name if name in ABSTRACT else None


def test_no_module_raises_or_builds_a_bare_root_error() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "_generated" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            # StoryError("...") anywhere (raised, returned or stored), or `raise StoryError`;
            # StoryError.__init__(self, ...) in a subclass is a call of __init__, not of the class
            target = node.func if isinstance(node, ast.Call) else node.exc if isinstance(node, ast.Raise) else None
            if target is not None and (name := _abstract_name(target)):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {name}")
    assert not found, "raise a precise subclass instead of:\n" + "\n".join(found)


def test_the_architecture_doc_lists_every_class_with_its_status() -> None:
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    listed: dict[str, tuple[str, bool]] = {}
    for classes, status, retryable in re.findall(r"^\| (`.+) \| ([A-Z_]+) \| (yes|no) \|$", text, flags=re.MULTILINE):
        for name in re.findall(r"`(\w+)`", classes):
            listed[name] = (status, retryable == "yes")
    concrete = {c.__qualname__: (c.grpc_status, c.retryable) for c in ERROR_CLASSES if c.__qualname__ not in ABSTRACT}
    assert listed == concrete

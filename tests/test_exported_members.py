"""Pins the public error names and the exit code each one maps to."""

from __future__ import annotations

import inspect

import pytest

from shardvault import errors
from shardvault.errors import ShardvaultError

EXPECTED = [
    "AccessDenied",
    "ApprovalRequired",
    "AuditUnavailable",
    "ConfigError",
    "Conflict",
    "IntegrityError",
    "InvalidInput",
    "KeyUnavailable",
    "NewerFormat",
    "NotFound",
    "Refused",
    "ResidencyRefused",
    "ShardvaultError",
    "StorageError",
    "SubjectForgotten",
    "TooFewNodes",
    "Unavailable",
    "VaultClosed",
    "WriteRaced",
]


def test_errors_all_is_pinned() -> None:
    assert errors.__all__ == EXPECTED


def test_every_exception_class_is_exported() -> None:
    defined = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value) and issubclass(value, ShardvaultError)
    }
    assert defined == set(EXPECTED)


@pytest.mark.parametrize("name", EXPECTED)
def test_every_error_maps_to_an_exit_code(name: str) -> None:
    cls = getattr(errors, name)
    assert issubclass(cls, ShardvaultError)
    expected = 2 if issubclass(cls, errors.InvalidInput) else 1
    assert cls.exit_code == expected
    assert cls("x").exit_code == expected


def test_the_tree_groups_errors_by_what_the_caller_can_do() -> None:
    parents = {
        "ConfigError": "InvalidInput",
        "ResidencyRefused": "Refused",
        "AccessDenied": "Refused",
        "SubjectForgotten": "Refused",
        "TooFewNodes": "Unavailable",
        "KeyUnavailable": "Unavailable",
        "AuditUnavailable": "Unavailable",
        "StorageError": "Unavailable",
        "NewerFormat": "Unavailable",
        "WriteRaced": "Conflict",
    }
    for child, parent in parents.items():
        assert getattr(errors, child).__bases__ == (getattr(errors, parent),)
    for top in ("InvalidInput", "NotFound", "Conflict", "Refused", "Unavailable", "IntegrityError"):
        assert getattr(errors, top).__bases__ == (ShardvaultError,)
    # a bug in the calling program, not a failure to retry; `except RuntimeError` holds
    assert errors.VaultClosed.__bases__ == (ShardvaultError, RuntimeError)

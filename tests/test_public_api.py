"""The public API: every name in __all__ imports, and the list stays sorted."""

from __future__ import annotations

import importlib

import pytest

MODULES = ["hubkit", "hubkit.hub", "hubkit.tasks", "hubkit.training", "hubkit.data", "hubkit.metrics"]


@pytest.mark.parametrize("module", MODULES)
def test_all_names_import_and_are_sorted(module):
    mod = importlib.import_module(module)
    names = list(mod.__all__)

    def isort_style(name: str) -> tuple[int, str]:  # CONSTANTS, then Classes, then functions
        return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)

    assert names == sorted(names) or names == sorted(names, key=isort_style), names
    for name in names:
        assert getattr(mod, name) is not None, f"{module}.{name}"


def test_errors_inherit_builtins():
    from hubkit import errors

    assert issubclass(errors.RepoNotFoundError, FileNotFoundError)
    assert issubclass(errors.AdapterMismatchError, ValueError)
    assert issubclass(errors.InvalidRepoIdError, ValueError)
    assert issubclass(errors.HubUnreachableError, ConnectionError)
    for name in dir(errors):
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, Exception) and obj is not errors.HubkitError:
            assert issubclass(obj, errors.HubkitError), name

"""The public surface: ``__all__`` complete and sorted, every public callable documented."""

from __future__ import annotations

import inspect

import shmfs


def test_all_is_sorted_and_complete() -> None:
    assert shmfs.__all__ == sorted(shmfs.__all__)
    public = {name for name in vars(shmfs) if not name.startswith("_")}
    modules = {name for name in public if inspect.ismodule(getattr(shmfs, name))}
    assert public - modules - {"annotations"} == set(shmfs.__all__)


def test_every_public_callable_is_documented() -> None:
    missing = []
    for name in shmfs.__all__:
        obj = getattr(shmfs, name)
        if not inspect.getdoc(obj):
            missing.append(name)
        if inspect.isclass(obj) and not issubclass(obj, BaseException):
            for member_name, member in vars(obj).items():
                if member_name.startswith("_") or not callable(member):
                    continue
                if not inspect.getdoc(member):
                    missing.append(f"{name}.{member_name}")
    assert not missing, f"undocumented: {missing}"

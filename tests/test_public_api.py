"""The public API is what ``dreamgen_async`` exports, and every export is documented."""

from __future__ import annotations

import dreamgen_async


def test_all_lists_exactly_the_public_names() -> None:
    public = {name for name in vars(dreamgen_async) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(dreamgen_async, name)).__name__ == "module"}
    assert set(dreamgen_async.__all__) - {"__version__"} == public - modules


def test_every_exported_class_and_function_has_a_docstring() -> None:
    for name in dreamgen_async.__all__:
        obj = getattr(dreamgen_async, name)
        if callable(obj) and not name.isupper():
            assert obj.__doc__, f"{name} has no docstring"


def test_exceptions_share_one_root() -> None:
    for name in dreamgen_async.__all__:
        obj = getattr(dreamgen_async, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, dreamgen_async.DreamgenError) or name == "PartialPromptWarning"

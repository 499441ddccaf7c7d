"""``finbert2 convert <name> [args]``: run one converter of ``finbert2.converters``."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import finbert2.converters as package

_NOT_CONVERTERS = {"cli"}


def available() -> dict[str, str]:
    """``{cli name: first docstring line}`` of every converter module."""
    found = {}
    for info in pkgutil.iter_modules(package.__path__):
        if info.name in _NOT_CONVERTERS or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        if hasattr(module, "main"):
            found[info.name.replace("_", "-")] = (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else ""
    return found


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    converters = available()
    if not argv or argv[0] in {"-h", "--help"}:
        lines = ["usage: finbert2 convert <name> [--help | args]", "", "converters:"]
        width = max((len(n) for n in converters), default=0)
        lines += [f"  {name.ljust(width)}  {doc}" for name, doc in sorted(converters.items())]
        print("\n".join(lines))
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in converters:
        print(f"error: unknown converter '{name}' (have: {', '.join(sorted(converters)) or 'none'})", file=sys.stderr)
        return 2
    module = importlib.import_module(f"{package.__name__}.{name.replace('-', '_')}")
    return int(module.main(rest) or 0)

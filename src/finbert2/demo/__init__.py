"""Synthetic Chinese financial demo data (written to data/demo/ by ``python -m finbert2.demo.generate``)."""

__all__ = ["generate_demo_data"]


def __getattr__(name):
    # Imported lazily so that ``python -m finbert2.demo.generate`` does not find the module
    # already imported by its package (runpy warns about that).
    if name == "generate_demo_data":
        from finbert2.demo.generate import generate_demo_data

        return generate_demo_data
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Pictures of a topic model: a topic word bar chart and a 2-D document map, with Chinese glyphs.

matplotlib's default font (DejaVu Sans) has no CJK glyphs and draws boxes. We use a font that
the install provides: ``--font_path`` if given, else Noto Sans SC from the ``pylopdf-fonts-zh-cn``
package (SIL OFL 1.1), else any installed font whose character map covers the text. Every label
is checked against the chosen font's character map before drawing, so a missing glyph is an
error, not a silent box.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib import font_manager
from matplotlib.figure import Figure
from matplotlib.ft2font import FT2Font

from finbert2.errors import ConfigError

logger = logging.getLogger(__name__)

CJK_PROBE = "金融市场股票债券利率汇率"


def font_charmap(path: str | Path) -> set[int]:
    """Code points the font at ``path`` has glyphs for."""
    return set(FT2Font(str(path)).get_charmap())


def missing_glyphs(text: str, charmap: set[int]) -> set[str]:
    return {c for c in text if not c.isspace() and ord(c) not in charmap}


def packaged_cjk_font() -> Path | None:
    try:
        import pylopdf_fonts_zh_cn
    except ImportError:
        return None
    path = Path(pylopdf_fonts_zh_cn.sans_path())
    return path if path.is_file() else None


def find_cjk_font(font_path: str | None = None) -> Path:
    """The font file to draw Chinese with (see the module docstring for the order tried)."""
    candidates: list[Path] = []
    if font_path:
        if not Path(font_path).is_file():
            raise ConfigError(f"{font_path}: no such font file")
        candidates.append(Path(font_path))
    else:
        packaged = packaged_cjk_font()
        if packaged:
            candidates.append(packaged)
        candidates += [Path(f.fname) for f in font_manager.fontManager.ttflist]
    for path in candidates:
        try:
            if not missing_glyphs(CJK_PROBE, font_charmap(path)):
                return path
        except (OSError, RuntimeError):
            continue
    raise ConfigError(
        (f"{font_path}: has no Chinese glyphs" if font_path else "no font with Chinese glyphs found")
        + "; install pylopdf-fonts-zh-cn (requirements.txt) or pass --font_path a CJK .ttf/.otf"
    )


class CJKFont:
    """A registered CJK font and its character map, for drawing and checking labels."""

    def __init__(self, font_path: str | None = None):
        self.path = find_cjk_font(font_path)
        font_manager.fontManager.addfont(str(self.path))
        self.properties = font_manager.FontProperties(fname=str(self.path))
        self.name = self.properties.get_name()
        self.charmap = font_charmap(self.path)

    def check(self, texts: Iterable[str]) -> None:
        missing = set()
        for text in texts:
            missing |= missing_glyphs(text, self.charmap)
        if missing:
            # Rare symbols in titles are replaced rather than drawn as boxes.
            logger.warning("font %s lacks glyphs for %s; they are drawn as '?'", self.name, "".join(sorted(missing)))

    def safe(self, text: str) -> str:
        return "".join(c if c.isspace() or ord(c) in self.charmap else "?" for c in text)

    def rc(self) -> dict:
        return {"font.family": [self.name], "axes.unicode_minus": False}


def topic_barchart(path: str | Path, topics: Sequence[tuple[int, str, Sequence[tuple[str, float]]]],
                   font: CJKFont, n_words: int = 8, title: str = "Topic words (c-TF-IDF)") -> list[str]:
    """One horizontal bar panel per topic: ``(topic id, name, [(word, score), ...])``. Returns the labels drawn."""
    drawn: list[str] = []
    n = len(topics)
    cols = min(4, max(1, n))
    rows = max(1, int(np.ceil(n / cols)))
    with matplotlib.rc_context(font.rc()):
        fig = Figure(figsize=(3.4 * cols, 2.6 * rows))  # no pyplot: no GUI backend, nothing global
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax in axes.ravel():
            ax.set_visible(False)
        for ax, (topic_id, _, words) in zip(axes.ravel(), topics):
            ax.set_visible(True)
            words = [(w, s) for w, s in words if w][:n_words][::-1]
            labels = [font.safe(w) for w, _ in words]
            ax.barh(range(len(words)), [s for _, s in words], color=f"C{topic_id % 10}")
            ax.set_yticks(range(len(words)), labels)
            panel_title = font.safe(f"主题 {topic_id}")
            ax.set_title(panel_title, fontsize=10)
            ax.tick_params(axis="x", labelsize=7)
            drawn += labels + [panel_title]
        fig.suptitle(font.safe(title))
        drawn.append(font.safe(title))
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    return drawn


def document_map(path: str | Path, points: np.ndarray, topics: Sequence[int], names: dict[int, str],
                 font: CJKFont, title: str = "Documents by topic", max_labels: int = 20) -> list[str]:
    """Scatter of 2-D document coordinates coloured by topic, each large topic named at its centre."""
    topics = np.asarray(topics)
    drawn: list[str] = []
    with matplotlib.rc_context(font.rc()):
        fig = Figure(figsize=(10, 8))
        ax = fig.subplots()
        outliers = topics == -1
        if outliers.any():
            ax.scatter(points[outliers, 0], points[outliers, 1], s=3, c="lightgrey", label="-1")
        cmap = matplotlib.colormaps["tab20"]
        ids, sizes = np.unique(topics[~outliers], return_counts=True)
        for topic_id in ids:
            mask = topics == topic_id
            ax.scatter(points[mask, 0], points[mask, 1], s=4, color=cmap(int(topic_id) % 20), alpha=0.7)
        for topic_id in ids[np.argsort(-sizes)][:max_labels]:
            members = points[topics == topic_id]
            # the member nearest the median: a topic split in two islands is still named on one
            centre = members[np.argmin(((members - np.median(members, axis=0)) ** 2).sum(axis=1))]
            label = font.safe(names.get(int(topic_id), str(topic_id)))
            ax.annotate(label, centre, fontsize=9, ha="center",
                        bbox={"boxstyle": "round,pad=0.2", "fc": "white", "alpha": 0.7, "lw": 0})
            drawn.append(label)
        ax.set_title(font.safe(title))
        drawn.append(font.safe(title))
        ax.set_xticks([])
        ax.set_yticks([])
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    return drawn

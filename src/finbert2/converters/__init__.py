"""Converters from public data sets' own formats to the toolkit's (DESIGN.md section 4).

One module per converter, each with ``main(argv) -> int``; ``finbert2 convert <name> ...`` runs
module ``finbert2.converters.<name with - as _>``.
"""

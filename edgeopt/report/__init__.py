"""Rendering results: one document (dict) and the tables that show it.

JSON prints the document itself (the CONTRACT keys); table, csv and markdown
print the tables. Results go to stdout; nothing else is printed there.
"""

from edgeopt.report.render import Column, Table, emit, FORMATS

__all__ = ["Column", "Table", "emit", "FORMATS"]

"""Writing a built report: ``ROOT/report/index.html`` and its PNGs, on any fsspec filesystem.

Every file goes through `minority_core.io.atomic.write_atomic`, PNGs first and the page last, so
a visible index.html always has its files beside it and never reads half-written."""

from __future__ import annotations

import posixpath

import fsspec

from minority_core.io.atomic import is_local, write_atomic
from minority_core.report.markdown import with_location
from minority_core.report.model import INDEX_NAME, REPORT_DIR, Report


def write_report(report: Report, fs: fsspec.AbstractFileSystem, root: str) -> str:
    """Write ``root/report/index.html`` and its PNGs with fsspec filesystem `fs`; return the index path.

    ``report.markdown``'s last line is updated to name the written location (for the artifact).
    """
    base = posixpath.join(root.rstrip("/"), REPORT_DIR)
    for name, png in report.pngs.items():
        write_atomic(fs, posixpath.join(base, name), png)
    index = posixpath.join(base, INDEX_NAME)
    write_atomic(fs, index, report.html.encode("utf-8"))
    report.markdown = with_location(report.markdown, index if is_local(fs) else fs.unstrip_protocol(index))
    return index

"""What ``edgecell scan`` prints for people (rich); the work is in :mod:`firmware_host.scan`."""

from __future__ import annotations

from rich.table import Table

from edgecell.console import shown
from edgecell.views.classify import print_differential, print_lab_warnings
from firmware_host.classify import blasts_line, review_note
from firmware_host.locate import AUTO
from firmware_host.runtime import BLAST_CLASSES, TRIAGE_NOTE, is_possible_blast, label_text
from firmware_host.scan import FIRST_FIELDS, ScanSummary


def edge_flagged_text(n: int) -> str:
    """What the summary adds after the flagged count when some flagged cells are cut by a field's border (flagged, and
    so counted there, but not in the differential count)."""
    return f" ({n} of them cut by a border)" if n else ""


def noted_text(empty: int, noted: int) -> str:
    """What the summary adds about the empty fields that carry a note (cells may have been missed there)."""
    if not noted:
        return ""
    which = "all with" if noted == empty else f"{noted} of them with"
    return f" ({which} a note above: white cells may have been missed)"


def print_summary(con, err, s: ScanSummary) -> None:
    """The lab check's warning, the first fields' cells, the differential count, the flags, the timings and the failures."""
    print_lab_warnings(err, s.lab_warning, s.folder_lab_warnings)
    if s.size_warning:
        err.print(f"[bold yellow]warning:[/bold yellow] {shown(s.size_warning)}", soft_wrap=True, highlight=False)
    if s.first_fields:
        table = Table(title="Fields" if s.n_fields <= FIRST_FIELDS else f"First {len(s.first_fields)} fields", title_justify="left")
        table.add_column("field", overflow="fold")
        table.add_column("cells", justify="right")
        table.add_column("found", overflow="fold")
        for file, cells in s.first_fields:
            found = ", ".join(
                label_text(c["label"], c["confidence"], c.get("other_reason", ""))
                + (" (edge)" if c["edge"] else "")
                + (" !" if c["flag"] else "")
                + (" (possible blast)" if is_possible_blast(c["label"], c["top3"]) and c["label"] not in BLAST_CLASSES else "")
                for c in cells
            )
            table.add_row(shown(file), str(len(cells)), shown(found) or "[dim]no white cell[/dim]")
        con.print(table)
    d = s.to_dict()
    blasts = blasts_line(s.n_blasts, [shown(f) for f in s.blast_files], s.n_blast_files, what="field", edge=s.n_blasts_edge)
    if s.n_cells:
        print_differential(con, "Differential count (cells cut by a field's border left out)", s.predicted, blasts, s.n_no_nucleus, s.n_blasts_in_other)
    con.print(
        f"{s.n_fields} fields scanned, {s.n_cells} cells found ({s.n_edge} cut by the border), "
        f"{s.n_empty} without one{noted_text(s.n_empty, s.n_empty_noted)}. Flagged: [bold]{s.n_flagged}[/bold]{edge_flagged_text(s.n_flagged_edge)} - {s.n_review} for haematologist review"
        f"{review_note(s.n_review_other)}, {s.n_uncertain} uncertain (confidence < {s.threshold:.2f}), {s.n_other} not one of the five."
        + (f" {TRIAGE_NOTE}" if s.n_cells else ""),
        soft_wrap=True,
    )
    if s.cell_size_given == AUTO and s.cell_size_spread:
        c = s.cell_size_spread
        con.print(
            f"Cell size measured from each field's red cells: median {c['median']:.0f} px ({c['min']:.0f}-{c['max']:.0f}; "
            "the default where a field had too few to measure).",
            soft_wrap=True,
        )
    if s.n_fields:
        loc = d["locate_ms_per_field"]
        cls = d["classify_ms_per_cell"]
        con.print(
            f"Locating {loc:.1f} ms per field" + (f", classifying {cls:.1f} ms per cell" if cls is not None else "") + f"; {s.wall_s:.2f} s in all.",
            soft_wrap=True,
        )
    if blasts:  # said again last: the line before the table has scrolled away on a small screen (a review)
        con.print(f"[bold red]{shown(blasts)}[/bold red]", soft_wrap=True, highlight=False)
    if s.n_failed:
        err.print(f"[red]{s.n_failed} input(s) could not be scanned[/red] (listed above).", soft_wrap=True)

"""edgecell inspect"""

from __future__ import annotations

import click

from edgecell.options import check_outputs, data_option, data_reads, emit_json, exclude_option, json_option, output_option, seeded


@click.command("inspect", context_settings={"help_option_names": ["-h", "--help"]})
@data_option()
@exclude_option
@seeded("the split shown")
@output_option("--manifest", "manifest_out", help="Also write the split manifest (file, class, split, sha256, source, type) to this CSV.")
@json_option
def inspect_cmd(data_dir, exclude, seed, manifest_out, json_out):
    """Check data folders: images per class and source, unusable files, duplicates and the split.

    Reads every image once, reports files it cannot use (and why), groups identical images,
    shows the stratified train/val/test split that `train` would use, and warns when a class
    comes from one source only (the model could learn the lab instead of the cell).

    \b
    Example:
      edgecell inspect --data ../shared/bloodcells --data ../shared/more_cells --manifest split.csv
    """
    from collections import Counter

    from rich.table import Table

    from edgecell import data as data_mod
    from edgecell.console import human, shown, warn
    from edgecell.train import load_dataset

    con = human(json_out == "-")
    check_outputs({"--manifest": manifest_out, "--json": json_out}, data_reads(data_dir))
    ds = load_dataset(data_dir, None, con, exclude=exclude, keep_short=True)
    refusal = ds.shortage  # too few images of a class: show what there is, then refuse as train would
    splits = data_mod.make_split(ds, seed)
    per = Counter((s.label, sp) for s, sp in zip(ds.samples, splits))
    by_source = ds.counts_by_source()
    st = Table(title="Images per cell type (class folder) and source")
    st.add_column("type (class)")
    for src in by_source:
        st.add_column(shown(src), justify="right")
    for typ in sorted({s.type for s in ds.samples}):
        cls = data_mod.class_of(typ)
        st.add_row(shown(typ if cls == typ else f"{typ} ({cls})"), *(str(by_source[src].get(typ, "")) for src in by_source))
    con.print(st)
    for w in ds.confounding():
        warn(w)
    t = Table(title=f"{shown(', '.join(map(str, data_dir)))}: {len(ds.samples)} usable images (split seed {seed})")
    t.add_column("class")
    for col in ("images", "train", "val", "test"):
        t.add_column(col, justify="right")
    for c, n in ds.counts().items():
        t.add_row(shown(c), str(n), *(str(per[(c, sp)]) for sp in data_mod.SPLITS))
    con.print(t)
    dups = ds.duplicate_groups()

    def named(smp) -> str:  # SOURCE/CLASS/FILE: the same name in two sources is two files
        return f"{smp.source}/{smp.rel}" if smp.source else smp.rel

    if dups:
        d = Table(title=f"{len(dups)} group(s) of identical images (each kept within one split)")
        d.add_column("files")
        d.add_column("split")
        split_of = {(s.source, s.rel): sp for s, sp in zip(ds.samples, splits)}
        for g in dups:
            d.add_row(shown(", ".join(named(s) for s in g)), split_of[(g[0].source, g[0].rel)])
        con.print(d)
    con.print(f"fingerprint {ds.fingerprint()[:16]}…, {len(ds.skipped)} file(s) skipped")
    if manifest_out and refusal is None:  # not a split that train would refuse to use
        data_mod.write_manifest(manifest_out, ds, splits)
        con.print(f"wrote split manifest {manifest_out}")
    if refusal is not None:
        raise refusal
    emit_json(
        json_out,
        {
            "data": list(data_dir),
            "sources": {k: str(v) for k, v in ds.sources.items()},
            "counts": ds.counts(),
            "counts_by_source": by_source,
            "warnings": ds.confounding(),
            "split_counts": {c: {sp: per[(c, sp)] for sp in data_mod.SPLITS} for c in ds.classes},
            "duplicates": [[named(s) for s in g] for g in dups],
            "skipped": [{"path": s.path, "reason": s.reason} for s in ds.skipped],
            "fingerprint": ds.fingerprint(),
            "seed": seed,
        },
    )

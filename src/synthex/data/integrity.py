"""Integrity report of a source: what was listed, what is present, what joins.

Printed by ``synthex data inspect`` and saved as JSON + Markdown next to the prepared data.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from synthex.data.sources import SourceTables, index_images, join_tables

_MAX_LISTED = 50


@dataclass
class IntegrityReport:
    """Counts that tell whether a source is complete and consistent."""

    layout: str
    report_uids: int
    projection_uids: int
    common_uids: int
    reports_without_images: int
    images_listed: int
    images_present: int
    images_missing: int
    images_extra: int
    frontal_images: int
    lateral_images: int
    unknown_projection_images: int
    patients_with_frontal: int
    patients_with_several_frontal: int
    projection_sources: dict[str, int]
    notes: list[str] = field(default_factory=list)
    missing_examples: list[str] = field(default_factory=list)
    extra_examples: list[str] = field(default_factory=list)
    identical_report_rows: int = 0
    identical_projection_rows: int = 0
    conflicting_report_uids: int = 0
    conflicting_projection_images: int = 0
    rows_rejected: int = 0

    def to_markdown(self) -> str:
        """A two-column Markdown table of the counts, then notes and examples."""
        rows = [(k, v) for k, v in asdict(self).items() if isinstance(v, int)]
        lines = ["| check | count |", "|---|---:|", *[f"| {k.replace('_', ' ')} | {v:,} |" for k, v in rows]]
        lines.append(f"| projection sources | {', '.join(f'{k}: {v:,}' for k, v in self.projection_sources.items())} |")
        lines += ["", f"Layout: `{self.layout}`."] + [f"- {n}" for n in self.notes]
        if self.missing_examples:
            lines.append(f"- missing images (first {len(self.missing_examples)}): " + ", ".join(self.missing_examples))
        if self.extra_examples:
            lines.append(f"- extra images not in the projections (first {len(self.extra_examples)}): " + ", ".join(self.extra_examples))
        return "\n".join(lines) + "\n"

    def save(self, out_dir: Path) -> None:
        """Write ``integrity.json`` and ``integrity.md`` into ``out_dir``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "integrity.json").write_text(json.dumps(asdict(self), indent=2) + "\n")
        (out_dir / "integrity.md").write_text("# Integrity report\n\n" + self.to_markdown())


def check_integrity(tables: SourceTables) -> tuple[IntegrityReport, pd.DataFrame]:
    """Join the tables and count what is consistent; return the report and the joined table."""
    index = index_images(tables.image_dir)
    frame = join_tables(tables, index)
    report_uids = set(tables.reports["uid"])
    projection_uids = set(tables.projections["uid"])
    listed = set(tables.projections["image_id"])
    has_images = tables.image_dir is not None
    missing = sorted(listed - set(index)) if has_images else []
    extra = sorted(set(index) - listed)
    frontal = frame[frame["projection"] == "Frontal"]
    per_patient = frontal.groupby("uid").size()
    notes = list(tables.notes)
    if not has_images:
        notes.append("images: none present (text pipeline only)")
    report = IntegrityReport(
        layout=tables.layout,
        report_uids=len(report_uids),
        projection_uids=len(projection_uids),
        common_uids=len(report_uids & projection_uids),
        reports_without_images=len(report_uids - projection_uids),
        images_listed=len(listed),
        images_present=len(listed & set(index)),
        images_missing=len(missing),
        images_extra=len(extra),
        frontal_images=len(frontal),
        lateral_images=int((frame["projection"] == "Lateral").sum()),
        unknown_projection_images=int((frame["projection"] == "Unknown").sum()),
        patients_with_frontal=int(per_patient.size),
        patients_with_several_frontal=int((per_patient > 1).sum()),
        projection_sources={str(k): int(v) for k, v in frame["projection_source"].value_counts().items()},
        notes=notes,
        missing_examples=missing[:_MAX_LISTED],
        extra_examples=extra[:_MAX_LISTED],
        **{k: int(v) for k, v in tables.duplicates.items()},
        rows_rejected=len(tables.rejected),
    )
    return report, frame

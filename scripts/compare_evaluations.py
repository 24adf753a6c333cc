"""Side-by-side table of the headline numbers of several ``synthex evaluate`` reports.

    python scripts/compare_evaluations.py runs/eval-v1 runs/eval-v2 --names "v1" "v2"

Reads each folder's ``results.json`` and prints a Markdown table (the real set's reference values
in the last column, from the first report). Missing metrics print as "-".
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def _get(d, *path):
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _laterality(align) -> str:
    rows = (align or {}).get("laterality") or []
    n = sum(r["n"] for r in rows)
    ok = sum(r["n"] * r["correct_side"] for r in rows if r["correct_side"] == r["correct_side"])
    return f"{ok:.0f} of {n}" if n else "-"


ROWS = [
    ("FID (phantom encoder)", lambda r: _get(r, "fidelity", "fid"), "{:.1f}"),
    ("KID", lambda r: _get(r, "fidelity", "kid"), "{:.2f}"),
    ("precision", lambda r: _get(r, "fidelity", "precision"), "{:.2f}"),
    ("recall", lambda r: _get(r, "fidelity", "recall"), "{:.2f}"),
    ("density", lambda r: _get(r, "fidelity", "density"), "{:.2f}"),
    ("coverage", lambda r: _get(r, "fidelity", "coverage"), "{:.2f}"),
    ("MS-SSIM within / across prompts", lambda r: (_get(r, "diversity", "synthetic", "within_prompt"),
                                                    _get(r, "diversity", "synthetic", "across_prompts")), "{:.2f} / {:.2f}"),
    ("mean per-finding AUROC, prompted vs not", lambda r: _get(r, "alignment", "synthetic", "mean_auroc"), "{:.2f}"),
    ("pathology prompts, every prompted finding missed",
     lambda r: _get(r, "alignment", "synthetic", "normal", "pathology_all_missed"), "{:.0%}"),
    ("normal prompts that look normal", lambda r: _get(r, "alignment", "synthetic", "normal", "normal_called_normal"), "{:.0%}"),
    ("laterality (effusion + opacity on the prompted side)", lambda r: _laterality(_get(r, "alignment", "synthetic")), "{}"),
    ("CTR probe > 0.5: cardiomegaly prompts / others",
     lambda r: (_get(r, "alignment", "synthetic", "ctr", "share_ctr_over_0.5_cardiomegaly"),
                _get(r, "alignment", "synthetic", "ctr", "share_ctr_over_0.5_other")), "{:.0%} / {:.0%}"),
    ("CTR probe AUROC, cardiomegaly prompts vs others", lambda r: _get(r, "alignment", "synthetic", "ctr", "auroc_ctr"), "{:.2f}"),
]
REAL = {
    "MS-SSIM within / across prompts": lambda r: (_get(r, "diversity", "real", "within_prompt"),
                                                  _get(r, "diversity", "real", "across_prompts")),
    "mean per-finding AUROC, prompted vs not": lambda r: _get(r, "alignment", "real", "mean_auroc"),
    "pathology prompts, every prompted finding missed": lambda r: _get(r, "alignment", "real", "normal", "pathology_all_missed"),
    "normal prompts that look normal": lambda r: _get(r, "alignment", "real", "normal", "normal_called_normal"),
    "laterality (effusion + opacity on the prompted side)": lambda r: _laterality(_get(r, "alignment", "real")),
    "CTR probe > 0.5: cardiomegaly prompts / others":
        lambda r: (_get(r, "alignment", "real", "ctr", "share_ctr_over_0.5_cardiomegaly"),
                   _get(r, "alignment", "real", "ctr", "share_ctr_over_0.5_other")),
    "CTR probe AUROC, cardiomegaly prompts vs others": lambda r: _get(r, "alignment", "real", "ctr", "auroc_ctr"),
}


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, tuple) and None in value):
        return "-"
    return spec.format(*value) if isinstance(value, tuple) else spec.format(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", type=Path, nargs="+")
    parser.add_argument("--names", nargs="+")
    args = parser.parse_args()
    names = args.names or [p.name for p in args.reports]
    results = [json.loads((p / "results.json").read_text())["results"] for p in args.reports]
    print("| measure | " + " | ".join(names) + " | real test phantoms |")
    print("|---|" + "---:|" * (len(names) + 1))
    for label, get, spec in ROWS:
        real = _fmt(REAL[label](results[0]), spec) if label in REAL else "-"
        print(f"| {label} | " + " | ".join(_fmt(get(r), spec) for r in results) + f" | {real} |")


if __name__ == "__main__":
    main()

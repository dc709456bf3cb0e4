"""Write the table of preset hyperparameters in docs/optimizer.md from the preset registry.

    python docs/gen_presets.py          # rewrite the table between the markers
    python docs/gen_presets.py --check  # exit 1 when the page differs from the registry
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from modnorm.optim import PRESETS, Hyperparameters
from modnorm.optim.presets import Polar, RoutedAdamW

PAGE = Path(__file__).resolve().parent / "optimizer.md"
BEGIN, END = "<!-- preset-hyperparameters:begin -->", "<!-- preset-hyperparameters:end -->"
GROUPS = {"`adamw_*`": RoutedAdamW, "`ns_*`": Polar}  # shared groups, listed once below the table


def _defaults(fields: dict, names: list[str]) -> str:
    return ", ".join(f"`{n}={fields[n].default!r}`" for n in names)


def table() -> str:
    """The markdown between the markers: one row per registered preset."""
    common = [n for n in Hyperparameters.model_fields if n != "lr"]
    rows = ["| preset | lr | its hyperparameters (defaults) | shared groups |", "|---|---|---|---|"]
    for name in sorted(PRESETS):
        fields = PRESETS[name].hyperparameters.model_fields
        groups = {label: model for label, model in GROUPS.items() if set(model.model_fields) <= set(fields)}
        shared = {n for model in groups.values() for n in model.model_fields}
        common_changed = [n for n in Hyperparameters.model_fields if n != "lr" and fields[n].default != Hyperparameters.model_fields[n].default]
        own = common_changed + [n for n in fields if n not in Hyperparameters.model_fields and n not in shared]
        rows.append(f"| {name} | {fields['lr'].default!r} | {_defaults(fields, own) or '—'} | {', '.join(groups) or '—'} |")
    notes = [f"Every preset also takes {_defaults(Hyperparameters.model_fields, common)} (the last four: the "
             "global step size, above). Shared groups:"]
    for label, model in GROUPS.items():
        notes.append(f"- {label}: {_defaults(model.model_fields, list(model.model_fields))}.")
    return "\n".join([BEGIN, *rows, "", *notes, END])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = PAGE.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    new = text[:start] + table() + text[end:]
    if args.check:
        if new != text:
            print(f"{PAGE} is out of date: run python docs/gen_presets.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(new)
    print(f"wrote {PAGE} ({len(PRESETS)} presets)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The data-gap comparison: ``adapt data gap`` on the demo's synthetic pair and on CamVid day -> dusk, side by side.

Writes the demo's pair (``adapt data synth`` with the demo recipes' settings: 300 images per domain at 96x128,
seed 0) into ``--runs``, then runs ``adapt data gap`` (its defaults: up to 200 images per domain, drawn by seed 0)
on it and on CamVid (``--camvid``: day frames against the 31 dusk frames methods may train on, ``labelled_train``), and
prints one markdown table of the headline measurements from both ``gap.json`` files (brightness, class shares,
low-frequency amplitudes, Lite0 feature distances, the domain classifier, the suggestions). ``--output`` writes it
to a result file under a header (command, commit, date, machine).

    python benchmarks/gap_table.py --output benchmarks/results/data_gap.md
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from record import write_result


def adapt(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "adapt.cli", *args], check=True)


def band(report: dict, beta: float) -> dict:
    return next(b for b in report["spectrum"]["bands"] if b["beta"] == beta)


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f} %"


def rows(report: dict) -> dict[str, str]:
    """The table's cells of one gap.json: row label -> text."""
    colour, labels, features = report["colour"], report["labels"], report["features"]
    narrow, wide = band(report, 0.01), band(report, 0.05)
    tv = labels["total_variation"]
    return {
        "images read, source / target": f"{report['source']['images_used']} / {report['target']['images_used']}",
        "brightness mean, source / target": f"{colour['source']['brightness_mean']:.2f} / "
                                            f"{colour['target']['brightness_mean']:.2f}",
        "class shares, total variation": "-" if tv is None else f"{tv:.3f}",
        "low-frequency amplitudes apart (beta 0.01), inside / outside the square":
            f"{percent(narrow['inside_relative'])} / {percent(narrow['outside_relative'])}",
        "share of the amplitude difference inside FDA's square (beta 0.01 / 0.05)":
            f"{percent(narrow['inside_share'])} / {percent(wide['inside_share'])}",
        "Fréchet distance of encoder features, source vs target / two source halves":
            f"{features['frechet_source_target']:.3g} / {features['frechet_source_halves']:.3g} "
            f"({features['ratio']:.1f}x)" if features["ratio"] is not None else "-",
        "domain classifier accuracy (cross-validated)": percent(features["classifier"]["accuracy"]),
        "suggests (heuristic)": "; ".join(line.split(":", 1)[0] for line in report["suggests"]) or "-",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="runs/gap_table", help="where the pair and the reports go (removed first)")
    parser.add_argument("--camvid", default="../shared/data/camvid", help="CamVid's root (day/ and dusk/)")
    parser.add_argument("--output", default=None, help="also write the table to this result file")
    args = parser.parse_args()
    runs = Path(args.runs)
    shutil.rmtree(runs, ignore_errors=True)
    adapt("data", "synth", "--output", str(runs / "pair"), "--num_images", "300", "--size", "[96,128]", "--seed", "0")
    adapt("data", "gap", "--source", str(runs / "pair/source"), "--target", str(runs / "pair/target"),
          "--output", str(runs / "demo"))
    columns = {"demo pair (synthetic)": runs / "demo/gap.json"}
    camvid = Path(args.camvid)
    if (camvid / "day").is_dir() and (camvid / "dusk").is_dir():
        adapt("data", "gap", "--source", str(camvid / "day"), "--target", str(camvid / "dusk"), "--target_split",
              "labelled_train", "--output", str(runs / "camvid"))
        columns["CamVid day -> dusk (labelled_train)"] = runs / "camvid/gap.json"
    reports = {name: json.loads(path.read_text()) for name, path in columns.items()}
    cells = {name: rows(report) for name, report in reports.items()}
    first = next(iter(reports.values()))
    lines = [f"`adapt data gap` (encoder {first['features']['encoder_name']}, weights "
             f"{first['features']['encoder_weights']}, seed {first['seed']}); the suggestions' thresholds are in "
             "adapt/workflows/gap.py.", "",
             "| | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for label in next(iter(cells.values())):
        lines.append(f"| {label} | " + " | ".join(c[label] for c in cells.values()) + " |")
    text = "\n".join(lines)
    print("\n" + text)
    if args.output:
        write_result(args.output, text)


if __name__ == "__main__":
    main()

"""``adapt demo``: train F source-only and with domain randomization on the embedded synthetic pair, then score
both on held-back source images and on the target, and print the comparison."""

from __future__ import annotations

import argparse
from pathlib import Path

from adapt.evaluate import evaluate
from adapt.nets.segmenter import ConfigError
from adapt.report import comparison_table, write_json

RECIPES = ("source_only", "randomized")


def demo_main(argv: list[str]) -> dict:
    from adapt.cli import run_lightning

    parser = argparse.ArgumentParser(prog="adapt demo", description=__doc__)
    parser.add_argument("--out", default="runs/demo", help="everything the demo writes goes here")
    parser.add_argument("--recipes", default="recipes/demo", help="folder with source_only.yaml, randomized.yaml")
    parser.add_argument("--max_epochs", type=int, default=None, help="override the recipes' trainer.max_epochs")
    args = parser.parse_args(argv)
    out, recipes = Path(args.out), Path(args.recipes)
    for name in RECIPES:
        if not (recipes / f"{name}.yaml").is_file():
            raise ConfigError(f"--recipes: {recipes / f'{name}.yaml'} not found; run from the repository root "
                              "or give --recipes DIR")
    rows, summary = {}, {}
    for name in RECIPES:
        print(f"== {name}: training F ({recipes / f'{name}.yaml'})", flush=True)
        overrides = [f"--trainer.default_root_dir={out / name}", f"--data.init_args.root={out / 'data'}",
                     "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
        if args.max_epochs is not None:
            overrides.append(f"--trainer.max_epochs={args.max_epochs}")
        cli = run_lightning(["fit", "--config", str(recipes / f"{name}.yaml")] + overrides)
        ckpt, data = cli.trainer.checkpoint_callback.last_model_path, cli.datamodule
        source = evaluate(ckpt, data.source_root, "val", out / name / "evaluate" / "source_val", verbose=False)
        print(f"== {name}: F(x_t) on the target (held-back val split)")
        target = evaluate(ckpt, data.target_root, "val", out / name / "evaluate" / "target_val")
        rows[name] = {"source val mIoU": source["miou"], "target val mIoU": target["miou"],
                      "gap": source["miou"] - target["miou"]}
        summary[name] = {"checkpoint": ckpt, "source_val": source, "target_val": target}
    print("\n== summary: mIoU % over the 10 synthetic classes (held-back val splits of each domain)")
    print(comparison_table(rows))
    write_json(out / "summary.json", summary)
    print(f"summary: {out / 'summary.json'}")
    return summary

"""README and docs/ are a guide whose links resolve, and every measured table is a generated result file that says
which command, commit and date produced it (benchmarks/record.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import REPO, benchmark_module

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")



def test_readme_is_a_guide_of_at_most_400_lines():
    assert len((REPO / "README.md").read_text().splitlines()) <= 400


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    """A link to a page, a folder or a result file that is not there is a promise the repository does not keep."""
    missing = []
    for target in LINK.findall(page.read_text()):
        if target.startswith(("http://", "https://", "#", "mailto:")):
            continue
        if not (page.parent / target.split("#")[0]).exists():
            missing.append(target)
    assert not missing, f"{page.relative_to(REPO)} links to missing {missing}"


def test_every_result_file_names_its_command_commit_and_date():
    files = sorted(p for p in (REPO / "benchmarks/results").iterdir() if p.is_file())
    assert files
    for path in files:
        head = path.read_text().splitlines()[:3]
        prefix = "- " if path.suffix == ".md" else ""
        fields = [line[len(prefix):].split(":", 1)[0] for line in head]
        assert fields == ["command", "commit", "date"], f"{path.name}: {head}"
        command = head[0].split(":", 1)[1].strip(" `")
        assert command.startswith("python benchmarks/") and "--output" in command, f"{path.name}: {command}"
        assert re.search(r"[0-9a-f]{7,40}", head[1]), f"{path.name}: {head[1]}"
        assert re.search(r"\d{4}-\d{2}-\d{2}", head[2]), f"{path.name}: {head[2]}"


def test_record_writes_the_header_then_the_table(tmp_path):
    record = benchmark_module("record")
    argv = ["benchmarks/demo_table.py", "--output", "x.md"]
    for name, prefix in (("table.txt", ""), ("table.md", "- ")):
        record.write_result(tmp_path / name, "| a | b |\n", argv)
        lines = (tmp_path / name).read_text().splitlines()
        assert lines[0] == f"{prefix}command: " + ("`python benchmarks/demo_table.py --output x.md`" if prefix
                                                    else "python benchmarks/demo_table.py --output x.md")
        assert lines[1].startswith(f"{prefix}commit:") and lines[2].startswith(f"{prefix}date:")
        assert lines[3].startswith(f"{prefix}machine:") and "CPU cores" in lines[3]
        assert lines[4:] == ["", "| a | b |"]


def test_experiment_table_from_hand_written_summaries(tmp_path):
    table = benchmark_module("experiment_table")
    (tmp_path / "F").mkdir()
    (tmp_path / "F/stage.json").write_text(json.dumps({"checkpoint": "c", "seconds": 61.4}))
    one = table.one_run_table({"eval_F": {"miou": 12.345, "pixel_accuracy": 50.0}}, tmp_path).splitlines()
    assert one[1].split() == ["eval_F", "12.35", "50.00"] and one[-1] == "stage wall times: F 61 s"
    seeds = {"seeds": [0, 1], "stages": {"eval_F": {
        "miou": {"mean": 10.0, "std": 1.0, "values": {"0": 9.0, "1": 11.0}},
        "pixel_accuracy": {"mean": 50.0, "std": None, "values": {"0": 50.0, "1": None}}}}}
    row = table.seeds_table(seeds).splitlines()[1]
    assert "10.00 ± 1.00" in row and row.rstrip().endswith("9.00 11.00") and " 50.00 " in row


def _command_lines(page: Path) -> list[str]:
    """The `adapt ...` command lines of ``page``'s shell code blocks: continuation lines joined, comments dropped,
    a shell variable replaced by a file name."""
    lines, block, pending = [], False, ""
    for raw in page.read_text().splitlines():
        if raw.startswith("```"):
            block = not block and raw.strip() in ("```bash", "```sh")
            continue
        if not block or raw.lstrip().startswith("#"):
            continue
        text = pending + re.sub(r"\s#\s.*$", "", raw).strip()
        if text.endswith("\\"):
            pending = text[:-1] + " "
            continue
        pending = ""
        text = re.sub(r"\$\{?\w+\}?", "F.ckpt", text)
        words = text.split()
        if "adapt" in words:
            lines.append(" ".join(words[words.index("adapt"):]))
    return lines


def _arguments(line: str) -> list[str]:
    """The words after `adapt`, with usage brackets around optional options (``[--seeds 0 1 2]``) and ``...``
    dropped; jsonargparse's own lists (``--window [1024,1024]``) are kept."""
    words, inside = [], False
    for word in line.split()[1:]:
        if word.startswith("[--"):
            word, inside = word[1:], True
        if inside and word.count("]") > word.count("["):
            word, inside = word[:-1], False
        if word != "...":
            words.append(word)
    return words


COMMANDS = [(page, line) for page in PAGES for line in _command_lines(page)]


def test_the_pages_show_commands():
    assert len(COMMANDS) > 20


@pytest.mark.parametrize("page,line", COMMANDS, ids=[f"{p.name}:{i}" for i, (p, _) in enumerate(COMMANDS)])
def test_every_command_line_parses_in_the_dialect(page, line):
    """Each verb's command line parses with that verb's typed parser, with no deprecated spelling; a fit names a
    recipe that exists (a shipped name or a repository file) or a placeholder in capitals."""
    from adapt.catalogue import resolve
    from adapt.commands import VERBS, verb_parser
    from adapt.workflows.stages import DEPRECATED

    argv = _arguments(line)
    old = [a for a in argv if a.startswith("--") and a[2:].partition("=")[0] in DEPRECATED]
    assert not old, f"{page.name}: `{line}` uses deprecated {old}"
    if argv[0] in ("fit", "validate", "test"):
        config = argv[argv.index("--config") + 1]
        copies = [c.split()[c.split().index("--output") + 1] for _, c in COMMANDS
                  if c.startswith("adapt recipes --copy")]
        for folder in copies:  # a recipe copied to edit: the shipped one of that name
            config = config.removeprefix(folder.rstrip("/") + "/")
        if not config.isupper() and not (REPO / config).is_file():
            resolve(config)
        return
    verb = " ".join(argv[:2]) if argv[0] == "data" else argv[0]
    assert verb in VERBS, f"{page.name}: `{line}`: no verb {verb!r}"
    rest = argv[len(verb.split()):]
    if verb in ("run", "demo"):  # --seeds 0 1 2 and --dry-run as shells write them; dotted keys go to the fits
        seeds = [a for a in rest[rest.index("--seeds") + 1:] if a.isdigit()] if "--seeds" in rest else []
        rest = [a for a in rest if a not in seeds and not (a.startswith("--") and "." in a.partition("=")[0])]
        rest = [f"--seeds=[{','.join(seeds)}]" if a == "--seeds" and seeds else "--dry_run=true" if a == "--dry-run"
                else a for a in rest]
    if any(a in ("-h", "--help") for a in rest):
        return
    verb_parser(verb).parse_args(rest)

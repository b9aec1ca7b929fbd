"""adapt.files: a folder appears complete or not at all, and a finished one is never lost or silently replaced."""

from __future__ import annotations

import os

import pytest

from adapt.errors import ConfigError
from adapt.files import atomic_write, publish_folder


def test_a_folder_appears_only_when_its_block_ends(tmp_path):
    output = tmp_path / "out"
    with publish_folder(output) as partial:
        assert partial.is_dir() and partial.name == f"out.partial-{os.getpid()}" and partial.parent == tmp_path
        (partial / "a.txt").write_text("new")
        assert not output.exists()
    assert (output / "a.txt").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("stop", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_a_failed_or_interrupted_block_leaves_the_old_folder_and_no_partial(tmp_path, stop):
    output = tmp_path / "out"
    output.mkdir()
    (output / "a.txt").write_text("old")
    with pytest.raises(type(stop)):
        with publish_folder(output, overwrite=True) as partial:
            (partial / "a.txt").write_text("half")
            raise stop
    assert (output / "a.txt").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_existing_folder_is_replaced_only_with_overwrite(tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "a.txt").write_text("old")
    with pytest.raises(ConfigError, match="was created while this command ran"):
        with publish_folder(output) as partial:  # e.g. another run wrote it meanwhile: kept, not replaced
            (partial / "b.txt").write_text("new")
    assert [p.name for p in output.iterdir()] == ["a.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with publish_folder(output, overwrite=True) as partial:
        (partial / "b.txt").write_text("new")
    assert [p.name for p in output.iterdir()] == ["b.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failed_swap_puts_the_old_folder_back(tmp_path, monkeypatch):
    output = tmp_path / "out"
    output.mkdir()
    (output / "a.txt").write_text("old")
    real = os.replace

    def failing(src, dst):
        if str(src).endswith(f".partial-{os.getpid()}"):
            raise OSError("rename refused")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="rename refused"):
        with publish_folder(output, overwrite=True) as partial:
            (partial / "b.txt").write_text("new")
    assert [p.name for p in output.iterdir()] == ["a.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    path = atomic_write(tmp_path / "sub" / "f.json", lambda f: f.write(b"old"))

    def broken(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_bytes() == b"old" and [p.name for p in path.parent.iterdir()] == ["f.json"]


def test_adapt_translate_publishes_its_folder_whole_or_not_at_all(tiny_pair, tmp_path, capsys, monkeypatch):
    """Through the real CLI: a finished translation is a folder dataset with no partial sibling; a run stopped
    half-way (Ctrl-C while writing the second image) leaves nothing; an existing output is refused and kept."""
    import cv2
    from conftest import adapt_main

    ckpt = tmp_path / "fda.ckpt"
    code, _, stderr = adapt_main(capsys, "fda", "--source", str(tiny_pair / "source"), "--target",
                                 str(tiny_pair / "target"), "--output", str(ckpt), "--count", "2", "--size", "[32, 32]")
    assert code == 0, stderr
    translate = ("translate", "--checkpoint", str(ckpt), "--direction", "source-to-target", "--input",
                 str(tiny_pair / "source"))
    real, written = cv2.imwrite, []

    def stop_at_the_second(path, pixels, *args):
        if written:
            raise KeyboardInterrupt
        written.append(path)
        return real(path, pixels, *args)

    output = tmp_path / "translated"
    monkeypatch.setattr(cv2, "imwrite", stop_at_the_second)
    try:  # the Ctrl-C reaches the caller, or the CLI turns it into exit code 130
        code = adapt_main(capsys, *translate, "--output", str(output))[0]
    except KeyboardInterrupt:
        code = 130
    assert code == 130 and written and sorted(p.name for p in tmp_path.iterdir()) == ["fda.ckpt"]
    monkeypatch.setattr(cv2, "imwrite", real)

    code, stdout, stderr = adapt_main(capsys, *translate, "--output", str(output))
    assert code == 0, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fda.ckpt", "translated"]
    images = sorted(p.name for p in (output / "images").iterdir())
    assert len(images) == 24 and (output / "labels").is_dir() and (output / "classes.yaml").is_file()
    code, _, stderr = adapt_main(capsys, *translate, "--output", str(output))
    assert code == 2 and "exists" in stderr and sorted(p.name for p in (output / "images").iterdir()) == images

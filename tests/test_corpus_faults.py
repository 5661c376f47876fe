"""Faults of the corpus job (docs/faults.md): a full disk (a write wrapper raising ENOSPC, and a real 256 KB
tmpfs where mounting one is allowed), output path edges, permissions of a replaced output."""
from __future__ import annotations

import errno
import os
import subprocess

import pytest

from _tiny_model import corpus_lines, tiny_model_dir, one_thread_per_module  # noqa: F401 (an autouse fixture)
from elmo_fast import cli
from elmo_fast.corpus import diskio
from elmo_fast.corpus.pipeline import EmbedderModel

LINES = corpus_lines(600, seed=3)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory, seed=7)


@pytest.fixture
def corpus(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(LINES) + "\n")
    return src


def embed(capsys, src, out, model, *extra):
    rc = cli.main(["embed", str(src), str(out), "--all", "--model", model, "--no-progress", "--stateless",
                   *map(str, extra)])
    return rc, capsys.readouterr().err


def one_error_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("elmo-fast: error: "), err
    assert "Traceback" not in err and "Exception ignored" not in err
    return lines[0]


class _FullDisk:
    """A file whose writes fail with ENOSPC once `budget` bytes have been written, by its write or by
    diskio.write_all_at (the allennlp layout's vector data; `full_disk_writes` patches that in)."""

    def __init__(self, f, budget):
        self.f, self.budget = f, budget

    def charge(self, n):
        if n > self.budget:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.budget -= n

    def write(self, b):
        self.charge(len(memoryview(b).cast("B")))
        return self.f.write(b)

    def __getattr__(self, name):
        return getattr(self.f, name)


@pytest.fixture
def full_disk_writes(monkeypatch):
    real = diskio.write_all_at

    def write_all_at(f, parts, offset):
        if isinstance(f, _FullDisk):
            f.charge(sum(memoryview(b).nbytes for b in parts))
            f = f.f
        return real(f, parts, offset)

    monkeypatch.setattr(diskio, "write_all_at", write_all_at)


@pytest.mark.parametrize("layout", ["allennlp", "flat"])
def test_no_space_left_is_one_line_and_leaves_the_old_output(capsys, model, corpus, tmp_path, monkeypatch,
                                                             layout, full_disk_writes):
    out = tmp_path / "out.h5"
    out.write_bytes(b"old")
    real_init = diskio.GuardedFile.__init__
    calls = []
    real_call = EmbedderModel.__call__

    def init(self, path, *a, **k):
        real_init(self, path, *a, **k)
        self.f = _FullDisk(self.f, 200_000)

    def counting(self, ids):
        calls.append(1)
        return real_call(self, ids)

    monkeypatch.setattr(diskio.GuardedFile, "__init__", init)
    monkeypatch.setattr(EmbedderModel, "__call__", counting)
    rc, err = embed(capsys, corpus, out, model, "--layout", layout, "--batch-size", 8, "--bucket-window", 16)
    assert rc == 2
    line = one_error_line(err)
    assert line.startswith(f"elmo-fast: error: no space left on device writing {out}"), line
    assert "--resume" in line
    assert out.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["in.txt", "out.h5"]        # no temporary, no pieces
    if layout == "allennlp":  # the model stopped soon after the first failed write (in the flat layout,
        # hdf5's chunk cache holds back up to 1 MB per dataset: all of this tiny test's output)
        assert len(calls) < len(LINES) // 8 // 2, len(calls)


def test_a_full_disk_keeps_completed_pieces_for_resume(capsys, model, corpus, tmp_path, monkeypatch,
                                                       full_disk_writes):
    out = tmp_path / "out.h5"
    real_init = diskio.GuardedFile.__init__
    opened = []

    def init(self, path, *a, **k):
        real_init(self, path, *a, **k)
        opened.append(path)
        if len(opened) == 3:          # the third piece meets a full disk
            self.f = _FullDisk(self.f, 1000)

    monkeypatch.setattr(diskio.GuardedFile, "__init__", init)
    job = ("--layout", "flat", "--batch-size", 8, "--bucket-window", 16, "--piece-sentences", 100)
    rc, err = embed(capsys, corpus, out, model, *job)
    assert rc == 2 and "no space left on device" in one_error_line(err)
    parts = tmp_path / ".out.h5.parts"
    assert sorted(os.listdir(parts)) == ["lock", "manifest.json", "piece-00000.h5", "piece-00001.h5"]
    monkeypatch.undo()
    rc, err = embed(capsys, corpus, out, model, *job, "--resume")
    assert rc == 0, err
    assert not parts.exists()


@pytest.fixture
def tiny_tmpfs(tmp_path):
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip() or r.returncode})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


@pytest.mark.parametrize("layout", ["allennlp", "flat"])
def test_a_real_full_disk(capsys, model, corpus, tiny_tmpfs, layout):
    out = tiny_tmpfs / "out.h5"
    out.write_bytes(b"old")
    rc, err = embed(capsys, corpus, out, model, "--layout", layout, "--bucket-window", 64)
    assert rc == 2
    assert one_error_line(err).startswith(f"elmo-fast: error: no space left on device writing {out}")
    assert out.read_bytes() == b"old"
    assert os.listdir(tiny_tmpfs) == ["out.h5"]


# ------------------------------------------------------------------------------------ output paths
def test_output_equal_to_input_is_refused(capsys, model, corpus):
    before = corpus.read_bytes()
    rc, err = embed(capsys, corpus, corpus, model)
    assert rc == 2 and "is the input file" in one_error_line(err)
    assert corpus.read_bytes() == before


def test_trailing_slash_is_refused(capsys, model, corpus, tmp_path):
    rc, err = embed(capsys, corpus, f"{tmp_path}/out/", model)
    assert rc == 2 and "ends with '/'" in one_error_line(err)
    assert sorted(os.listdir(tmp_path)) == ["in.txt"]


def test_output_checks_come_before_the_model(capsys, corpus, tmp_path):
    rc, err = embed(capsys, corpus, tmp_path / "missing" / "out.h5", str(tmp_path / "no-model"))
    assert rc == 2 and "output directory does not exist" in one_error_line(err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_folder_names_the_users_path(capsys, model, corpus, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        rc, err = embed(capsys, corpus, ro / "out.h5", str(tmp_path / "no-model"))
        assert rc == 2 and f"cannot write {ro / 'out.h5'}: permission denied" in one_error_line(err)
    finally:
        ro.chmod(0o755)


def test_replaced_output_keeps_its_permissions(capsys, model, corpus, tmp_path):
    out = tmp_path / "out.h5"
    out.write_bytes(b"old")
    os.chmod(out, 0o604)
    assert embed(capsys, corpus, out, model, "--layout", "flat")[0] == 0
    assert os.stat(out).st_mode & 0o777 == 0o604
    new = tmp_path / "new.h5"
    assert embed(capsys, corpus, new, model, "--layout", "flat")[0] == 0
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(new).st_mode & 0o777 == 0o666 & ~umask

"""Pieces, manifest and resume; shards and merge; kills and signals mid-job (subprocesses).
An interrupted stateless run resumed with --resume writes the same bytes as an uninterrupted one."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from _tiny_model import corpus_lines, tiny_model_dir, one_thread_per_module  # noqa: F401 (an autouse fixture)
from elmo_fast import cli
from elmo_fast.corpus import pipeline

HERE = pathlib.Path(__file__).resolve().parent
@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory, seed=5)


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory, seed=6)


def embed(capsys, src, out, model, *extra, fmt="--top"):
    rc = cli.main(["embed", str(src), str(out), fmt, "--model", model, "--no-progress", *map(str, extra)])
    return rc, capsys.readouterr().err


JOB = ("--stateless", "--batch-size", 2, "--bucket-window", 4, "--piece-sentences", 8)


def contents(path):
    """Every dataset's bytes and every attribute: what 'the same output' means."""
    with h5py.File(path, "r") as f:
        out = {}
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()].tobytes() if obj.dtype != object
                                                        else repr(obj[()]))
                     if isinstance(obj, h5py.Dataset) else None)
        out["attrs"] = {k: str(v) for k, v in f.attrs.items()}
    return out


def parts_dir(out):
    return out.parent / f".{out.name}.parts"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    src = tmp_path_factory.mktemp("corpus") / "in.txt"
    src.write_text("\n".join(corpus_lines(30)) + "\n")
    return src


@pytest.fixture(scope="module")
def reference(corpus, model, tmp_path_factory):
    """Uninterrupted runs, per layout."""
    refs = {}
    for layout in ("flat", "allennlp"):
        out = tmp_path_factory.mktemp("reference") / f"ref_{layout}.h5"
        rc = cli.main(["embed", str(corpus), str(out), "--top", "--model", model, "--no-progress",
                       *map(str, JOB), "--layout", layout])
        assert rc == 0
        refs[layout] = contents(out)
    return refs


class _Boom(Exception):
    pass


def _fail_after_pieces(monkeypatch, k):
    real = pipeline._Writer._close_piece

    def close(self):
        real(self)
        if len(self.manifest.pieces) == k:
            raise _Boom(f"after piece {k}")

    monkeypatch.setattr(pipeline._Writer, "_close_piece", close)


@pytest.mark.parametrize("layout", ["flat", "allennlp"])
def test_resume_after_an_exception_after_piece_k(capsys, corpus, model, tmp_path, reference, monkeypatch,
                                                 layout):
    out = tmp_path / "out.h5"
    _fail_after_pieces(monkeypatch, 2)
    with pytest.raises(_Boom):
        embed(capsys, corpus, out, model, *JOB, "--layout", layout)
    monkeypatch.undo()
    assert not out.exists()
    manifest = json.loads((parts_dir(out) / "manifest.json").read_text())
    assert [p["n"] for p in manifest["pieces"]] == [8, 8]
    # leftovers are never reused silently
    rc, err = embed(capsys, corpus, out, model, *JOB, "--layout", layout)
    assert rc == 2 and "found 2 completed piece(s) (sentences 0-15" in err and "pass --resume" in err
    rc, err = embed(capsys, corpus, out, model, *JOB, "--layout", layout, "--resume")
    assert rc == 0, err
    assert contents(out) == reference[layout]
    assert os.listdir(tmp_path) == ["out.h5"]


def test_the_unhashed_last_piece_is_redone_on_resume(capsys, corpus, model, tmp_path, reference, monkeypatch):
    """The last piece is not read back to hash it; a run that dies while assembling the output
    resumes by redoing that piece, and ends with the same bytes."""
    out = tmp_path / "out.h5"

    def assemble(*a):
        raise _Boom("while assembling")

    monkeypatch.setattr(pipeline, "_assemble", assemble)
    with pytest.raises(_Boom):
        embed(capsys, corpus, out, model, *JOB, "--layout", "flat")
    monkeypatch.undo()
    pieces = json.loads((parts_dir(out) / "manifest.json").read_text())["pieces"]
    assert [p["n"] for p in pieces] == [8, 8, 8, 6]
    assert all(len(p["sha256"]) == 64 for p in pieces[:-1]) and pieces[-1]["sha256"] is None
    rc, err = embed(capsys, corpus, out, model, *JOB, "--layout", "flat", "--resume")
    assert rc == 0, err
    assert "piece-00003.h5 was not checksummed" in err and "redoing from sentence 24" in err
    assert contents(out) == reference["flat"]
    assert os.listdir(tmp_path) == ["out.h5"]


def test_a_full_last_piece_is_not_hashed(capsys, model, tmp_path, monkeypatch):
    """A corpus that fills its last piece exactly (16 sentences, pieces of 8): that piece is still
    the last, so it is not read back to hash it (a 100 k-sentence job once spent 9 s of its 29
    hashing the piece it was about to assemble)."""
    from elmo_fast.corpus import manifest as manifest_mod

    src = tmp_path / "in.txt"
    src.write_text("\n".join(corpus_lines(16)) + "\n")
    hashed = []
    real = manifest_mod.file_sha256
    monkeypatch.setattr(pipeline, "file_sha256", lambda p: (hashed.append(p), real(p))[1])

    def assemble(*a):
        raise _Boom("while assembling")

    monkeypatch.setattr(pipeline, "_assemble", assemble)
    with pytest.raises(_Boom):
        embed(capsys, src, tmp_path / "out.h5", model, *JOB, "--layout", "allennlp")
    pieces = json.loads((parts_dir(tmp_path / "out.h5") / "manifest.json").read_text())["pieces"]
    assert [p["n"] for p in pieces] == [8, 8] and len(hashed) == 1
    assert len(pieces[0]["sha256"]) == 64 and pieces[1]["sha256"] is None


def test_manifest_mismatches_are_refused(capsys, corpus, model, other_model, tmp_path, monkeypatch):
    out = tmp_path / "out.h5"
    _fail_after_pieces(monkeypatch, 1)
    with pytest.raises(_Boom):
        embed(capsys, corpus, out, model, *JOB, "--layout", "flat")
    monkeypatch.undo()
    other_input = tmp_path / "other.txt"
    other_input.write_text("\n".join(corpus_lines(30, seed=1)) + "\n")
    cases = [
        ((corpus, out, other_model, *JOB, "--layout", "flat"), r"made by another model"),
        ((corpus, out, model, *JOB, "--layout", "flat", "--batch-size", 3), r"other options.*batch_size"),
        ((corpus, out, model, *JOB, "--layout", "allennlp"), r"other options.*layout"),
        ((corpus, out, model, *JOB, "--layout", "flat", "--dtype-out", "float16"), r"other options.*float16"),
        ((corpus, out, model, *JOB, "--layout", "flat", "--warm-start"), r"other options.*warm_start"),
    ]
    for args, message in cases:
        rc, err = embed(capsys, *args, "--resume")
        assert rc == 2 and len(err.strip().splitlines()) == 1, err
        assert pytest.importorskip("re").search(message, err), err
    # another input with the same output name: its own hash differs
    rc, err = embed(capsys, other_input, out, model, *JOB, "--layout", "flat", "--resume")
    assert rc == 2 and "another input" in err, err
    assert not out.exists() and (parts_dir(out) / "piece-00000.h5").exists()   # nothing was touched


def test_stateful_resume_is_refused_with_the_reason(capsys, corpus, model, tmp_path, monkeypatch):
    out = tmp_path / "out.h5"
    _fail_after_pieces(monkeypatch, 1)
    stateful_job = ("--batch-size", 2, "--piece-sentences", 4)
    with pytest.raises(_Boom):
        embed(capsys, corpus, out, model, *stateful_job)
    monkeypatch.undo()
    rc, err = embed(capsys, corpus, out, model, *stateful_job, "--resume")
    assert rc == 2 and "stateful" in err and "state" in err, err
    rc, err = embed(capsys, corpus, out, model, *stateful_job)
    assert rc == 2 and "cannot be resumed" in err, err


# ----------------------------------------------------------------------------------------- shards
@pytest.mark.parametrize("layout", ["flat", "allennlp"])
def test_shards_then_merge_equal_one_process(capsys, model, tmp_path, layout):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(corpus_lines(23)) + "\n")          # 23 sentences, windows of 4: 6 windows
    one = tmp_path / "one.h5"
    job = ("--stateless", "--batch-size", 3, "--bucket-window", 4, "--layout", layout)
    assert embed(capsys, src, one, model, *job)[0] == 0
    want = contents(one)
    want["attrs"].pop("shard", None)
    for n in (1, 2, 3):
        shards = []
        for i in range(n):
            shard = tmp_path / f"s{i}of{n}.h5"
            rc, err = embed(capsys, src, shard, model, *job, "--shard", f"{i}/{n}")
            assert rc == 0, err
            shards.append(shard)
        merged = tmp_path / f"merged{n}.h5"
        rc = cli.main(["merge", str(merged), *map(str, reversed(shards))])
        assert rc == 0, capsys.readouterr().err
        got = contents(merged)
        assert got == want, n
        if layout == "flat":  # a shard directory reads as one output too
            from elmo_fast import open_embeddings

            d = tmp_path / f"dir{n}"
            d.mkdir()
            for s in shards:
                s.rename(d / s.name)
            with open_embeddings(d) as emb, open_embeddings(one) as ref:
                assert len(emb) == 23
                for k in (0, 11, 22):
                    np.testing.assert_array_equal(emb[k], ref[k])


def test_shards_refused_in_stateful_mode_and_bad_merges(capsys, model, corpus, tmp_path):
    rc, err = embed(capsys, corpus, tmp_path / "s.h5", model, "--shard", "0/2")
    assert rc == 2 and "--stateless" in err and "state" in err
    job = ("--stateless", "--bucket-window", 4, "--layout", "flat")
    for i in (0, 2):
        assert embed(capsys, corpus, tmp_path / f"s{i}.h5", model, *job, "--shard", f"{i}/3")[0] == 0
    rc = cli.main(["merge", str(tmp_path / "m.h5"), str(tmp_path / "s0.h5"), str(tmp_path / "s2.h5")])
    err = capsys.readouterr().err
    assert rc == 2 and "missing sentences" in err, err
    assert not (tmp_path / "m.h5").exists()


# ------------------------------------------------------------------------------ kills and signals
def _start(corpus, out, model, *extra, slow=0.05):
    argv = [sys.executable, str(HERE / "_corpus_job.py"), str(slow), "embed", str(corpus), str(out), "--top",
            "--model", model, "--no-progress", *map(str, JOB), "--layout", "flat", *map(str, extra)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))


def _wait_for_pieces(proc, out, k, timeout=60):
    manifest = parts_dir(out) / "manifest.json"
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            pytest.fail(f"the job ended before it was interrupted: {proc.communicate()}")
        try:
            if len(json.loads(manifest.read_text())["pieces"]) >= k:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    proc.kill()
    pytest.fail("no piece completed in time")


@pytest.mark.parametrize("sig,layout", [(signal.SIGKILL, "flat"), (signal.SIGINT, "flat"),
                                        (signal.SIGTERM, "flat"),
                                        (signal.SIGKILL, "allennlp")],   # allennlp: its file is h5pack's
                         ids=["KILL", "INT", "TERM", "KILL-allennlp"])
def test_signal_mid_job_then_resume(capsys, corpus, model, tmp_path, reference, sig, layout):
    out = tmp_path / "out.h5"
    out.write_bytes(b"old")
    os.chmod(out, 0o640)
    proc = _start(corpus, out, model, "--layout", layout)
    _wait_for_pieces(proc, out, 1)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == (130 if sig == signal.SIGINT else 143), err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("elmo-fast: error: "), err
        assert ("interrupted" if sig == signal.SIGINT else "terminated by SIGTERM") in lines[0]
        assert "Traceback" not in err
        # a clean stop: only completed pieces are left (no temporary of the piece in progress)
        left = sorted(os.listdir(parts_dir(out)))
        assert left == ["lock", "manifest.json"] + [f"piece-{k:05d}.h5" for k in range(len(left) - 2)], left
    assert out.read_bytes() == b"old"                                       # the old output is untouched
    rc, err = embed(capsys, corpus, out, model, *JOB, "--layout", layout, "--resume")
    assert rc == 0, err
    assert "resuming" in err
    assert contents(out) == reference[layout]
    assert oct(os.stat(out).st_mode & 0o777) == oct(0o640)                  # replaced: same permissions
    assert not parts_dir(out).exists()
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_a_live_run_is_never_touched(capsys, corpus, model, tmp_path):
    out = tmp_path / "out.h5"
    proc = _start(corpus, out, model, slow=0.2)
    try:
        _wait_for_pieces(proc, out, 1)
        rc, err = embed(capsys, corpus, out, model, *JOB, "--layout", "flat", "--resume")
        assert rc == 2 and "another elmo-fast run (pid" in err and "right now" in err, err
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.communicate()


def test_stale_temporaries_of_dead_runs_are_removed(capsys, corpus, model, tmp_path):
    out = tmp_path / "out.h5"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".out.h5.{dead_pid}.0123abcd.tmp"
    live = tmp_path / f".out.h5.{os.getppid()}.0123abcd.tmp"          # a live process's: kept
    stale.write_bytes(b"x")
    live.write_bytes(b"y")
    rc, err = embed(capsys, corpus, out, model, "--stateless")
    assert rc == 0, err
    assert not stale.exists() and live.exists()
    assert f"removed {stale}" in err and f"(pid {dead_pid})" in err


def test_each_flat_piece_checks_the_room_for_its_tokens(capsys, corpus, model, tmp_path, reference,
                                                         monkeypatch):
    """The first pass's token counts let each piece of the flat layout check, as it opens, that the
    disk has room for its rows (h5flat.ChunkedFile.check_room): exactly its tokens for whole groups
    of windows; the output is the same."""
    from elmo_fast.corpus import h5flat, reader

    monkeypatch.setattr(reader, "_GROUP", 8)   # groups of 8 sentences: the pieces' size
    asked = []
    real = h5flat.ChunkedFile.check_room

    def check_room(self, rows):
        asked.append(list(rows))
        real(self, rows)

    monkeypatch.setattr(h5flat.ChunkedFile, "check_room", check_room)
    out = tmp_path / "out.h5"
    rc, err = embed(capsys, corpus, out, model, *JOB, "--layout", "flat")
    assert rc == 0, err
    assert contents(out) == reference["flat"]
    with h5py.File(out, "r") as f:
        ends = f["offsets"][()][[0, 8, 16, 24, 30]]
    assert asked == [[int(b - a)] for a, b in zip(ends, ends[1:])]

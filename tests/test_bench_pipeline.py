"""bench/bench_pipeline.py e2e, at tiny sizes: both jobs run, their times are recorded and the
speed-up is the ratio of the medians (plumbing only; the figures are benchmarks, not tests)."""
import importlib.util
import json
import pathlib
import statistics

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _bench_pipeline():
    spec = importlib.util.spec_from_file_location("bench_pipeline", ROOT / "bench" / "bench_pipeline.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_e2e_quick_records_both_jobs(tmp_path):
    out = tmp_path / "e2e.json"
    assert _bench_pipeline().main(["e2e", "--quick", "--dir", str(tmp_path), "--json", str(out)]) in (0, None)
    rows = json.loads(out.read_text())["rows"]
    ours = next(r for r in rows if r["impl"] == "elmo_fast")
    assert ours["tokens"] > 0 and len(ours["times_s"]) == 1 and ours["seconds"] == ours["times_s"][0]
    theirs = next(r for r in rows if r["impl"] == "allennlp")
    if "skipped" in theirs:
        pytest.skip(theirs["skipped"])
    assert theirs["speedup"] == pytest.approx(statistics.median(theirs["times_s"]) / ours["seconds"])


@pytest.mark.slow
def test_pieces_quick_records_one_and_four(tmp_path):
    out = tmp_path / "pieces.json"
    argv = ["pieces", "--quick", "--dir", str(tmp_path), "--json", str(out)]
    assert _bench_pipeline().main(argv) in (0, None)
    rows = json.loads(out.read_text())["rows"]
    want = [(layout, k) for layout in ("allennlp", "flat") for k in (1, 4)]
    assert [(r["layout"], r["pieces"]) for r in rows] == want
    for r in rows:
        assert r["tokens"] > 0 and r["seconds"] == statistics.median(r["seconds_each"]) > 0


@pytest.mark.slow
def test_stub_job_and_raw_write_each_free_the_others_file_just_before_timing(tmp_path):
    """The matched protocol (bench_pipeline's doc): the raw write frees the job's output and keeps its
    own file; the next job frees that file and keeps its output; --unmatched: each removes its own."""
    bp = _bench_pipeline()
    src, out = tmp_path / "c.txt", tmp_path / "o.h5"
    tokens = bp.write_corpus(str(src), 50)
    raw = tmp_path / bp.RAW_NAME
    out.write_bytes(b"the last job's output")
    assert bp.raw_write(str(tmp_path), 3 << 20, free=[str(out)], keep=True) > 0
    assert not out.exists() and raw.stat().st_size == 3 << 20
    r = bp._measure("stub", str(src), str(out), ["--layout", "flat", "--format", "top",
                                                 *bp.matched_args(str(tmp_path), str(out), False)])
    assert not raw.exists() and out.stat().st_size == r["file_bytes"] > tokens * 1024 * 2
    assert bp.matched_args(str(tmp_path), str(out), True) == []
    bp._measure("stub", str(src), str(out), ["--layout", "flat", "--format", "top"])
    bp.raw_write(str(tmp_path), 1 << 20)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt"]


@pytest.mark.slow
def test_ab_pipeline_runs_a_case_matched_and_leaves_its_folder_clean(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("ab_pipeline", ROOT / "bench" / "ab_pipeline.py")
    ab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ab)
    argv = ["--tree", f"new={ROOT}", "--sentences", "200", "--reps", "1", "--warm-gb", "0",
            "--dir", str(tmp_path), "flat:top:float16"]
    assert ab.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("flat:top:float16 new ") and "x raw" in lines[0]
    times = json.loads(lines[1].split("seconds: ", 1)[1])
    assert len(times["new"]) == len(times["raw"]) == 1 and min(times["new"] + times["raw"]) > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus200.txt"]

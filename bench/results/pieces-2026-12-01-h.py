"""The stubbed allennlp --top float32 job on 20 000 sentences, in one piece and in 4 (pieces of
5 000: written, hashed, then merged into the output). Run with PYTHONPATH=<tree>/src:
    python bench/results/pieces-2026-12-01-h.py CORPUS OUTPUT PIECE_SENTENCES
(CORPUS from bench_pipeline.write_corpus(path, 20000)); prints piece_sentences and seconds."""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from bench_pipeline import StubModel  # noqa: E402

from elmo_fast.corpus import embed_corpus  # noqa: E402

src, out, ps = sys.argv[1], sys.argv[2], int(sys.argv[3])
t = time.perf_counter()
embed_corpus(StubModel(), src, out, "top", batch_size=64, layout="allennlp", dtype_out="float32",
             progress=False, batching="bucket", piece_sentences=ps)
print(ps, round(time.perf_counter() - t, 2))
os.unlink(out)

"""`elmo-fast` with a slowed-down model stage, run as a subprocess by the signal / kill tests:
python tests/_corpus_job.py SECONDS_PER_BATCH embed ..."""
import sys
import time

from elmo_fast import cli
from elmo_fast.corpus.pipeline import EmbedderModel

_real = EmbedderModel.__call__


def _slow(self, ids):
    time.sleep(float(sys.argv[1]))
    return _real(self, ids)


if __name__ == "__main__":
    import signal

    import torch

    # Ctrl-C as in a terminal, even when the test runner was started in the background (a
    # non-interactive shell starts background jobs with SIGINT ignored, and children inherit that)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    torch.set_num_threads(1)
    EmbedderModel.__call__ = _slow
    sys.exit(cli.main(sys.argv[2:]))

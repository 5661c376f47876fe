"""The reused CPU gate buffers (elmo_fast.reference._workspace): each concurrent borrower gets its own
buffer, what is kept between borrows is bounded, and CUDA or over-budget requests are never kept."""
import threading

import pytest
import torch

from elmo_fast.reference import _workspace


@pytest.fixture(autouse=True)
def empty_pool():
    _workspace.release()
    yield
    _workspace.release()


def test_borrowers_at_once_get_distinct_buffers_and_reuse_them_after():
    cpu = torch.device("cpu")
    with _workspace.borrow(1000, torch.float32, cpu) as a, _workspace.borrow(1000, torch.float32, cpu) as b:
        assert a.numel() == b.numel() == 1000 and a.dtype == b.dtype == torch.float32
        a.fill_(1.0)
        b.fill_(2.0)
        assert bool((a == 1.0).all()), "two borrowers share memory"
        ptrs = {a.data_ptr(), b.data_ptr()}
    assert _workspace.kept_bytes() == 2 * 4000
    with _workspace.borrow(500, torch.float32, cpu) as c:   # a smaller request reuses a kept buffer
        assert c.data_ptr() in ptrs and c.numel() == 500
    assert _workspace.kept_bytes() == 2 * 4000


def test_at_most_keep_buffers_are_kept_and_the_large_ones_stay():
    cpu = torch.device("cpu")
    sizes = [100, 300, 200]
    borrowed = [_workspace.borrow(n, torch.float64, cpu) for n in sizes]
    for cm in borrowed:
        cm.__enter__()
    for cm in borrowed:
        cm.__exit__(None, None, None)
    assert _workspace.KEEP == 2
    assert _workspace.kept_bytes() == (300 + 200) * 8


def test_threads_never_share_a_buffer():
    cpu = torch.device("cpu")
    seen, errors = [], []
    barrier = threading.Barrier(4)

    def work(value):
        with _workspace.borrow(4096, torch.float32, cpu) as buf:
            buf.fill_(value)
            barrier.wait()
            if not bool((buf == value).all()):
                errors.append(value)
            seen.append(buf.data_ptr())

    threads = [threading.Thread(target=work, args=(float(i),)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(seen)) == 4
    assert _workspace.kept_bytes() <= _workspace.KEEP * 4096 * 4


def test_requests_over_a_quarter_of_the_budget_are_not_kept(monkeypatch):
    monkeypatch.setenv("ELMO_FAST_WORKSPACE_MB", "1")
    with _workspace.borrow((1 << 20) // 4 // 4 + 1, torch.float32, torch.device("cpu")) as buf:
        buf.fill_(0)
    assert _workspace.kept_bytes() == 0

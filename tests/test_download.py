"""Model registry and download cache, against a throw-away HTTP server on 127.0.0.1."""
from __future__ import annotations

import http.server
import os
import threading
import time

import pytest

from elmo_fast import download as dl
from elmo_fast.download import MODELS, DownloadError, canonical_name, download_file, resolve_model

OPTIONS = b'{"lstm": {"dim": 8}, "char_cnn": {}}'
WEIGHTS = bytes(range(256)) * 40 + b"tail"   # 10 KiB, several reads at small chunk sizes


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "test"

    def log_message(self, *args):   # keep pytest output quiet
        pass

    def do_GET(self):
        srv = self.server
        with srv.lock:
            srv.hits[self.path] = srv.hits.get(self.path, 0) + 1
        mode = srv.modes.get(self.path, "ok")
        body = srv.files.get(self.path)
        if body is None or mode == "404":
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if mode == "ok":
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif mode == "slow":   # for the concurrency test: both clients are mid-transfer at once
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            half = len(body) // 2
            self.wfile.write(body[:half])
            self.wfile.flush()
            time.sleep(0.2)
            self.wfile.write(body[half:])
        elif mode == "truncated":   # promises every byte, sends half, hangs up
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
        elif mode == "chunked_cut":   # chunked transfer without the terminating chunk
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.end_headers()
            part = body[: len(body) // 2]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.flush()
            self.close_connection = True
        elif mode == "no_length":   # HTTP/1.0-style body delimited by the connection closing
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.handle_error = lambda request, client_address: None   # clients hanging up early is expected
    srv.files, srv.modes, srv.hits, srv.lock = {}, {}, {}, threading.Lock()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


@pytest.fixture
def registry(server, monkeypatch, tmp_path):
    """The registry pointed at the local server, which serves the 'small' model's two files."""
    monkeypatch.setenv("ELMO_FAST_MODEL_BASE_URL", server.url + "/mirror/")
    monkeypatch.setenv("ELMO_FAST_CACHE", str(tmp_path / "cache"))
    spec = MODELS["small"]
    server.files[f"/mirror/{spec.stem}/{spec.options_filename}"] = OPTIONS
    server.files[f"/mirror/{spec.stem}/{spec.weights_filename}"] = WEIGHTS
    return server


def _all_files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


# --------------------------------------------------------------------------- the registry
def test_registry_names_and_urls(monkeypatch):
    monkeypatch.delenv("ELMO_FAST_MODEL_BASE_URL", raising=False)
    assert list(MODELS) == ["tiny", "small", "medium", "original", "original-5.5B", "pubmed"]
    stems = {n: s.stem for n, s in MODELS.items() if not s.packaged and s.folder is None}
    assert stems == {"small": "2x1024_128_2048cnn_1xhighway", "medium": "2x2048_256_2048cnn_1xhighway",
                     "original": "2x4096_512_2048cnn_2xhighway",
                     "original-5.5B": "2x4096_512_2048cnn_2xhighway_5.5B"}
    # the contributed PubMed model, as allennlp's ELMo page lists it
    p = MODELS["pubmed"]
    base = "https://allennlp.s3.amazonaws.com/models/elmo/contributed/pubmed/"
    assert p.options_url == base + "elmo_2x4096_512_2048cnn_2xhighway_options.json"
    assert p.weights_url == base + "elmo_2x4096_512_2048cnn_2xhighway_weights_PubMed_only.hdf5"
    assert MODELS["tiny"].options_url is None and MODELS["tiny"].packaged
    s = MODELS["original-5.5B"]
    base = "https://allennlp.s3.amazonaws.com/models/elmo/2x4096_512_2048cnn_2xhighway_5.5B/"
    assert s.options_url == base + "elmo_2x4096_512_2048cnn_2xhighway_5.5B_options.json"
    assert s.weights_url == base + "elmo_2x4096_512_2048cnn_2xhighway_5.5B_weights.hdf5"


def test_base_url_override(monkeypatch):
    monkeypatch.setenv("ELMO_FAST_MODEL_BASE_URL", "http://mirror.example/elmo/")
    assert MODELS["small"].options_url == ("http://mirror.example/elmo/2x1024_128_2048cnn_1xhighway/"
                                           "elmo_2x1024_128_2048cnn_1xhighway_options.json")


@pytest.mark.parametrize("alias, name", [
    ("small", "small"), ("SMALL", "small"), ("medium", "medium"), ("original", "original"),
    ("original-5.5B", "original-5.5B"), ("original_5.5B", "original-5.5B"), ("5.5B", "original-5.5B"),
    ("5.5b", "original-5.5B"), ("2x1024_128_2048cnn_1xhighway", "small"),
    ("2x4096_512_2048cnn_2xhighway_5.5B", "original-5.5B"), ("nonsense", None),
    # the PubMed model shares 'original''s stem; the stem still means 'original'
    ("2x4096_512_2048cnn_2xhighway", "original"), ("pubmed", "pubmed"), ("PubMed", "pubmed"),
    ("tiny", "tiny"), ("TINY", "tiny"),
])
def test_aliases(alias, name):
    assert canonical_name(alias) == name


def test_unknown_name_lists_known_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as e:
        resolve_model("gigantic", cache_dir=str(tmp_path))
    msg = str(e.value)
    for name in MODELS:
        assert name in msg
    assert "director" in msg and "path" in msg
    assert not os.listdir(tmp_path)   # nothing downloaded or created


def test_missing_path_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        resolve_model(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError):
        resolve_model(options_file=str(tmp_path / "o.json"), weight_file=str(tmp_path / "w.hdf5"))


def test_nothing_given():
    with pytest.raises(ValueError, match="no model given"):
        resolve_model()
    with pytest.raises(ValueError, match="both"):
        resolve_model(options_file=__file__)


# --------------------------------------------------------------------------- local files
def test_local_directory(tmp_path):
    (tmp_path / "options.json").write_bytes(OPTIONS)
    (tmp_path / "weights.hdf5").write_bytes(WEIGHTS)
    assert resolve_model(str(tmp_path)) == (str(tmp_path / "options.json"), str(tmp_path / "weights.hdf5"))


def test_local_directory_allennlp_names(tmp_path):
    (tmp_path / "elmo_x_options.json").write_bytes(OPTIONS)
    (tmp_path / "elmo_x_weights.hdf5").write_bytes(WEIGHTS)
    (tmp_path / "other.hdf5").write_bytes(b"")
    assert resolve_model(tmp_path) == (str(tmp_path / "elmo_x_options.json"),
                                       str(tmp_path / "elmo_x_weights.hdf5"))
    # a single file finds its partner beside it
    assert resolve_model(str(tmp_path / "elmo_x_weights.hdf5")) == resolve_model(str(tmp_path))
    assert resolve_model(str(tmp_path / "elmo_x_options.json")) == resolve_model(str(tmp_path))


def test_local_directory_incomplete_or_ambiguous(tmp_path):
    (tmp_path / "options.json").write_bytes(OPTIONS)
    with pytest.raises(FileNotFoundError, match="weights"):
        resolve_model(str(tmp_path))
    (tmp_path / "a_weights.hdf5").write_bytes(WEIGHTS)
    (tmp_path / "b_weights.hdf5").write_bytes(WEIGHTS)
    with pytest.raises(ValueError, match="several"):
        resolve_model(str(tmp_path))
    # an explicit file settles it
    assert resolve_model(str(tmp_path), weight_file=str(tmp_path / "b_weights.hdf5"))[1] == \
        str(tmp_path / "b_weights.hdf5")


def test_fixture_directory(fixtures_dir):
    opts, wts = resolve_model(str(fixtures_dir))
    assert os.path.basename(opts) == "options.json" and os.path.basename(wts) == "lm_weights.hdf5"


def test_explicit_local_files(tmp_path):
    o, w = tmp_path / "o.json", tmp_path / "w.bin"
    o.write_bytes(OPTIONS)
    w.write_bytes(WEIGHTS)
    assert resolve_model(options_file=str(o), weight_file=str(w)) == (str(o), str(w))
    # explicit files win over a name, and need no network
    assert resolve_model("original", options_file=str(o), weight_file=str(w)) == (str(o), str(w))


# --------------------------------------------------------------------------- downloads
def test_registry_download_then_cached(registry, tmp_path):
    opts, wts = resolve_model("small", progress=False)
    folder = tmp_path / "cache" / "models" / "small"
    spec = MODELS["small"]
    assert (opts, wts) == (str(folder / spec.options_filename), str(folder / spec.weights_filename))
    assert open(opts, "rb").read() == OPTIONS and open(wts, "rb").read() == WEIGHTS
    assert sum(registry.hits.values()) == 2
    # second call (and an alias): served from the cache, no request
    assert resolve_model("2x1024_128_2048cnn_1xhighway", progress=False) == (opts, wts)
    assert sum(registry.hits.values()) == 2
    assert _all_files(tmp_path / "cache" / "models") == [f"small/{spec.options_filename}",
                                              f"small/{spec.weights_filename}"]
    # the cache folder is itself a valid local model directory
    assert resolve_model(str(folder)) == (opts, wts)


def test_download_with_progress_bar(registry, tmp_path, capsys):
    cache = tmp_path / "explicit_cache"
    opts, wts = resolve_model("small", cache_dir=str(cache), progress=True)
    assert opts.startswith(str(cache)) and open(wts, "rb").read() == WEIGHTS


def test_download_chunked_small_reads(registry, tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "_CHUNK", 1000)
    _, wts = resolve_model("small", progress=False)
    assert open(wts, "rb").read() == WEIGHTS


def test_download_without_content_length(server, tmp_path):
    server.files["/f.bin"] = WEIGHTS
    server.modes["/f.bin"] = "no_length"
    dest = tmp_path / "f.bin"
    download_file(server.url + "/f.bin", str(dest), progress=False)
    assert dest.read_bytes() == WEIGHTS


@pytest.mark.parametrize("mode", ["truncated", "chunked_cut"])
def test_cut_transfer_leaves_nothing(registry, tmp_path, mode):
    spec = MODELS["small"]
    registry.modes[f"/mirror/{spec.stem}/{spec.weights_filename}"] = mode
    with pytest.raises(DownloadError) as e:
        resolve_model("small", progress=False)
    assert spec.weights_url in str(e.value)
    # the options file completed; the weights left neither a final nor a temporary file
    assert _all_files(tmp_path / "cache" / "models") == [f"small/{spec.options_filename}"]
    # a retry once the server is healthy again completes the download
    registry.modes.clear()
    _, wts = resolve_model("small", progress=False)
    assert open(wts, "rb").read() == WEIGHTS


def test_404_names_url(registry, tmp_path):
    spec = MODELS["small"]
    registry.modes[f"/mirror/{spec.stem}/{spec.options_filename}"] = "404"
    with pytest.raises(DownloadError) as e:
        resolve_model("small", progress=False)
    msg = str(e.value)
    assert spec.options_url in msg and "404" in msg and "--options" in msg
    assert _all_files(tmp_path / "cache" / "models") == []


def test_connection_refused_names_url(tmp_path, monkeypatch):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()   # nothing listens on this port now
    monkeypatch.setenv("ELMO_FAST_MODEL_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(dl, "TIMEOUT", (2.0, 2.0))
    with pytest.raises(DownloadError) as e:
        resolve_model("medium", cache_dir=str(tmp_path), progress=False)
    msg = str(e.value)
    assert MODELS["medium"].options_url in msg and "manually" in msg and "--weights" in msg
    assert _all_files(tmp_path) == []


def test_interrupt_removes_temp_file(registry, tmp_path, monkeypatch):
    def interrupted(fd):
        raise KeyboardInterrupt
    monkeypatch.setattr(dl.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        resolve_model("small", progress=False)
    assert _all_files(tmp_path / "cache" / "models") == []


def test_explicit_urls(server, tmp_path):
    server.files["/x/my_options.json"] = OPTIONS
    server.files["/x/my_weights.hdf5"] = WEIGHTS
    opts, wts = resolve_model(options_file=server.url + "/x/my_options.json",
                              weight_file=server.url + "/x/my_weights.hdf5",
                              cache_dir=str(tmp_path), progress=False)
    assert os.path.basename(opts) == "my_options.json" and open(wts, "rb").read() == WEIGHTS
    assert opts.startswith(str(tmp_path)) and wts.startswith(str(tmp_path))
    again = resolve_model(options_file=server.url + "/x/my_options.json",
                          weight_file=server.url + "/x/my_weights.hdf5",
                          cache_dir=str(tmp_path), progress=False)
    assert again == (opts, wts) and sum(server.hits.values()) == 2


def test_concurrent_downloads(server, tmp_path):
    server.files["/big.bin"] = WEIGHTS
    server.modes["/big.bin"] = "slow"
    dest = str(tmp_path / "big.bin")
    errors = []

    def fetch():
        try:
            download_file(server.url + "/big.bin", dest, progress=False)
        except Exception as e:   # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=fetch) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors
    assert open(dest, "rb").read() == WEIGHTS
    assert _all_files(tmp_path) == ["big.bin"]


def test_short_body_caught_by_own_length_check(registry, tmp_path, monkeypatch):
    """Even if the HTTP stack let a short body through silently, the byte count catches it."""
    import requests

    real = requests.Response.iter_content

    def first_chunk_only(self, chunk_size=1, decode_unicode=False):
        for chunk in real(self, chunk_size=chunk_size, decode_unicode=decode_unicode):
            yield chunk
            return

    monkeypatch.setattr(dl, "_CHUNK", 1000)
    monkeypatch.setattr(requests.Response, "iter_content", first_chunk_only)
    with pytest.raises(DownloadError, match="cut short"):
        resolve_model("small", progress=False)
    spec = MODELS["small"]   # the options file fits in one chunk and completes
    assert _all_files(tmp_path / "cache" / "models") == [f"small/{spec.options_filename}"]

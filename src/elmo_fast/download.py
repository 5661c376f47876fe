"""The registry of standard ELMo models and a safe download cache.

``resolve_model`` turns what a user names into a pair of local files ``(options.json, weights.hdf5)``:

* a registry name (``small``, ``medium``, ``original``, ``original-5.5B``, or an alias): the files
  are downloaded on first use into ``<cache root>/<name>/`` and reused afterwards;
* a local directory holding the two files (``options.json`` / ``*_options.json`` and
  ``weights.hdf5`` / ``lm_weights.hdf5`` / ``*_weights.hdf5``);
* explicit ``options_file`` / ``weight_file``, each a local path or an http(s) URL (URLs are
  downloaded into the cache too).

A local path works wherever a name does.

Environment:
  ELMO_FAST_CACHE            root of elmo_fast's caches (default ``$XDG_CACHE_HOME/elmo_fast``, i.e.
                             ``~/.cache/elmo_fast``); models go in ``models/<name>/`` below it
  ELMO_FAST_MODEL_BASE_URL   replaces ``https://allennlp.s3.amazonaws.com/models/elmo`` (mirrors)

Downloads are streamed into a temporary file in the destination folder and renamed into place only
once complete (and, when the server sent a Content-Length, only if every byte arrived).  On any
error or interrupt the temporary file is removed, so the cache never holds a half-written file, and
concurrent downloads of the same file are safe (each writes its own temporary file; the rename is
atomic).
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import Dict, Optional, Tuple
from urllib.parse import unquote, urlparse

from ._config import cache_root

__all__ = [
    "DEFAULT_BASE_URL",
    "MODELS",
    "ALIASES",
    "ModelSpec",
    "DownloadError",
    "canonical_name",
    "default_cache_dir",
    "download_file",
    "resolve_model",
]

DEFAULT_BASE_URL = "https://allennlp.s3.amazonaws.com/models/elmo"
#: (connect, read) timeouts in seconds for every request
TIMEOUT = (30.0, 120.0)
_CHUNK = 1 << 20


def base_url() -> str:
    """The URL the registry files live under (``ELMO_FAST_MODEL_BASE_URL`` or allennlp's S3)."""
    return (os.environ.get("ELMO_FAST_MODEL_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")


@dataclass(frozen=True)
class ModelSpec:
    """One of the standard pre-trained ELMo models."""

    name: str          #: registry name, e.g. "original"
    stem: str          #: allennlp's name, e.g. "2x4096_512_2048cnn_2xhighway"
    description: str

    @property
    def options_filename(self) -> str:
        return f"elmo_{self.stem}_options.json"

    @property
    def weights_filename(self) -> str:
        return f"elmo_{self.stem}_weights.hdf5"

    @property
    def options_url(self) -> str:
        return f"{base_url()}/{self.stem}/{self.options_filename}"

    @property
    def weights_url(self) -> str:
        return f"{base_url()}/{self.stem}/{self.weights_filename}"


MODELS: Dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("small", "2x1024_128_2048cnn_1xhighway",
                  "LSTM 1024 cells / 128 projection, 1 highway layer, 13.6M parameters"),
        ModelSpec("medium", "2x2048_256_2048cnn_1xhighway",
                  "LSTM 2048 cells / 256 projection, 1 highway layer, 28.0M parameters"),
        ModelSpec("original", "2x4096_512_2048cnn_2xhighway",
                  "LSTM 4096 cells / 512 projection, 2 highway layers, 93.6M parameters"),
        ModelSpec("original-5.5B", "2x4096_512_2048cnn_2xhighway_5.5B",
                  "as 'original', trained on 5.5B tokens, 93.6M parameters"),
    )
}

#: other spellings accepted for the registry names (matched case-insensitively, as are the names
#: themselves and allennlp's stems such as "2x1024_128_2048cnn_1xhighway")
ALIASES: Dict[str, str] = {
    "original_5.5b": "original-5.5B",
    "original5.5b": "original-5.5B",
    "5.5b": "original-5.5B",
    "elmo-5.5b": "original-5.5B",
    "large-5.5b": "original-5.5B",
    "large": "original",
    "elmo": "original",
}


class DownloadError(OSError):
    """A model file could not be downloaded (network failure, HTTP error, truncated transfer)."""


def canonical_name(name: str) -> Optional[str]:
    """The registry name ``name`` stands for, or None."""
    key = name.strip().lower()
    for spec in MODELS.values():
        if key in (spec.name.lower(), spec.stem.lower(), f"elmo_{spec.stem}".lower()):
            return spec.name
    return ALIASES.get(key)


def default_cache_dir() -> str:
    """Root of the model cache: ``$ELMO_FAST_CACHE/models`` or ``~/.cache/elmo_fast/models``."""
    return cache_root("models")


def _is_url(s: str) -> bool:
    return isinstance(s, str) and re.match(r"(?i)^https?://", s) is not None


def _manual_hint(url: str) -> str:
    return (f"Download it manually (e.g. `curl -fLO {url}`) and pass the local files with "
            "--options/--weights (options_file=/weight_file=), or a directory holding them; "
            "ELMO_FAST_MODEL_BASE_URL points the registry at a mirror.")


def download_file(url: str, dest: str, progress: bool = True, timeout=TIMEOUT) -> str:
    """Download ``url`` to ``dest`` unless ``dest`` already exists; returns ``dest``.

    The bytes go to a temporary file beside ``dest`` which is renamed to ``dest`` only when the
    transfer is complete; on failure (or KeyboardInterrupt) it is deleted and DownloadError is
    raised (the interrupt itself is re-raised as is).
    """
    if os.path.isfile(dest):
        return dest
    import requests
    from tqdm.auto import tqdm

    from ._atomic import atomic_path

    folder = os.path.dirname(os.path.abspath(dest))
    os.makedirs(folder, exist_ok=True)
    with atomic_path(dest, suffix=".part") as tmp:  # dest is either absent or complete
        with open(tmp, "wb") as f:
            try:
                # identity: Content-Length then counts the very bytes we write
                with requests.get(url, stream=True, timeout=timeout,
                                  headers={"Accept-Encoding": "identity"}) as resp:
                    if not 200 <= resp.status_code < 300 or resp.status_code == 206:
                        raise DownloadError(f"could not download {url}: HTTP {resp.status_code} "
                                            f"{resp.reason or ''}".rstrip() + ". " + _manual_hint(url))
                    length = resp.headers.get("Content-Length")
                    encoded = resp.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
                    total = int(length) if length and length.isdigit() and not encoded else None
                    received = 0
                    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                              desc=os.path.basename(dest), disable=not progress, leave=False) as bar:
                        for chunk in resp.iter_content(chunk_size=_CHUNK):
                            if chunk:
                                f.write(chunk)
                                received += len(chunk)
                                bar.update(len(chunk))
            except requests.RequestException as e:
                raise DownloadError(f"could not download {url}: {type(e).__name__}: {e}. "
                                    + _manual_hint(url)) from e
            if total is not None and received != total:
                raise DownloadError(f"could not download {url}: the transfer was cut short "
                                    f"({received} of {total} bytes). " + _manual_hint(url))
            f.flush()
            os.fsync(f.fileno())
    return dest


def _url_dest(url: str, cache_dir: Optional[str]) -> str:
    """Cache path of an arbitrary URL: ``<root>/url/<sha256(url)[:16]>/<file name>``."""
    name = os.path.basename(unquote(urlparse(url).path)) or "download"
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    return os.path.join(cache_dir or default_cache_dir(), "url", digest, name)


def _local_or_url(path: str, cache_dir: Optional[str], progress: bool, what: str) -> str:
    if _is_url(path):
        return download_file(path, _url_dest(path, cache_dir), progress=progress)
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file not found: {path}")
    return path


def _pick(folder: str, names, pattern: str, what: str) -> Optional[str]:
    for n in names:
        p = os.path.join(folder, n)
        if os.path.isfile(p):
            return p
    found = sorted(n for n in os.listdir(folder)
                   if n.endswith(pattern) and os.path.isfile(os.path.join(folder, n)))
    if len(found) == 1:
        return os.path.join(folder, found[0])
    if len(found) > 1:
        raise ValueError(f"{folder} holds several {what} files ({', '.join(found)}); pass the one to "
                         f"use explicitly")
    return None


def _from_directory(folder: str, options: Optional[str], weights: Optional[str]):
    """The model files in ``folder``; an already-chosen file (not None) is kept as is."""
    if options is None:
        options = _pick(folder, ("options.json",), "_options.json", "options")
    if weights is None:
        weights = _pick(folder, ("weights.hdf5", "lm_weights.hdf5"), "_weights.hdf5", "weights")
    return options, weights


def _sibling_options(weights: str) -> Optional[str]:
    folder, base = os.path.split(weights)
    if base.endswith("_weights.hdf5"):
        p = os.path.join(folder, base[: -len("_weights.hdf5")] + "_options.json")
        if os.path.isfile(p):
            return p
    return _pick(folder or ".", ("options.json",), "_options.json", "options")


def _sibling_weights(options: str) -> Optional[str]:
    folder, base = os.path.split(options)
    if base.endswith("_options.json"):
        p = os.path.join(folder, base[: -len("_options.json")] + "_weights.hdf5")
        if os.path.isfile(p):
            return p
    return _pick(folder or ".", ("weights.hdf5", "lm_weights.hdf5"), "_weights.hdf5", "weights")


def _unknown(name: str) -> ValueError:
    known = ", ".join(f"{n} ({s.stem})" for n, s in MODELS.items())
    aliases = ", ".join(sorted(ALIASES))
    return ValueError(f"unknown ELMo model {name!r}: known names are {known} (aliases: {aliases}). "
                      "A local directory holding options.json and weights.hdf5, or explicit "
                      "options/weights paths or URLs, are accepted too.")


def resolve_model(name_or_path: Optional[str] = None, options_file: Optional[str] = None,
                  weight_file: Optional[str] = None, cache_dir: Optional[str] = None,
                  progress: bool = True) -> Tuple[str, str]:
    """Local ``(options_path, weights_path)`` for a model.

    ``name_or_path``: a registry name or alias (files downloaded into
    ``<cache_dir or default_cache_dir()>/<name>/`` on first use), a local directory holding the two
    files, or a local weights / options file whose partner sits beside it.  ``options_file`` /
    ``weight_file`` (local paths or http(s) URLs) override the corresponding file; with both given,
    ``name_or_path`` may be None.
    """
    explicit_opts = _local_or_url(options_file, cache_dir, progress, "options") if options_file else None
    explicit_wts = _local_or_url(weight_file, cache_dir, progress, "weights") if weight_file else None
    if name_or_path is None or (isinstance(name_or_path, str) and not name_or_path.strip()):
        if explicit_opts and explicit_wts:
            return explicit_opts, explicit_wts
        if explicit_opts or explicit_wts:
            raise ValueError("pass both options_file and weight_file, or a model name or directory "
                             "to take the missing one from")
        raise ValueError("no model given: pass a model name (" + ", ".join(MODELS) + "), a directory "
                         "holding options.json and weights.hdf5, or options_file and weight_file")
    if explicit_opts and explicit_wts:
        return explicit_opts, explicit_wts

    name_or_path = os.fspath(name_or_path)
    if _is_url(name_or_path):
        raise ValueError(f"{name_or_path!r} is a URL: pass URLs as options_file= and weight_file= "
                         "(--options/--weights)")
    path = os.path.expanduser(name_or_path)
    if os.path.isdir(path):
        options, weights = _from_directory(path, explicit_opts, explicit_wts)
        missing = [w for w, p in (("options (options.json or *_options.json)", options),
                                  ("weights (weights.hdf5, lm_weights.hdf5 or *_weights.hdf5)", weights))
                   if p is None]
        if missing:
            raise FileNotFoundError(f"directory {path} has no {' and no '.join(missing)} file")
        return options, weights
    if os.path.isfile(path):
        if path.endswith(".json"):
            options, weights = path, explicit_wts or _sibling_weights(path)
        else:
            options, weights = explicit_opts or _sibling_options(path), path
        if options is None or weights is None:
            raise FileNotFoundError(f"{path}: the matching {'weights' if weights is None else 'options'} "
                                    "file was not found beside it; pass it explicitly")
        return options, weights

    canon = canonical_name(name_or_path)
    if canon is None:
        if os.sep in name_or_path or name_or_path.startswith((".", "~")) or \
                name_or_path.endswith((".json", ".hdf5")):
            raise FileNotFoundError(f"no such file or directory: {path}")
        raise _unknown(name_or_path)
    spec = MODELS[canon]
    folder = os.path.join(cache_dir or default_cache_dir(), canon)
    options = explicit_opts or download_file(spec.options_url, os.path.join(folder, spec.options_filename),
                                             progress=progress)
    weights = explicit_wts or download_file(spec.weights_url, os.path.join(folder, spec.weights_filename),
                                            progress=progress)
    return options, weights

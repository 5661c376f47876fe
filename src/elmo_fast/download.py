"""The registry of standard ELMo models and a safe download cache.

``resolve_model`` turns what a user names into a pair of local files ``(options.json, weights.hdf5)``:

* a registry name (``tiny``, ``small``, ``medium``, ``original``, ``original-5.5B``, ``pubmed``, or an
  alias): the files are downloaded on first use into ``<cache root>/<name>/`` and reused afterwards
  (``tiny``, a test-size model, ships inside the package and is never downloaded);
* a local directory holding the two files (``options.json`` / ``*_options.json`` and
  ``weights.hdf5`` / ``model.hdf5`` (the NLPL repository's layout) / ``lm_weights.hdf5`` /
  ``*_weights.hdf5``), or one of the two files (its partner is looked up beside it);
* a ``.zip`` of such a directory (NLPL ships its ELMo models that way): unpacked once into
  ``<cache root>/unzipped/``;
* an http(s) URL of any of these: a zip, a weights or options file (the partner is fetched from
  beside it), downloaded into ``<cache root>/url/``;
* explicit ``options_file`` / ``weight_file``, each a local path or an http(s) URL.

A path or URL works wherever a name does.

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
import posixpath
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple
from urllib.parse import unquote, urlparse

from ._config import cache_root, model_base_url

__all__ = [
    "DEFAULT_BASE_URL",
    "MODELS",
    "ALIASES",
    "ModelSpec",
    "DownloadError",
    "canonical_name",
    "default_cache_dir",
    "download_file",
    "list_models",
    "resolve_model",
]

DEFAULT_BASE_URL = "https://allennlp.s3.amazonaws.com/models/elmo"
#: (connect, read) timeouts in seconds for every request
TIMEOUT = (30.0, 120.0)
_CHUNK = 1 << 20


def base_url() -> str:
    """The URL the registry files live under (``ELMO_FAST_MODEL_BASE_URL`` or allennlp's S3)."""
    return model_base_url(DEFAULT_BASE_URL)


@dataclass(frozen=True)
class ModelSpec:
    """One pre-trained ELMo model of the registry."""

    name: str          #: registry name, e.g. "original"
    stem: str          #: allennlp's name, e.g. "2x4096_512_2048cnn_2xhighway"
    description: str
    folder: Optional[str] = None          #: folder under the base URL (default: the stem)
    weights_name: Optional[str] = None    #: file name when not elmo_<stem>_weights.hdf5
    packaged: bool = False                #: shipped inside the package (elmo_fast/data/<name>/)

    @property
    def options_filename(self) -> str:
        return "options.json" if self.packaged else f"elmo_{self.stem}_options.json"

    @property
    def weights_filename(self) -> str:
        if self.packaged:
            return "weights.hdf5"
        return self.weights_name or f"elmo_{self.stem}_weights.hdf5"

    @property
    def options_url(self) -> Optional[str]:
        return None if self.packaged else f"{base_url()}/{self.folder or self.stem}/{self.options_filename}"

    @property
    def weights_url(self) -> Optional[str]:
        return None if self.packaged else f"{base_url()}/{self.folder or self.stem}/{self.weights_filename}"


def packaged_dir(name: str) -> str:
    """Folder of a model shipped inside the package."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", name)


# The standard models and their sizes are those of allennlp's ELMo page (allennlp.org/elmo); so is
# the contributed PubMed model (same architecture as 'original', URL under .../contributed/pubmed/).
# The other contributed models listed there (Portuguese, Japanese) publish no size, so they are not
# registered: pass their URLs with --options/--weights.
MODELS: Dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("tiny", "tiny",
                  "test-size model shipped in the package (bilm-tf's test fixture: LSTM 64 cells / 16 "
                  "projection, 0.1M parameters); for tests and examples, not for quality vectors",
                  packaged=True),
        ModelSpec("small", "2x1024_128_2048cnn_1xhighway",
                  "LSTM 1024 cells / 128 projection, 1 highway layer, 13.6M parameters"),
        ModelSpec("medium", "2x2048_256_2048cnn_1xhighway",
                  "LSTM 2048 cells / 256 projection, 1 highway layer, 28.0M parameters"),
        ModelSpec("original", "2x4096_512_2048cnn_2xhighway",
                  "LSTM 4096 cells / 512 projection, 2 highway layers, 93.6M parameters"),
        ModelSpec("original-5.5B", "2x4096_512_2048cnn_2xhighway_5.5B",
                  "as 'original', trained on 5.5B tokens, 93.6M parameters"),
        ModelSpec("pubmed", "2x4096_512_2048cnn_2xhighway",
                  "contributed (Matthew Peters): as 'original' (4096 / 512, 2 highway layers, 93.6M "
                  "parameters), trained on PubMed", folder="contributed/pubmed",
                  weights_name="elmo_2x4096_512_2048cnn_2xhighway_weights_PubMed_only.hdf5"),
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
    "elmo-pubmed": "pubmed",
    "test": "tiny",
}


class DownloadError(OSError):
    """A model file could not be downloaded (network failure, HTTP error, truncated transfer).
    `status` is the HTTP status when the server answered with an error, else None."""

    def __init__(self, message: str, status: Optional[int] = None):
        super().__init__(message)
        self.status = status


def canonical_name(name: str) -> Optional[str]:
    """The registry name ``name`` stands for, or None."""
    key = name.strip().lower()
    for spec in MODELS.values():
        if key == spec.name.lower():
            return spec.name
    for spec in MODELS.values():  # allennlp's stems name the models of its own bucket folders only
        own_folder = spec.folder is None and not spec.packaged
        if own_folder and key in (spec.stem.lower(), f"elmo_{spec.stem}".lower()):
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
                                            f"{resp.reason or ''}".rstrip() + ". " + _manual_hint(url),
                                            status=resp.status_code)
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


OPTIONS_NAMES = ("options.json",)
WEIGHTS_NAMES = ("weights.hdf5", "model.hdf5", "lm_weights.hdf5")  # model.hdf5: the NLPL layout


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


def _from_directory(folder: str, options: Optional[str], weights: Optional[str]) -> Tuple[str, str]:
    """The model files in ``folder``; an already-chosen file (not None) is kept as is."""
    if options is None:
        options = _pick(folder, OPTIONS_NAMES, "_options.json", "options")
    if weights is None:
        weights = _pick(folder, WEIGHTS_NAMES, "_weights.hdf5", "weights")
    missing = [w for w, p in (("options (options.json or *_options.json)", options),
                              ("weights (weights.hdf5, model.hdf5, lm_weights.hdf5 or *_weights.hdf5)",
                               weights)) if p is None]
    if missing:
        raise FileNotFoundError(f"directory {folder} has no {' and no '.join(missing)} file")
    return options, weights


def _sibling_options(weights: str) -> Optional[str]:
    folder, base = os.path.split(weights)
    if base.endswith("_weights.hdf5"):
        p = os.path.join(folder, base[: -len("_weights.hdf5")] + "_options.json")
        if os.path.isfile(p):
            return p
    return _pick(folder or ".", OPTIONS_NAMES, "_options.json", "options")


def _sibling_weights(options: str) -> Optional[str]:
    folder, base = os.path.split(options)
    if base.endswith("_options.json"):
        p = os.path.join(folder, base[: -len("_options.json")] + "_weights.hdf5")
        if os.path.isfile(p):
            return p
    return _pick(folder or ".", WEIGHTS_NAMES, "_weights.hdf5", "weights")


# ------------------------------------------------------------------------------------- zip archives
def _model_folder_in_zip(names, zip_path: str) -> str:
    """The folder inside a zip (``""`` for its top) that holds the model's options file."""
    folders = sorted({posixpath.dirname(n) for n in names
                      if posixpath.basename(n) in OPTIONS_NAMES or n.endswith("_options.json")})
    if not folders:
        raise FileNotFoundError(f"{zip_path}: the zip holds no options.json (or *_options.json); an ELMo "
                                "model zip holds options.json and model.hdf5 (or weights.hdf5)")
    if len(folders) > 1:
        where = ", ".join(f or "/" for f in folders)
        raise ValueError(f"{zip_path}: the zip holds several models (in {where}); unpack it and pass the "
                         "folder of the one to use")
    return folders[0]


def unzip_model(zip_path: str, cache_dir: Optional[str] = None) -> str:
    """Unpacks the model files (``*.json``, ``*.hdf5``) of a zipped model folder once, into
    ``<cache_dir or default_cache_dir()>/unzipped/<key>/``, and returns that folder.

    The key hashes the zip's absolute path, size and modification time, so a changed zip is unpacked
    again. Files are written to a temporary folder renamed into place when complete, so an
    interrupted unpack leaves nothing that a later call would take for a model.
    """
    zip_path = os.path.abspath(zip_path)
    st = os.stat(zip_path)
    key = hashlib.sha256(f"{zip_path}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:16]
    root = os.path.join(cache_dir or default_cache_dir(), "unzipped")
    dest = os.path.join(root, key)
    if os.path.isdir(dest):
        return dest
    try:
        zf = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile:
        raise ValueError(f"{zip_path}: not a readable zip file (truncated or another format)") from None
    with zf:
        names = [i.filename for i in zf.infolist() if not i.is_dir()]
        folder = _model_folder_in_zip(names, zip_path)
        wanted = [n for n in names if posixpath.dirname(n) == folder and n.endswith((".json", ".hdf5"))]
        if not any(n.endswith(".hdf5") for n in wanted):
            raise FileNotFoundError(f"{zip_path}: the zip holds no weights (model.hdf5, weights.hdf5 or "
                                    f"*_weights.hdf5) beside its options file")
        os.makedirs(root, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=root, prefix=f".{key}.")
        try:
            for n in wanted:  # flat, by base name: no path from inside the zip reaches the disk
                with zf.open(n) as src, open(os.path.join(tmp, posixpath.basename(n)), "wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
            try:
                os.rename(tmp, dest)
            except OSError:  # another process unpacked the same zip first: keep its copy
                if not os.path.isdir(dest):
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest


def _is_zip_name(path: str) -> bool:
    return urlparse(path).path.lower().endswith(".zip") if _is_url(path) else path.lower().endswith(".zip")


# --------------------------------------------------------------------------------------- model URLs
def _url_partners(url: str) -> Tuple[str, Tuple[str, ...]]:
    """For a model URL: which file it is ('options' / 'weights' / 'folder') and, in order, the URLs
    its partner may live at (beside it, by the same naming rules as local files)."""
    parsed = urlparse(url)
    folder_path, base = posixpath.split(parsed.path)

    def beside(*names):
        return tuple(parsed._replace(path=posixpath.join(folder_path, n), query="", fragment="").geturl()
                     for n in names)

    if base.endswith(".json"):
        first = (base[: -len("_options.json")] + "_weights.hdf5",) if base.endswith("_options.json") else ()
        return "options", beside(*first, *WEIGHTS_NAMES)
    if base.endswith(".hdf5"):
        first = (base[: -len("_weights.hdf5")] + "_options.json",) if base.endswith("_weights.hdf5") else ()
        return "weights", beside(*first, *OPTIONS_NAMES)
    return "folder", ()


def _download_first(urls, cache_dir: Optional[str], progress: bool, what: str, of: str) -> str:
    """The first of ``urls`` the server has (HTTP 404 moves on to the next; other errors stop)."""
    for u in urls:  # one already in the cache needs no request (and no 404s on the way to it)
        if os.path.isfile(_url_dest(u, cache_dir)):
            return _url_dest(u, cache_dir)
    for u in urls:
        try:
            return download_file(u, _url_dest(u, cache_dir), progress=progress)
        except DownloadError as e:
            if e.status != 404:
                raise
    raise DownloadError(f"no {what} file found beside {of} (tried {', '.join(urls)}); pass both URLs as "
                        "--options URL --weights URL (options_file= / weight_file=)", status=404)


def _resolve_url(url: str, explicit_opts: Optional[str], explicit_wts: Optional[str],
                 cache_dir: Optional[str], progress: bool) -> Tuple[str, str]:
    if _is_zip_name(url):
        folder = unzip_model(download_file(url, _url_dest(url, cache_dir), progress=progress), cache_dir)
        return _from_directory(folder, explicit_opts, explicit_wts)
    kind, partners = _url_partners(url)
    if kind == "folder":
        raise ValueError(f"{url!r} is not a model file URL: pass the URL of a .zip, of the weights (.hdf5) "
                         "or of the options (.json) file (its partner is fetched from beside it), or both "
                         "files as --options URL --weights URL (options_file= / weight_file=)")
    if kind == "options":
        options = explicit_opts or download_file(url, _url_dest(url, cache_dir), progress=progress)
        weights = explicit_wts or _download_first(partners, cache_dir, progress, "weights", url)
    else:
        weights = explicit_wts or download_file(url, _url_dest(url, cache_dir), progress=progress)
        options = explicit_opts or _download_first(partners, cache_dir, progress, "options", url)
    return options, weights


# ----------------------------------------------------------------------------------------- registry
def _names_a_model(s) -> bool:
    """True for what only a whole model can be (a folder, a zip, a registry name, a zip URL), as
    opposed to one of its two files."""
    if not isinstance(s, (str, os.PathLike)):
        return False
    s = os.fspath(s)
    if _is_url(s):
        return _is_zip_name(s)
    path = os.path.expanduser(s)
    return os.path.isdir(path) or (os.path.isfile(path) and _is_zip_name(path)) or \
        (not os.path.exists(path) and canonical_name(s) is not None)


def _unknown(name: str) -> ValueError:
    known = ", ".join(f"{n} ({s.stem})" if not s.packaged and s.folder is None else n
                      for n, s in MODELS.items())
    aliases = ", ".join(sorted(ALIASES))
    return ValueError(f"unknown ELMo model {name!r}: known names are {known} (aliases: {aliases}). "
                      "A local directory holding options.json and weights.hdf5 (or model.hdf5), a .zip "
                      "of one, a URL, or explicit options/weights paths or URLs, are accepted too.")


def registry_paths(name: str, cache_dir: Optional[str] = None) -> Tuple[str, str]:
    """Where a registry model's two files are (packaged) or go once downloaded (cached)."""
    spec = MODELS[name]
    folder = packaged_dir(name) if spec.packaged else os.path.join(cache_dir or default_cache_dir(), name)
    return os.path.join(folder, spec.options_filename), os.path.join(folder, spec.weights_filename)


def list_models(cache_dir: Optional[str] = None) -> List[Dict[str, object]]:
    """The registry, one dict per model: name, description, options_url / weights_url (None when
    packaged), path of each file, and status: 'packaged', 'cached' (both files present, with their
    total size in bytes), 'partial' (one of the two) or 'not cached'."""
    rows = []
    for name, spec in MODELS.items():
        options, weights = registry_paths(name, cache_dir)
        present = [p for p in (options, weights) if os.path.isfile(p)]
        status = "packaged" if spec.packaged else (
            "cached" if len(present) == 2 else "partial" if present else "not cached")
        rows.append({"name": name, "description": spec.description, "status": status,
                     "bytes": sum(os.path.getsize(p) for p in present) if present else 0,
                     "options": options, "weights": weights,
                     "options_url": spec.options_url, "weights_url": spec.weights_url})
    return rows


def resolve_model(name_or_path: Optional[str] = None, options_file: Optional[str] = None,
                  weight_file: Optional[str] = None, cache_dir: Optional[str] = None,
                  progress: bool = True) -> Tuple[str, str]:
    """Local ``(options_path, weights_path)`` for a model.

    ``name_or_path``: a registry name or alias (files downloaded into
    ``<cache_dir or default_cache_dir()>/<name>/`` on first use; ``tiny`` is in the package), a local
    directory holding the two files, a ``.zip`` of one, a local weights / options file whose partner
    sits beside it, or an http(s) URL of a zip or of either file (the partner is fetched from beside
    it).  ``options_file`` / ``weight_file`` (local paths or http(s) URLs) override the
    corresponding file; with both given, ``name_or_path`` may be None.  One of them alone may also
    name a whole model (a directory, zip, registry name or zip URL), as allennlp-style code passes
    ``Elmo(model_dir, None, ...)``.
    """
    if name_or_path is None and (options_file is None) != (weight_file is None) and \
            _names_a_model(options_file or weight_file):
        name_or_path, options_file, weight_file = options_file or weight_file, None, None
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
        return _resolve_url(name_or_path, explicit_opts, explicit_wts, cache_dir, progress)
    path = os.path.expanduser(name_or_path)
    if os.path.isdir(path):
        return _from_directory(path, explicit_opts, explicit_wts)
    if os.path.isfile(path):
        if _is_zip_name(path) or (not path.endswith((".json", ".hdf5")) and zipfile.is_zipfile(path)):
            return _from_directory(unzip_model(path, cache_dir), explicit_opts, explicit_wts)
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
                name_or_path.endswith((".json", ".hdf5", ".zip")):
            raise FileNotFoundError(f"no such file or directory: {path}")
        raise _unknown(name_or_path)
    spec = MODELS[canon]
    options_path, weights_path = registry_paths(canon, cache_dir)
    if spec.packaged:
        for p in (options_path, weights_path):
            if not os.path.isfile(p):
                raise FileNotFoundError(f"the packaged model {canon!r} is missing {p}: this installation "
                                        "of elmo_fast is incomplete (reinstall it)")
        return explicit_opts or options_path, explicit_wts or weights_path
    options = explicit_opts or download_file(spec.options_url, options_path, progress=progress)
    weights = explicit_wts or download_file(spec.weights_url, weights_path, progress=progress)
    return options, weights

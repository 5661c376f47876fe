"""Checks on the output path, made before any model work, naming the path the user gave."""
from __future__ import annotations

import os
from typing import Optional, Union

from .reader import InputError


def check_output_path(output_file_path: Union[str, "os.PathLike[str]"],
                      input_path: Optional[str] = None) -> str:
    """The absolute output path, after checking that it names a file (not a folder, no trailing
    slash) in an existing, writable folder, and is not the input file."""
    given = os.fsdecode(output_file_path)
    if given.endswith(("/", os.sep)):
        raise InputError(f"output path {given} ends with '/': name the output file (e.g. {given.rstrip('/')}"
                         f"/corpus.hdf5 or {given.rstrip('/')}.hdf5)")
    out = os.path.abspath(given)
    folder = os.path.dirname(out)
    if not os.path.isdir(folder):
        raise InputError(f"output directory does not exist: {folder}")
    if os.path.isdir(out):
        raise InputError(f"output path {given} is a directory")
    if input_path is not None and os.path.exists(out) and os.path.exists(input_path) \
            and os.path.samefile(out, input_path):
        raise InputError(f"the output {given} is the input file: writing it would destroy the corpus; "
                         "choose another output path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {given}: permission denied (folder {folder} is not writable)")
    if os.path.exists(out) and not os.access(out, os.W_OK) and not os.access(folder, os.W_OK):
        raise InputError(f"cannot replace {given}: permission denied")
    return out

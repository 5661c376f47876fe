"""The corpus job (GUIDE section 9): streaming reader, batching, pipeline, layouts, pieces + manifest,
and `open_embeddings`, the reader of every output."""
from .batching import Window, corpus_batches, windows
from .diskio import OutputWriteError
from .embeddings import Embeddings, EmbeddingsError, open_embeddings
from .layouts import DTYPES_OUT, LAYOUTS, OUTPUT_FORMATS, POOLS, OutputSpec, decode
from .manifest import Manifest, ResumeError
from .merge import merge_files, merge_into
from .outpath import check_output_path
from .pipeline import EmbedderModel, Job, Result, embed_corpus, parse_shard, prepare, run
from .reader import (
    EMPTY_LINES, InputError, check_sentence_keys, check_sentences, open_source, read_sentences, scan,
)

__all__ = [
    "Window", "corpus_batches", "windows", "OutputWriteError", "Embeddings", "EmbeddingsError",
    "open_embeddings",
    "DTYPES_OUT", "LAYOUTS", "OUTPUT_FORMATS", "POOLS", "OutputSpec", "decode", "Manifest", "ResumeError",
    "merge_files", "merge_into", "check_output_path", "EmbedderModel", "Job", "Result", "embed_corpus",
    "parse_shard", "prepare", "run", "EMPTY_LINES", "InputError", "check_sentence_keys", "check_sentences",
    "open_source", "read_sentences", "scan",
]

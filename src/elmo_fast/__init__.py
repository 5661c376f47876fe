"""elmo_fast: a fast, faithful ELMo engine; a drop-in for allennlp's Elmo, batch_to_ids and
ElmoEmbedder, reading the same options.json + weights.hdf5 files."""
from .chars import batch_to_ids
from .corpus.embeddings import open_embeddings
from .embedder import ElmoEmbedder
from .modules import BiLm, CharEncoder, Elmo, ScalarMix
from .weights import ElmoOptions, ElmoWeights, WeightsError, load_model

__version__ = "0.1.0"

__all__ = [
    "Elmo", "ElmoEmbedder", "batch_to_ids", "BiLm", "CharEncoder", "ScalarMix",
    "ElmoOptions", "ElmoWeights", "WeightsError", "load_model", "open_embeddings", "__version__",
]

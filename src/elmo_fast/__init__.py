"""elmo_fast: a fast, faithful ELMo engine; a drop-in for allennlp's Elmo, batch_to_ids and
ElmoEmbedder, reading the same options.json + weights.hdf5 files."""
from ._allennlp_compat import install_allennlp_shim
from .chars import batch_to_ids
from .corpus.embeddings import open_embeddings
from .embedder import ElmoEmbedder, encode
from .modules import BiLm, CharEncoder, Elmo, ScalarMix
from .weights import ElmoOptions, ElmoWeights, WeightsError, load_model

__version__ = "0.1.0"

__all__ = [
    "Elmo", "ElmoEmbedder", "batch_to_ids", "encode", "install_allennlp_shim", "BiLm", "CharEncoder",
    "ScalarMix", "ElmoOptions", "ElmoWeights", "WeightsError", "load_model", "open_embeddings", "__version__",
]

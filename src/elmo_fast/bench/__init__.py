"""Benchmark harness shared by `elmo-fast bench` and the bench/*.py scripts.

  inputs    random-weight models, sentences, the shared fixture and tool folders, FLOPs per token
            and per batch
  harness   timers, matmul ceiling, error against a reference, TF32 off, the backend switch
  report    environment record, repository-relative paths, atomic record writes
  allennlp  allennlp 0.9's own Elmo, loaded from its wheel
  cpu_profile  time per op family of a CPU forward (bench_cpu.py --profile)
  plots     the throughput-versus-batch plot
  elmo      the end-to-end benchmark itself (`elmo-fast bench`, `python -m elmo_fast.bench`)
"""
from .allennlp import load_allennlp, reset_allennlp_states
from .elmo import VARIANTS, add_arguments, build_variant, display_source, main, run
from .harness import _force_backend, compare, fp32_exact, latency, matmul_ceiling, time_calls
from .inputs import (
                     batch_flops,
                     fixtures_dir,
                     flops_per_token,
                     make_sentences,
                     model_files,
                     sentence_lengths,
                     shared_dirs,
                     vocabulary,
)
from .report import device_tag, display_path, environment, write_json, write_text

__all__ = ["VARIANTS", "_force_backend", "add_arguments", "batch_flops", "build_variant", "compare",
           "device_tag",
           "display_path", "display_source", "environment", "fixtures_dir", "flops_per_token", "fp32_exact",
           "latency",
           "load_allennlp", "main",
           "make_sentences", "matmul_ceiling", "model_files", "reset_allennlp_states", "run",
           "sentence_lengths", "shared_dirs", "time_calls", "vocabulary", "write_json", "write_text"]

"""Evaluation jobs (perplexity, LongBench, speed), installed as `hf_hyper.eval`.

They use only the public `hf_hyper` API (patch / unpatch / configs / attention functions).
"""

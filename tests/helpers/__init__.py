"""Helpers shared by the tests: random inputs and leakage / error checks (`common`), tiny
checkpoints built from configs (`tiny_models`, `tiny_chatglm`, `tiny_chatglm_remote`),
the fused-path comparison cases (`fused_cases`) and LongBench-shaped data
(`longbench_data`). Importable as `helpers.*`: pytest puts `tests/` on the path
(`pythonpath` in pyproject.toml)."""

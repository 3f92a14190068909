"""flm: train large language models on a budget by progressive growth (FLM-101B / MSG)."""

__version__ = "0.1.0"

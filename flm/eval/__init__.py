"""Evaluation: perplexity (ppl), an lm-evaluation-harness adapter (lm_adapter), knowledge benchmarks from
local data (bench), and FLM-101B's IQ-style suite (iq), all on one ``scorer.Scorer`` interface that flm
checkpoints and Hugging Face models implement (models). See docs/evaluation.md."""

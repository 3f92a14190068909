"""Hugging Face interop: flm checkpoints out to transformers folders (GPT-NeoX, or remote code for xPos) and
GGUF, and transformers folders (GPT-NeoX, the released FLM-101B format) in as flm checkpoints; every
direction streams tensor by tensor. `flm export` / `flm import` (cli)."""

"""Text generation: sampling from an FLM with temperature and top-k over its KV cache (sample), and the
`flm generate` command (cli)."""

from flm.generate.sample import generate

__all__ = ["generate"]

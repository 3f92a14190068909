"""The remote code `flm export hf` ships beside the weights of an xPos model (loaded by transformers with
``trust_remote_code=True``): self-contained, it imports only torch and transformers, never flm."""

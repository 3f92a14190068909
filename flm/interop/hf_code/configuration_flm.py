"""FLM configuration for transformers (remote code shipped by `flm export hf`; no flm install needed).

The keys are those of the released FLM-101B config.json (GPT-2 names, rotary/xPos, μP); ``attn_scale``
("sqrt" = 1/sqrt(head_dim), "linear" = 1/head_dim) defaults to linear under μP, as FLM's μP attention does.
"""

from transformers import PretrainedConfig


class FLMConfig(PretrainedConfig):
    model_type = "flm"
    attribute_map = {
        "hidden_size": "n_embd",
        "num_attention_heads": "n_head",
        "num_hidden_layers": "n_layer",
        "max_position_embeddings": "n_positions",
    }

    def __init__(
        self,
        vocab_size=100352,
        n_embd=10240,
        n_head=80,
        n_inner=None,
        n_layer=80,
        n_positions=2048,
        layer_norm_epsilon=1e-5,
        activation_function="gelu_fast",
        relative_encoding="rotary",
        rotary_theta=10000.0,
        rotary_use_xpos=True,
        rotary_xpos_scale_base=512.0,
        scale_attn_weights=True,
        scale_attn_by_inverse_layer_idx=False,
        reorder_and_upcast_attn=False,
        use_mup=False,
        mup_base_width=None,
        mup_scale_factor=1.0,
        input_mult=1.0,
        output_mult=1.0,
        attn_scale=None,
        initializer_range=0.02,
        tie_word_embeddings=True,
        use_cache=True,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.n_embd = n_embd
        self.n_head = n_head
        self.n_inner = n_inner
        self.n_layer = n_layer
        self.n_positions = n_positions
        self.layer_norm_epsilon = layer_norm_epsilon
        self.activation_function = activation_function
        self.relative_encoding = relative_encoding
        self.rotary_theta = rotary_theta
        self.rotary_use_xpos = rotary_use_xpos
        self.rotary_xpos_scale_base = rotary_xpos_scale_base
        self.scale_attn_weights = scale_attn_weights
        self.scale_attn_by_inverse_layer_idx = scale_attn_by_inverse_layer_idx
        self.reorder_and_upcast_attn = reorder_and_upcast_attn
        self.use_mup = use_mup
        self.mup_base_width = mup_base_width
        self.mup_scale_factor = mup_scale_factor
        self.input_mult = input_mult
        self.output_mult = output_mult
        self.attn_scale = attn_scale or ("linear" if use_mup else "sqrt")
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)

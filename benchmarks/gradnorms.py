"""Time and peak memory per example of `per_example_grad_norms`, side by side with a plain training step, the
naive per-example loop and the tools a user would pick instead (benchmarks/peers.py), on the same model and the
same batches, in one run; and whether each method's norms agree with ours.

  train_step:   forward + backward of the batch-mean loss, every parameter trainable (no optimizer step)
  naive_loop:   batch of one, backward with only E and W trainable, dense .grad norms read per example
  grads_kernel: the whole batch at once, backward to activations only
  peers:        torch.func (vmap over grad), Opacus (per-sample gradients / ghost norms), bergson (hooks)

Batch shapes (--shape, repeatable):
  answer-only:  the loss on the answer tokens only, as `grads score` trains and scores (MedMCQA: short answers)
  all-target:   every real token a target (as in math solutions or chat transcripts trained on whole turns)

Each method runs in its own child process, so its peak memory (resident set on CPU, allocated on CUDA) is
read alone and reported per example above the loaded model's.

  python benchmarks/gradnorms.py                                   # SmolLM2, both shapes, every method
  python benchmarks/gradnorms.py --model tiny --methods grads_kernel train_step torch_func
  python benchmarks/gradnorms.py --model random:smollm2-135m --data synthetic --device cuda --dtype bf16
  python benchmarks/gradnorms.py --profile                         # where the time goes, stage by stage
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from bench_models import CONFIGS, load

OURS = "grads_kernel"
BASE = ("train_step", "naive_loop", OURS)
PEERS = ("torch_func", "opacus", "opacus_ghost", "bergson")
SHAPES = ("answer-only", "all-target")
def medmcqa_batches(n_batches: int, batch_size: int, lo: int, hi: int):
    """Real MedMCQA examples whose length lies in [lo, hi], batched as grads score batches a pool: sorted by
    length, so neighbours in a batch have nearly the same length (a window from the middle of that order)."""
    import tempfile

    from grads.data.batches import collate
    from grads.data.bundled import prepare_medmcqa
    from grads.data.formats import load_pool
    from grads.data.tokenize import tokenize_example
    from grads.infra.models import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    with tempfile.TemporaryDirectory() as tmp:
        prepare_medmcqa(tmp)
        pool = load_pool(f"{tmp}/pool.jsonl", limit=2000)
    examples = [tokenize_example(tokenizer, ex, max_length=hi) for ex in pool.examples]
    chosen = sorted((ex for ex in examples if lo <= ex.n_tokens <= hi and ex.n_target_tokens > 0),
                    key=lambda ex: (ex.n_tokens, ex.row))
    start = max(0, len(chosen) // 2 - n_batches * batch_size // 2)
    chosen = chosen[start:start + n_batches * batch_size]
    return [collate(chosen[i:i + batch_size], tokenizer.pad_token_id) for i in range(0, len(chosen), batch_size)]


def synthetic_batches(n_batches: int, batch_size: int, length: int, answer: int, vocab: int):
    """Random token ids, `length` tokens per example, the last `answer` of them labelled (no padding)."""
    from grads.core.gradnorms import IGNORE_INDEX

    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(1, vocab, (batch_size, length), generator=g)
        labels = ids.clone()
        labels[:, :length - answer] = IGNORE_INDEX
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return out


def shaped(batches: list[dict], shape: str) -> list[dict]:
    """all-target: every real token is a target (the same tokens; only the labels change)."""
    from grads.core.gradnorms import IGNORE_INDEX

    if shape == "answer-only":
        return batches
    return [{**b, "labels": b["input_ids"].masked_fill(~b["attention_mask"].bool(), IGNORE_INDEX)} for b in batches]


def train_step(model, batch):
    from torch.profiler import record_function

    for p in model.parameters():
        p.requires_grad_(True)
    with record_function("train.forward"):
        loss = model(**batch).loss
    with record_function("train.backward"):
        loss.backward()
    model.zero_grad(set_to_none=True)


def naive_loop(model, batch):
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    for p in model.parameters():
        p.requires_grad_(False)
    emb.requires_grad_(True)
    head.requires_grad_(True)
    norms = {"embedding": [], "head": []} if emb is not head else {"tied_total": []}
    for i in range(batch["input_ids"].shape[0]):
        keep = batch["attention_mask"][i].bool()
        one = {k: v[i][keep].unsqueeze(0) for k, v in batch.items()}
        model(**one).loss.backward()
        for key, p in zip(norms, (emb, head)):
            norms[key].append(float(p.grad.float().norm()))
            p.grad = None
    return {k: torch.tensor(v) for k, v in norms.items()}


def grads_kernel(model, batch):
    from grads.core.gradnorms import per_example_grad_norms

    return per_example_grad_norms(model, batch, tied_total=True)


def method(name: str):
    if name in BASE:
        return globals()[name]
    sys.path.insert(0, str(Path(__file__).parent))
    import peers

    return peers.PEERS[name]


class Meter:
    """Peak memory above what was held when it started (allocated on CUDA; resident set on CPU, whose high-water
    mark is reset so the model's loading peak does not hide the method's), and wall time synchronised on CUDA."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        if self.cuda:
            torch.cuda.synchronize()
            self.base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:
            Path("/proc/self/clear_refs").write_text("5")
            self.base = _status_bytes("VmRSS")

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def peak_bytes(self) -> int:
        return (torch.cuda.max_memory_allocated() if self.cuda else _status_bytes("VmHWM")) - self.base


def _status_bytes(field: str) -> int:
    """A memory figure of this process from /proc/self/status (Linux), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def prepare(args, model=None):
    """The model (loaded once) and the batches of args.shape, on args.device."""
    model = model if model is not None else load(args.model, args.device, args.dtype, args.untie)
    if args.data == "medmcqa":
        data = medmcqa_batches(args.batches, args.batch_size, args.min_tokens, args.max_tokens)
    else:
        data = synthetic_batches(args.batches, args.batch_size, args.max_tokens, args.answer_tokens,
                                 model.config.vocab_size)
    return model, [{k: v.to(args.device) for k, v in b.items()} for b in shaped(data, args.shape)]


def measure(name: str, model, data: list[dict], args) -> dict:
    """Time per example (after one warm-up batch), peak memory per example, and the norms."""
    fn = method(name)
    meter = Meter(args.device)  # the memory the method needs above the loaded model and the batches
    fn(model, data[0])  # warm-up (allocator, kernels, a peer's preparation), not timed
    start = meter.now()
    norms = [fn(model, batch) for batch in data]
    seconds = meter.now() - start
    n = sum(b["input_ids"].shape[0] for b in data)
    real = sum(int(b["attention_mask"].sum()) for b in data)
    out = {"method": name, "examples": n, "seconds": seconds, "s_per_example": seconds / n,
           "tokens_per_example": real / n,
           "targets_per_example": sum(int((b["labels"][:, 1:] != -100).sum()) for b in data) / n,
           "padding_fraction": 1 - real / sum(b["attention_mask"].numel() for b in data),
           "peak_mb_per_example": meter.peak_bytes() / 2**20 / args.batch_size}
    if norms[0] is not None:
        out["norms"] = {k: torch.cat([nb[k].float().cpu() for nb in norms]).tolist() for k in norms[0]}
    return out


def child(args) -> None:
    torch.set_num_threads(args.threads)
    model, data = prepare(args)
    print(json.dumps(measure(args.only, model, data, args)))


def in_process(args, methods: list[str], shape: str, model) -> dict:
    """Every method in this process, one after the other (CUDA: the allocator's peak is reset per method)."""
    args.shape = shape
    model, data = prepare(args, model)
    results = {}
    for name in methods:
        try:
            results[name] = measure(name, model, data, args)
        except Exception as err:  # a peer that cannot run this case: say what fails
            results[name] = {"method": name, "failed": f"{type(err).__name__}: {err}"[:300]}
        model.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
    return results


def profile(args, shape: str) -> dict:
    """Seconds per batch in each named stage of the kernel (grads.forward, grads.head, grads.backward,
    grads.embedding_norm) and of the training step (train.forward, train.backward), from torch.profiler."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    args.shape = shape
    model, data = prepare(args)
    grads_kernel(model, data[0]), train_step(model, data[0])  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
    with torch_profile(activities=activities) as prof:
        for batch in data:
            grads_kernel(model, batch)
            train_step(model, batch)
    stages = {e.key: e.cpu_time_total / 1e6 / len(data) for e in prof.key_averages()
              if e.key.startswith(("grads.", "train."))}
    for name in ("grads", "train"):
        parts = {k: v for k, v in stages.items() if k.startswith(name + ".")}
        print(f"{shape}: {name} " + ", ".join(f"{k.split('.', 1)[1]} {v:.3f} s" for k, v in parts.items())
              + f" (total {sum(parts.values()):.3f} s per batch of {args.batch_size})")
    return stages


def agreement(ours: dict, theirs: dict) -> str:
    """Largest relative difference per norm both computed, e.g. 'head 3e-07, tied_total 2e-06'."""
    parts = []
    for key in ("embedding", "head", "tied_total"):
        if key in ours and key in theirs:
            a, b = torch.tensor(ours[key]), torch.tensor(theirs[key])
            parts.append(f"{key} {float(((a - b).abs() / a.abs()).max()):.0e}")
    return ", ".join(parts) or "-"


def run_method(args, name: str, shape: str) -> dict:
    cmd = [sys.executable, __file__, *sys.argv[1:], "--only", name, "--child-shape", shape]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        return {"method": name, "failed": last[:300]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def build_parser() -> argparse.ArgumentParser:
    """The command line (also read by tests/tools/test_benchmarks.py, to check what benchmarks/gpu.sh passes)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="a grads model name, 'tiny', or random:NAME for NAME in " + ", ".join(CONFIGS))
    parser.add_argument("--data", choices=("medmcqa", "synthetic"), default="medmcqa")
    parser.add_argument("--shape", action="append", choices=SHAPES, help="batch shape (repeatable; default both)")
    parser.add_argument("--methods", nargs="+", default=[*BASE, *PEERS], choices=[*BASE, *PEERS])
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--min-tokens", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=256, help="medmcqa: longest example; synthetic: length")
    parser.add_argument("--answer-tokens", type=int, default=40, help="synthetic answer-only: labelled tokens")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--untie", action="store_true", help="give the LM head its own copy of a tied embedding")
    parser.add_argument("--in-process", action="store_true",
                        help="run every method in this process (for CUDA, whose allocator's peak is read per method; "
                             "on CPU the resident-set peak of a later method can hide in memory an earlier one freed)")
    parser.add_argument("--profile", action="store_true",
                        help="instead: where the time goes, per stage of the kernel and of the training step")
    parser.add_argument("--out", type=Path, help="also write every figure to this JSON file")
    parser.add_argument("--only", help=argparse.SUPPRESS)
    parser.add_argument("--child-shape", dest="shape_one", help=argparse.SUPPRESS)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.only:
        args.shape = args.shape_one
        return child(args)

    torch.set_num_threads(args.threads)
    report = {"model": args.model, "untied": args.untie, "data": args.data, "device": args.device, "dtype": args.dtype,
              "batch_size": args.batch_size, "threads": args.threads, "torch": torch.__version__, "shapes": {}}
    if args.profile:
        report["profile"] = {shape: profile(args, shape) for shape in args.shape or SHAPES}
        if args.out:
            args.out.write_text(json.dumps(report, indent=1))
        return
    methods = [OURS] + [m for m in args.methods if m != OURS]
    model = load(args.model, args.device, args.dtype, args.untie) if args.in_process else None
    for shape in args.shape or SHAPES:
        results = in_process(args, methods, shape, model) if args.in_process else \
            {name: run_method(args, name, shape) for name in methods}
        report["shapes"][shape] = results
        print_shape(args, shape, results)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


def print_shape(args, shape: str, results: dict) -> None:
    ours, train = results[OURS], results.get("train_step", {})
    if "failed" in ours:
        print(f"{shape}: grads kernel failed: {ours['failed']}")
        return
    print(f"\n{shape}: model {args.model} ({args.device}, {args.dtype}), {ours['examples']} examples in batches of "
          f"{args.batch_size}, {ours['tokens_per_example']:.0f} tokens and {ours['targets_per_example']:.0f} "
          f"targets per example, padding {ours['padding_fraction']:.1%}")
    print(f"  {'method':13s} {'s/example':>10s} {'÷ train':>8s} {'÷ grads':>8s} {'MB/example':>11s}  "
          "agreement with grads (largest relative difference)")
    for name, r in results.items():
        if "failed" in r:
            print(f"  {name:13s} failed: {r['failed']}")
            continue
        vs_train = f"{r['s_per_example'] / train['s_per_example']:.2f}x" if "s_per_example" in train else "-"
        print(f"  {name:13s} {r['s_per_example']:10.4f} {vs_train:>8s} "
              f"{r['s_per_example'] / ours['s_per_example']:7.2f}x {r['peak_mb_per_example']:11.1f}  "
              f"{agreement(ours['norms'], r.get('norms', {})) if name != OURS else ''}")


if __name__ == "__main__":
    main()

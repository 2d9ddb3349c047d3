"""Time and peak memory per example of `per_example_grad_norms`, side by side with a plain training step and
the naive per-example loop, on the same model and the same batches, in one run.

  training step: forward + backward of the batch-mean loss, every parameter trainable (no optimizer step)
  naive loop:    batch of one, backward with only E and W trainable, dense .grad norms read per example
  grads kernel:  the whole batch at once, backward to activations only

Each method runs in its own child process so its peak resident memory can be read (ru_maxrss) and is
reported above the memory of the loaded model.

  python benchmarks/gradnorms.py --model smollm2-135m-instruct --batches 3 --batch-size 8
  python benchmarks/gradnorms.py --model tiny
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

METHODS = ("train_step", "naive_loop", "grads_kernel")


def load(model_name: str):
    from grads.models import load_model, load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    if model_name == "tiny":
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
        return LlamaForCausalLM(config).eval(), tokenizer
    return load_model(model_name, device="cpu"), tokenizer


def batches(tokenizer, n_batches: int, batch_size: int, lo: int, hi: int):
    """Real MedMCQA examples whose length lies in [lo, hi], batched as grads score batches a pool: sorted by
    length, so neighbours in a batch have nearly the same length (a window from the middle of that order)."""
    import tempfile

    from grads.bundled import prepare_medmcqa
    from grads.data import load_pool, tokenize_example
    from grads.scoring import collate

    with tempfile.TemporaryDirectory() as tmp:
        prepare_medmcqa(tmp)
        pool = load_pool(f"{tmp}/pool.jsonl", limit=2000)
    examples = [tokenize_example(tokenizer, ex, max_length=hi) for ex in pool.examples]
    chosen = sorted((ex for ex in examples if lo <= ex.n_tokens <= hi and ex.n_target_tokens > 0),
                    key=lambda ex: (ex.n_tokens, ex.row))
    start = max(0, len(chosen) // 2 - n_batches * batch_size // 2)
    chosen = chosen[start:start + n_batches * batch_size]
    return [collate(chosen[i:i + batch_size], tokenizer.pad_token_id)
            for i in range(0, len(chosen), batch_size)], chosen


def train_step(model, batch):
    for p in model.parameters():
        p.requires_grad_(True)
    loss = model(**batch).loss
    loss.backward()
    model.zero_grad(set_to_none=True)


def naive_loop(model, batch):
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    for p in model.parameters():
        p.requires_grad_(False)
    emb.requires_grad_(True)
    head.requires_grad_(True)
    norms = []
    for i in range(batch["input_ids"].shape[0]):
        keep = batch["attention_mask"][i].bool()
        one = {k: v[i][keep].unsqueeze(0) for k, v in batch.items()}
        model(**one).loss.backward()
        norms.append((emb.grad.norm().item(), head.grad.norm().item()))
        emb.grad = None
        head.grad = None
    return norms


def grads_kernel(model, batch):
    from grads.gradnorms import per_example_grad_norms

    return per_example_grad_norms(model, batch)


def child(args) -> None:
    torch.set_num_threads(args.threads)
    model, tokenizer = load(args.model)
    data, examples = batches(tokenizer, args.batches, args.batch_size, args.min_tokens, args.max_tokens)
    fn = {"train_step": train_step, "naive_loop": naive_loop, "grads_kernel": grads_kernel}[args.only]
    fn(model, data[0])  # warm-up (allocator, kernels), not timed
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    for batch in data:
        fn(model, batch)
    seconds = time.perf_counter() - start
    n = sum(b["input_ids"].shape[0] for b in data)
    print(json.dumps({"method": args.only, "examples": n, "seconds": seconds, "s_per_example": seconds / n,
                      "tokens_per_example": sum(ex.n_tokens for ex in examples) / len(examples),
                      "padding_fraction": 1 - sum(int(b["attention_mask"].sum()) for b in data)
                      / sum(b["attention_mask"].numel() for b in data),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "rss_after_warmup_mb": rss_before / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a grads model name, or 'tiny'")
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--min-tokens", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        return child(args)

    results = {}
    passthrough = [a for a in sys.argv[1:]]
    for method in METHODS:
        out = subprocess.run([sys.executable, __file__, *passthrough, "--only", method], check=True,
                             capture_output=True, text=True).stdout
        results[method] = json.loads(out.strip().splitlines()[-1])
    ours, train, naive = results["grads_kernel"], results["train_step"], results["naive_loop"]
    print(f"model {args.model}, {ours['examples']} examples in batches of {args.batch_size}, "
          f"{ours['tokens_per_example']:.0f} tokens/example on average, padding {ours['padding_fraction']:.1%}, "
          f"{args.threads} threads")
    for method in METHODS:
        r = results[method]
        print(f"  {method:13s} {r['s_per_example']:8.4f} s/example   peak RSS {r['peak_rss_mb']:7.0f} MB")
    print(f"grads kernel / training step time per example: {ours['s_per_example'] / train['s_per_example']:.2f}x")
    print(f"naive loop / grads kernel time per example:    {naive['s_per_example'] / ours['s_per_example']:.2f}x")
    print(f"grads kernel / training step peak RSS:         {ours['peak_rss_mb'] / train['peak_rss_mb']:.2f}x")


if __name__ == "__main__":
    main()

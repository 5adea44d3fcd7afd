"""Images/s of the harness's own training loop and evaluation for a named model.

    python benchmarks/throughput.py --model tiny-clip --batch 256 --resolution 32
    python benchmarks/throughput.py --model ViT-B-32 --batch 256 --resolution 224 --device cuda --precision bf16

Weights do not matter for speed, so models are randomly initialised (nothing is
loaded or downloaded). Fine-tuning is `bench.core.train.train` (AdamW, cross-entropy through
the zero-shot head, batches moved from CPU memory to the device each step, exactly as
in a trial); evaluation is `bench.core.metrics.predict`. Each step's images/s is measured
after warm-up and the median is printed, with the spread (min-max) beside it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def build(model: str) -> torch.nn.Module:
    import logging

    import open_clip

    from bench.models.clip import ClipArch, ZeroShotClassifier, build_clip

    if model == "tiny-clip":
        clip = build_clip(ClipArch())
    else:
        logging.getLogger().setLevel(logging.ERROR)  # open_clip warns that no weights were loaded
        clip = open_clip.create_model(model, pretrained=None)
    head = torch.nn.functional.normalize(torch.randn(10, clip.text_projection.shape[1]), dim=-1)
    return ZeroShotClassifier.from_clip(clip, head)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-clip", help="tiny-clip or an open_clip name (ViT-B-32, ...)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--resolution", type=int, default=None, help="input side (default: the model's own)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--train-steps", type=int, default=20)
    p.add_argument("--eval-batches", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    args = p.parse_args()

    from bench.core import runtime
    from bench.core.metrics import predict
    from bench.core.train import TrainSpec, cross_entropy_loss, train

    rt = runtime.configure(args.device, compile=args.compile)
    torch.manual_seed(0)
    clf = runtime.place(build(args.model))
    side = args.resolution or clf.image_size or 224
    n_params = sum(p.numel() for p in clf.parameters()) / 1e6
    # A pool of CPU images cycled through, as trials keep their data in CPU memory.
    pool = torch.rand(4 * args.batch, 3, side, side)
    labels = torch.randint(0, 10, (4 * args.batch,))

    def batches():
        while True:
            for i in range(0, len(pool), args.batch):
                yield pool[i : i + args.batch], labels[i : i + args.batch]

    def sync():
        if rt.device.startswith("cuda"):
            torch.cuda.synchronize()

    stamps: list[float] = []
    steps = args.warmup + args.train_steps
    runtime.reset_peak_memory()
    with runtime.precision(args.precision):
        sync()
        stamps.append(time.perf_counter())
        # on_step runs after each optimiser step; the loop reads the loss (a device sync) first.
        train(clf, cross_entropy_loss, batches(), TrainSpec(steps=steps, lr=1e-5, batch_size=args.batch),
              on_step=lambda s, loss: stamps.append(time.perf_counter()))  # fmt: skip
        train_rates = [
            args.batch / (b - a) for a, b in zip(stamps[args.warmup :], stamps[args.warmup + 1 :], strict=False)
        ]
        eval_x = pool[: args.batch].repeat(args.eval_batches, 1, 1, 1) if args.eval_batches > 4 else pool
        predict(clf, eval_x[: args.batch * args.warmup], batch_size=args.batch)  # warm-up
        eval_rates = []
        for i in range(args.eval_batches):
            chunk = eval_x[i * args.batch : (i + 1) * args.batch]
            sync()
            t = time.perf_counter()
            predict(clf, chunk, batch_size=args.batch)
            sync()
            eval_rates.append(len(chunk) / (time.perf_counter() - t))
    mem = runtime.peak_memory()
    out = {
        "model": args.model,
        "params_m": round(n_params, 1),
        "batch": args.batch,
        "resolution": side,
        "model_side": clf.image_size,
        "device": rt.device,
        "gpu": runtime.describe().get("gpu"),
        "precision": args.precision,
        "channels_last": rt.channels_last,
        "compile": args.compile,
        "torch_threads": torch.get_num_threads(),
        "train_img_s": round(statistics.median(train_rates), 1),
        "train_img_s_range": [round(min(train_rates), 1), round(max(train_rates), 1)],
        "eval_img_s": round(statistics.median(eval_rates), 1),
        "eval_img_s_range": [round(min(eval_rates), 1), round(max(eval_rates), 1)],
        **mem,
    }
    print(
        f"{args.model} ({out['params_m']}M image-side params) batch {args.batch} at {side}px on {rt.device}"
        f"{' (' + out['gpu'] + ')' if out['gpu'] else ''}, {args.precision}: "
        f"fine-tune {out['train_img_s']} img/s (range {out['train_img_s_range']}), "
        f"eval {out['eval_img_s']} img/s (range {out['eval_img_s_range']}); peak {mem}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()

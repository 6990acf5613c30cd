"""GPU benchmark of the VGG16 trainer: matmul peak, images/s and MFU at 112 px, CIFAR-10 and face accuracy.

Runs start to finish on an offline GPU machine that has only torch, torchvision, numpy and pillow (the
training path imports nothing else; matplotlib is used for curves only when present). From the repo root::

    python3 bench/gpu.py --cifar DIR --faces DIR --budget-cifar 300 --budget-faces 180 --out OUT

Prints and writes ``OUT/gpu_bench.json`` and ``OUT/gpu_bench.md``:

1. the measured bf16 matmul peak (8192^3 products, CUDA events);
2. training images/s at 112 px (batch ``--batch``, the real ``Trainer.train_step``: on-device augmentation,
   bf16 autocast, channels_last, fused SGD) eager and ``torch.compile``d, and the model FLOP utilisation:
   training FLOPs = 3 x forward FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode``;
3. CIFAR-10 test accuracy reached in ``--budget-cifar`` seconds (compilation and evaluation included; the
   uint8 cache build excluded and reported);
4. the face model trained for ``--budget-faces`` seconds on a ``prepare`` output: closed-set validation
   accuracy, and verification (pairs) AUC / best accuracy of fc7 before and after its ReLU on the val split
   (and on the "holdout" split of unseen identities when the prepare output has one);
5. ``evaluate_face_model`` below: the hook where LFW View 1 / open-set figures join the report.

``--smoke`` runs every section on the CPU with tiny sizes and budgets (the test suite does this).
Each section records its error and the run goes on, so one failure does not waste a GPU session.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import platform
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- 1. matmul peak ------------------------------------------------------------------------------------


def matmul_peak(device: torch.device, n: int, iters: int) -> dict:
    """bf16 (n x n) @ (n x n) throughput in TFLOP/s: 3 warm-ups, then ``iters`` timed products."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    seconds = _timed(device, lambda: [a @ b for _ in range(iters)])
    return {"n": n, "iters": iters, "tflops": 2 * n**3 * iters / seconds / 1e12}


def _timed(device: torch.device, fn) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1000
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# --- 2. throughput and MFU -----------------------------------------------------------------------------


def forward_flops(model: torch.nn.Module, size: int, device: torch.device) -> int:
    """Forward FLOPs of one image (FlopCounterMode counts a multiply-add as 2 FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(2, 3, size, size, device=device)
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train()
    return counter.get_total_flops() // 2


def synthetic_faces(n: int, size: int, classes: int):
    """Random uint8 images standing in for face crops (throughput does not depend on the pixels)."""
    from facesearch.data.datasets import Dataset, ImageSet

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    train = ImageSet(images, rng.integers(0, classes, n).astype(np.int64))
    names = tuple(f"id{i:04d}" for i in range(classes))
    return Dataset("faces", "synthetic", names, train, None, (0.5,) * 3, (0.25,) * 3, size)


def throughput(device: torch.device, size: int, batch: int, compiled: bool, steps: int, warmup: int,
               classes: int, fc_width: int | None, peak_tflops: float | None) -> dict:
    """Images/s of ``Trainer.train_step`` on synthetic data, and its model FLOP utilisation."""
    from facesearch.models.vgg import VGGConfig
    from facesearch.runtime import Distributed
    from facesearch.training import TrainConfig
    from facesearch.training.augment import AugmentConfig
    from facesearch.training.trainer import Trainer

    data = synthetic_faces(batch * 4, size, classes)
    cfg = TrainConfig.faces(batch_size=batch, compile=compiled, device=str(device), epochs=1000)
    model_config = VGGConfig.faces(classes, size, fc_width=fc_width)
    trainer = Trainer(data, Path("/nonexistent"), cfg, model_config, AugmentConfig.faces(), Distributed(), device)
    trainer.step = trainer.total_steps // 2  # a mid-schedule learning rate (the value does not change the cost)
    flops = forward_flops(trainer.net, size, device)
    sums = trainer.new_sums()

    def run(n: int) -> None:
        for i in range(n):
            x, y = trainer.batches.take(trainer.batches.indices(0, i % trainer.batches.steps_per_epoch))
            trainer.train_step(x, y, sums)

    t = time.perf_counter()
    run(warmup)  # includes compilation
    _timed(device, lambda: None)
    warmup_s = time.perf_counter() - t
    seconds = _timed(device, lambda: run(steps))
    images_per_s = steps * batch / seconds
    achieved = images_per_s * 3 * flops / 1e12  # training = 3 x forward
    return {"compiled": compiled, "input_size": size, "batch": batch, "steps": steps, "seconds": seconds,
            "warmup_seconds": warmup_s, "images_per_s": images_per_s, "forward_gflops_per_image": flops / 1e9,
            "achieved_tflops": achieved, "mfu": achieved / peak_tflops if peak_tflops else None,
            "max_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}


# --- 3. CIFAR-10 ----------------------------------------------------------------------------------------


def cifar(args, device: torch.device) -> dict:
    """Train the CIFAR-10 preset for ``--budget-cifar`` seconds; test accuracy at the end (no selection)."""
    from facesearch.data.datasets import load_dataset
    from facesearch.training import TrainConfig, model_config, train

    cache = args.out / "cache"
    t = time.perf_counter()
    load_dataset("cifar10", args.cifar, 32, cache, workers=16)  # builds the uint8 cache outside the budget
    cache_s = time.perf_counter() - t
    overrides = {"batch_size": 8, "max_steps": 2} if args.smoke else {}
    cfg = TrainConfig.cifar10(epochs=args.cifar_epochs, time_budget=args.budget_cifar, device=str(device),
                       compile=args.compile, eval_every=args.cifar_eval_every, lr=args.cifar_lr, **overrides)
    model = model_config("cifar10", args.cifar, fc_width=16) if args.smoke else None
    result = train("cifar10", args.cifar, args.out / "cifar10-run", cfg, model, cache_dir=cache,
                   on_progress=_printer("cifar10"))
    last = result.history[-1]
    return {"budget_s": args.budget_cifar, "trained_s": result.elapsed, "cache_build_s": cache_s,
            "epochs": result.epoch, "steps": result.step, "images_per_s": result.images_per_s,
            "test_acc_final": last["val_acc"], "test_acc_best_epoch": result.best_val_acc,
            "config": {k: getattr(cfg, k) for k in ("batch_size", "lr", "weight_decay", "warmup_epochs",
                                                     "label_smoothing", "eval_flip", "compile")},
            "history": result.history}


def _printer(name: str):
    def show(p: dict) -> None:
        log(f"{name} step {p['step']} epoch {p['epoch'] + 1} loss {p['loss']:.3f} lr {p['lr']:.4f} "
            f"{p['images_per_s']:.0f} img/s")
    return show


# --- 4. faces ---------------------------------------------------------------------------------------------


def faces(args, device: torch.device) -> dict:
    """Train the face classifier for ``--budget-faces`` seconds; closed-set and verification figures."""
    from facesearch.checkpoint import load_checkpoint
    from facesearch.training import TrainConfig, model_config, train

    overrides = {"batch_size": 8, "max_steps": 2} if args.smoke else {"batch_size": args.batch}
    lr = args.face_lr or 0.05 * overrides["batch_size"] / 128  # preset 0.05 at batch 128, scaled linearly
    cfg = TrainConfig.faces(epochs=args.face_epochs, time_budget=args.budget_faces, device=str(device),
                       compile=args.compile, lr=lr, **overrides)
    model = model_config("faces", args.faces, fc_width=args.fc_width, head=args.head)
    run_dir = args.out / "faces-run"
    result = train("faces", args.faces, run_dir, cfg, model, cache_dir=args.out / "cache",
                   on_progress=_printer("faces"))
    loaded = load_checkpoint(run_dir / "best.pt", device)
    report = {"budget_s": args.budget_faces, "trained_s": result.elapsed, "epochs": result.epoch,
              "steps": result.step, "images_per_s": result.images_per_s, "classes": len(loaded.class_names),
              "val_acc_best": result.best_val_acc, "val_acc_final": result.history[-1]["val_acc"],
              "model": loaded.config.to_dict(), "lr": cfg.lr, "batch_size": cfg.batch_size}
    for split in ("val", "holdout"):
        report[f"verification_{split}"] = verification(loaded, args.faces, split, device)
    report["evaluation"] = evaluate_face_model(loaded, args)
    return report


def verification(loaded, data_dir: Path, split: str, device: torch.device) -> dict | None:
    """Pair AUC and best-threshold accuracy of cosine similarity on one split, for fc7 read both ways.

    The model's own reading (``config.embedding``) is ``forward_embedding``: the vector ``who`` uses, centred on
    the mean the trainer stored. The other reading (post- for a pre-ReLU model, and the reverse) is centred the
    same way, on its own mean over (up to 4,096 of) the training crops, so the two compare like for like.
    All same-identity pairs, and as many different-identity pairs drawn at random (seed 0). The threshold is
    chosen on the same pairs, so the accuracy is optimistic; the AUC is threshold-free.
    """
    from facesearch.data.manifest import ok_rows, read_manifest
    from facesearch.evaluation import metrics

    manifest = read_manifest(data_dir)
    rows = ok_rows(manifest, split)
    if len(rows) < 4:
        return None
    own = loaded.config.embedding
    other = "post_relu" if own == "pre_relu" else "pre_relu"
    paths = [data_dir / r.crop for r in rows]
    train = [data_dir / r.crop for r in ok_rows(manifest, "train")][:4096]
    reading = {own: _embeddings(loaded, paths, device, lambda m, x: m.forward_embedding(x))}
    relu = other == "post_relu"
    fc7 = lambda m, x: torch.relu(m._fc7(x)) if relu else m._fc7(x)  # noqa: E731 (the other reading, uncentred)
    mean = _embeddings(loaded, train, device, fc7).mean(0) if train else 0.0
    reading[other] = _embeddings(loaded, paths, device, fc7) - mean
    labels = np.array([r.identity for r in rows])
    same, diff = _pairs(labels)
    truth = np.concatenate([np.ones(len(same), bool), np.zeros(len(diff), bool)])
    out = {"n_images": len(rows), "n_identities": len(set(labels)), "n_pairs": len(same) + len(diff),
           "model_embedding": own}
    for name in ("pre_relu", "post_relu"):
        emb = reading[name] / np.maximum(np.linalg.norm(reading[name], axis=1, keepdims=True), 1e-12)
        scores = np.concatenate([np.sum(emb[i] * emb[j], 1) for i, j in (same.T, diff.T)])
        out[name] = {"auc": metrics.auc(metrics.roc_curve(scores, truth)),
                     "best_accuracy": metrics.best_threshold(scores, truth)[1]}
    return out


def _embeddings(loaded, paths: list[Path], device: torch.device, read, batch: int = 256) -> np.ndarray:
    """``read(model, inputs)`` for the crops ``paths``, float32 (n, d), in batches."""
    from facesearch.checkpoint import preprocess_batch
    from facesearch.data.images import load_image

    out = []
    with torch.no_grad():
        for start in range(0, len(paths), batch):
            images = [load_image(p, min_side=1) for p in paths[start:start + batch]]
            out.append(read(loaded.model, preprocess_batch(images, loaded.preprocess).to(device)).float().cpu())
    return torch.cat(out).numpy()


def _pairs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = len(labels)
    i, j = np.triu_indices(n, 1)
    same_mask = labels[i] == labels[j]
    same = np.stack([i[same_mask], j[same_mask]], 1)
    diff_all = np.stack([i[~same_mask], j[~same_mask]], 1)
    pick = np.random.default_rng(0).choice(len(diff_all), size=min(len(diff_all), max(len(same), 1)), replace=False)
    return same, diff_all[pick]


def evaluate_face_model(loaded, args) -> dict:
    """LFW View 1 pairs and open-set identification of the trained face model, with the random baseline.

    ``--lfw-pairs`` holds pairsDevTrain.txt / pairsDevTest.txt; ``--lfw`` is a ``prepare --select center``
    output of LFW's images (crops made on the CPU machine: the raw photos do not travel). The threshold comes
    from pairsDevTrain, the accuracy from pairsDevTest (used once, here). Open-set: one enrolled photo per
    LFW person with several, the rest probe; single-photo people are never-enrolled distractors.
    """
    if not (args.lfw and args.lfw_pairs):
        return {}
    from facesearch.evaluation.identification import evaluate_open_set
    from facesearch.evaluation.verification import evaluate_pairs

    device = str(next(loaded.model.parameters()).device)
    files = [args.lfw_pairs / "pairsDevTrain.txt", args.lfw_pairs / "pairsDevTest.txt"]
    n_boot = 50 if args.smoke else 1000
    pairs = evaluate_pairs(loaded, files, args.lfw, device=device, n_boot=n_boot)
    open_set = evaluate_open_set(loaded, args.lfw, device=device, n_boot=n_boot)
    try:
        from facesearch.evaluation.plots import save_open_set_plots, save_pairs_plots

        save_pairs_plots(pairs, args.out / "lfw")
        save_open_set_plots(open_set, args.out / "lfw")
    except ImportError:  # matplotlib is optional on the GPU machine
        pass
    return {"lfw_view1": pairs.summary, "open_set": open_set.summary}


# --- report ---------------------------------------------------------------------------------------------


def section(results: dict, name: str, fn, *args) -> None:
    """Run one section; record its result or its error and go on."""
    log(f"--- {name}")
    t = time.perf_counter()
    try:
        results[name] = fn(*args)
    except Exception as e:  # noqa: BLE001 - one broken section must not lose the others' figures
        traceback.print_exc()
        results[name] = {"error": f"{type(e).__name__}: {e}"}
    results.setdefault("section_seconds", {})[name] = round(time.perf_counter() - t, 1)
    log(f"{name}: {json.dumps(_brief(results[name]))}")


def _brief(value):
    if isinstance(value, dict):
        return {k: _brief(v) for k, v in value.items() if k != "history"}
    return round(value, 4) if isinstance(value, float) else value


def markdown(r: dict) -> str:
    env = r["environment"]
    lines = [f"## VGG16 trainer on {env['device_name']} ({env['date']})", "",
             f"torch {env['torch']}, command: `{env['command']}`", ""]
    peak = r.get("matmul_peak", {})
    if "tflops" in peak:
        lines.append(f"- bf16 matmul peak (measured, {peak['n']}^3): **{peak['tflops']:.0f} TFLOP/s**")
    for key in ("throughput_eager", "throughput_compiled"):
        t = r.get(key, {})
        if "images_per_s" in t:
            mfu = f", MFU **{100 * t['mfu']:.1f} %**" if t.get("mfu") is not None else ""
            mode = "compiled" if t["compiled"] else "eager"
            lines.append(f"- training {t['input_size']} px, batch {t['batch']}, {mode}: "
                         f"**{t['images_per_s']:.0f} images/s**, {t['achieved_tflops']:.1f} TFLOP/s{mfu} "
                         f"(forward {t['forward_gflops_per_image']:.2f} GFLOP/image, x3 for training)")
    c = r.get("cifar10", {})
    if "test_acc_final" in c:
        lines.append(f"- CIFAR-10: **{100 * c['test_acc_final']:.2f} %** test accuracy after {c['trained_s']:.0f} s "
                     f"(budget {c['budget_s']:.0f} s, {c['epochs']} epochs, {c['images_per_s']:.0f} images/s; "
                     f"cache build {c['cache_build_s']:.1f} s not counted)")
    f = r.get("faces", {})
    if "val_acc_best" in f:
        lines.append(f"- faces ({f['classes']} identities): closed-set validation accuracy "
                     f"**{100 * f['val_acc_best']:.2f} %** "
                     f"(best epoch; final {100 * (f['val_acc_final'] or 0):.2f} %) after {f['trained_s']:.0f} s, "
                     f"{f['epochs']} epochs, {f['images_per_s']:.0f} images/s")
        for split in ("val", "holdout"):
            v = f.get(f"verification_{split}")
            if v:
                lines.append(f"  - verification on {split} ({v['n_identities']} identities, {v['n_pairs']} pairs): "
                             + ", ".join(f"{k} AUC {v[k]['auc']:.4f} / acc {100 * v[k]['best_accuracy']:.2f} %"
                                         for k in ("pre_relu", "post_relu")))
    ev = f.get("evaluation", {})
    lfw, ops = ev.get("lfw_view1"), ev.get("open_set")
    if lfw and "model" in lfw:
        m, b = lfw["model"], lfw.get("random_baseline", {})
        lines.append(f"  - LFW View 1 (threshold from pairsDevTrain, accuracy on pairsDevTest): **{_pct(m['accuracy'])}** "
                     f"(95 % CI {_ci(m.get('accuracy_ci95'))}), AUC {m.get('auc', float('nan')):.4f}; "
                     f"random weights {_pct(b.get('accuracy'))} (CI {_ci(b.get('accuracy_ci95'))})")
    if ops and "model" in ops:
        m, b = ops["model"], ops.get("random_baseline", {})
        dirs = m.get("dir_at_fpir", {})
        lines.append(f"  - open-set on LFW people: rank-1 **{_pct(m.get('rank1'))}** (CI {_ci(m.get('rank1_ci95'))}), "
                     f"rank-5 {_pct(m.get('rank5'))}, DIR@FPIR 1e-2 {_pct(dirs.get('0.01'))}, "
                     f"1e-1 {_pct(dirs.get('0.1'))}; random weights rank-1 {_pct(b.get('rank1'))}")
    errors = [f"- {k}: {v['error']}" for k, v in r.items() if isinstance(v, dict) and "error" in v]
    return "\n".join(lines + (["", "Errors:"] + errors if errors else [])) + "\n"


def _pct(x) -> str:
    return f"{100 * x:.2f} %" if isinstance(x, (int, float)) else "not measurable"  # the report says so in words


def _ci(ci) -> str:
    return "n/a" if not ci else f"{100 * ci[0]:.1f}–{100 * ci[1]:.1f} %"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cifar", type=Path, help="CIFAR-10 folder (train|test/<class>/*.jpg or cifar-10-batches-py)")
    p.add_argument("--faces", type=Path, help="a `facesearch prepare` output (112 px crops)")
    p.add_argument("--budget-cifar", type=float, default=300.0, help="seconds of CIFAR-10 training")
    p.add_argument("--budget-faces", type=float, default=180.0, help="seconds of face training")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--batch", type=int, default=256, help="batch for the 112 px throughput and the face run")
    p.add_argument("--throughput-steps", type=int, default=30)
    p.add_argument("--cifar-epochs", type=int, default=200, help="upper bound; the time budget ends the run")
    p.add_argument("--cifar-eval-every", type=int, default=5)
    p.add_argument("--cifar-lr", type=float, default=None, help="peak lr (default: the preset, 0.4 at batch 512)")
    p.add_argument("--face-epochs", type=int, default=400, help="upper bound; the time budget ends the run")
    p.add_argument("--face-lr", type=float, default=None, help="default: 0.05 x batch / 128")
    p.add_argument("--fc-width", type=int, default=None, help="face model fc6/fc7 width (default: preset)")
    p.add_argument("--head", default=None, help='"softmax", "cosface" or "arcface" (default: preset)')
    p.add_argument("--no-compile", dest="compile", action="store_false", help="eager training runs")
    p.add_argument("--skip", default="", help="comma-separated sections to skip: peak,throughput,cifar10,faces")
    p.add_argument("--lfw", type=Path, help="a `prepare --select center` output of LFW View 1's images")
    p.add_argument("--lfw-pairs", type=Path, help="folder with pairsDevTrain.txt and pairsDevTest.txt")
    p.add_argument("--device", default="auto")
    p.add_argument("--smoke", action="store_true", help="tiny CPU run of every section (tests)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    from facesearch.runtime import resolve_device

    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout)
    device = resolve_device("cpu" if args.smoke else args.device)
    if args.smoke:
        args.compile = False
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    skip = set(filter(None, args.skip.split(",")))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    r = {"environment": {"device_name": name,
                         "torch": torch.__version__, "date": datetime.datetime.now().isoformat(timespec="seconds"),
                         "command": " ".join(["python3", "bench/gpu.py", *(argv if argv is not None else sys.argv[1:])]),
                         "smoke": args.smoke}}
    if "peak" not in skip:
        section(r, "matmul_peak", matmul_peak, device, 256 if args.smoke else 8192, 2 if args.smoke else 20)
    peak = r.get("matmul_peak", {}).get("tflops")
    if "throughput" not in skip:
        size, batch, steps = (32, 4, 2) if args.smoke else (112, args.batch, args.throughput_steps)
        for compiled in ([False, True] if device.type == "cuda" and args.compile else [False]):
            section(r, f"throughput_{'compiled' if compiled else 'eager'}", throughput, device, size, batch,
                    compiled, steps, 1 if args.smoke else 5, 299, args.fc_width, peak)
    if args.cifar and "cifar10" not in skip:
        section(r, "cifar10", cifar, args, device)
    if args.faces and "faces" not in skip:
        section(r, "faces", faces, args, device)
    (args.out / "gpu_bench.json").write_text(json.dumps(r, indent=2, default=str))
    (args.out / "gpu_bench.md").write_text(markdown(r))
    print(markdown(r))
    return r


if __name__ == "__main__":
    main()

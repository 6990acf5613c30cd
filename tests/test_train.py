"""The trainer on a tiny prepare-like output: loss falls, outputs are written, resume is exact, CLI works."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from facesearch.checkpoint import load_checkpoint, read_checkpoint
from facesearch.training.augment import AugmentConfig, augment
from facesearch.data.datasets import load_dataset
from facesearch.data.manifest import read_manifest, write_manifest
from facesearch.data.detect import CropSettings
from facesearch.training import TrainConfig, model_config, train

from builders import make_prepared_faces

TINY_MODEL = {"fc_width": 16, "dropout": 0.0}


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    return make_prepared_faces(tmp_path_factory.mktemp("prepared"))  # 3 people: 12 train + 3 val crops


@pytest.fixture(scope="module")
def trained(faces, tmp_path_factory):
    """3 epochs of one full batch each, no augmentation: the loss must fall."""
    run = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(epochs=3, batch_size=12, lr=0.02, warmup_epochs=0, log_every=1)
    events = []
    result = train("faces", faces, run, cfg, model_config("faces", faces, **TINY_MODEL), AugmentConfig.none(),
                   on_progress=events.append)
    return run, result, events


def test_a_few_steps_lower_the_loss(trained):
    _, result, events = trained
    assert result.step == 3 and result.epoch == 3
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0]
    assert [e["step"] for e in events] == [1, 2, 3] and all(e["images_per_s"] > 0 for e in events)


def test_run_dir_holds_metrics_curves_and_loadable_checkpoints(trained, faces):
    run, result, _ = trained
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3] and all(r["val_acc"] is not None for r in lines)
    assert (run / "curves.png").stat().st_size > 0
    best = load_checkpoint(run / "best.pt")
    assert best.class_names == sorted(p.name for p in faces.iterdir() if p.is_dir())
    assert best.preprocess.input_size == 32 and best.config.fc_width == 16
    assert best.extra["metrics"]["val_acc"] == result.best_val_acc
    # how prepare cut the crops travels with the model, so the gallery cuts faces the same way (not 112 px)
    assert best.extra["crop"] == {"size": 32, "margin": 0.2, "align": False,  # and how queries look for faces
                                  "detector": {"min_face_size": 40, "thresholds": [0.6, 0.7, 0.7]}}
    assert CropSettings.from_checkpoint(best) == CropSettings(size=32, margin=0.2, align=False)
    last = read_checkpoint(run / "last.pt")
    assert last["step"] == 3 and {"optimizer", "scheduler", "rng", "sampler"} <= set(last)


@pytest.mark.slow
def test_resume_continues_at_the_exact_step(faces, tmp_path):
    # 1 epoch of 3 steps (batch 4), with augmentation and dropout so that the RNG state matters too.
    cfg = TrainConfig(epochs=1, batch_size=4, lr=0.02, warmup_epochs=0)
    model = model_config("faces", faces, fc_width=16, dropout=0.5)
    straight = train("faces", faces, tmp_path / "a", cfg, model, cache_dir=tmp_path / "cache")
    stopped = train("faces", faces, tmp_path / "b", TrainConfig(**{**cfg.__dict__, "max_steps": 2}), model,
                    cache_dir=tmp_path / "cache")
    assert stopped.step == 2 and read_checkpoint(tmp_path / "b" / "last.pt")["sampler"]["step_in_epoch"] == 2
    resumed = train("faces", faces, tmp_path / "b", cfg, cache_dir=tmp_path / "cache", resume=True)
    assert resumed.step == straight.step == 3
    a, b = read_checkpoint(tmp_path / "a" / "last.pt"), read_checkpoint(tmp_path / "b" / "last.pt")
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


def test_cli_time_budget_stops_cleanly_and_saves(faces, tmp_path):
    from facesearch.cli import app

    args = ["train", str(faces), "--out", str(tmp_path / "run"), "--time-budget", "0.001", "--batch-size", "4",
            "--fc-width", "8", "--epochs", "5", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["steps"] == 1 and summary["last"]["partial"] is True
    assert read_checkpoint(tmp_path / "run" / "last.pt")["step"] == 1


def test_cifar_missing_dataset_says_where_to_put_it(tmp_path):
    from facesearch.cli import app

    result = CliRunner().invoke(app, ["cifar10", "train", "--data", str(tmp_path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert "no CIFAR-10 found" in result.stderr and "nothing is downloaded" in result.stderr


def test_cifar_folders_load_with_test_as_validation(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("test", 2)):
        for name in ("cat", "airplane"):
            (tmp_path / "c" / split / name).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                    tmp_path / "c" / split / name / f"{i:04d}.jpg")
    data = load_dataset("cifar10", tmp_path / "c", 32, tmp_path / "cache")
    assert data.class_names == ("airplane", "cat") and len(data.train) == 6 and len(data.val) == 4
    assert data.train.images.shape == (6, 32, 32, 3) and data.train.images.dtype == np.uint8
    assert data.train.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_augment_is_batched_seeded_and_in_range():
    x = torch.randint(0, 256, (5, 32, 32, 3), dtype=torch.uint8)
    plain = augment(x, AugmentConfig.none(), torch.Generator().manual_seed(0))
    torch.testing.assert_close(plain, x.permute(0, 3, 1, 2).float() / 255)
    for cfg in (AugmentConfig.cifar(), AugmentConfig.faces()):
        a = augment(x, cfg, torch.Generator().manual_seed(1))
        b = augment(x, cfg, torch.Generator().manual_seed(1))
        assert a.shape == (5, 3, 32, 32) and torch.equal(a, b) and 0 <= a.min() and a.max() <= 1
        assert not torch.equal(a, plain)


def make_lfw_like(out: Path) -> Path:
    """A prepare output whose photos are named the LFW way, with View-1-style train and test pair files."""
    make_prepared_faces(out, n_ids=3, per_id=3, n_val=0)
    rows = read_manifest(out)
    counter: dict[str, int] = {}
    for r in rows:
        counter[r.identity] = counter.get(r.identity, 0) + 1
        r.path = f"{r.identity}/{r.identity}_{counter[r.identity]:04d}.jpg"
    write_manifest(out, rows)
    a, b, c = sorted(counter)
    (out / "pairsDevTrain.txt").write_text(f"{a}\t1\t2\n{b}\t1\t3\n{a}\t1\t{b}\t2\n{b}\t3\t{c}\t1\n")
    (out / "pairsDevTest.txt").write_text(f"{c}\t1\t2\n{a}\t2\t3\n{a}\t3\t{c}\t2\n{c}\t3\t{b}\t1\n")
    return out


@pytest.mark.slow
def test_gpu_bench_smoke_runs_every_section_on_cpu(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_gpu", Path(__file__).resolve().parents[1] / "bench" / "gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    faces_dir = make_prepared_faces(tmp_path / "faces", n_ids=2, per_id=4, n_val=2)
    for split, n in (("train", 2), ("test", 1)):
        for name in ("cat", "dog"):
            (tmp_path / "c" / split / name).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (32, 32), (40 * i, 90, 200)).save(tmp_path / "c" / split / name / f"{i}.jpg")
    lfw = make_lfw_like(tmp_path / "lfw")
    r = bench.main(["--smoke", "--cifar", str(tmp_path / "c"), "--faces", str(faces_dir), "--budget-cifar", "1",
                    "--budget-faces", "1", "--out", str(tmp_path / "out"), "--lfw", str(lfw), "--lfw-pairs", str(lfw)])
    assert not [k for k, v in r.items() if isinstance(v, dict) and "error" in v], r
    assert r["throughput_eager"]["images_per_s"] > 0 and r["throughput_eager"]["forward_gflops_per_image"] > 0.6
    assert 0 <= r["cifar10"]["test_acc_final"] <= 1 and r["faces"]["val_acc_best"] is not None
    assert {"pre_relu", "post_relu"} <= set(r["faces"]["verification_val"])
    lfw_figures = r["faces"]["evaluation"]["lfw_view1"]["model"]
    assert 0 <= lfw_figures["accuracy"] <= 1 and "random_baseline" in r["faces"]["evaluation"]["lfw_view1"]
    assert r["faces"]["evaluation"]["open_set"]["model"]["rank1"] is not None
    assert (tmp_path / "out" / "gpu_bench.json").is_file()
    assert "CIFAR-10" in (tmp_path / "out" / "gpu_bench.md").read_text()


def test_best_checkpoint_centres_the_embedding_on_the_training_set(trained, faces):
    """best.pt stores the training images' mean embedding; its embeddings of them average to zero."""
    from facesearch.checkpoint import preprocess_batch
    from facesearch.data.manifest import ok_rows

    run, _, _ = trained
    best = load_checkpoint(run / "best.pt")
    assert best.model.embedding_mean.abs().sum() > 0
    crops = [Image.open(faces / r.crop).convert("RGB") for r in ok_rows(read_manifest(faces), "train")]
    with torch.no_grad():
        emb = best.model.forward_embedding(preprocess_batch(crops, best.preprocess))  # (12, 16)
    scale = emb.abs().mean()
    assert emb.mean(0).abs().max() < 1e-3 * max(1.0, float(scale)) + 1e-4
    assert read_checkpoint(run / "last.pt")["model"]["embedding_mean"].abs().sum() == 0  # training state untouched


@pytest.mark.slow
def test_init_starts_from_a_checkpoint_with_a_head_for_the_new_identities(trained, tmp_path):
    """--init: every conv/BN/fc layer starts as the given model's, the head is new and sized for the new people,
    the normalisation is the starting model's, and fine-tuning lowers the loss."""
    from facesearch.models.vgg import VGG16, VGGConfig
    from facesearch.training.start import init_weights

    run, _, _ = trained
    base = read_checkpoint(run / "best.pt")
    two = make_prepared_faces(tmp_path / "two", n_ids=2, per_id=6)
    net = VGG16(VGGConfig(**{**base["model_config"], "num_classes": 2}))
    record = init_weights(net, {**base, "source": str(run / "best.pt")})
    state = net.state_dict()
    for name, tensor in base["model"].items():
        if name.startswith("head.") or name == "embedding_mean":
            continue
        assert torch.equal(state[name], tensor), name
    assert state["head.weight"].shape == (2, base["model_config"]["fc_width"])
    assert not state["embedding_mean"].any()  # the live model keeps zero; best.pt stores the new mean
    assert record["fingerprint"] == load_checkpoint(run / "best.pt").fingerprint
    same = VGG16(VGGConfig(**base["model_config"]))  # the same people: a second schedule keeps the head too
    init_weights(same, {**base, "source": "x"}, base["class_names"])
    assert torch.equal(same.state_dict()["head.weight"], base["model"]["head.weight"])

    cfg = TrainConfig(epochs=4, batch_size=10, lr=0.02, warmup_epochs=0)
    tuned = train("faces", two, tmp_path / "tuned", cfg, aug=AugmentConfig.none(), init=run / "best.pt")
    losses = [h["train_loss"] for h in tuned.history]
    assert losses[-1] < losses[0]
    out = read_checkpoint(tmp_path / "tuned" / "last.pt")
    assert out["init"] == record and len(out["class_names"]) == 2
    assert out["model_config"] == {**base["model_config"], "num_classes": 2}
    assert out["preprocess"] == base["preprocess"]
    with pytest.raises(ValueError, match="leave `model` out"):  # the architecture is the checkpoint's
        train("faces", two, tmp_path / "again", cfg, model_config("faces", two), init=run / "best.pt")


@pytest.mark.slow
def test_a_model_sized_for_other_data_is_refused(faces, tmp_path):
    from facesearch.models.vgg import VGGConfig

    cfg = TrainConfig(epochs=1, batch_size=4, max_steps=1)
    with pytest.raises(ValueError, match="7 classes"):
        train("faces", faces, tmp_path / "r", cfg, VGGConfig.faces(7, 32, fc_width=16))
    train("faces", faces, tmp_path / "preset", cfg)  # no model: the face preset, sized for these 3 people at 32 px
    built = read_checkpoint(tmp_path / "preset" / "last.pt")["model_config"]
    assert built == VGGConfig.faces(3, 32).to_dict()


def test_cli_init_refuses_architecture_options(trained, faces, tmp_path):
    from facesearch.cli import app

    run, _, _ = trained
    result = CliRunner().invoke(app, ["train", str(faces), "--out", str(tmp_path / "r"), "--init",
                                      str(run / "best.pt"), "--fc-width", "32"])
    assert result.exit_code == 1 and "--fc-width" in result.stderr and "--init" in result.stderr
    missing = CliRunner().invoke(app, ["train", str(faces), "--out", str(tmp_path / "r"), "--init",
                                       str(tmp_path / "nope.pt")])
    assert missing.exit_code == 1 and "nope.pt" in missing.stderr


def test_cli_augment_presets_are_named_and_recorded(faces, tmp_path):
    from facesearch.cli import app

    bad = CliRunner().invoke(app, ["train", str(faces), "--out", str(tmp_path / "r"), "--augment", "wild"])
    assert bad.exit_code == 1 and "faces-strong" in bad.stderr
    args = ["train", str(faces), "--out", str(tmp_path / "s"), "--augment", "faces-strong", "--max-steps", "1",
            "--batch-size", "4", "--fc-width", "8", "--epochs", "1"]
    assert CliRunner().invoke(app, args).exit_code == 0
    assert tuple(read_checkpoint(tmp_path / "s" / "last.pt")["augment"]["scale"]) == AugmentConfig.faces_strong().scale


def test_margin_warmup_grows_the_arcface_margin_from_zero_then_keeps_it(faces, tmp_path, monkeypatch):
    """ArcFace's margin on a head that cannot tell anyone apart yet can collapse a run (every cosine obtuse,
    where the angular penalty is small); --margin-warmup-epochs ramps it in from 0."""
    from facesearch.models.vgg import MarginHead

    seen, forward = [], MarginHead.forward

    def recording(self, x, labels=None):
        if labels is not None:
            seen.append(self.margin)
        return forward(self, x, labels)

    monkeypatch.setattr(MarginHead, "forward", recording)
    cfg = TrainConfig(epochs=4, batch_size=12, lr=0.02, warmup_epochs=0, margin_warmup_epochs=2, log_every=1)
    arch = model_config("faces", faces, **{**TINY_MODEL, "head": "arcface", "embedding": "pre_relu"})
    train("faces", faces, tmp_path / "run", cfg, arch, AugmentConfig.none())
    assert seen == pytest.approx([0.0, 0.25, 0.5, 0.5])  # one step an epoch: step / 2 epochs of the full 0.5


def test_margin_warmup_without_a_margin_head_is_refused(faces, tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=12, margin_warmup_epochs=2)
    with pytest.raises(ValueError, match="no margin to warm up"):
        train("faces", faces, tmp_path / "run", cfg, model_config("faces", faces, **TINY_MODEL), AugmentConfig.none())


def test_cli_refuses_a_run_folder_that_holds_a_run_and_leaves_it_alone(trained, faces, tmp_path):
    """Without --resume a new run would overwrite the checkpoints and append to another run's metrics."""
    from builders import run_cli

    run, _, _ = trained
    before = {name: (run / name).read_bytes() for name in ("best.pt", "last.pt", "metrics.jsonl")}
    result = run_cli("train", faces, "--out", run, "--max-steps", "1", "--batch-size", "4", "--fc-width", "8",
                     ok=False)
    assert result.exit_code == 1 and str(run) in result.stderr and "--resume" in result.stderr, result.output
    assert "Traceback" not in result.output
    assert {name: (run / name).read_bytes() for name in before} == before
    (tmp_path / "crashed").mkdir()  # metrics but no last.pt: nothing to resume, only a new --out helps
    (tmp_path / "crashed" / "metrics.jsonl").write_text("{}\n")
    result = run_cli("train", faces, "--out", tmp_path / "crashed", ok=False)
    assert result.exit_code == 1 and "choose a new --out" in result.stderr and "--resume" not in result.stderr
    result = run_cli("train", faces, "--resume", run, "--out", tmp_path / "other", ok=False)
    assert result.exit_code == 1 and "--out" in result.stderr and not (tmp_path / "other").exists()


@pytest.mark.parametrize("option, value", [("--max-steps", "0"), ("--max-steps", "-1"), ("--input-size", "0"),
                                           ("--input-size", "1025"), ("--checkpoint-every", "0"),
                                           ("--checkpoint-every", "nan"), ("--fc-width", "0"), ("--workers", "0"),
                                           ("--precision", "fp16")])
def test_cli_out_of_range_training_options_are_named_before_training(faces, tmp_path, option, value):
    from builders import run_cli

    # the option under test comes last: of two --fc-width (or --max-steps) the last counts
    small = ["--batch-size", "4", "--fc-width", "8", "--conv-width", "0.25", "--max-steps", "1"]
    result = run_cli("train", faces, "--out", tmp_path / "run", *small, option, value, ok=False)
    assert result.exit_code in (1, 2) and option in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "run" / "last.pt").exists()


def test_bf16_trains_on_a_cpu_with_bf16_instructions_and_is_refused_where_it_would_be_emulated(faces, tmp_path,
                                                                                                monkeypatch):
    import facesearch.runtime as runtime
    import facesearch.training.trainer as trainer
    from builders import run_cli

    cpu = torch.device("cpu")
    assert not runtime.uses_bf16("auto", cpu) and not runtime.uses_bf16("fp32", cpu)  # the CPU's default: float32
    with monkeypatch.context() as m:
        m.setattr(runtime, "cpu_has_bf16", lambda: False)
        with pytest.raises(ValueError, match="no bf16 instructions"):
            runtime.uses_bf16("bf16", cpu)
        refused = run_cli("train", faces, "--out", tmp_path / "refused", "--precision", "bf16", "--device", "cpu",
                          "--max-steps", "1", ok=False)
        assert refused.exit_code == 1 and "--precision bf16" in refused.stderr and "no bf16" in refused.stderr
        assert not (tmp_path / "refused" / "last.pt").exists()
    if not runtime.cpu_has_bf16():
        pytest.skip("this CPU has no bf16 instructions (AVX512-BF16 or AMX): --precision bf16 is refused on it")
    used, real = [], trainer.autocast
    monkeypatch.setattr(trainer, "autocast", lambda device, bf16: used.append(bf16) or real(device, bf16))
    cfg = TrainConfig(epochs=3, batch_size=12, lr=0.02, warmup_epochs=0, precision="bf16", device="cpu")
    result = train("faces", faces, tmp_path / "bf16", cfg, model_config("faces", faces, **TINY_MODEL),
                   AugmentConfig.none())
    losses = [h["train_loss"] for h in result.history]
    assert used and all(used) and np.isfinite(losses).all() and losses[-1] < losses[0]
    assert read_checkpoint(tmp_path / "bf16" / "last.pt")["train_config"]["precision"] == "bf16"


def test_step_limit_and_save_interval_are_checked_by_the_config():
    with pytest.raises(ValueError, match="max_steps 0"):  # 0 used to mean "no limit"
        TrainConfig(max_steps=0)
    with pytest.raises(ValueError, match="checkpoint_every"):
        TrainConfig(checkpoint_every=0)


def test_identity_sampling_draws_every_person_equally_often_and_repeats_per_seed():
    from facesearch.training.batches import Batches
    from facesearch.data.datasets import ImageSet
    from facesearch.runtime import Distributed

    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)  # 90, 9 and 1 photos
    data = ImageSet(images=np.zeros((100, 4, 4, 3), np.uint8), labels=labels)
    ddp = Distributed()
    by = {s: Batches(data, 10, 0, ddp, torch.device("cpu"), sampling=s) for s in ("photos", "identities")}
    drawn = {s: np.concatenate([labels[b.indices(e, k).numpy()] for e in range(30) for k in range(10)])
             for s, b in by.items()}
    assert np.bincount(drawn["photos"]).tolist() == [2700, 270, 30]  # every crop once an epoch
    shares = np.bincount(drawn["identities"], minlength=3) / len(drawn["identities"])
    assert np.allclose(shares, 1 / 3, atol=0.04), shares
    again = Batches(data, 10, 0, ddp, torch.device("cpu"), sampling="identities")
    assert torch.equal(again.indices(3, 2), by["identities"].indices(3, 2))  # resumable: seeded by epoch
    with pytest.raises(ValueError, match="sampling 'people'"):
        TrainConfig(sampling="people")

"""The GPU check (issue 19; docs/benchmarks.md, "GPU check"): one command, every figure in one JSON.

    bash benchmarks/gpu_check.sh            # the H200 run: under 5 minutes, OUT/gpu_check.json
    bash benchmarks/gpu_check.sh --cpu      # the same steps, tiny, on a CPU (a dry run of the script)
    bash benchmarks/gpu_check.sh --parts compile,bisect   # only some parts (setup data is reused)

Makes its own synthetic data (`evilm data synth`, `evilm data shards`), a random-init paper
tokenizer (a 1-step `evilm tokenize-train` of recipes/tokenizer_webvid.yaml) and its label cache
(`evilm label`), then measures through the CLI: pre-training of recipes/webvid.yaml's model (bf16
vs fp32, cache vs online targets), torch.compile, a torchrun SIGTERM + --resume, `label` and
`retrieve index` throughput, and the largest bf16 batch (a child process that catches CUDA OOM).
Installs nothing, needs no network: the ImageNet / CLIP weights are random unless given as files.
The JSON is rewritten after every part; a part that fails records its error and the rest go on.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WEBVID, TOKENIZER = str(REPO / "recipes/webvid.yaml"), str(REPO / "recipes/tokenizer_webvid.yaml")

# ------------------------------------------------------------------ budget
# Estimates for the H200 (nothing measured there yet): a process starts in ~15 s (torch + timm +
# transformers imports, CUDA, 8 spawned loader workers); the paper model's bf16 step at batch 64
# (~1.7 TFLOP forward + backward, EdgeNeXt's depthwise convs memory-bound) ~0.15-0.3 s, fp32 ~2x;
# torch.compile of the trunk ~40-90 s. The CPU box's paper-size figure (0.07 clips/s at batch 2,
# docs/benchmarks.md) says nothing about the GPU beyond "the CPU cannot run this check at size".
GPU = dict(
    clips=512,            # synthetic clips: 8 steps an epoch at batch 64, never a short batch
    size=256, frames=16,  # 256 px clips of 16 frames; shards keep 8 candidates
    batch=64, workers=8,  # the paper recipe's batch and loader workers (label / index: 8 decoders)
    steps=12, warmup=3,   # pre-training steps per variant; the first 3 are not in the medians (~20 s each)
    compile_steps=12,     # with train.compile (the first step is the compile time)
    resume_steps=8, resume_stop=3, resume_batch=16,  # torchrun: 8 steps, SIGTERM after 3 rows (~3 x 20 s)
    bisect_start=64, bisect_limit=2048, bisect_step=16, bisect_steps=2,  # bf16 batch search (~30 s)
    vocab=9420,           # the paper's text vocabulary (MLM head size); synthetic captions have ~30 words
    model=["model.pretrained=false"], tokenizer=["model.pretrained=false"],
)
CPU = dict(
    clips=16, size=64, frames=8, batch=4, workers=1, steps=4, warmup=1, compile_steps=4,
    resume_steps=6, resume_stop=2, resume_batch=2, bisect_start=2, bisect_limit=4, bisect_step=2, bisect_steps=1,
    vocab=100,
    model=["model.size=quickstart-tiny", "model.pretrained=false", "masking.min_block=1"],
    tokenizer=["model.pretrained=false", "model.codebook_size=16", "model.decoder_depth=1", "model.decoder_dim=32",
               "model.decoder_heads=2", "model.encoder_args={embed_dim: 64, depth: 1, num_heads: 2}"],
)
# seconds per part (each evilm command gets what is left of its part, and of the whole run)
CAPS_GPU = dict(setup=70, label=30, pretrain=110, resume=80, index=30, compile=100, bisect=45, total=285)
CAPS_CPU = dict(setup=300, label=120, pretrain=300, resume=400, index=120, compile=400, bisect=200, total=2400)
PARTS = ("setup", "label", "pretrain", "resume", "index", "compile", "bisect")  # run in this order


class Check:
    def __init__(self, args):
        self.cpu, self.p = args.cpu, dict(CPU if args.cpu else GPU)
        self.caps = dict(CAPS_CPU if args.cpu else CAPS_GPU)
        if args.budget:
            self.caps["total"] = args.budget
        self.out, self.work = Path(args.out), Path(args.work)
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.start, self.part_end = time.monotonic(), 0.0
        self.weights = self._weights(args)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if args.cpu:
            self.env["EVILM_COMPILE_BACKEND"] = args.compile_backend or "aot_eager"
        elif args.compile_backend:
            self.env["EVILM_COMPILE_BACKEND"] = args.compile_backend
        self.json_path = self.out / "gpu_check.json"
        old = json.loads(self.json_path.read_text()) if self.json_path.exists() else {}
        self.result = {"mode": "cpu" if args.cpu else "gpu", "settings": {k: v for k, v in self.p.items()},
                       "caps_s": self.caps, "weights": self.weights["note"], "environment": self._environment(),
                       "parts": old.get("parts", {}) if args.keep else {}}

    # -------------------------------------------------------------- plumbing
    def _weights(self, args) -> dict:
        if args.edgenext_weights:
            self.p["model"] = [s for s in self.p["model"] if not s.startswith("model.pretrained")] + [
                f"model.pretrained={args.edgenext_weights}"]
        if args.vit_weights:
            self.p["tokenizer"] = [s for s in self.p["tokenizer"] if not s.startswith("model.pretrained")] + [
                f"model.pretrained={args.vit_weights}"]
        return {"note": f"EdgeNeXt: {args.edgenext_weights or 'random init'}; ViT-B/32 tokenizer: "
                        f"{args.vit_weights or 'random init'} (no hub access: --edgenext-weights / --vit-weights "
                        "FILE give local files; throughput does not depend on the weights)"}

    def _environment(self) -> dict:
        code = ("import json, torch, platform; c = torch.cuda.is_available(); print(json.dumps({'torch': "
                "torch.__version__, 'cuda': torch.version.cuda, 'gpu': torch.cuda.get_device_name(0) if c else None, "
                "'gpu_memory_gib': torch.cuda.get_device_properties(0).total_memory / 2**30 if c else None, "
                "'cpus': __import__('os').cpu_count(), 'python': platform.python_version()}))")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=self.env)
        return json.loads(proc.stdout) if proc.returncode == 0 else {"error": proc.stderr[-1000:]}

    def left(self) -> float:
        total = self.caps["total"] - (time.monotonic() - self.start)
        return max(0.0, min(total, self.part_end - time.monotonic()))

    def save(self) -> None:
        self.result["elapsed_s"] = round(time.monotonic() - self.start, 1)
        tmp = self.json_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.result, indent=2) + "\n")
        os.replace(tmp, self.json_path)

    def run(self, name: str, cmd: list[str], cap: float | None = None, on_start=None) -> dict:
        """Run a command in its own process group under what is left of the part; returns rc,
        seconds, the last JSON line of stdout (--json results); stderr goes to OUT/logs/NAME.log."""
        limit = min(cap or 1e9, self.left())
        if limit < 5:
            raise TimeoutError(f"{name}: out of time (the part's or the run's cap)")
        tic = time.monotonic()
        log = open(self.out / "logs" / f"{name}.log", "w")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=self.env, cwd=self.work,
                                start_new_session=True)
        try:
            if on_start:
                on_start(proc)
            stdout, _ = proc.communicate(timeout=max(1.0, limit - (time.monotonic() - tic)))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            err = TimeoutError(f"{name}: killed after {limit:.0f} s (cap); see logs/{name}.log")
            err.stdout = proc.communicate()[0]  # what it printed before: the bisection's probes so far
            raise err from None
        finally:
            log.close()
        result = {"rc": proc.returncode, "seconds": round(time.monotonic() - tic, 2), "stdout": stdout}
        lines = [line for line in stdout.splitlines() if line.startswith("{")]
        result["json"] = json.loads(lines[-1]) if lines else None
        return result

    def evilm(self, name: str, *args: str, cap: float | None = None, ok=(0,), **kw) -> dict:
        r = self.run(name, [sys.executable, "-m", "evilm_cli.main", *map(str, args)], cap, **kw)
        if r["rc"] not in ok:
            tail = (self.out / "logs" / f"{name}.log").read_text()[-1500:]
            raise RuntimeError(f"{name}: exit {r['rc']}: {tail}")
        return r


def sets(*pairs: str) -> list[str]:
    return [a for pair in pairs for a in ("--set", pair)]


def train_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    return [r for r in rows if "lr" in r]


def summary(run_dir: Path, warmup: int) -> dict:
    """Medians of the steady steps (after `warmup`) of a log_every=1 run's metrics.jsonl."""
    rows = train_rows(run_dir)
    steady = rows[warmup:] or rows
    med = lambda key: statistics.median(r[key] for r in steady) if steady and key in steady[0] else None  # noqa: E731
    mem = [r["max_memory_mib"] for r in rows if "max_memory_mib" in r]
    return {"steps": len(rows), "steady_steps": len(steady), "clips_per_s": med("clips_per_s"),
            "step_s": med("step_s"), "data_wait_share": med("data_wait_share"), "data_wait_s": med("data_wait_s"),
            "first_step_s": rows[0]["step_s"] if rows else None, "max_memory_mib": max(mem) if mem else None,
            "losses": [round(r["loss"], 6) for r in rows]}


# ------------------------------------------------------------------ parts
def pretrain_args(c: Check, out: Path, steps: int, precision: str = "bf16", batch: int | None = None,
                  workers: int | None = None, extra: tuple[str, ...] = ()) -> list[str]:
    p, w = c.p, c.work
    pairs = [f"data.train={w / 'shards'}", "data.val=null", f"data.image_size={p['size']}",
             f"data.batch_size={batch or p['batch']}", f"data.num_workers={p['workers'] if workers is None else workers}",
             f"mvm.tokenizer={w / 'tok'}", f"mvm.labels={w / 'labels'}", f"train.max_steps={steps}", "train.epochs=0",
             "train.log_every=1", "train.eval_every=100000", "train.save_every=100000", f"train.precision={precision}",
             f"output.dir={out}", *p["model"], *extra]
    if p["vocab"]:
        pairs.append(f"vocab_file={w / 'vocab.txt'}")
    if c.cpu:
        pairs.append("train.device=cpu")
    return [WEBVID, *sets(*pairs)]


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    return path


def part_setup(c: Check) -> dict:
    p, w, res = c.p, c.work, {}
    if not (w / "synth" / "train.jsonl").exists():
        r = c.evilm("synth", "data", "synth", w / "synth", "--videos", p["clips"], "--size", p["size"], "--frames",
                    p["frames"], "--val-fraction", 0, "--test-fraction", 0, "--workers", os.cpu_count() or 1, "--json")
        res["synth_s"] = r["seconds"]
    if not (w / "shards" / "index.json").exists():
        r = c.evilm("shards", "data", "shards", w / "synth" / "train.jsonl", "--out", w / "shards", "--size",
                    p["size"], "--candidates", 8, "--workers", os.cpu_count() or 1, "--json")
        res["shards_s"], res["shards_clips_per_s"] = r["seconds"], p["clips"] / r["json"]["seconds"]
    if not (w / "tok" / "final" / "model.safetensors").exists():
        fresh(w / "tok")
        pairs = [f"data.train={w / 'shards'}", "data.val=null", f"data.image_size={p['size']}",
                 f"data.batch_size={p['batch']}", f"data.num_workers={p['workers']}", "train.max_steps=1",
                 "train.epochs=0", "train.log_every=1", f"output.dir={w / 'tok'}", *p["tokenizer"]]
        r = c.evilm("tokenize-train", "tokenize-train", TOKENIZER, *sets(*pairs, *(["train.device=cpu"] if c.cpu else [])),
                    "--json")
        res["tokenizer_s"] = r["seconds"]
    if p["vocab"]:  # the paper's vocabulary size: the tokenizer's words, padded with unused ones
        words = (w / "tok" / "final" / "vocab.txt").read_text().splitlines()
        words += [f"unused{i}" for i in range(p["vocab"] - len(words))]
        (w / "vocab.txt").write_text("\n".join(words) + "\n")
    res["tokenizer"] = "recipes/tokenizer_webvid.yaml, 1 step from random init (codes are random; fine for speed)"
    return res


def part_label(c: Check) -> dict:
    w, dev = c.work, "cpu" if c.cpu else "auto"
    r = c.evilm("label", "label", "--manifest", w / "shards", "--tokenizer", w / "tok", "--out", fresh(w / "labels"),
                "--workers", c.p["workers"], "--batch-size", c.p["batch"], "--device", dev, "--json")
    j = r["json"]
    return {"clips": j["videos"], "workers": c.p["workers"], "batch": c.p["batch"], "precision": j["precision"],
            "candidates": 8, "clips_per_s": j["videos_per_second"], "clips_per_s_wall": j["videos"] / r["seconds"],
            "wall_s": r["seconds"], "decoder": j.get("decoder")}


def need_labels(c: Check) -> None:
    if not (c.work / "labels" / "meta.json").exists():
        c.result["parts"]["label"] = part_label(c)


def part_pretrain(c: Check) -> dict:
    need_labels(c)
    res = {}
    variants = {"bf16_cache": ("bf16", ()), "fp32_cache": ("fp32", ()),
                "bf16_online": ("bf16", ("mvm.targets=online", "mvm.labels=null"))}
    for name, (precision, extra) in variants.items():
        out = fresh(c.work / "runs" / name)
        try:
            r = c.evilm(f"pretrain_{name}", "pretrain", *pretrain_args(c, out, c.p["steps"], precision, extra=extra))
            res[name] = {**summary(out, c.p["warmup"]), "wall_s": r["seconds"]}
        except Exception as e:  # noqa: BLE001 - recorded, the next variant still runs
            res[name] = {"error": str(e), **({"partial": summary(out, c.p["warmup"])} if train_rows(out) else {})}
        c.result["parts"]["pretrain"] = res
        c.save()
    a, b = res.get("bf16_cache", {}).get("clips_per_s"), res.get("fp32_cache", {}).get("clips_per_s")
    if a and b:
        res["bf16_speedup"] = a / b
    if a:
        res["goal_150_clips_per_s_bf16_shards"] = a >= 150
    return res


def _children(pid: int) -> list[int]:
    kids = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            kids += (Path(f"/proc/{pid}/task/{tid}/children").read_text()).split()
        except OSError:
            pass
    return [int(k) for k in kids]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def part_resume(c: Check) -> dict:
    """torchrun (1 process) uninterrupted vs SIGTERM to the training process after a few steps,
    then --resume: the later steps' losses should be the uninterrupted run's."""
    need_labels(c)
    p, res = c.p, {"nproc_per_node": 1, "backend_expected": "gloo" if c.cpu else "nccl",
                   "process_group": "none: WORLD_SIZE=1, init_distributed (engine/distributed.py) only joins a "
                                    "process group for world > 1, so no NCCL/gloo collective runs with one GPU"}

    def torchrun(name: str, out: Path, *more: str, on_start=None) -> dict:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", f"--master_port={_free_port()}",
               "-m", "evilm_cli.main", "pretrain", *pretrain_args(c, out, p["resume_steps"], batch=p["resume_batch"],
                                                                  workers=min(2, p["workers"])), *more]
        return c.run(name, cmd, on_start=on_start)

    ref, cut = fresh(c.work / "runs" / "resume_ref"), fresh(c.work / "runs" / "resume_cut")
    r = torchrun("resume_reference", ref)
    res["reference_rc"], res["reference_s"] = r["rc"], r["seconds"]

    def stop(proc):  # SIGTERM to the training process (torchrun's child) once a few rows are logged
        while proc.poll() is None and c.left() > 5:
            if len(train_rows(cut)) >= p["resume_stop"]:
                kids = _children(proc.pid)
                os.kill(kids[0] if kids else proc.pid, signal.SIGTERM)
                res["signalled"] = "training process" if kids else "torchrun"
                return
            time.sleep(0.05)

    r = torchrun("resume_cut", cut, on_start=stop)
    res["cut_rc"], res["stopped_at_step"] = r["rc"], max((x["step"] for x in train_rows(cut)), default=0)
    res["checkpoint_written"] = (cut / "checkpoint.json").exists()
    r = torchrun("resume_resumed", cut, "--resume")
    res["resumed_rc"], res["resumed_s"] = r["rc"], r["seconds"]
    a = {x["step"]: x["loss"] for x in train_rows(ref)}
    b = {x["step"]: x["loss"] for x in train_rows(cut)}
    later = [s for s in sorted(a) if s > res["stopped_at_step"]]
    res["compared_steps"] = later
    res["steps_match"] = sorted(a) == sorted(b) == list(range(1, p["resume_steps"] + 1))
    if later and all(s in b for s in later):
        res["max_abs_diff"] = max(abs(a[s] - b[s]) for s in later)
        res["max_rel_diff"] = max(abs(a[s] - b[s]) / max(1e-12, abs(a[s])) for s in later)
        res["losses_equal"] = res["max_abs_diff"] == 0.0
        res["losses_close_rel_1e-5"] = res["max_rel_diff"] <= 1e-5
    res["reference_losses"], res["resumed_losses"] = [a[s] for s in sorted(a)], [b[s] for s in sorted(b)]
    return res


def part_index(c: Check) -> dict:
    ckpt = c.work / "runs" / "bf16_cache" / "final"
    if not (ckpt / "model.safetensors").exists():  # a pre-trained checkpoint to index with (1 step is enough)
        need_labels(c)
        c.evilm("index_checkpoint", "pretrain", *pretrain_args(c, fresh(ckpt.parent), 1))
    r = c.evilm("index", "retrieve", "index", "--checkpoint", ckpt, "--manifest", c.work / "shards", "--out",
                fresh(c.work / "index"), "--workers", c.p["workers"], "--batch-size", c.p["batch"], "--device",
                "cpu" if c.cpu else "auto", "--json")
    j = r["json"] or {}
    rates = re.findall(r"videos_per_s=([0-9.]+)", (c.out / "logs" / "index.log").read_text())  # the last progress line
    return {"clips": j.get("embedded"), "workers": c.p["workers"], "batch": c.p["batch"], "frames": 4,
            "precision": j.get("precision"), "clips_per_s": float(rates[-1]) if rates else None,
            "clips_per_s_wall": (j.get("embedded") or 0) / r["seconds"], "wall_s": r["seconds"],
            "complete": j.get("complete")}


def part_compile(c: Check) -> dict:
    need_labels(c)
    out = fresh(c.work / "runs" / "bf16_cache_compile")
    res = {"backend": c.env.get("EVILM_COMPILE_BACKEND", "inductor")}
    try:
        r = c.evilm("pretrain_compile", "pretrain", *pretrain_args(c, out, c.p["compile_steps"],
                                                                   extra=("train.compile=true",)))
        res["wall_s"] = r["seconds"]
    finally:
        res.update(summary(out, c.p["warmup"]))
    eager = c.result["parts"].get("pretrain", {}).get("bf16_cache", {})
    if eager.get("clips_per_s") and res.get("clips_per_s"):
        res["speedup_vs_eager_bf16"] = res["clips_per_s"] / eager["clips_per_s"]
        res["compile_s"] = res["first_step_s"] - eager["first_step_s"]  # the first step beyond eager's first step
        pairs = list(zip(eager["losses"], res["losses"]))
        res["max_rel_loss_diff_vs_eager"] = max(abs(x - y) / max(1e-12, abs(x)) for x, y in pairs)
    return res


def part_bisect(c: Check) -> dict:
    """The largest bf16 pre-training batch that fits: a child process probes batch sizes (random
    tensors, the paper model, a few optimizer steps each) and catches CUDA OOM itself."""
    p = c.p
    spec = {"recipe": WEBVID, "model": p["model"], "size": p["size"], "start": p["bisect_start"],
            "limit": p["bisect_limit"], "step": p["bisect_step"], "steps": p["bisect_steps"],
            "vocab": p["vocab"], "device": "cpu" if c.cpu else "cuda", "budget_s": max(5.0, c.left() - 10)}
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_check_probe.py"), json.dumps(spec)]
    try:
        stdout, error = c.run("bisect", cmd)["stdout"], None
    except TimeoutError as e:
        stdout, error = getattr(e, "stdout", "") or "", str(e)
    probes = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    done = [x for x in probes if "max_batch" in x]
    fits = [x["batch"] for x in probes if x.get("ok")]
    res = {"precision": "bf16", "probes": [x for x in probes if "batch" in x],
           "largest_fitting": done[-1]["max_batch"] if done else max(fits, default=None),
           "smallest_oom": done[-1].get("oom_at") if done else None, "complete": bool(done)}
    if error:
        res["error"] = error
    return res


PART_FUNCS = {"setup": part_setup, "label": part_label, "pretrain": part_pretrain, "resume": part_resume,
              "index": part_index, "compile": part_compile, "bisect": part_bisect}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="the dry mode: the same steps, tiny, on the CPU")
    ap.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out", help="where gpu_check.json goes")
    ap.add_argument("--work", default=None, help="data and runs (default: OUT/../gpu_check_work, not under OUT)")
    ap.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of " + ",".join(PARTS))
    ap.add_argument("--budget", type=float, default=0, help="seconds for the whole run (default: the mode's)")
    ap.add_argument("--keep", action="store_true", help="keep the parts an earlier run wrote in the JSON")
    ap.add_argument("--compile-backend", default=None, help="torch.compile backend (GPU: inductor; --cpu: aot_eager)")
    ap.add_argument("--edgenext-weights", default=None, help="a local EdgeNeXt-S weights file (else random init)")
    ap.add_argument("--vit-weights", default=None, help="a local CLIP ViT-B/32 weights file (else random init)")
    args = ap.parse_args()
    args.work = args.work or str(Path(args.out).absolute().parent / "gpu_check_work")
    wanted = [x.strip() for x in args.parts.split(",") if x.strip()]
    unknown = sorted(set(wanted) - set(PARTS))
    if unknown:
        ap.error(f"unknown parts {unknown}; choose from {','.join(PARTS)}")
    c = Check(args)
    for name in (x for x in PARTS if x in wanted):
        c.part_end, tic = time.monotonic() + c.caps[name], time.monotonic()
        c.result["parts"].pop(name, None)
        try:
            res = PART_FUNCS[name](c)
        except Exception as e:  # noqa: BLE001 - a failing part records its error; the others still run
            res = {**c.result["parts"].get(name, {}), "error": f"{type(e).__name__}: {e}"[-3000:]}
        res["part_s"] = round(time.monotonic() - tic, 1)
        c.result["parts"][name] = res
        c.save()
        print(f"gpu_check: {name} done in {res['part_s']} s{' (error)' if 'error' in res else ''}", file=sys.stderr)
    print(c.json_path)


if __name__ == "__main__":
    main()

"""Sampling one 10-s clip (212 features, 265 tokens) from the SpecVQGAN GPT, by weight dtype.

  python benchmarks/specvqgan_sampling.py --weights_dtype float32,bfloat16,int8 --batch 1 --out D
  python benchmarks/specvqgan_sampling.py --weights_dtype bfloat16 --batch 1,64 --pipeline
  python benchmarks/specvqgan_sampling.py --config small --quick      # 4 layers, seconds
  python benchmarks/specvqgan_sampling.py --workdir W                  # a trained/imported run

For each weight dtype (`avjax.nn.quantize` via `sampling.for_inference`; parameters are
float32 and converted at load) and batch size it times the KV-cache sampler
(`sampling.sample`: one prefill of the condition, then a `lax.scan` of one-token steps;
top-k 512, temperature 1). With several dtypes the timed calls are interleaved
(A, B, A, B, ...: `--rounds`), so a shared machine's load falls on all of them alike;
every call's time is kept and the JSON reports the minimum, median and spread.

Against float32 on the same weights (random init unless `--workdir`) it measures, for
each reduced dtype:
* `top1_agreement`: the share of the 476 positions of a teacher-forced sequence (the
  condition, then the float32 greedy tokens) whose most likely next token is the same,
  and the same over the 265 positions that predict codes;
* `kl_mean` / `kl_max`: KL(float32 || reduced) of the next-token distributions there (nats);
* the greedy sequences (temperature 0) of both: whether they match, and where they first
  differ.
Achieved bandwidth is the bytes read per token (the Dense weights once per step, plus the
whole KV cache, which the masked attention reads) times the steps, over the run time,
set against the copy bandwidth of the memory holding the weights (a numpy copy of host
RAM on CPU, a jitted copy on an accelerator: `_common.memory_bandwidth_gbs`).
`--pipeline` adds decoding (codebook decoder, paper size) and vocoding (MelGAN) of the
sampled codes: seconds per clip of the whole video-to-sound path.
Each program's token loop is read from its optimized HLO (`_common.hlo_loop_ops`): the
ops one token step runs (on a GPU nearly each is a kernel launch, which at batch 1 can cost
more than reading the weights), loops nested in it and command-buffer calls;
`--dump_hlo` writes the whole optimized HLO beside the JSON, for reading offline.
`--no_cache_tokens N` also times N tokens of the no-cache sampler (the official
evaluation algorithm) and extrapolates to 265. Reference (official PyTorch, no cache,
2-core CPU): 389 s per clip.

Writes D/specvqgan_sampling_<config>_<dtype>_<platform>.json per dtype.
"""

from __future__ import annotations

import argparse
import gzip
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np

from avjax.models.specvqgan import sampling
from avjax.models.specvqgan.gpt import GPT, make_model
from avjax.nn import quantize
from benchmarks import _common

OFFICIAL_CPU_S = 389.0
# name -> (GPT arguments, condition frames, tokens)
CONFIGS = {
    "paper": (dict(vocab_size=1024, block_size=477, n_layer=24, n_head=16, n_embd=1024), 212, 265),
    "small": (dict(vocab_size=1024, block_size=477, n_layer=4, n_head=16, n_embd=1024), 212, 265),
    "tiny": (dict(vocab_size=64, block_size=44, n_layer=2, n_head=2, n_embd=32), 20, 25),
}
# Parameters not read once per sampled token: the token embedding (one row), positions
# (one row) and the condition embedders (prefill only).
NOT_PER_TOKEN = ("tok_emb", "pos_emb", "feat_embedder", "cls_embedder")


def build(config: str, workdir: str | None):
    """(model, float32 params, condition features [1, Tc, D], Tc, tokens)."""
    if workdir:
        from avjax.runs import load_run

        run = load_run(workdir, "transformer")
        model = make_model(run.config.model)
        tc = int(run.config.data.feat_sample_size)
        tokens = model.block_size - tc + 1
        params = run.params
    else:
        kw, tc, tokens = CONFIGS[config]
        model = GPT(**kw, feat_dim=2048 if config != "tiny" else 16)
        params = None
    feats = jax.random.uniform(jax.random.PRNGKey(1), (1, tc, model.feat_dim))
    if params is None:
        init = jax.jit(model.init)
        params = init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32), feats)["params"]
    return model, params, feats, tc, tokens


def bytes_per_token(model: GPT, params, batch: int) -> dict:
    """Bytes one sampling step reads: per-token weights, and the KV cache of `batch` rows."""
    weights = sum(quantize.param_bytes(v) for k, v in params.items() if k not in NOT_PER_TOKEN)
    cache_dtype = jnp.dtype(model.cache_dtype or model.dtype)
    cache = 2 * model.n_layer * batch * model.block_size * model.n_embd * cache_dtype.itemsize
    return {"weights": int(weights), "kv_cache": int(cache)}


def logits_fn(model: GPT):
    return jax.jit(lambda p, toks, feats: model.apply({"params": p}, toks, feats))


def agreement(ref: np.ndarray, red: np.ndarray, tc: int) -> dict:
    """Top-1 agreement and KL(ref || red) of next-token distributions [T, V] (float32)."""
    lr = jax.nn.log_softmax(jnp.asarray(ref, jnp.float32), axis=-1)
    lq = jax.nn.log_softmax(jnp.asarray(red, jnp.float32), axis=-1)
    kl = np.asarray(jnp.sum(jnp.exp(lr) * (lr - lq), axis=-1))
    same = np.asarray(ref.argmax(-1) == red.argmax(-1))
    codes = slice(tc - 1, None)  # positions whose next token is a code
    return {
        "positions": int(same.size),
        "top1_agreement": round(float(same.mean()), 4),
        "top1_agreement_code_positions": round(float(same[codes].mean()), 4),
        "kl_mean": float(f"{kl.mean():.3g}"),
        "kl_max": float(f"{kl.max():.3g}"),
        "kl_mean_code_positions": float(f"{kl[codes].mean():.3g}"),
    }


def greedy_compare(a: np.ndarray, b: np.ndarray) -> dict:
    diff = np.flatnonzero(a != b)
    return {
        "greedy_match": bool(diff.size == 0),
        "greedy_first_difference": None if diff.size == 0 else int(diff[0]),
        "greedy_tokens_equal": round(float((a == b).mean()), 4),
    }


def make_pipeline():
    """Codes [B, 265] -> waves [B, 217088]: paper codebook decoder + MelGAN (random init)."""
    from avjax.audio.vocoder import MelGANVocoder
    from avjax.models.specvqgan import melgan, permuter, vqgan
    from configs import specvqgan_vggsound

    cfg = specvqgan_vggsound.get_config()
    codec = vqgan.make_model(cfg.model)
    x = jnp.zeros((1, cfg.data.num_mel_bins, cfg.data.crop_frames, 1))
    cparams = jax.jit(codec.init)(jax.random.PRNGKey(3), x)["params"]
    gen = melgan.Generator()
    gparams = jax.jit(gen.init)(jax.random.key(4), jnp.zeros((1, 8, 80)))["params"]
    voc = MelGANVocoder(gen, gparams)

    @jax.jit
    def decode_vocode(cp, gp, codes):
        grid = permuter.from_sequence(codes, 5, codes.shape[1] // 5)
        mel = codec.apply({"params": cp}, grid, method="decode_code")[..., 0]
        mel01 = jnp.clip((mel + 1.0) / 2.0, 0.0, 1.0)
        return voc.vocode(gp, mel01)

    return lambda codes: decode_vocode(cparams, gparams, codes)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", choices=sorted(CONFIGS), default="paper")
    ap.add_argument("--workdir", default=None, help="a transformer run (default random init)")
    ap.add_argument("--weights_dtype", default="float32,bfloat16,int8", help="comma list")
    ap.add_argument("--batch", default="1,16", help="comma-separated samples per call")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timed calls per case")
    ap.add_argument(
        "--agreement",
        default=None,
        help="reduced dtypes to compare with float32 (default: those timed; 'none')",
    )
    ap.add_argument("--pipeline", action="store_true", help="time decoding + vocoding too")
    ap.add_argument("--no_cache_tokens", type=int, default=0, help="0 skips the no-cache run")
    ap.add_argument("--top_k", type=int, default=512)
    ap.add_argument("--quick", action="store_true", help="one timed round, no extras")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--tag", default="", help="suffix of the JSON file names")
    ap.add_argument(
        "--dump_hlo", action="store_true", help="also write each program's optimized HLO (gzip)"
    )
    args = ap.parse_args()
    rounds = 1 if args.quick else args.rounds

    dtypes = [quantize.check_weights_dtype(d) for d in args.weights_dtype.split(",")]
    compare = args.agreement.split(",") if args.agreement else dtypes
    compare = [] if compare == ["none"] else compare
    compare = [quantize.check_weights_dtype(d) for d in compare if d != "float32"]
    batches = [int(b) for b in args.batch.split(",")]
    info = _common.device_info()
    load_before = _common.load_average()
    copy_gbs = _common.memory_bandwidth_gbs(info["platform"], args.quick)
    model, params, feats, tc, num_tokens = build(args.config, args.workdir)
    rng = jax.random.PRNGKey(2)
    kw = dict(temperature=1.0, top_k=args.top_k, top_p=1.0)

    # Compile every (dtype, batch) case, then time them interleaved.
    wanted = {*dtypes, *compare, *(["float32"] if compare else [])}
    variants = {d: sampling.for_inference(model, params, d) for d in sorted(wanted)}
    cases, results = {}, {d: {"batches": {}} for d in dtypes}
    for d in dtypes:
        m, p = variants[d]
        for b in batches:
            call = lambda m=m, p=p, b=b: jax.block_until_ready(
                sampling.sample(m, p, rng, feats, num_tokens=num_tokens, num_samples=b, **kw)
            )
            t0 = time.perf_counter()
            call()
            cases[d, b] = call
            results[d]["batches"][b] = {"first_call_s": round(time.perf_counter() - t0, 2)}
            # The executable just compiled (cached, so no second compile): its token loop.
            hlo = (
                sampling.sample.lower(m, p, rng, feats, num_tokens=num_tokens, num_samples=b, **kw)
                .compile()
                .as_text()
            )
            loop = _common.hlo_loop_ops(hlo)
            loop["ops_per_layer"] = round(loop["ops"] / m.n_layer, 1)
            results[d]["batches"][b]["token_loop"] = loop
            if args.dump_hlo:
                out = pathlib.Path(args.out)
                out.mkdir(parents=True, exist_ok=True)
                path = out / f"specvqgan_sampling_{args.config}_{d}_b{b}_{info['platform']}.hlo.gz"
                path.write_bytes(gzip.compress(hlo.encode()))
            print(f"compiled {d} batch {b}: {loop['ops']} ops per token step", flush=True)
    times = {c: [] for c in cases}
    for _ in range(rounds):
        for c, call in cases.items():
            t0 = time.perf_counter()
            call()
            times[c].append(time.perf_counter() - t0)
    for (d, b), ts in times.items():
        m, p = variants[d]
        run = float(np.min(ts))
        nbytes = bytes_per_token(m, p, b)
        per_step = nbytes["weights"] + nbytes["kv_cache"]
        row = results[d]["batches"][b]
        row.update(
            times_s=[round(t, 3) for t in ts],
            run_s=round(run, 3),
            median_s=round(float(np.median(ts)), 3),
            spread=round(float(np.max(ts) / run - 1.0), 3),
            compile_s=round(max(row["first_call_s"] - run, 0.0), 2),
            seconds_per_clip=round(run / b, 3),
            clips_per_s=round(b / run, 3),
            ms_per_token=round(1e3 * run / num_tokens, 2),
            bytes_per_step=nbytes,
            achieved_gbs=round(per_step * num_tokens / run / 1e9, 2),
        )
        if info["platform"] == "cpu" and args.config == "paper":
            row["speedup_vs_official_cpu"] = round(OFFICIAL_CPU_S / (run / b), 1)
        if info["platform"] == "cpu" and d == "int8":
            # Native kernel or XLA's int8 dot (avjax/nn/quantize.py); the step has b rows.
            row["int8_route"] = quantize.cpu_int8_route(b)

    agree, pipeline, no_cache = {}, {}, {}
    name = pathlib.Path(args.workdir).name if args.workdir else args.config

    def emit():
        """Writes every dtype's JSON with what has been measured so far (a run stopped by
        its time limit keeps the figures of the phases it finished)."""
        load_after = _common.load_average()
        for d in dtypes:
            b0 = batches[0]
            r0 = results[d]["batches"][b0]
            others = [x for x in dtypes if x != d]
            route = f" ({r0['int8_route']} int8 matmul)" if "int8_route" in r0 else ""
            summary = [
                [f"{d}: one clip at batch {b0}{route}", f"{r0['seconds_per_clip']} s"],
                [f"{d}: achieved / copy bandwidth", f"{r0['achieved_gbs']} / {copy_gbs} GB/s"],
                [
                    f"{d}: ops per token step, batch {b0} (on a GPU ~ kernel launches)",
                    f"{r0['token_loop']['ops']} ({r0['token_loop']['nested_loops']} nested loops)",
                ],
            ]
            for b in batches[1:]:
                summary.append(
                    [f"{d}: clips/s at batch {b}", results[d]["batches"][b]["clips_per_s"]]
                )
            if d in agree:
                a = agree[d]
                greedy = (
                    "same"
                    if a["greedy_match"]
                    else f"differs from token {a['greedy_first_difference']}"
                )
                summary.append(
                    [
                        f"{d}: top-1 agreement / mean KL vs float32",
                        f"{a['top1_agreement']} / {a['kl_mean']} (greedy: {greedy})",
                    ]
                )
            if pipeline and d == dtypes[0]:
                for b, r in pipeline.items():
                    summary.append(
                        [
                            f"{d}: sample + decode + vocode, batch {b}",
                            f"{r['seconds_per_clip']} s/clip, {r['clips_per_s']} clips/s",
                        ]
                    )
            result = {
                "benchmark": "specvqgan_sampling",
                "config": name,
                "weights_dtype": d,
                "condition_frames": tc,
                "tokens": num_tokens,
                "top_k": args.top_k,
                **info,
                "seconds_per_clip": r0["seconds_per_clip"],
                "clips_per_s": {b: results[d]["batches"][b]["clips_per_s"] for b in batches},
                "copy_bandwidth_gbs": copy_gbs,
                "achieved_gbs": r0["achieved_gbs"],
                "achieved_fraction_of_copy_bandwidth": round(r0["achieved_gbs"] / copy_gbs, 3),
                "batches": results[d]["batches"],
                "timing": f"min of {rounds} calls, interleaved with {others or 'none'}",
                "load_average_1min": [load_before, load_after],
                "official_cpu_reference_s_per_clip": OFFICIAL_CPU_S,
                "summary": summary,
            }
            if d in agree:
                result.update(agree[d])
            if d == "float32" and agree:
                result["agreement_of_reduced"] = agree
            if pipeline and d == dtypes[0]:
                result["pipeline"] = pipeline
            if no_cache and d == dtypes[0]:
                result["no_cache"] = no_cache
            tag = f"_{args.tag}" if args.tag else ""
            path = _common.write_json(
                args.out, f"specvqgan_sampling_{name}_{d}_{info['platform']}{tag}", result
            )
            print(f"wrote {path}")
            for what, value in summary:
                print(f"  {what}: {value}")

    emit()

    if args.pipeline:
        decode_vocode = make_pipeline()
        d0 = dtypes[0]
        m, p = variants[d0]
        for b in batches:
            codes = sampling.sample(m, p, rng, feats, num_tokens=num_tokens, num_samples=b, **kw)
            jax.block_until_ready(decode_vocode(codes))
            t0 = time.perf_counter()
            jax.block_until_ready(decode_vocode(codes))
            dv = time.perf_counter() - t0
            s = results[d0]["batches"][b]["run_s"]
            pipeline[b] = {
                "weights_dtype": d0,
                "decode_vocode_s": round(dv, 3),
                "sample_decode_vocode_s": round(s + dv, 3),
                "seconds_per_clip": round((s + dv) / b, 4),
                "clips_per_s": round(b / (s + dv), 3),
            }

        emit()

    # Agreement with float32: teacher-forced logits and greedy sequences.
    if compare:
        m32, p32 = variants["float32"]
        greedy = dict(temperature=0.0, top_k=0, top_p=1.0, num_tokens=num_tokens)
        g32 = np.asarray(sampling.sample(m32, p32, rng, feats, **greedy))[0]
        toks = jnp.asarray(g32[None, :-1])
        ref = np.asarray(logits_fn(m32)(p32, toks, feats))[0]
        for d in compare:
            m, p = variants[d]
            red = np.asarray(logits_fn(m)(p, toks, feats), np.float32)[0]
            g = np.asarray(sampling.sample(m, p, rng, feats, **greedy))[0]
            agree[d] = {**agreement(ref, red, tc), **greedy_compare(g32, g)}
            print(f"agreement {d}: {json.dumps(agree[d])}", flush=True)
        emit()

    if args.no_cache_tokens > 0:
        n = min(args.no_cache_tokens, num_tokens)
        m, p = variants[dtypes[0]]
        f = lambda: jax.block_until_ready(
            sampling.sample_no_cache(m, p, rng, feats, num_tokens=num_tokens, max_steps=n, **kw)
        )
        f()
        t0 = time.perf_counter()
        f()
        run = time.perf_counter() - t0
        no_cache = {
            "weights_dtype": dtypes[0],
            "timed_tokens": n,
            "s_per_token": round(run / n, 3),
            "s_per_clip": round(run * num_tokens / n, 1),
            "s_per_clip_is": "measured" if n == num_tokens else "extrapolated",
        }
        emit()


if __name__ == "__main__":
    main()

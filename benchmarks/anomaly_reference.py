"""A plain reference PatchCore next to TL Studio's detector, on the same offline photo sets.

Reference (written here, not in the product): Lite0 ImageNet features from timm, the chosen
stages, 3x3 neighbourhood averaging, finer grid, concatenated; the FULL memory bank (no coreset),
exact nearest neighbour, image score = largest patch distance. Variants of the published recipe
are computed from the same cached stage maps, so only the scoring differs between rows:

- input: "squash224" (the product: whole image resized to 224) or "crop224" (resize 256, centre
  crop 224: the paper's MVTec preprocessing), or "squash256" (group "size": whole image at 256);
- stages by stride: 8+16 (the product), 8, 16, 8+16+32;
- agg: 3x3 neighbourhood averaging or none; balance: each stage scaled to the same mean patch
  norm (what PatchCore's per-layer adaptive pooling to a common width achieves);
- bank: full, or greedy k-center coreset (ratio, projection dimension);
- score: max patch distance, or the paper's reweighting with the k nearest bank neighbours, or
  (group "score") the max of the blurred map, of a 3x3 patch mean, the mean of the top patches.

The product row runs TL Studio's own fit (same split: its held-out 20% of train/good is out of
the bank in the reference too).

    python benchmarks/anomaly_reference.py [--sets brick,grass,gravel,coffee,retina,coins,coins-hard] [--quick]
        [--groups base,stages,agg,reweight,coreset,score,size]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from anomaly_textures import make_texture_set  # noqa: E402
from common import DATA_ROOT, print_machine  # noqa: E402


def _load(paths, mode: str):
    import torch
    from PIL import Image

    out = []
    for p in paths:
        img = Image.open(p).convert("RGB")
        if mode.startswith("squash"):  # squash224, squash256: the whole image resized to N
            n = int(mode[len("squash"):])
            img = img.resize((n, n), Image.BICUBIC)
        else:  # resize 256, centre crop 224
            img = img.resize((256, 256), Image.BICUBIC).crop((16, 16, 240, 240))
        a = np.asarray(img, dtype=np.float32) / 255.0
        out.append((a - 0.5) / 0.5)  # tf_efficientnet_lite0's mean/std
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def stage_maps(body, x, indices):
    import torch

    from tlstudio.core.models.features import feature_maps
    from tlstudio.core.runtime.inference import forward_chunked

    with torch.inference_mode():
        maps = forward_chunked(lambda c: tuple(feature_maps(body, c, indices)), x)
    return {i: m.float() for i, m in zip(indices, maps)}


def embed(maps: dict, idx: list[int], agg: bool, scales: dict | None = None):
    """(N, h*w, D) patch features."""
    import torch
    from torch.nn import functional as F

    ms = []
    for i in idx:
        m = maps[i]
        if agg:
            m = F.avg_pool2d(m, 3, stride=1, padding=1, count_include_pad=False)
        if scales is not None:
            m = m / scales[i]
        ms.append(m)
    size = max((m.shape[-2:] for m in ms), key=lambda s: s[0])
    ms = [m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in ms]
    f = torch.cat(ms, 1)
    return f.permute(0, 2, 3, 1).reshape(f.shape[0], -1, f.shape[1]).contiguous()


def stage_scales(maps: dict, idx: list[int], agg: bool) -> dict:
    """Per-stage divisor so every stage has mean patch norm 1 on the bank images."""
    from torch.nn import functional as F

    out = {}
    for i in idx:
        m = maps[i]
        if agg:
            m = F.avg_pool2d(m, 3, stride=1, padding=1, count_include_pad=False)
        out[i] = float(m.norm(dim=1).mean())
    return out


def knn(q, bank, k: int = 1, block: int = 8192):
    """Exact k nearest bank rows of each query row: (distances, indices), (Nq, k)."""
    import torch

    bsq = (bank * bank).sum(1)
    best_d, best_i = None, None
    for s in range(0, bank.shape[0], block):
        d = torch.addmm(bsq[s:s + block].unsqueeze(0), q, bank[s:s + block].t(), alpha=-2.0)
        kk = min(k, d.shape[1])
        v, i = d.topk(kk, dim=1, largest=False)
        i = i + s
        if best_d is None:
            best_d, best_i = v, i
        else:
            cd, ci = torch.cat([best_d, v], 1), torch.cat([best_i, i], 1)
            v, j = cd.topk(min(k, cd.shape[1]), dim=1, largest=False)
            best_d, best_i = v, ci.gather(1, j)
    d = (best_d + (q * q).sum(1, keepdim=True)).clamp(min=0).sqrt()
    return d, best_i


def image_scores(test_f, bank, reweight_k: int = 0):
    """Max patch distance per image; with reweight_k, PatchCore's reweighting: the score of the
    most anomalous patch times 1 - softmax weight of its nearest bank neighbour among that
    neighbour's k nearest bank neighbours (anomalib's implementation)."""
    import torch

    n, p, d = test_f.shape
    scores = []
    for b in range(0, n, 8):
        q = test_f[b:b + 8].reshape(-1, d)
        dist, nn_i = knn(q, bank, 1)
        dist, nn_i = dist[:, 0].reshape(-1, p), nn_i[:, 0].reshape(-1, p)
        s, arg = dist.max(1)
        if reweight_k:
            for j in range(s.shape[0]):
                m_test = q[j * p + int(arg[j])]
                m_star = bank[int(nn_i[j, arg[j]])]
                _, sup = knn(m_star[None], bank, reweight_k)
                dd = torch.cdist(m_test[None], bank[sup[0]])[0]
                w = 1 - torch.softmax(dd, 0)[0]
                s[j] = w * s[j]
        scores.append(s)
    return torch.cat(scores).numpy()


def patch_distances(test_f, bank):
    """(N, p) distance of every test patch to its nearest bank patch."""
    import torch

    n, p, d = test_f.shape
    out = [knn(test_f[b:b + 8].reshape(-1, d), bank, 1)[0][:, 0].reshape(-1, p) for b in range(0, n, 8)]
    return torch.cat(out)


def derived_scores(dist, grid: int, size: int = 224) -> dict:
    """Image scores other than the largest patch distance, from the same patch distances:
    the largest value of the product's map (bilinear upsampling + Gaussian sigma 4 at input
    size), of a 3x3 patch mean, and the mean of the top 1% / 10 patches."""
    import torch
    from torch.nn import functional as F

    from tlstudio.core.tasks.anomaly.model import GaussianBlur

    m = dist.reshape(-1, 1, grid, grid)
    up = GaussianBlur(4.0)(F.interpolate(m, size=(size, size), mode="bilinear", align_corners=False))
    k1 = max(1, round(0.01 * grid * grid))
    return {"max of blurred map (sigma 4)": up.flatten(1).max(1).values.numpy(),
            "max of 3x3 patch mean": F.avg_pool2d(m, 3, 1, 1, count_include_pad=False).flatten(1).max(1).values.numpy(),
            f"mean of top {k1} patches (1%)": dist.topk(k1, 1).values.mean(1).numpy(),
            "mean of top 10 patches": dist.topk(10, 1).values.mean(1).numpy()}


def split(data_root: Path, seed: int = 0, holdout: float = 0.2):
    """The product's split: train/good shuffled with Random(seed), 20% held out of the bank."""
    from tlstudio.core.tasks.anomaly.data import scan_anomaly

    data = scan_anomaly(str(data_root))
    normal = list(data.normal)
    random.Random(seed).shuffle(normal)
    n_hold = min(max(1, round(holdout * len(normal))), len(normal) - 2)
    bank_paths = sorted(normal[n_hold:])
    test = [t for t in data.test]
    return bank_paths, [t.path for t in test], np.array([t.label for t in test])


def product(data_root: Path, out: Path, **cfg) -> dict:
    from tlstudio.core.events import drive
    from tlstudio.core.tasks.anomaly import AnomalyConfig, run

    import shutil

    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    info = drive(run(AnomalyConfig(data_dir=str(data_root), out_dir=str(out), **cfg)))
    return {"image_auroc": info.metrics.get("image_auroc"), "pixel_auroc": info.metrics.get("pixel_auroc"),
            "s": time.perf_counter() - t}


def _cached_maps(body, set_name: str, mode: str, paths: list[str], idx: list[int], tag: str) -> dict:
    """Stage maps of ``paths``, cached on disk per set, input mode and split (the slow part on a
    busy machine; the scoring variants reuse them)."""
    import torch

    f = DATA_ROOT / "anomaly_ref_cache" / f"{set_name}-{mode}-{tag}-{len(paths)}.pt"
    if f.is_file():
        maps = torch.load(f)
        if all(i in maps for i in idx):
            return maps
    t0 = time.perf_counter()
    maps = stage_maps(body, _load(paths, mode), idx)
    f.parent.mkdir(parents=True, exist_ok=True)
    torch.save(maps, f)
    print(f"  ({set_name} {mode}: features of {len(paths)} {tag} images in {time.perf_counter() - t0:.1f} s)",
          flush=True)
    return maps


GROUPS = ("base", "stages", "agg", "reweight", "coreset", "score", "size")


def study(sets: list[str], quick: bool, product_too: bool, groups: tuple[str, ...] = GROUPS,
          inputs: tuple[str, ...] = ()) -> None:
    """Rows by group (all sets of one group before the next group), so the comparison that
    matters (product vs the plain full-bank PatchCore) comes first on a busy machine."""
    from tlstudio.core.models.backbones import create_model
    from tlstudio.core.models.features import feature_info
    from tlstudio.core.tasks.anomaly.coreset import k_center_greedy
    from tlstudio.core.tasks.anomaly.threshold import auroc

    body = create_model("tf_efficientnet_lite0", 2).eval()
    by_stride = {d["reduction"]: d["index"] for d in feature_info(body)}  # deepest stage at each stride
    all_idx = sorted({by_stride[s] for s in (8, 16, 32)})
    inputs = list(inputs) if inputs else (["squash224"] if quick else ["squash224", "crop224"])
    summary: dict[str, list[float]] = {}
    roots = {n: make_texture_set(DATA_ROOT / "anomaly_textures", n.removesuffix("-hard"), n_train=100, n_good=30,
                                 n_defect=20, hard=n.endswith("-hard"))  # NAME-hard: thinner scratches, smaller spots
             for n in sets}

    def row(name: str, set_name: str, value: float) -> None:
        summary.setdefault(name, []).append(value)
        print(f"  {set_name:8s} {name:58s} image AUROC {value:.4f}   load {os.getloadavg()[0]:.1f}", flush=True)

    def feats(set_name: str, mode: str):
        bank_paths, test_paths, y = split(roots[set_name])
        return (_cached_maps(body, set_name, mode, bank_paths, all_idx, "bank"),
                _cached_maps(body, set_name, mode, test_paths, all_idx, "test"), y)

    def ref(set_name, mode, strides, agg=True, balance=False, reweight=0, coreset=None):
        tr, te, y = feats(set_name, mode)
        idx = [by_stride[s] for s in strides]
        scales = stage_scales(tr, idx, agg) if balance else None
        bank = embed(tr, idx, agg, scales)
        bank = bank.reshape(-1, bank.shape[-1])
        if coreset:
            ratio, pdim = coreset
            bank = bank[k_center_greedy(bank, max(1, round(ratio * bank.shape[0])), projection_dim=pdim)]
        tag = (f"{mode} stride {'+'.join(map(str, strides))} agg {'3x3' if agg else 'none'}"
               f"{' balanced' if balance else ''} "
               + (f"coreset {coreset[0]:.0%} proj {coreset[1]}" if coreset else "full bank")
               + (f", reweight k={reweight}" if reweight else ", max"))
        row(tag, set_name, auroc(image_scores(embed(te, idx, agg, scales), bank, reweight), y))

    for group in groups:
        for set_name in sets:
            if group == "base":
                if product_too:
                    r = product(roots[set_name], DATA_ROOT / "anomaly_runs" / f"ref-{set_name}")
                    row("product (TL Studio defaults)", set_name, r["image_auroc"])
                for mode in inputs:
                    ref(set_name, mode, (8, 16))
            elif quick:
                continue
            elif group == "stages":
                for strides in ((8,), (16,), (8, 16, 32)):
                    for mode in inputs:
                        ref(set_name, mode, strides)
            elif group == "agg":
                ref(set_name, inputs[0], (8, 16), agg=False)
                ref(set_name, inputs[0], (8, 16), balance=True)
            elif group == "reweight":
                ref(set_name, inputs[0], (8, 16), reweight=9)
            elif group == "score":
                for mode in inputs:
                    tr, te, y = feats(set_name, mode)
                    idx = [by_stride[s] for s in (8, 16)]
                    bank = embed(tr, idx, True)
                    bank = bank.reshape(-1, bank.shape[-1])
                    dist = patch_distances(embed(te, idx, True), bank)
                    row(f"{mode} stride 8+16 agg 3x3 full bank, max", set_name, auroc(dist.max(1).values.numpy(), y))
                    for name, sc in derived_scores(dist, tr[idx[0]].shape[-1]).items():
                        row(f"{mode} stride 8+16 agg 3x3 full bank, {name}", set_name, auroc(sc, y))
            elif group == "size":  # the whole image at 256 px (crop224's magnification, borders kept)
                ref(set_name, "squash256", (8, 16))
            elif group == "coreset":
                for c in ((0.1, 64), (0.1, 128), (0.01, 64), (0.25, 64)):
                    ref(set_name, inputs[0], (8, 16), coreset=c)
    print("mean over sets:")
    for name, vals in summary.items():
        print(f"  {name:67s} {np.mean(vals):.4f}  ({', '.join(f'{v:.3f}' for v in vals)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="brick,grass,gravel,coffee,retina,coins")
    ap.add_argument("--quick", action="store_true", help="only the product's recipe (squash224, stride 8+16)")
    ap.add_argument("--no-product", action="store_true")
    ap.add_argument("--groups", default=",".join(GROUPS),
                    help="row groups, run in this order over all sets: " + ",".join(GROUPS))
    ap.add_argument("--inputs", default="", help="input modes, e.g. squash224,crop224,squash256 (default both 224s)")
    a = ap.parse_args()
    print_machine()
    torch_threads = os.environ.get("OMP_NUM_THREADS")
    if torch_threads:
        print(f"# OMP_NUM_THREADS={torch_threads}")
    study(a.sets.split(","), a.quick, not a.no_product, tuple(a.groups.split(",")),
          tuple(x for x in a.inputs.split(",") if x))


if __name__ == "__main__":
    main()

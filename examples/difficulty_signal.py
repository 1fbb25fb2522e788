"""How much does the observation at each decision say about an image's difficulty?

A router can spend compute per image only where its observation tells hard images from easy ones
*before* the compute is spent. This script runs every test image through the full network, records
the env's observation at every decision (``obs="probe"``), and reports how well two predictors find
the images the full network gets wrong (ROC AUC; 0.5 = no information, 1.0 = perfect):

* the probe's top probability at that decision (one entry of the observation);
* a logistic regression on the whole observation (5-fold cross-validated on the test split).

Decision 0 is all that ``DynBlockDrop``'s one-shot policy sees; the later decisions of ``DynSkip``
and ``DynChannel`` see more.

    python examples/difficulty_signal.py                                  # DynSkip-v0, resnet32-lite@skip
    python examples/difficulty_signal.py --env DynChannel-v0 --backbone vgg+sandwich+distill
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict

from dyncnn_gym.cli import HelpFormatter
from dyncnn_gym.envs.routing import make_core
from dyncnn_gym.walk import Walk


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--env", default="DynSkip-v0", choices=["DynSkip-v0", "DynChannel-v0"], help="the per-decision env")
    p.add_argument("--backbone", default="resnet32-lite@skip", help="backbone name or checkpoint path")
    p.add_argument("--dataset", default="shapes", help="data set name (shapes, digits, ...)")
    args = p.parse_args()
    torch.set_num_threads(1)
    core = make_core(args.env, 1, dataset=args.dataset, backbone=args.backbone, obs="probe", split="test")
    images = torch.as_tensor(core.data.test.images)
    labels = np.asarray(core.data.test.labels)
    observations = []
    with torch.no_grad():
        walk = Walk(core.net, core.mode, images)
        while not walk.done:  # every block run, every layer at full width
            observations.append(core.observe(walk))
            walk.step(np.full(len(walk), core.A - 1, dtype=np.int64))
        wrong = (walk.logits().argmax(1).numpy() != labels).astype(int)
    print(
        f"{args.env} on {args.dataset} ({args.backbone}): {len(labels)} test images, the full network is wrong on"
        f" {100 * wrong.mean():.1f} %\n"
    )
    print("| decision | AUC, probe's top probability | AUC, logistic regression on the observation (5-fold) |")
    print("|---:|---:|---:|")
    top = core.feat_dim + core.T  # the probe's top probability in the observation
    for t, obs in enumerate(observations):
        fit = LogisticRegression(max_iter=2000)
        p_wrong = cross_val_predict(fit, obs, wrong, cv=5, method="predict_proba")[:, 1]
        print(f"| {t} | {roc_auc_score(wrong, -obs[:, top]):.3f} | {roc_auc_score(wrong, p_wrong):.3f} |")


if __name__ == "__main__":
    main()

"""Stage `prepare_data`: the train and test splits; writes OUT/{train,test}.jsonl (+ .meta.json) and METRICS.

Glue only: params section -> PrepareConfig -> reasoning.toy.task (the embedded toy world) or
reasoning.data (MATH-500 as test, MATH train with every MATH-500 problem removed). With
`pipeline.limit: N` (a trial run of the whole pipeline) the test split is its first N problems,
so every evaluating stage, and final_eval's comparisons, see the same N.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from reasoning import data
from reasoning.files import write_json
from reasoning.toy.task import LEVELS, make_splits

from .common import run_facts, stage_config, stage_parser, trial_limit


@dataclass(frozen=True)
class ToySplits:
    n_train: int = 40000
    n_test: int = 500
    seed: int = 0
    levels: tuple[int, ...] = LEVELS


@dataclass(frozen=True)
class Source:
    source: str  # hf:<repo> or a local .json/.jsonl/.parquet file
    split: str = "train"
    revision: str | None = None
    limit: int | None = None  # first rows only (smoke runs)


@dataclass(frozen=True)
class PrepareConfig:
    world: str = "toy"  # toy: generated problems; sources: `test` and `train` below
    toy: ToySplits = ToySplits()
    test: Source = Source(data.MATH500_SOURCE, data.MATH500_SPLIT, data.MATH500_REVISION)
    train: Source = Source(data.MATH_TRAIN_SOURCE, data.MATH_TRAIN_SPLIT, data.MATH_TRAIN_REVISION)

    def __post_init__(self) -> None:
        if self.world not in ("toy", "sources"):
            raise ValueError(f"prepare_data.world {self.world!r} is unknown; use 'toy' or 'sources'")


def _load(src: Source, setting: str) -> tuple[list[dict], dict[str, int]]:
    rows = data.load_dataset_source(src.source, src.split, src.revision, src.limit, setting)
    return data.validate_rows(rows, src.source)


def main(argv: Sequence[str] | None = None) -> dict:
    args = stage_parser("prepare_data", __doc__, [("--out", "output directory, e.g. data/datasets"),
                                                  ("--metrics", "metrics file")]).parse_args(argv)
    cfg = stage_config(PrepareConfig, "prepare_data", args)
    limit, out = trial_limit(args.params), args.out  # a trial run: the first `limit` test problems
    if cfg.world == "toy":
        train, test = make_splits(cfg.toy.n_train, cfg.toy.n_test, cfg.toy.seed, cfg.toy.levels)
        src = f"toy:seed={cfg.toy.seed}"
        meta_train = data.write_dataset(train, out / "train.jsonl", src, {"split": "train"})
        meta_test = data.write_dataset(test[:limit], out / "test.jsonl", src, {"split": "test"})
        dropped = 0
    else:
        test, skipped_test = _load(cfg.test, "prepare_data.test.source")
        train, skipped_train = _load(cfg.train, "prepare_data.train.source")
        train, dropped = data.remove_overlap(train, test)  # MATH train and MATH-500 share their origin
        test = test[:limit]  # after the overlap check: training never holds a test problem, trial or not
        meta_test = data.write_dataset(test, out / "test.jsonl", cfg.test.source,
                                       {"split": cfg.test.split, "revision": cfg.test.revision}, skipped_test)
        meta_train = data.write_dataset(train, out / "train.jsonl", cfg.train.source,
                                        {"split": cfg.train.split, "revision": cfg.train.revision,
                                         "dropped_overlap": dropped}, skipped_train)
    metrics = {"train_rows": meta_train["rows"], "test_rows": meta_test["rows"], "dropped_overlap": dropped,
               "skipped_train": sum(meta_train["skipped"].values()),
               "skipped_test": sum(meta_test["skipped"].values()), **run_facts()}
    write_json(args.metrics, metrics)
    print(f"{out}: {metrics['train_rows']} train / {metrics['test_rows']} test rows ({cfg.world})")
    return metrics


if __name__ == "__main__":
    main()

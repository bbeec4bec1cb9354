"""A Hugging Face model card for a stored checkpoint, made with huggingface_hub's own ModelCard and ModelCardData.

Everything comes from what the store already knows: the manifest's model facts and files, the metrics (annotations
included) as model-index evaluation results, the message as intended use, the lineage and where an ancestor came
from (an import or pull from the Hub gives the base model), and the training facts of trainer_state.json and JSON
argument files. training_args.bin is a pickle and is never opened.
"""

from __future__ import annotations

import datetime as _dt
import json
from typing import TYPE_CHECKING, Any

from .._core.info import CheckpointInfo, human_bytes
from .._core.pipeline import pipeline_for
from . import load as _load
from .inspect import count_parameters
from .usage import lineage

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

    from .._format.manifest import Manifest
    from .._repo.repository import Repository

# Only the metadata is rendered by huggingface_hub's Jinja template; the body is plain Markdown built below.
_TEMPLATE = "---\n{{ card_data }}\n---\n\n{{ body }}\n"
# trainer_state.json grows with log_history; a card needs its top-level facts, and a table only when it is sane.
_MAX_STATE_BYTES = 64 << 20
_STATE_FACTS = ("global_step", "epoch", "max_steps", "num_train_epochs", "train_batch_size", "best_metric",
                "best_model_checkpoint")
# Hyperparameter keys that name the model a run started from (run_glue.py, run_clm.py, ... and hand-written args).
_BASE_MODEL_KEYS = ("model_name_or_path", "base_model", "pretrained_model_name_or_path", "model_name")
_SPLITS = {"eval": "validation", "test": "test", "train": "train"}


def _hub_id(value: Any) -> str | None:
    """`value` when it is a valid Hub repo id (not a local path, which a card's base_model cannot name)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(value, str) or not value or value.startswith((".", "/", "~")):
        return None
    try:
        validate_repo_id(value)
    except HFValidationError:
        return None
    return value


def hub_source(info: CheckpointInfo) -> str | None:
    """The Hub repo a checkpoint was imported or pulled from (import --hf-cache, pull), else None."""
    source = info.metadata.get("import")
    if isinstance(source, dict) and source.get("kind") in ("hf cache", "hub"):
        return _hub_id(source.get("repo_id"))
    return None


def pushed_repos(info: CheckpointInfo) -> list[str]:
    pushes = info.metadata.get("hub")
    return sorted({p["repo_id"] for p in pushes.values() if isinstance(p, dict) and "repo_id" in p}) \
        if isinstance(pushes, dict) else []


def base_model(chain: list[CheckpointInfo | str]) -> str | None:
    """The Hub model this checkpoint derives from: an explicit `base_model` metadata value, else the nearest
    ancestor that came from the Hub (imported, pulled or pushed), else the model a Trainer run's JSON arguments
    started from. The checkpoint's own Hub origin is not its base: it is that model."""
    for depth, item in enumerate(chain):
        if isinstance(item, str):
            continue
        explicit = _hub_id(item.metadata.get("base_model"))
        if explicit:
            return explicit
        if depth > 0:
            origin = hub_source(item) or next(iter(pushed_repos(item)), None)
            if origin:
                return origin
        hyper = item.metadata.get("hyperparameters")
        if isinstance(hyper, dict):
            for key in _BASE_MODEL_KEYS:
                found = _hub_id(hyper.get(key))
                if found:
                    return found
    return None


def pipeline_tag(architectures: list[str], model_type: str | None = None) -> str | None:
    """The Hub task of the first architecture that maps to one (BertForSequenceClassification: text-classification;
    a bare encoder: feature-extraction), by the rules `ckpt info` uses."""
    for arch in architectures:
        task, _ = pipeline_for(arch, model_type)
        if task:
            return task
    return None


def _split(metric: str) -> tuple[str, str | None]:
    """'eval_accuracy' -> ('accuracy', 'validation'); 'loss' (Trainer's training loss) -> ('loss', 'train')."""
    prefix, _, rest = metric.partition("_")
    if rest and prefix in _SPLITS:
        return rest, _SPLITS[prefix]
    return metric, "train" if metric == "loss" else None


def eval_results(info: CheckpointInfo, task: str | None, hyper: dict[str, Any]) -> list[Any]:
    """One model-index entry per stored metric (annotations included), named by the stored key."""
    from huggingface_hub import EvalResult

    dataset = info.metadata.get("dataset") or hyper.get("dataset_name")
    config = hyper.get("dataset_config_name") or hyper.get("task_name")
    out = []
    for key, value in info.metrics.items():
        metric_type, split = _split(key)
        out.append(EvalResult(
            task_type=task or "other", dataset_type=str(dataset or "unknown"), dataset_name=str(dataset or "unknown"),
            dataset_config=str(config) if config else None, dataset_split=split, metric_type=metric_type,
            metric_name=key, metric_value=value,
        ))
    return out


def trainer_state(repo: "Repository", manifest: "Manifest") -> dict[str, Any] | None:
    entry = manifest.file("trainer_state.json")
    if entry is None or entry.size > _MAX_STATE_BYTES:
        return None
    try:
        state = json.loads(_load.read_file_bytes(repo.blobs, entry))
    except ValueError:
        return None
    return state if isinstance(state, dict) else None


def _own_card_data(repo: "Repository", manifest: "Manifest") -> Any:
    """The metadata of the README.md a Hub snapshot came with (license, datasets, language, base model, eval
    results), as a ModelCardData; None without one."""
    from huggingface_hub import ModelCard

    entry = manifest.file("README.md")
    if entry is None or entry.size > (1 << 20):
        return None
    try:
        return ModelCard(_load.read_file_bytes(repo.blobs, entry).decode("utf-8"), ignore_metadata_errors=True).data
    except Exception:  # noqa: BLE001 - a card that does not parse is simply not reused
        return None


def _value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, default=str)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows)]


def _body(info: CheckpointInfo, manifest: "Manifest", chain: list[CheckpointInfo | str], base: str | None,
          task: str | None, state: dict[str, Any] | None, hyper: dict[str, Any], params: tuple[int, dict]) -> str:
    arch = ", ".join(manifest.model.get("architectures") or []) or "model"
    parameters, dtypes = params
    lines = [f"# {info.name}", ""]
    what = f"A {arch} checkpoint" + (f" ({manifest.model['model_type']})" if manifest.model.get("model_type") else "")
    if parameters:
        what += f" with {parameters:,} parameters ({', '.join(sorted(dtypes))})"
    what += f", stored by ckptstore as `{info.name}`"
    what += f", derived from [{base}](https://huggingface.co/{base})." if base else "."
    lines += [what, "", "## Intended use", "",
              info.message or "Not stated. Record it with `ckpt annotate REF -m TEXT`; the card takes the message.",
              ""]
    if info.metrics:
        lines += ["## Evaluation", ""]
        lines += _table(["metric", "value", "split"],
                        [[k, f"{v:.6g}", _split(k)[1] or "-"] for k, v in info.metrics.items()])
        lines += [""]
    if state or hyper:
        lines += ["## Training", ""]
        facts = {k: state[k] for k in _STATE_FACTS if state and state.get(k) is not None}
        lines += [f"- {k.replace('_', ' ')}: {_value(v)}" for k, v in facts.items()]
        if hyper:
            lines += ["", "Hyperparameters (from trainer_state.json and JSON argument files; training_args.bin, a"
                      " pickle, is not read):", ""]
            lines += [f"- {k}: {_value(v)}" for k, v in hyper.items()]
        lines += [""]
        history = state.get("log_history") if state else None
        if isinstance(history, list) and history:
            try:
                from transformers.modelcard import make_markdown_table, parse_log_history

                # It tabulates only up to the end-of-training entry (train_runtime), which a checkpoint saved
                # mid-run has not logged yet: one is appended so every evaluation so far is a row.
                _, table, _ = parse_log_history([*history, {"train_runtime": 0.0}])
                if table:
                    lines += ["### Training results", "", make_markdown_table(table), ""]
            except Exception:  # noqa: BLE001 - a log history transformers cannot tabulate leaves the table out
                pass
    lines += ["## Lineage", ""]
    for depth, item in enumerate(chain):
        label = "this checkpoint" if depth == 0 else "parent" if depth == 1 else f"ancestor {depth}"
        if isinstance(item, str):
            lines.append(f"- {label}: `{item[:12]}` (deleted from the store)")
            continue
        notes = []
        converted = item.metadata.get("converted")
        if isinstance(converted, dict):
            notes.append("converted" + (f" to {converted['dtype']}" if converted.get("dtype") else ""))
        if hub_source(item):
            notes.append(f"from the Hub repo {hub_source(item)}")
        lines.append(f"- {label}: `{item.name}` (`{item.short_id}`" + (f", step {item.step}" if item.step is not None
                     else "") + ")" + (f": {'; '.join(notes)}" if notes else ""))
    created = _dt.datetime.fromtimestamp(info.created_at, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines += ["", "## Checkpoint", "",
              f"- id: `{info.id}` (the BLAKE3 hash of its manifest: it names these exact files)",
              f"- saved: {created}" + (f", step {info.step}" if info.step is not None else ""),
              f"- size: {human_bytes(info.logical_bytes)} in {info.file_count} files", ""]
    lines += _table(["file", "size", "BLAKE3"],
                    [[f"`{f.path}`", human_bytes(f.size), f"`{f.digest}`"] for f in manifest.files])
    lines += ["", "Made by ckptstore from the stored checkpoint (`ckpt card REF` writes it again)."]
    return "\n".join(lines)


def model_card(repo: "Repository", ref: str) -> "ModelCard":
    """The model card of the checkpoint `ref` names (a huggingface_hub ModelCard: `str(card)` is README.md)."""
    from huggingface_hub import ModelCard, ModelCardData

    cid = repo.resolve(ref)
    info, manifest = repo.info(cid), repo.read_manifest(cid)
    chain = lineage(repo, cid)
    hyper = info.metadata.get("hyperparameters")
    hyper = dict(hyper) if isinstance(hyper, dict) else {}
    own_data = _own_card_data(repo, manifest) if hub_source(info) else None
    own = own_data.to_dict() if own_data is not None else {}
    base = base_model(chain) or _hub_id(own.get("base_model"))
    architectures = list(manifest.model.get("architectures") or [])
    task = pipeline_tag(architectures, manifest.model.get("model_type")) or own.get("pipeline_tag")
    state = trainer_state(repo, manifest)
    params = count_parameters(manifest)
    tags = ["ckptstore"]
    if manifest.model.get("model_type"):
        tags.append(str(manifest.model["model_type"]))
    if any(f.kind == "safetensors" for f in manifest.files):
        tags.append("safetensors")
    if state is not None:
        tags.append("generated_from_trainer")
    data = ModelCardData(
        base_model=base, library_name="transformers", pipeline_tag=task, tags=tags, model_name=info.name,
        # A Hub snapshot's own results describe it as well as stored metrics would; stored ones win.
        eval_results=eval_results(info, task, hyper) or (own_data.eval_results if own_data is not None else None),
        license=own.get("license"), datasets=own.get("datasets"), language=own.get("language"),
        ckptstore={"checkpoint": info.id, "name": info.name, **({"step": info.step} if info.step is not None else {})},
    )
    body = _body(info, manifest, chain, base, task, state, hyper, params)
    return ModelCard.from_template(data, template_str=_TEMPLATE, body=body)

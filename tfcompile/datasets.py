"""Real data that needs no download.

- `stdlib_corpus`: a byte-level language-modelling corpus built from the Python standard
  library's own .py files (whatever interpreter runs this), split by file into train and
  held-out validation so that validation text was never seen in training.
- `docs_corpus`: English prose shipped with Python, the language reference topics that
  ``pydoc`` shows (``pydoc_data.topics``), split by topic: a text domain disjoint from the
  sources (`stdlib_corpus(exclude=("pydoc_data",))`), for fine-tuning a model pretrained on
  code.
- `digits`: scikit-learn's bundled 8x8 handwritten digits (1797 images), split train/val.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class ByteCorpus:
    train: torch.Tensor  # uint8 tokens
    val: torch.Tensor
    train_files: int
    val_files: int

    vocab_size: int = 256

    def batch(
        self, split: str, batch_size: int, seq_len: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows: inputs (B, T) and next-byte targets (B, T), int64."""
        data = self.train if split == "train" else self.val
        starts = torch.randint(0, len(data) - seq_len - 1, (batch_size,), generator=generator)
        rows = torch.stack([data[s : s + seq_len + 1] for s in starts.tolist()]).long()
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()


def _held_out(path: Path, val_fraction: float) -> bool:
    digest = hashlib.sha1(path.as_posix().encode()).digest()
    return digest[0] / 256.0 < val_fraction


def stdlib_corpus(
    max_bytes: int = 8_000_000, val_fraction: float = 0.05, exclude: tuple[str, ...] = ()
) -> ByteCorpus:
    """Bytes of the standard library's .py files (tests and site-packages left out, and the
    top-level packages named in ``exclude``).

    Files are taken in sorted path order until `max_bytes` of training text is collected; a
    file goes to validation by a hash of its path, so the split is stable across machines with
    the same Python.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    train, val = bytearray(), bytearray()
    n_train = n_val = 0
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        skipped = ("site-packages", "test", "idlelib", *exclude)
        if relative.parts[0] in skipped or "tests" in relative.parts:
            continue
        try:
            text = path.read_bytes()
        except OSError:
            continue
        if _held_out(relative, val_fraction):
            if len(val) < max_bytes * val_fraction * 2:
                val += text + b"\n"
                n_val += 1
        elif len(train) < max_bytes:
            train += text + b"\n"
            n_train += 1
        if len(train) >= max_bytes and len(val) >= max_bytes * val_fraction:
            break
    if not train or not val:
        raise RuntimeError(f"no standard-library sources found under {root}")
    as_tensor = lambda b: torch.frombuffer(b, dtype=torch.uint8).clone()
    return ByteCorpus(as_tensor(train), as_tensor(val), n_train, n_val)


def docs_corpus(val_fraction: float = 0.1) -> ByteCorpus:
    """UTF-8 bytes of the Python language reference topics (``pydoc_data.topics.topics``,
    about 0.7 MB of English prose with code examples), one topic after another in sorted
    order; a topic goes to validation by a hash of its name (at least one topic each way)."""
    from pydoc_data.topics import topics

    train, val = bytearray(), bytearray()
    n_train = n_val = 0
    for name in sorted(topics):
        text = topics[name].encode() + b"\n"
        if _held_out(Path(name), val_fraction):
            val += text
            n_val += 1
        else:
            train += text
            n_train += 1
    if not train or not val:
        raise RuntimeError("pydoc_data.topics is empty or was split to one side only")
    as_tensor = lambda b: torch.frombuffer(b, dtype=torch.uint8).clone()
    return ByteCorpus(as_tensor(train), as_tensor(val), n_train, n_val)


@dataclass
class Digits:
    train_x: torch.Tensor  # (N, 1, 8, 8) float32 in [0, 1]
    train_y: torch.Tensor  # (N,) int64
    val_x: torch.Tensor
    val_y: torch.Tensor

    num_classes: int = 10

    def batch(self, batch_size: int, generator: torch.Generator):
        idx = torch.randint(0, len(self.train_y), (batch_size,), generator=generator)
        return self.train_x[idx], self.train_y[idx]


def digits(val_fraction: float = 0.2, seed: int = 0) -> Digits:
    """scikit-learn's bundled digits, shuffled with `seed` and split train/val."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    n_val = int(len(y) * val_fraction)
    return Digits(x[n_val:], y[n_val:], x[:n_val], y[:n_val])
